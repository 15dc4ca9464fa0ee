"""A real CPU load generator for replaying CPU-contention traces.

A separate process pinned to the core the inference runs on (``os.sched_setaffinity``)
busy-loops for ``duty`` of every ``PERIOD_S`` and sleeps the rest; the replay sets
``duty`` to each tick's ``cpu_load``. Why it runs 10 nice levels above the inference (a
CFS weight about 9x larger): with equal weights the scheduler would split the core
50/50 whenever both are runnable, so a 90 % load could never slow inference more than
2x; the trace's ``cpu_load`` means "other work takes this share of the core", as a
higher-priority co-running app would. When raising its priority is not permitted the
generator runs at the inference's priority, and ``priority_raised`` says so.

Inference latency measured under it is real (wall clock, mean over the tick's window:
a request shorter than the period lands in busy or idle parts, and the mean is what the
share left decides); the expected latency is the unloaded one divided by that share.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from crosslevel.control.policy import MIN_CPU_SHARE, Context

PERIOD_S = 0.005
NICE_GAP = 10


def _burn(duty: Any, stop: Any, core: int, nice: int, raised: Any) -> None:
    os.sched_setaffinity(0, {core})
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        raised.value = 1
    except OSError:
        raised.value = 0
    while not stop.value:
        start = time.perf_counter()
        busy_until = start + duty.value * PERIOD_S
        while time.perf_counter() < busy_until:
            pass
        rest = start + PERIOD_S - time.perf_counter()
        if rest > 0:
            time.sleep(rest)


class LoadGenerator:
    """Context manager: pins this process and a busy-loop process to one core."""

    def __init__(self, core: int | None = None) -> None:
        self.core = core if core is not None else min(os.sched_getaffinity(0))
        ctx = mp.get_context("fork")
        self._duty = ctx.Value("d", 0.0, lock=False)
        self._stop = ctx.Value("i", 0, lock=False)
        self._raised = ctx.Value("i", -1, lock=False)
        nice = os.getpriority(os.PRIO_PROCESS, 0) - NICE_GAP
        args = (self._duty, self._stop, self.core, nice, self._raised)
        self._proc = ctx.Process(target=_burn, args=args, daemon=True)
        self._affinity = os.sched_getaffinity(0)

    def set_load(self, duty: float) -> None:
        self._duty.value = min(max(duty, 0.0), 1.0)

    @property
    def priority_raised(self) -> bool:
        return bool(self._raised.value == 1)

    def __enter__(self) -> LoadGenerator:
        os.sched_setaffinity(0, {self.core})
        self._proc.start()
        deadline = time.monotonic() + 5.0
        while self._raised.value < 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.value = 1
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        os.sched_setaffinity(0, self._affinity)


@dataclass
class LoadedLatency:
    """Host latency of served requests under the real load, per tick."""

    load: list[float]
    measured_ms: list[float]  # mean over the tick's window
    expected_ms: list[float]  # unloaded median / (1 - load)
    priority_raised: bool

    def summary(self, threshold: float = 0.5) -> dict[str, Any]:
        """Medians over calm and busy ticks (load below / at least ``threshold``)."""
        load = np.asarray(self.load)
        out: dict[str, Any] = {"priority_raised": self.priority_raised}
        for name, mask in (("calm", load < threshold), ("busy", load >= threshold)):
            meas, exp = np.asarray(self.measured_ms)[mask], np.asarray(self.expected_ms)[mask]
            out[name] = {
                "ticks": int(mask.sum()),
                "measured_ms": float(np.median(meas)) if mask.any() else None,
                "expected_ms": float(np.median(exp)) if mask.any() else None,
                "ratio": float(np.median(meas / exp)) if mask.any() else None,
            }
        return out


def window_mean_ms(request: Callable[[], object], window_s: float) -> float:
    """Mean wall-clock latency (ms) of ``request`` run back to back for ``window_s``
    (at least 3 runs)."""
    times: list[float] = []
    end = time.perf_counter() + window_s
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        request()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.mean(times))


def measure_under_load(
    trace: list[Context],
    serve: Callable[[Context], tuple[float, Callable[[], object]]],
    window_s: float = 0.02,
    calibrate: Callable[[], None] | None = None,
) -> LoadedLatency:
    """Per tick: set the generator to the tick's load, then run the request ``serve``
    returns (with its unloaded latency in ms) repeatedly for ``window_s``, timing each.
    ``calibrate`` runs first, pinned and with the generator idle: where unloaded
    latencies are best measured (same core, same other tenants of the machine)."""
    measured, expected = [], []
    with LoadGenerator() as gen:
        if calibrate is not None:
            calibrate()
        for ctx in trace:
            gen.set_load(ctx.cpu_load)
            unloaded_ms, request = serve(ctx)
            measured.append(window_mean_ms(request, window_s))
            expected.append(unloaded_ms / max(MIN_CPU_SHARE, 1.0 - ctx.cpu_load))
        raised = gen.priority_raised
    return LoadedLatency([c.cpu_load for c in trace], measured, expected, raised)
