"""The controller on the shipped context traces (fixed seeds), one run, one table.

Input: a variants.json of `crosslevel optimize` (default out/optimize/variants.json; run
the README's main-job command first). Per shipped trace (CPU bursts, battery drain, memory
pressure, bandwidth; memory scaled to 1.2x the largest variant), every policy: ours (hysteresis),
greedy (no hysteresis) and each static variant. Checks issue 5's targets: decision time
median under 1 ms, switch time (session creation included) max under 10 ms, ours'
misses + violations at most one fifth of S*'s (the most accurate static variant), and
ours' served accuracy at least that of every static variant with no more misses +
violations. Latency per request: the variant's predicted latency on the target divided
by the CPU share the trace leaves. On the CPU-bursts trace ours is replayed once more
with a real load generator on the inference's core (``control.load``): measured host
latency (mean over each tick's window, median over ticks) beside the expected one.

    python benchmarks/adapt.py [VARIANTS_JSON] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from crosslevel.control.replay import (
    compared_policies,
    default_deadline_ms,
    replay,
    replay_under_load,
    zero_input,
)
from crosslevel.control.traces import SHIPPED, shipped_trace
from crosslevel.control.variants import load_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="?", default="out/optimize/variants.json")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = load_variants(args.variants)
    sample = zero_input(variants[0].onnx_path)
    best = max(variants, key=lambda v: (v.served_accuracy, -v.latency_ms))
    deadline = default_deadline_ms(variants)
    memory = int(1.2 * max(v.memory_bytes for v in variants))
    rows, loaded = [], None
    for kind in SHIPPED:
        trace = shipped_trace(kind, memory)
        policies = compared_policies(variants, deadline)
        stats = {p.name: replay(variants, trace, p, sample) for p in policies}
        rows.append(row(kind, stats, best.name))
        if kind == "cpu_bursts":
            loaded = replay_under_load(variants, trace, policies[0], sample).summary()
    if args.json:
        print(json.dumps({"deadline_ms": deadline, "memory_bytes": memory, "rows": rows,
                          "real_load": loaded}, indent=2))  # fmt: skip
        return
    print_table(rows, deadline, memory, loaded)


def row(kind: str, stats: dict[str, Any], best: str) -> dict[str, Any]:
    ours, star = stats["ours"], stats[f"static:{best}"]
    bad = ours.deadline_misses + ours.memory_violations
    bad_star = star.deadline_misses + star.memory_violations
    rivals = [s for n, s in stats.items() if n.startswith("static:")
              and s.deadline_misses + s.memory_violations <= bad]  # fmt: skip
    return {
        "trace": kind, "ours_bad": bad, "star_bad": bad_star,
        "greedy_bad": stats["greedy"].deadline_misses + stats["greedy"].memory_violations,
        "ours_acc": ours.mean_accuracy,
        "best_rival_acc": max((s.mean_accuracy for s in rivals), default=float("nan")),
        "ours_switches": ours.switches, "greedy_switches": stats["greedy"].switches,
        "decision_us": ours.decision_us_median, "switch_ms_max": ours.switch_ms_max,
        "fifth": bad * 5 <= bad_star,
        "acc_ok": all(ours.mean_accuracy >= s.mean_accuracy - 1e-12 for s in rivals),
    }  # fmt: skip


def print_table(
    rows: list[dict[str, Any]], deadline: float, memory: int, loaded: dict[str, Any] | None
) -> None:
    table = Table(title=f"controller replay: deadline {deadline:.2f} ms (predicted on target), "
                  f"memory {memory:,} B, shipped traces")  # fmt: skip
    cols = ("trace", "misses+viol. ours", "S*", "greedy", "<= S*/5", "acc. ours",
            "best static with <= ours' misses", "acc. ok", "switches ours/greedy",
            "decision us (median)", "switch ms (max)")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "trace" else "right")
    for r in rows:
        table.add_row(
            r["trace"], str(r["ours_bad"]), str(r["star_bad"]), str(r["greedy_bad"]),
            "yes" if r["fifth"] else "NO", f"{100 * r['ours_acc']:.2f} %",
            f"{100 * r['best_rival_acc']:.2f} %", "yes" if r["acc_ok"] else "NO",
            f"{r['ours_switches']}/{r['greedy_switches']}", f"{r['decision_us']:.1f}",
            "-" if math.isnan(r["switch_ms_max"]) else f"{r['switch_ms_max']:.2f}",
        )  # fmt: skip
    console = Console(width=170)
    console.print(table)
    if loaded is not None:
        for name in ("calm", "busy"):
            part = loaded[name]
            if part["ticks"]:
                console.print(
                    f"cpu_bursts with a real load generator, {name} ticks ({part['ticks']}): "
                    f"host latency measured {part['measured_ms']:.4f} ms vs expected "
                    f"{part['expected_ms']:.4f} ms (median ratio {part['ratio']:.2f}); "
                    f"generator priority raised: {loaded['priority_raised']}", highlight=False,
                )  # fmt: skip


if __name__ == "__main__":
    main()
