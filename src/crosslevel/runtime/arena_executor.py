"""Run an int8 NHWC graph inside one planned arena, proving a memory plan by execution.

Why: a plan is only trusted once the model ran in it (DESIGN.md, "Verify by execution").
The stock TFLM runtime can check plans within TFLM's rules; this executor is the check for
every plan, including those TFLM cannot run. It allocates one byte buffer of exactly
``plan.arena_bytes`` and moves every activation through it: graph inputs are written at
their planned offsets; before each node (in ``plan.order``) its activation inputs are read
back from the arena as views at their offsets; its output is computed by the int8
executor's kernels (``int8_executor.run_node``, bit-exact with TFLM) and written at its
offset before the next node runs. Constants come from the graph (they live in flash).

So that an overlap is caught whatever the data (two tensors may happen to hold equal
bytes), a shadow tag array holds, per arena byte, which buffer wrote it last (index + 1
in the plan's buffers, 0 = never written). Every read checks that all of a tensor's bytes
still carry its own tag; otherwise ``ArenaViolation`` names both tensors and the step.
A kernel's scratch buffer is tagged and filled with junk at its step, as a kernel would,
and a node's output may not cover its own inputs unless the plan lists them in-place.

This first version works at tensor granularity: in-place and patch (tiled) plans, whose
pieces overlap their inputs by design, need their own finer-grained variants.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crosslevel.errors import CrosslevelError, InvalidModelError
from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.plan import Plan, PlannedBuffer
from crosslevel.runtime.int8_executor import run_node
from crosslevel.runtime.reference import bind_inputs

Array = np.ndarray
_SCRATCH_JUNK = 0xA5  # what a kernel leaves in its scratch: never a plausible tensor


class ArenaViolation(CrosslevelError):
    """Executing a plan read bytes another buffer owns, or left the planned arena."""


@dataclass
class _Arena:
    """The arena bytes, their shadow tags and the plan's buffers by name."""

    data: bytearray
    tags: Array  # int32 per byte: index + 1 of the owning buffer, 0 = free
    buffers: list[PlannedBuffer]
    index: dict[str, int]

    @classmethod
    def for_plan(cls, plan: Plan) -> _Arena:
        buffers = [*plan.tensors, *plan.scratch]
        index = {b.id: i for i, b in enumerate(buffers)}
        return cls(
            bytearray(plan.arena_bytes), np.zeros(plan.arena_bytes, np.int32), buffers, index
        )

    def span(self, name: str, nbytes: int, where: str) -> tuple[int, int]:
        """(offset, tag) of ``name``; it must be planned, large enough and inside the arena."""
        if name not in self.index:
            raise ArenaViolation(f"{where}: tensor {name!r} has no planned offset")
        buf = self.buffers[self.index[name]]
        if buf.size_bytes < nbytes:
            raise ArenaViolation(
                f"{where}: tensor {name!r} needs {nbytes} bytes, the plan gives it {buf.size_bytes}"
            )
        if buf.offset < 0 or buf.offset + nbytes > len(self.data):
            raise ArenaViolation(
                f"{where}: tensor {name!r} needs bytes {buf.offset}..{buf.offset + nbytes - 1}, "
                f"but the arena has only {len(self.data)} bytes"
            )
        return buf.offset, self.index[name] + 1

    def write(self, name: str, value: Array, where: str) -> None:
        raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
        offset, tag = self.span(name, raw.size, where)
        # np.copyto handles a value that is itself a view of overlapping arena bytes.
        np.copyto(np.frombuffer(self.data, np.uint8, raw.size, offset), raw)
        self.tags[offset : offset + raw.size] = tag

    def check_not_onto_inputs(
        self, node: Node, nbytes: int, inplace: set[tuple[str, str]], where: str
    ) -> None:
        """The output must not cover the node's own inputs unless the plan pairs them
        in-place: a real kernel writes its output while still reading its inputs."""
        output = node.outputs[0]
        offset, _ = self.span(output, nbytes, where)
        owners = set(np.unique(self.tags[offset : offset + nbytes]).tolist())
        for name in node.inputs:
            tag = self.index.get(name, -1) + 1
            if tag and tag in owners and (name, output) not in inplace:
                raise ArenaViolation(
                    f"{where}: output {output!r} is written over input {name!r} "
                    f"while the node reads it (not an in-place pair of the plan)"
                )

    def claim_scratch(self, buf: PlannedBuffer, where: str) -> None:
        offset, tag = self.span(buf.id, buf.size_bytes, where)
        self.data[offset : offset + buf.size_bytes] = bytes([_SCRATCH_JUNK]) * buf.size_bytes
        self.tags[offset : offset + buf.size_bytes] = tag

    def read(self, name: str, dtype: np.dtype, shape: tuple[int, ...], where: str) -> Array:
        """A read-only view of ``name`` at its offset, after checking every byte's tag."""
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        offset, tag = self.span(name, nbytes, where)
        owners = self.tags[offset : offset + nbytes]
        wrong = np.flatnonzero(owners != tag)
        if wrong.size:
            owner = int(owners[wrong[0]])
            by = f"tensor {self.buffers[owner - 1].id!r}" if owner else "no tensor (never written)"
            raise ArenaViolation(
                f"{where}: reading tensor {name!r} at offset {offset}, but byte "
                f"{offset + int(wrong[0])} ({wrong.size} of {nbytes}) is owned by {by}"
            )
        view = np.frombuffer(self.data, dtype, count, offset).reshape(shape)
        view.flags.writeable = False  # a kernel must not scribble on its inputs
        return view


def run_in_arena(
    graph: Graph, plan: Plan, inputs: Mapping[str, Array] | Sequence[Array]
) -> list[Array]:
    """Run ``graph`` in ``plan.order`` inside one arena of ``plan.arena_bytes`` bytes.

    Returns the graph outputs (copies read from the arena at the end) in
    ``graph.outputs`` order. Raises ArenaViolation when the plan misplaces a tensor.
    """
    nodes = _nodes_in_plan_order(graph, plan)
    arena = _Arena.for_plan(plan)
    scratch = {b.node: b for b in plan.scratch}
    inplace = {(a, b) for a, b in plan.inplace}
    for name, value in bind_inputs(graph, inputs, exact_dtype=True).items():
        arena.write(name, value, "before step 0 (graph input)")
    for step, node in enumerate(nodes):
        where = f"step {step} (node {node.name!r}, {node.op})"
        if node.name in scratch:  # before the reads: scratch must not land on an input
            arena.claim_scratch(scratch[node.name], where)
        args = [_operand(graph, arena, name, where) if name else None for name in node.inputs]
        out = run_node(graph, node, args)
        _check_output(graph, node, out)
        arena.check_not_onto_inputs(node, out.nbytes, inplace, where)
        arena.write(node.outputs[0], out, where)
    end = f"after step {len(nodes) - 1} (graph output)"
    return [_read_tensor(graph, arena, name, end).copy() for name in graph.outputs]


def _nodes_in_plan_order(graph: Graph, plan: Plan) -> list[Node]:
    by_name = {node.name: node for node in graph.nodes}
    if len(by_name) != len(graph.nodes):
        raise InvalidModelError(f"graph {graph.name!r} names a node twice")
    if sorted(plan.order) != sorted(by_name):
        missing = sorted(set(by_name) - set(plan.order))[:3]
        extra = sorted(set(plan.order) - set(by_name))[:3]
        raise ArenaViolation(
            f"the plan's order does not list the graph's nodes once each "
            f"(missing {missing}, unknown {extra})"
        )
    return [by_name[name] for name in plan.order]


def _operand(graph: Graph, arena: _Arena, name: str, where: str) -> Array:
    tensor = graph.tensor(name)
    if tensor.data is not None:
        return np.asarray(tensor.data)
    return _read_tensor(graph, arena, name, where)


def _read_tensor(graph: Graph, arena: _Arena, name: str, where: str) -> Array:
    tensor = graph.tensor(name)
    return arena.read(name, np.dtype(tensor.dtype), tensor.shape, where)


def _check_output(graph: Graph, node: Node, out: Array) -> None:
    expected = graph.tensor(node.outputs[0])
    if tuple(out.shape) != expected.shape or out.dtype != np.dtype(expected.dtype):
        raise InvalidModelError(
            f"node {node.name!r} ({node.op}) computed {out.dtype}{tuple(out.shape)}, "
            f"declared {expected.dtype}{expected.shape}"
        )
