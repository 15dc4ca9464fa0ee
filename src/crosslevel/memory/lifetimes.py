"""Tensor lifetimes under DESIGN.md's memory model, the one definition every planner uses.

When operator ``i`` runs, live = every earlier-produced tensor still needed + its outputs
+ its scratch. A tensor is freed after its last consumer; graph inputs are live from the
first operator until their last consumer; graph outputs stay live to the end; constants
live in flash; sizes are rounded up to the target's alignment (16 bytes for TFLM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.scratch import scratch_bytes

TFLM_ALIGNMENT = 16


@dataclass(frozen=True)
class Buffer:
    """One arena allocation: a tensor or a kernel's scratch, live in steps first..last."""

    name: str
    size_bytes: int
    first: int
    last: int
    is_scratch: bool = False

    def overlaps(self, other: Buffer) -> bool:
        return self.first <= other.last and other.first <= self.last


def align_up(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment if alignment > 1 else size


def buffers_for_order(
    graph: Graph,
    order: Sequence[Node] | None = None,
    alignment: int = TFLM_ALIGNMENT,
    with_scratch: bool = True,
) -> list[Buffer]:
    """The arena buffers of ``graph`` executed in ``order`` (default: the graph's order).

    Buffers come in the graph's tensor order, then scratch buffers in execution order:
    TFLM hands its planner the same sequence, and its tie-breaking depends on it.
    Variable (state) tensors are excluded: TFLM keeps them in the persistent tail.
    """
    nodes = list(order) if order is not None else graph.nodes
    last_step = max(len(nodes) - 1, 0)
    first: dict[str, int] = {name: 0 for name in graph.inputs}
    last: dict[str, int] = {}
    for step, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                last[name] = step
        for name in node.outputs:
            if name:
                first.setdefault(name, step)
    for name in graph.outputs:
        last[name] = last_step
    buffers = []
    for tensor in graph.tensors.values():
        if tensor.is_constant or tensor.is_variable or tensor.name not in first:
            continue
        start = first[tensor.name]
        end = max(last.get(tensor.name, start), start)
        buffers.append(Buffer(tensor.name, align_up(tensor.nbytes, alignment), start, end))
    if with_scratch:
        for step, node in enumerate(nodes):
            size = scratch_bytes(graph, node) or 0
            if size:
                buffers.append(
                    Buffer(f"scratch:{node.name}", align_up(size, alignment), step, step, True)
                )
    return buffers


def peak_live_bytes(buffers: Sequence[Buffer]) -> int:
    """The lower bound on any arena for this order: the largest live sum at one step.

    A sweep over lifetime starts and ends (the max-weight clique of an interval graph),
    so its cost does not grow with the number of steps.
    """
    events: dict[int, int] = {}
    for b in buffers:
        events[b.first] = events.get(b.first, 0) + b.size_bytes
        events[b.last + 1] = events.get(b.last + 1, 0) - b.size_bytes
    peak = live = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def no_reuse_bytes(buffers: Sequence[Buffer]) -> int:
    """The arena when every buffer gets its own bytes (no planner at all)."""
    return sum(buf.size_bytes for buf in buffers)
