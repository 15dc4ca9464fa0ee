"""`crosslevel adapt`: replay a context trace over the variants of `crosslevel optimize`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from crosslevel.control.policy import Context, read_trace, write_trace
from crosslevel.control.replay import (
    TRACE_KINDS,
    ReplayStats,
    compared_policies,
    default_deadline_ms,
    make_trace,
    measure_here,
    replay,
    zero_input,
)
from crosslevel.control.variants import Variant, load_variants
from crosslevel.errors import UsageError


def adapt_command(
    variants_file: Annotated[Path, typer.Argument(help="variants.json from `optimize`.")],
    trace: Annotated[
        Path | None, typer.Option("--trace", help="Trace CSV (t_s, cpu_load, ...).")
    ] = None,
    trace_kind: Annotated[
        str, typer.Option(help="Without --trace: cpu_bursts | battery_drain | memory_pressure.")
    ] = "cpu_bursts",
    seed: Annotated[int, typer.Option(help="Seed of the generated trace.")] = 0,
    write_trace_to: Annotated[
        Path | None, typer.Option("--write-trace", help="Save the generated trace here.")
    ] = None,
    deadline_ms: Annotated[
        float | None,
        typer.Option(help="Deadline (default: 1.5x the most accurate variant's latency)."),
    ] = None,
    hold: Annotated[int, typer.Option(help="Ticks a better variant must hold (ours).")] = 3,
    margin: Annotated[float, typer.Option(help="Spare deadline share to move up (ours).")] = 0.2,
    latency: Annotated[
        str,
        typer.Option(
            help="device: variants.json's latency on the target (predicted); "
            "host: measured here with ONNX Runtime."
        ),
    ] = "device",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Replay a context trace: ours (hysteresis), greedy and each static variant.

    Reports deadline misses, memory-limit violations, accuracy served, decision time and
    switch time (session creation included). CPU contention is modelled from the trace.
    """
    _check_options(deadline_ms, hold, margin, latency, trace_kind if trace is None else None)
    variants = load_variants(variants_file)
    sample = zero_input(variants[0].onnx_path)
    if latency == "host":
        variants = measure_here(variants, sample)
    contexts = _contexts(trace, trace_kind, seed, write_trace_to, variants)
    deadline = deadline_ms if deadline_ms is not None else default_deadline_ms(variants)
    if deadline <= 0:
        raise UsageError("the most accurate variant's latency is 0 ms: give --deadline-ms")
    policies = compared_policies(variants, deadline, hold, margin)
    stats = [replay(variants, contexts, p, sample) for p in policies]
    if as_json:
        doc = {"deadline_ms": deadline, "ticks": len(contexts),
               "policies": [s.to_dict() for s in stats]}  # fmt: skip
        typer.echo(json.dumps(doc, indent=2))
        return
    Console(width=160).print(_table(stats, deadline, variants[0].latency_kind))


def _check_options(
    deadline_ms: float | None, hold: int, margin: float, latency: str, trace_kind: str | None
) -> None:
    """Usage errors (exit 2) before any file is read."""
    if deadline_ms is not None and not (math.isfinite(deadline_ms) and deadline_ms > 0):
        raise UsageError(f"--deadline-ms must be a positive number, got {deadline_ms}")
    if hold < 0:
        raise UsageError(f"--hold must be >= 0, got {hold}")
    if not (0.0 <= margin < 1.0):
        raise UsageError(f"--margin must be in [0, 1), got {margin}")
    if latency not in ("device", "host"):
        raise UsageError("--latency must be device or host")
    if trace_kind is not None and trace_kind not in TRACE_KINDS:
        raise UsageError(f"--trace-kind must be one of {', '.join(TRACE_KINDS)}")


def _contexts(
    trace: Path | None, kind: str, seed: int, save_to: Path | None, variants: list[Variant]
) -> list[Context]:
    """The replayed trace: read from --trace, or generated (and saved with --write-trace)."""
    if trace is not None:
        return read_trace(trace)
    # Room for the largest variant and a little more: not every session stays resident.
    memory = int(1.2 * max(v.memory_bytes for v in variants))
    contexts = make_trace(kind, seed, memory)
    if save_to is not None:
        try:
            write_trace(save_to, contexts)
        except OSError as exc:
            raise UsageError(f"cannot write --write-trace {save_to}: {exc}") from exc
    return contexts


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
