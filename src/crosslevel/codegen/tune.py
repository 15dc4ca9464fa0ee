"""Measured per-layer choice of the int8 convolution kernel (operator level, on the host).

Why measure: which kernel wins depends on the layer's shape and the machine (a GEMM needs
dot products long enough to fill the vector registers; the direct kernel's outer-product
update needs enough output channels). The model is built once per candidate with every
convolution forced to it and with ``-DCL_PROFILE`` (processor time per operator summed
over runs), and each layer keeps its fastest kernel. All candidates are bit-exact, so the
choice changes only speed.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosslevel.codegen.build import HOST_FLAGS, build_library, random_inputs
from crosslevel.codegen.emit import CONV_CHOICES, generate_c
from crosslevel.ir.graph import Graph
from crosslevel.memory.plan import Plan


@dataclass
class Tuning:
    """Per-layer kernel choice and the processor time (us per run) that decided it."""

    choice: dict[str, str] = field(default_factory=dict)
    time_us: dict[str, dict[str, float]] = field(default_factory=dict)  # node -> variant -> us


def _int8_convs(graph: Graph) -> list[str]:
    return [
        n.name
        for n in graph.nodes
        if n.op == "CONV_2D" and graph.tensor(n.inputs[0]).dtype == "int8"
    ]


def tune_conv_variants(
    graph: Graph, plan: Plan, cache_dir: Path, runs: int = 30, seed: int = 0
) -> Tuning:
    """Time every candidate kernel of every int8 convolution; keep the fastest per layer."""
    convs = _int8_convs(graph)
    tuning = Tuning()
    if not convs:
        return tuning
    for candidate in CONV_CHOICES:
        forced = {name: candidate for name in convs}
        per_node = _profile_us(graph, plan, forced, cache_dir, runs, seed)
        for name in convs:
            tuning.time_us.setdefault(name, {})[candidate] = per_node[name]
    for name, times in tuning.time_us.items():
        tuning.choice[name] = min(times, key=lambda k: times[k])
    return tuning


def _profile_us(
    graph: Graph, plan: Plan, forced: dict[str, str], cache_dir: Path, runs: int, seed: int
) -> dict[str, float]:
    """Processor time per run of each node (us), from a ``-DCL_PROFILE`` build."""
    gen = generate_c(graph, plan, variants=forced)
    lib = build_library(gen, cache_dir, (*HOST_FLAGS, "-DCL_PROFILE"))
    profile = getattr(ctypes.CDLL(str(lib.path)), f"{gen.symbol}_profile")
    profile.restype = ctypes.POINTER(ctypes.c_double)
    invoke = lib.invoker(random_inputs(gen, seed))
    invoke()  # warm-up
    slots = len(gen.profile_nodes)
    before = np.ctypeslib.as_array(profile(), shape=(slots,)).copy()
    for _ in range(runs):
        invoke()
    after = np.ctypeslib.as_array(profile(), shape=(slots,)).copy()
    # clock() ticks: CLOCKS_PER_SEC is 1,000,000 on POSIX systems, so one tick is 1 us
    per_run_us = (after - before) * 1e6 / 1_000_000 / runs
    return {name: float(per_run_us[slot]) for slot, name in enumerate(gen.profile_nodes)}
