"""The controller on generated context traces (fixed seeds), one run, one table.

Input: a variants.json of `crosslevel optimize` (default out/optimize/variants.json; run
the README's main-job command first). Per trace kind (CPU bursts, battery drain, memory
pressure; memory scaled to 1.2x the largest variant), every policy: ours (hysteresis),
greedy (no hysteresis) and each static variant. Checks issue 5's targets: decision time
median under 1 ms, switch time (session creation included) max under 10 ms, ours'
misses + violations at most one fifth of S*'s (the most accurate static variant), and
ours' served accuracy at least that of every static variant with no more misses +
violations. Latency per request: the variant's predicted latency on the target divided
by the CPU share the trace leaves (contention modelled, not generated).

    python benchmarks/adapt.py [VARIANTS_JSON] [--seed 0] [--traces-dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crosslevel.control.policy import write_trace
from crosslevel.control.replay import (
    TRACE_KINDS,
    compared_policies,
    default_deadline_ms,
    make_trace,
    replay,
    zero_input,
)
from crosslevel.control.variants import load_variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="?", default="out/optimize/variants.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--traces-dir", type=Path, default=None, help="also write the traces")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    variants = load_variants(args.variants)
    sample = zero_input(variants[0].onnx_path)
    best = max(variants, key=lambda v: (v.served_accuracy, -v.latency_ms))
    deadline = default_deadline_ms(variants)
    memory = int(1.2 * max(v.memory_bytes for v in variants))
    rows = []
    for kind in TRACE_KINDS:
        trace = make_trace(kind, args.seed, memory)
        if args.traces_dir is not None:
            args.traces_dir.mkdir(parents=True, exist_ok=True)
            write_trace(args.traces_dir / f"{kind}_seed{args.seed}.csv", trace)
        policies = compared_policies(variants, deadline, hold=3, margin=0.2)
        stats = {p.name: replay(variants, trace, p, sample) for p in policies}
        ours, star = stats["ours"], stats[f"static:{best.name}"]
        bad = ours.deadline_misses + ours.memory_violations
        bad_star = star.deadline_misses + star.memory_violations
        rivals = [s for n, s in stats.items() if n.startswith("static:")
                  and s.deadline_misses + s.memory_violations <= bad]  # fmt: skip
        rows.append({
            "trace": kind, "ours_bad": bad, "star_bad": bad_star,
            "greedy_bad": stats["greedy"].deadline_misses + stats["greedy"].memory_violations,
            "ours_acc": ours.mean_accuracy, "best_rival_acc": max(
                (s.mean_accuracy for s in rivals), default=float("nan")),
            "ours_switches": ours.switches, "greedy_switches": stats["greedy"].switches,
            "decision_us": ours.decision_us_median, "switch_ms_max": ours.switch_ms_max,
            "fifth": bad * 5 <= bad_star,
            "acc_ok": all(ours.mean_accuracy >= s.mean_accuracy - 1e-12 for s in rivals),
        })  # fmt: skip
    if args.json:
        print(json.dumps({"deadline_ms": deadline, "memory_bytes": memory, "rows": rows}, indent=2))
        return
    table = Table(title=f"controller replay: deadline {deadline:.2f} ms (predicted on target), "
                  f"memory {memory:,} B, seed {args.seed}")  # fmt: skip
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
            f"{r['switch_ms_max']:.2f}",
        )  # fmt: skip
    Console(width=170).print(table)


if __name__ == "__main__":
    main()
