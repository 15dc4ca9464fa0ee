"""`crosslevel adapt`: replay a context trace over the variants of `crosslevel optimize`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from crosslevel.control.policy import Policy, read_trace, write_trace
from crosslevel.control.replay import TRACE_KINDS, ReplayStats, make_trace, measure_here, replay
from crosslevel.control.variants import load_variants
from crosslevel.errors import UsageError
from crosslevel.runtime.ort import make_session


def _sample(path: Path) -> np.ndarray:
    """A zero input of the model's shape (dynamic dimensions as 1)."""
    meta = make_session(path.read_bytes()).get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta.shape]
    return np.zeros(shape, dtype=np.float32)


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
    variants = load_variants(variants_file)
    sample = _sample(variants[0].onnx_path)
    if latency not in ("device", "host"):
        raise UsageError("--latency must be device or host")
    if latency == "host":
        variants = measure_here(variants, sample)
    if trace is not None:
        contexts = read_trace(trace)
    else:
        if trace_kind not in TRACE_KINDS:
            raise UsageError(f"--trace-kind must be one of {', '.join(TRACE_KINDS)}")
        # Room for the largest variant and a little more: not every session stays resident.
        memory = int(1.2 * max(v.memory_bytes for v in variants))
        contexts = make_trace(trace_kind, seed, memory)
        if write_trace_to is not None:
            write_trace(write_trace_to, contexts)
    best = max(variants, key=lambda v: (v.accuracy or 1.0, -v.latency_ms))
    deadline = deadline_ms if deadline_ms is not None else 1.5 * best.latency_ms
    policies = [Policy(variants, deadline, hold=hold, margin=margin), Policy(variants, deadline)]
    policies += [Policy(variants, deadline, static=v.name) for v in variants]
    stats = [replay(variants, contexts, p, sample) for p in policies]
    if as_json:
        doc = {"deadline_ms": deadline, "ticks": len(contexts),
               "policies": [s.to_dict() for s in stats]}  # fmt: skip
        typer.echo(json.dumps(doc, indent=2))
        return
    Console(width=160).print(_table(stats, deadline, variants[0].latency_kind))


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
