"""The shipped traces: reproducible by their script, replayed by name, under real load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from crosslevel.control.load import measure_under_load
from crosslevel.control.policy import Context
from crosslevel.control.traces import FOLDER, NOMINAL_MEMORY_BYTES, SHIPPED, shipped_trace

ROOT = Path(__file__).resolve().parents[1]


def test_the_script_reproduces_the_committed_traces_byte_for_byte(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_traces.py"), "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    for name in SHIPPED:
        assert (tmp_path / f"{name}.csv").read_bytes() == (FOLDER / f"{name}.csv").read_bytes()


def test_shipped_traces_have_what_their_names_say() -> None:
    cpu, battery = shipped_trace("cpu_bursts"), shipped_trace("battery_drain")
    memory, link = shipped_trace("memory_pressure", 10_000), shipped_trace("bandwidth")
    assert sum(c.cpu_load >= 0.6 for c in cpu) >= 20 and min(c.cpu_load for c in cpu) < 0.2
    assert battery[0].battery_pct > 50 > 10 > battery[-1].battery_pct
    assert max(c.mem_available_bytes for c in memory) == 10_000
    assert min(c.mem_available_bytes for c in memory) < 0.9 * 10_000
    assert max(c.mem_available_bytes for c in shipped_trace("cpu_bursts")) == NOMINAL_MEMORY_BYTES
    rates = [c.bandwidth_mbps for c in link]
    assert min(rates) < 2.0 and max(rates) > 10.0
    slow = [c.rtt_ms for c in link if c.bandwidth_mbps < 2.0]
    fast = [c.rtt_ms for c in link if c.bandwidth_mbps > 10.0]
    assert min(slow) > max(fast)


def test_a_real_load_generator_slows_a_request_on_the_same_core() -> None:
    a = np.random.default_rng(0).random((64, 64))

    def request() -> None:
        for _ in range(20):
            a @ a

    times = []
    for _ in range(20):
        start = time.perf_counter()
        request()
        times.append((time.perf_counter() - start) * 1e3)
    unloaded = float(np.median(times))
    trace = [Context(0.1 * i, load, 1) for i, load in enumerate([0.0, 0.0, 0.8, 0.8, 0.0, 0.8])]
    result = measure_under_load(trace, lambda ctx: (unloaded, request), window_s=0.05)
    calm = np.mean([m for m, c in zip(result.measured_ms, trace, strict=True) if c.cpu_load == 0])
    busy = np.mean([m for m, c in zip(result.measured_ms, trace, strict=True) if c.cpu_load > 0])
    assert busy > 1.8 * calm  # 80 % of the core taken: expected 5x, at least half of that
    assert result.expected_ms[2] == unloaded / (1 - 0.8)
