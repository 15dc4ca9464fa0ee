"""Context, traces and the switching policies.

A variant is feasible under a context when its expected latency (``expected_ms``: its
latency divided by the CPU share left, ``1 - cpu_load``; a split variant adds the
transfer at the current bandwidth, the round trip and its remote part) meets the
deadline and what it holds resident (weights + arena) fits the memory available.
Policies:

* ``greedy``: every tick, the most accurate feasible variant (the fastest when none is);
* ``ours``: the same choice, with hysteresis so it does not flap: it leaves an infeasible
  variant at once, but moves to a more accurate one only after that one has been
  feasible with a ``margin`` of spare deadline for ``hold`` consecutive ticks;
* ``static:NAME``: always NAME.

Battery saving is opt-in (``low_battery_pct`` > 0, `adapt --low-battery PCT`): under
it an adaptive policy takes the fastest feasible variant within ``battery_tolerance`` (a
fraction, 0.01 = 1 pp) of the most accurate feasible one: on one core, energy per
inference is active power x latency. Off by default, because it trades served accuracy
for energy, and the served accuracy is what the replay's targets compare.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from crosslevel.control.variants import Variant
from crosslevel.errors import InvalidModelError, UsageError

TRACE_COLUMNS = ("t_s", "cpu_load", "mem_available_bytes", "battery_pct", "bandwidth_mbps",
                 "rtt_ms")  # fmt: skip
MIN_CPU_SHARE = 0.02


@dataclass(frozen=True)
class Context:
    t_s: float
    cpu_load: float  # 0..1, other work's share of the core
    mem_available_bytes: int
    battery_pct: float = 100.0
    bandwidth_mbps: float = 0.0
    rtt_ms: float = 0.0


def read_trace(path: str | Path) -> list[Context]:
    """A trace CSV (DESIGN.md columns), each value checked."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidModelError(f"{path}: unreadable trace: {exc}") from exc
    if not rows:
        raise InvalidModelError(f"{path}: the trace has no rows")
    if set(TRACE_COLUMNS) - set(rows[0]):
        raise InvalidModelError(f"{path}: a trace needs the columns {', '.join(TRACE_COLUMNS)}")
    out: list[Context] = []
    for i, row in enumerate(rows):
        try:
            values = [float(row[c]) for c in TRACE_COLUMNS]
        except (TypeError, ValueError) as exc:
            raise InvalidModelError(f"{path}: row {i + 2}: {exc}") from exc
        t, load, mem, battery, bw, rtt = values
        in_range = 0 <= load <= 1 and mem >= 0 and 0 <= battery <= 100 and bw >= 0 and rtt >= 0
        if not (in_range and all(math.isfinite(v) for v in values)):  # int(inf) overflows
            raise InvalidModelError(f"{path}: row {i + 2}: value out of range: {row}")
        if out and t < out[-1].t_s:
            raise InvalidModelError(f"{path}: row {i + 2}: t_s goes back in time ({t:g} s)")
        out.append(Context(t, load, int(mem), battery, bw, rtt))
    return out


def write_trace(path: str | Path, trace: list[Context]) -> None:
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TRACE_COLUMNS)
        for c in trace:
            row = [f"{c.t_s:g}", f"{c.cpu_load:.3f}", c.mem_available_bytes]
            writer.writerow(
                [*row, f"{c.battery_pct:.1f}", f"{c.bandwidth_mbps:g}", f"{c.rtt_ms:g}"]
            )


def expected_ms(v: Variant, ctx: Context) -> float:
    """Latency under ``ctx``: device compute slowed by the CPU share others take; for a
    split variant plus the transfer at the current bandwidth, one round trip and the
    remote part (no bandwidth: it cannot answer)."""
    share = max(MIN_CPU_SHARE, 1.0 - ctx.cpu_load)
    if v.split is None:
        return v.latency_ms / share
    if ctx.bandwidth_mbps <= 0:
        return math.inf
    bits = 8.0 * (v.split.up_bytes + v.split.down_bytes)
    transfer_ms = bits / (ctx.bandwidth_mbps * 1e3)  # Mbit/s = 1e3 bit/ms
    return v.split.device_ms / share + transfer_ms + ctx.rtt_ms + v.split.remote_ms


def feasible(v: Variant, ctx: Context, deadline_ms: float, margin: float = 0.0) -> bool:
    return (
        expected_ms(v, ctx) <= deadline_ms * (1.0 - margin)
        and v.memory_bytes <= ctx.mem_available_bytes
    )


@dataclass
class Policy:
    """Greedy (``hold`` 0, ``margin`` 0) or ours (hysteresis); see the module docstring."""

    variants: list[Variant]
    deadline_ms: float
    hold: int = 0
    margin: float = 0.0
    low_battery_pct: float = 0.0  # 0: battery saving off
    battery_tolerance: float = 0.01
    static: str | None = None
    _streak: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.static is not None and self.static not in {v.name for v in self.variants}:
            raise UsageError(f"no variant called {self.static!r}")

    @property
    def name(self) -> str:
        if self.static is not None:
            return f"static:{self.static}"
        return "ours" if self.hold else "greedy"

    def best(self, ctx: Context, margin: float = 0.0) -> Variant | None:
        """The most accurate feasible variant (the fastest one on low battery)."""
        ok = [v for v in self.variants if feasible(v, ctx, self.deadline_ms, margin)]
        if not ok:
            return None
        best = max(ok, key=lambda v: (v.served_accuracy, -expected_ms(v, ctx)))
        if ctx.battery_pct < self.low_battery_pct:
            floor = best.served_accuracy - self.battery_tolerance
            near = [v for v in ok if v.served_accuracy >= floor]
            return min(near, key=lambda v: (expected_ms(v, ctx), -v.served_accuracy))
        return best

    def fallback(self, ctx: Context) -> Variant:
        """Nothing feasible: the variant that misses by the least (memory first)."""
        fits = [v for v in self.variants if v.memory_bytes <= ctx.mem_available_bytes]
        return min(fits or self.variants, key=lambda v: (v.memory_bytes if not fits else 0,
                                                         expected_ms(v, ctx)))  # fmt: skip

    def decide(self, ctx: Context, current: Variant | None) -> Variant:
        if self.static is not None:
            return next(v for v in self.variants if v.name == self.static)
        choice = self.best(ctx) or self.fallback(ctx)
        if not self.hold or current is None:
            return choice
        if not feasible(current, ctx, self.deadline_ms):
            self._streak.clear()
            return choice  # leave an infeasible variant at once
        better = self.best(ctx, self.margin)
        if (
            better is None
            or better.name == current.name
            or (
                better.served_accuracy <= current.served_accuracy
                and ctx.battery_pct >= self.low_battery_pct
            )
        ):
            self._streak.clear()
            return current
        self._streak = {better.name: self._streak.get(better.name, 0) + 1}
        return better if self._streak[better.name] >= self.hold else current
