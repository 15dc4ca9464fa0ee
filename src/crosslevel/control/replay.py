"""Replay a context trace against each policy and count what the user would feel.

Per tick: the policy decides (timed), the controller switches if told to (timed, session
creation included when the variant was not resident, then eviction down to the memory
available), and one real request runs on the current ONNX Runtime session. The latency
that request would have under the trace's CPU load is the variant's latency (on the
target as variants.json states it, predicted; or measured here at start, median of
``LATENCY_RUNS``) divided by the CPU share left: contention is modelled from the trace,
not produced by a real load generator. A deadline miss is a
latency over the deadline; a memory violation is a tick whose resident sessions hold more
than the memory available.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.control.policy import Context, Policy, expected_ms
from crosslevel.control.runtime import Controller
from crosslevel.control.variants import Variant
from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.runtime.ort import make_session, run_session

LATENCY_RUNS = 50
TRACE_KINDS = ("cpu_bursts", "battery_drain", "memory_pressure")


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
    variants: list[Variant], deadline_ms: float, hold: int = 3, margin: float = 0.2
) -> list[Policy]:
    """What `adapt` and benchmarks/adapt.py compare: ours (hysteresis), greedy (none) and
    each variant served statically."""
    policies = [
        Policy(variants, deadline_ms, hold=hold, margin=margin),
        Policy(variants, deadline_ms),
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


def make_trace(kind: str, seed: int, memory_bytes: int, ticks: int = 200) -> list[Context]:
    """A synthetic context trace with a fixed seed.

    ``cpu_bursts``: load bursts of random length and height over a light background;
    ``battery_drain``: steady drain from 60 % to 5 % with light load; ``memory_pressure``:
    a co-running app takes a varying share of ``memory_bytes``.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(ticks, dtype=float) * 0.1
    load = np.clip(rng.normal(0.1, 0.03, ticks), 0, 1)
    mem = np.full(ticks, float(memory_bytes))
    battery = np.full(ticks, 90.0)
    if kind == "cpu_bursts":
        i = 0
        while i < ticks:
            i += int(rng.integers(10, 30))
            length = int(rng.integers(5, 20))
            load[i : i + length] = rng.uniform(0.6, 0.95)
            i += length
    elif kind == "battery_drain":
        battery = np.linspace(60.0, 5.0, ticks)
    elif kind == "memory_pressure":
        i = 0
        while i < ticks:
            i += int(rng.integers(10, 30))
            length = int(rng.integers(10, 30))
            mem[i : i + length] = memory_bytes * rng.uniform(0.5, 0.9)
            i += length
    else:
        raise UsageError(f"unknown trace kind {kind!r}; known: {', '.join(TRACE_KINDS)}")
    return [Context(float(a), float(b), int(c), float(d), 100.0, 10.0)
            for a, b, c, d in zip(t, np.clip(load, 0, 1), mem, battery, strict=True)]  # fmt: skip
