"""`crosslevel adapt`: replay a context trace over the variants of `crosslevel optimize`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crosslevel.control.policy import Context, read_trace
from crosslevel.control.traces import SHIPPED, shipped_trace
from crosslevel.control.variants import Variant, load_variants
from crosslevel.errors import UsageError

if TYPE_CHECKING:
    from crosslevel.control.replay import ReplayStats


def adapt_command(
    variants_file: Annotated[Path, typer.Argument(help="variants.json from `optimize`.")],
    trace: Annotated[
        str,
        typer.Option(
            "--trace",
            help=f"A shipped trace ({' | '.join(SHIPPED)}; memory scaled to 1.2x the "
            "largest variant) or a trace CSV path (t_s, cpu_load, ...), replayed as written.",
        ),
    ] = "cpu_bursts",
    deadline_ms: Annotated[
        float | None,
        typer.Option(help="Deadline (default: 1.5x the most accurate variant's latency)."),
    ] = None,
    hold: Annotated[int, typer.Option(help="Ticks a better variant must hold (ours).")] = 1,
    margin: Annotated[float, typer.Option(help="Spare deadline share to move up (ours).")] = 0.2,
    latency: Annotated[
        str,
        typer.Option(
            help="device: variants.json's latency on the target (predicted); "
            "host: measured here with ONNX Runtime."
        ),
    ] = "device",
    low_battery: Annotated[
        float,
        typer.Option(
            help="Battery %% under which ours and greedy save energy: the fastest feasible "
            "variant within 1 pp of the most accurate (0: off)."
        ),
    ] = 0.0,
    real_load: Annotated[
        bool,
        typer.Option(
            "--real-load/--no-real-load",
            help="Also replay ours with a real CPU load generator on the inference's core "
            "and report measured vs expected host latency (traces with CPU load only).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replay a context trace: ours (hysteresis), greedy and each static variant.

    Reports deadline misses, memory-limit violations, accuracy served, decision time and
    switch time (session creation included). Misses use the variant's latency divided by
    the CPU share the trace leaves; with --real-load, ours is replayed again beside a real
    busy-loop process on the same core and the measured host latency is shown.
    """
    # ONNX Runtime comes with replay: imported here so `crosslevel --help` stays fast.
    from crosslevel.control.replay import (
        compared_policies,
        default_deadline_ms,
        measure_here,
        replay,
        replay_under_load,
        zero_input,
    )

    _check_options(deadline_ms, hold, margin, latency)
    if not (0.0 <= low_battery <= 100.0):
        raise UsageError(f"--low-battery must be in [0, 100] %, got {low_battery}")
    variants = load_variants(variants_file)
    sample = zero_input(variants[0].onnx_path)
    if latency == "host":
        variants = measure_here(variants, sample)
    contexts = _contexts(trace, variants)
    deadline = deadline_ms if deadline_ms is not None else default_deadline_ms(variants)
    if deadline <= 0:
        raise UsageError("the most accurate variant's latency is 0 ms: give --deadline-ms")
    policies = compared_policies(variants, deadline, hold, margin, low_battery)
    stats = [replay(variants, contexts, p, sample) for p in policies]
    loaded = None
    if real_load and max(c.cpu_load for c in contexts) > 0:
        ours = compared_policies(variants, deadline, hold, margin, low_battery)[0]
        loaded = replay_under_load(variants, contexts, ours, sample).summary()
    if as_json:
        doc = {"deadline_ms": deadline, "ticks": len(contexts),
               "policies": [s.to_dict() for s in stats], "real_load": loaded}  # fmt: skip
        typer.echo(json.dumps(doc, indent=2))
        return
    console = Console(width=160)
    console.print(_table(stats, deadline, variants[0].latency_kind))
    if loaded is not None:
        console.print(_load_line(loaded), highlight=False)


def _check_options(deadline_ms: float | None, hold: int, margin: float, latency: str) -> None:
    """Usage errors (exit 2) before any file is read."""
    if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
        raise UsageError(f"--deadline-ms must be a positive number, got {deadline_ms}")
    if hold < 0:
        raise UsageError(f"--hold must be >= 0, got {hold}")
    if not (0.0 <= margin < 1.0):
        raise UsageError(f"--margin must be in [0, 1), got {margin}")
    if latency not in ("device", "host"):
        raise UsageError("--latency must be device or host")


def _contexts(trace: str, variants: list[Variant]) -> list[Context]:
    """A shipped trace by name (memory scaled: room for the largest variant and a little
    more, since not every session stays resident), or a CSV file as written."""
    if trace in SHIPPED:
        return shipped_trace(trace, int(1.2 * max(v.memory_bytes for v in variants)))
    if not Path(trace).is_file():
        raise UsageError(f"--trace {trace!r} is neither a shipped trace ({', '.join(SHIPPED)}) "
                         "nor a file")  # fmt: skip
    return read_trace(trace)


def _load_line(loaded: dict[str, Any]) -> str:
    parts = []
    for name in ("calm", "busy"):
        part = loaded[name]
        if part["ticks"]:
            parts.append(f"{name} ticks ({part['ticks']}): measured {part['measured_ms']:.4f} "
                         f"ms vs expected {part['expected_ms']:.4f} ms (median ratio "
                         f"{part['ratio']:.2f})")  # fmt: skip
    note = "" if loaded["priority_raised"] else " (generator priority could not be raised)"
    return "ours under a real CPU load generator, host latency: " + "; ".join(parts) + note


def _table(stats: list[ReplayStats], deadline: float, kind: str) -> Table:
    table = Table(title=f"replay: deadline {deadline:.4f} ms (variant latency: {kind})")
    cols = ("policy", "misses", "mem violations", "accuracy served", "switches",
            "decision us (median/max)", "switch ms (median/max)")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "policy" else "right")

    def ms(a: float, b: float) -> str:
        return "-" if math.isnan(a) else f"{a:.3f} / {b:.3f}"

    for s in stats:
        table.add_row(
            s.policy[:48], str(s.deadline_misses), str(s.memory_violations),
            f"{100 * s.mean_accuracy:.2f} %", str(s.switches),
            f"{s.decision_us_median:.1f} / {s.decision_us_max:.1f}",
            ms(s.switch_ms_median, s.switch_ms_max),
        )  # fmt: skip
    return table
