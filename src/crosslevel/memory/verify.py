"""Prove a plan by execution in the stock TFLM runtime (DESIGN.md: verify by execution).

The plan's order and offsets go into a .tflite (operators reordered, offsets in the
``OfflineMemoryAllocation`` metadata); TFLM must then report our arena as its head and
give outputs identical to the original file's on random inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosslevel.ir.graph import Graph
from crosslevel.ir.tflite_io import export_tflite
from crosslevel.memory.ordering import reordered
from crosslevel.memory.plan import Plan, offline_offsets
from crosslevel.runtime.tflm import measure_tflm_arena, run_tflm


@dataclass(frozen=True)
class TflmCheck:
    planned_bytes: int
    tflm_head_bytes: int
    outputs_identical: bool
    inputs_tried: int

    @property
    def verified(self) -> bool:
        return self.outputs_identical and self.tflm_head_bytes == self.planned_bytes


def tflm_ready_file(graph: Graph, plan: Plan) -> bytes:
    """``graph`` as a .tflite running in the plan's order at the plan's offsets."""
    ordered = reordered(graph, plan.order)
    return export_tflite(ordered, offline_offsets=offline_offsets(ordered, plan))


def random_inputs(graph: Graph, rng: np.random.Generator) -> list[np.ndarray]:
    """One random input per graph input, spanning the whole range of integer types."""
    arrays = []
    for name in graph.inputs:
        tensor = graph.tensors[name]
        data: np.ndarray
        if np.issubdtype(np.dtype(tensor.dtype), np.integer):
            info = np.iinfo(np.dtype(tensor.dtype))
            data = rng.integers(info.min, info.max + 1, tensor.shape)
        else:
            data = rng.standard_normal(tensor.shape)
        arrays.append(data.astype(tensor.dtype))
    return arrays


def verify_in_tflm(
    original: bytes, planned: bytes, graph: Graph, plan: Plan, n_inputs: int = 3, seed: int = 0
) -> TflmCheck:
    """Run both files in TFLM on the same random inputs and measure the planned one."""
    rng = np.random.default_rng(seed)
    identical = True
    for _ in range(n_inputs):
        inputs = random_inputs(graph, rng)
        expected = run_tflm(original, inputs)
        got = run_tflm(planned, inputs)
        identical &= all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    head = measure_tflm_arena(planned).head_bytes
    return TflmCheck(plan.arena_bytes, head, identical, n_inputs)
