"""Prove a plan by execution (DESIGN.md: verify by execution), in two runtimes.

* The stock TFLM runtime, for plans within TFLM's rules: the plan's order and offsets go
  into a .tflite (operators reordered, offsets in the ``OfflineMemoryAllocation``
  metadata); TFLM must then report our arena as its head and give outputs identical to
  the original file's on random inputs.
* Our arena executor, for every plan (in-place pairs included): the model runs inside
  one buffer of the planned size, and its outputs must equal the plain executor's
  (bit-exact for int8, within DESIGN.md's tolerance for float).
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


@dataclass(frozen=True)
class ArenaCheck:
    """The plan ran inside its arena on ``inputs_tried`` inputs; ``max_abs_diff`` is
    against the plain executor (int8: must be 0)."""

    outputs_match: bool
    max_abs_diff: float
    inputs_tried: int
    error: str = ""

    @property
    def verified(self) -> bool:
        return self.outputs_match and not self.error


def verify_in_arena(graph: Graph, plan: Plan, n_inputs: int = 2, seed: int = 0) -> ArenaCheck:
    """Run ``plan`` in the arena executor and compare with the plain executor."""
    from crosslevel.errors import CrosslevelError
    from crosslevel.runtime.arena_executor import run_in_arena

    rng = np.random.default_rng(seed)
    worst, match = 0.0, True
    for _ in range(n_inputs):
        inputs = random_inputs(graph, rng)
        try:
            ours = run_in_arena(graph, plan, inputs)
        except CrosslevelError as exc:
            return ArenaCheck(False, float("inf"), n_inputs, str(exc))
        for got, want in zip(ours, _plain_outputs(graph, inputs), strict=True):
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            worst = max(worst, float(diff.max(initial=0.0)))
            if np.issubdtype(want.dtype, np.integer):
                match &= bool(np.array_equal(got, want))
            else:
                tol = 1e-5 * max(1.0, float(np.abs(want).max(initial=0.0)))
                match &= bool(np.all(diff <= tol + 1e-5 * np.abs(want)))
    return ArenaCheck(match, worst, n_inputs)


def _plain_outputs(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The whole-tensor executor's outputs: TFLite's integer kernels or float reference."""
    from crosslevel.runtime.int8_executor import run_int8
    from crosslevel.runtime.reference import run_reference

    if is_int8_graph(graph):
        return run_int8(graph, inputs)
    values = run_reference(graph, inputs)
    return [values[name] for name in graph.outputs]


def is_int8_graph(graph: Graph) -> bool:
    """Whether any activation is integer: TFLite's integer kernels run it."""
    return any(
        t.data is None and np.issubdtype(np.dtype(t.dtype), np.integer)
        for t in graph.tensors.values()
    )
