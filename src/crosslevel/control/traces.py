"""The shipped context traces: generated with fixed seeds, committed, reproducible.

    python -m crosslevel.control.traces [--out DIR]

writes ``cpu_bursts.csv``, ``battery_drain.csv``, ``memory_pressure.csv`` and
``bandwidth.csv`` (DESIGN.md's trace columns) into ``crosslevel/control/traces/`` (or
DIR); a test re-runs it and compares the files byte for byte. Memory is in bytes of a
nominal ``NOMINAL_MEMORY_BYTES``: ``crosslevel adapt --trace NAME`` scales that column so
the nominal memory is 1.2x the largest variant's (what the generator assumed), while a
trace given by path is replayed as written.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from crosslevel.control.policy import Context, read_trace, write_trace
from crosslevel.errors import UsageError

SHIPPED = ("cpu_bursts", "battery_drain", "memory_pressure", "bandwidth")
SEEDS = {"cpu_bursts": 0, "battery_drain": 1, "memory_pressure": 2, "bandwidth": 3}
NOMINAL_MEMORY_BYTES = 1_000_000
TICKS = 200
TICK_S = 0.1
FOLDER = Path(__file__).parent / "traces"


def make_trace(kind: str, seed: int, memory_bytes: int, ticks: int = TICKS) -> list[Context]:
    """A synthetic context trace with a fixed seed.

    ``cpu_bursts``: load bursts of random length and height over a light background;
    ``battery_drain``: steady drain from 60 % to 5 % with light load; ``memory_pressure``:
    a co-running app takes a varying share of ``memory_bytes``; ``bandwidth``: a link
    whose rate falls from Wi-Fi-like tens of Mbit/s to under 1 Mbit/s in fades, with the
    round-trip time rising as it does.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(ticks, dtype=float) * TICK_S
    load = np.clip(rng.normal(0.1, 0.03, ticks), 0, 1)
    mem = np.full(ticks, float(memory_bytes))
    battery = np.full(ticks, 90.0)
    bandwidth, rtt = np.full(ticks, 100.0), np.full(ticks, 10.0)
    if kind == "cpu_bursts":
        for start, length in _episodes(rng, ticks, (10, 30), (5, 20)):
            load[start : start + length] = rng.uniform(0.6, 0.95)
    elif kind == "battery_drain":
        battery = np.linspace(60.0, 5.0, ticks)
    elif kind == "memory_pressure":
        for start, length in _episodes(rng, ticks, (10, 30), (10, 30)):
            mem[start : start + length] = memory_bytes * rng.uniform(0.5, 0.9)
    elif kind == "bandwidth":
        bandwidth = np.clip(rng.normal(20.0, 3.0, ticks), 5.0, None)
        for start, length in _episodes(rng, ticks, (10, 30), (8, 25)):
            bandwidth[start : start + length] = rng.uniform(0.2, 2.0)
        rtt = 10.0 + 40.0 / np.maximum(bandwidth, 0.1)
    else:
        raise UsageError(f"unknown trace kind {kind!r}; known: {', '.join(SHIPPED)}")
    return [
        Context(float(a), round(float(b), 3), int(c), round(float(d), 1), round(float(e), 3),
                round(float(f), 3))
        for a, b, c, d, e, f in zip(t, np.clip(load, 0, 1), mem, battery, bandwidth, rtt,
                                    strict=True)
    ]  # fmt: skip


def _episodes(
    rng: np.random.Generator, ticks: int, gap: tuple[int, int], length: tuple[int, int]
) -> list[tuple[int, int]]:
    """(start, length) of episodes separated by random gaps, up to ``ticks``."""
    out, i = [], 0
    while i < ticks:
        i += int(rng.integers(*gap))
        n = int(rng.integers(*length))
        out.append((i, n))
        i += n
    return out


def shipped_trace(name: str, memory_bytes: int | None = None) -> list[Context]:
    """A shipped trace by name; memory rescaled from the nominal to ``memory_bytes``."""
    if name not in SHIPPED:
        raise UsageError(f"unknown shipped trace {name!r}; shipped: {', '.join(SHIPPED)}")
    trace = read_trace(FOLDER / f"{name}.csv")
    if memory_bytes is None:
        return trace
    ratio = memory_bytes / NOMINAL_MEMORY_BYTES
    return [replace(c, mem_available_bytes=int(c.mem_available_bytes * ratio)) for c in trace]


def write_shipped(folder: Path) -> list[Path]:
    """Every shipped trace, from its fixed seed, into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SHIPPED:
        path = folder / f"{name}.csv"
        write_trace(path, make_trace(name, SEEDS[name], NOMINAL_MEMORY_BYTES))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the shipped context traces.")
    parser.add_argument("--out", type=Path, default=FOLDER, help="folder (default: the package's)")
    args = parser.parse_args(argv)
    for path in write_shipped(args.out):
        print(path)


if __name__ == "__main__":
    main()
