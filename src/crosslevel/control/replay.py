"""Replay a context trace against each policy and count what the user would feel.

Per tick: the policy decides (timed), the controller switches if told to (timed, session
creation included when the variant was not resident, then eviction down to the memory
available), and one real request runs on the current ONNX Runtime session. The latency
that request would have under the trace's CPU load is the variant's latency (on the
target as variants.json states it, predicted; or measured here at start, median of
``LATENCY_RUNS``) divided by the CPU share left (``policy.expected_ms``). On the host,
``load.measure_under_load`` replays the same trace with a real load generator beside the
inference and reports measured against expected host latency. A deadline miss is a
latency over the deadline; a memory violation is a tick whose resident sessions hold more
than the memory available.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.control.load import LoadedLatency, measure_under_load, window_mean_ms
from crosslevel.control.policy import Context, Policy, expected_ms
from crosslevel.control.runtime import Controller
from crosslevel.control.variants import Variant
from crosslevel.errors import InvalidModelError
from crosslevel.runtime.ort import make_session, run_session

LATENCY_RUNS = 50


def measure_here(variants: list[Variant], sample: np.ndarray) -> list[Variant]:
    """The variants with ``latency_ms`` measured on this host (ORT, 1 thread, median)."""
    out = []
    for v in variants:
        session = make_session(v.onnx_path.read_bytes())
        run_session(session, [sample])
        times = []
        for _ in range(LATENCY_RUNS):
            start = time.perf_counter()
            run_session(session, [sample])
            times.append((time.perf_counter() - start) * 1e3)
        out.append(replace(v, latency_ms=float(np.median(times)), latency_kind="measured here"))
    return out


def zero_input(path: Path) -> np.ndarray:
    """A zero input of the model's shape (dynamic dimensions as 1): the replayed request."""
    inputs = make_session(path.read_bytes()).get_inputs()
    if len(inputs) != 1:
        raise InvalidModelError(f"{path}: a variant needs exactly one input, has {len(inputs)}")
    meta = inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in meta.shape]
    return np.zeros(shape, dtype=np.float32)


def default_deadline_ms(variants: list[Variant]) -> float:
    """1.5x the latency of the most accurate variant (the fastest among equals)."""
    best = max(variants, key=lambda v: (v.served_accuracy, -v.latency_ms))
    return 1.5 * best.latency_ms


def compared_policies(
    variants: list[Variant],
    deadline_ms: float,
    hold: int = 1,
    margin: float = 0.2,
    low_battery_pct: float = 0.0,
) -> list[Policy]:
    """What `adapt` and benchmarks/adapt.py compare: ours (hysteresis), greedy (none) and
    each variant served statically.

    Defaults tuned on cpu_bursts and memory_pressure traces of seeds 11 and 12 (not the
    shipped ones): on step-like load, waiting ``hold`` > 1 ticks to move up only cost
    accuracy (0.1-0.5 pp) without saving a switch; the ``margin`` band (move up only with
    20 % of the deadline to spare, move down only when infeasible) is what stops
    flapping on a load that flickers around a threshold."""
    policies = [
        Policy(variants, deadline_ms, hold=hold, margin=margin, low_battery_pct=low_battery_pct),
        Policy(variants, deadline_ms, low_battery_pct=low_battery_pct),
    ]
    return policies + [Policy(variants, deadline_ms, static=v.name) for v in variants]


@dataclass
class ReplayStats:
    policy: str
    ticks: int
    deadline_misses: int
    memory_violations: int
    mean_accuracy: float
    switches: int
    decision_us_median: float
    decision_us_max: float
    switch_ms_median: float
    switch_ms_max: float
    requests_served: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: no switch gives NaN times here, ``null`` in the file (strict JSON
        has no NaN)."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v
                for k, v in self.__dict__.items()}  # fmt: skip


def replay(
    variants: list[Variant], trace: list[Context], policy: Policy, sample: np.ndarray
) -> ReplayStats:
    by_name = {v.name: v for v in variants}
    first = policy.decide(trace[0], None)
    ctrl = Controller(variants, first.name, preload=policy.static is None)
    decisions, switch_times = [], []
    misses = violations = served = 0
    accuracy = 0.0
    for ctx in trace:
        start = time.perf_counter()
        choice = policy.decide(ctx, by_name[ctrl.current])
        decisions.append((time.perf_counter() - start) * 1e6)
        if choice.name != ctrl.current:
            switch_times.append(ctrl.switch(choice.name, ctx.mem_available_bytes) * 1e3)
        else:
            ctrl.evict(ctx.mem_available_bytes)
        name, outputs = ctrl.infer(sample)
        served += bool(outputs)  # an answer came back (counted, not assumed)
        current = by_name[name]
        misses += expected_ms(current, ctx) > policy.deadline_ms
        violations += ctrl.resident_bytes() > ctx.mem_available_bytes
        accuracy += current.served_accuracy
    return ReplayStats(
        policy=policy.name, ticks=len(trace), deadline_misses=misses,
        memory_violations=violations, mean_accuracy=accuracy / len(trace),
        switches=len(switch_times), decision_us_median=float(np.median(decisions)),
        decision_us_max=float(np.max(decisions)),
        switch_ms_median=float(np.median(switch_times)) if switch_times else math.nan,
        switch_ms_max=float(np.max(switch_times)) if switch_times else math.nan,
        requests_served=served,
    )  # fmt: skip


def replay_under_load(
    variants: list[Variant],
    trace: list[Context],
    policy: Policy,
    sample: np.ndarray,
    window_s: float = 0.02,
) -> LoadedLatency:
    """``policy``'s choices over ``trace`` served on real sessions while a real load
    generator takes each tick's ``cpu_load`` of the same core: measured host latency
    against expected (the variant's unloaded host latency, measured the same way on the
    same core with the generator idle, / the share left)."""
    here: dict[str, float] = {}
    sessions = {v.name: make_session(v.onnx_path.read_bytes()) for v in variants}

    def calibrate() -> None:  # pinned, generator idle, measured as under load
        for name, session in sessions.items():
            here[name] = window_mean_ms(partial(run_session, session, [sample]), 0.2)

    by_name = {v.name: v for v in variants}
    current: list[Variant | None] = [None]

    def serve(ctx: Context) -> tuple[float, Callable[[], object]]:
        choice = policy.decide(ctx, current[0])
        current[0] = by_name[choice.name]
        session = sessions[choice.name]
        return here[choice.name], lambda: run_session(session, [sample])

    return measure_under_load(trace, serve, window_s, calibrate)
