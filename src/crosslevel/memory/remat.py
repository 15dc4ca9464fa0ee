"""Rematerialization: compute a tensor twice instead of keeping it live in between.

A tensor read early and again much later holds its bytes across everything in between
(a skip connection, a tensor shared by distant branches). When the operator that made it
can run again later from inputs that are still live then, a copy of that operator just
before the late readers lets the first copy die early: the arena can shrink at the cost
of the copy's MACs. It also stays within TFLM's rules (it is just one more operator).

``rematerialize`` is greedy: in each round it tries every (tensor, late reader) split
whose producer's inputs are live at that reader, keeps the one that lowers the peak of
live bytes most (DESIGN.md's memory model), and stops when none lowers it or the extra
MACs would pass the limit. It returns the rewritten graph and order, or None when
nothing pays.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from crosslevel.ir.graph import Graph, Node
from crosslevel.ir.ops import node_macs
from crosslevel.memory.lifetimes import TFLM_ALIGNMENT, buffers_for_order, peak_live_bytes

SUFFIX = "@remat"
_MAX_ROUNDS = 8


@dataclass(frozen=True)
class Remat:
    """The rewritten graph and order, the copies made, their MACs and the peaks."""

    graph: Graph
    order: list[str]
    copies: list[tuple[str, str]]  # (original node, its copy)
    extra_macs: int
    peak_before_bytes: int
    peak_after_bytes: int


def _peak(graph: Graph, order: Sequence[Node], alignment: int) -> int:
    return peak_live_bytes(buffers_for_order(graph, order, alignment))


def rematerialize(
    graph: Graph,
    order: Sequence[Node] | None = None,
    max_extra_macs_pct: float = 20.0,
    alignment: int = TFLM_ALIGNMENT,
) -> Remat | None:
    """Copies of producers that lower the peak, greedily; None when nothing pays."""
    current = graph.copy()
    names = [n.name for n in (order or graph.nodes)]
    budget = max_extra_macs_pct / 100 * sum(node_macs(graph, n) for n in graph.nodes)
    start = best = _peak(current, _nodes(current, names), alignment)
    copies: list[tuple[str, str]] = []
    extra = 0
    for _ in range(_MAX_ROUNDS):
        found = _best_split(current, names, best, budget - extra, alignment)
        if found is None:
            break
        current, names, peak, made, macs = found
        copies.append(made)
        best, extra = peak, extra + macs
    if not copies:
        return None
    return Remat(current, names, copies, extra, start, best)


def _nodes(graph: Graph, names: Sequence[str]) -> list[Node]:
    by_name = {n.name: n for n in graph.nodes}
    return [by_name[n] for n in names]


def _best_split(
    graph: Graph, names: list[str], peak: int, macs_left: float, alignment: int
) -> tuple[Graph, list[str], int, tuple[str, str], int] | None:
    """The one split of this round that lowers the peak most, or None."""
    best = None
    for producer, reader_step in _candidates(graph, names):
        macs = node_macs(graph, producer)
        if macs > macs_left:
            continue
        new_graph, new_names, made = _split(graph, names, producer, reader_step)
        new_peak = _peak(new_graph, _nodes(new_graph, new_names), alignment)
        if new_peak < peak and (best is None or new_peak < best[2]):
            best = (new_graph, new_names, new_peak, made, macs)
    return best


def _candidates(graph: Graph, names: list[str]) -> list[tuple[Node, int]]:
    """(producer, step of the first late reader) pairs where a copy could run: the tensor
    has readers at two or more steps, and every activation the producer reads is still
    live at that reader (read then or later, or a graph output)."""
    nodes = _nodes(graph, names)
    step = {n.name: k for k, n in enumerate(nodes)}
    last_use: dict[str, int] = {}
    readers: dict[str, list[int]] = {}
    for k, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                last_use[name] = k
                readers.setdefault(name, []).append(k)
    for name in graph.outputs:
        last_use[name] = len(nodes)
    found = []
    for producer in nodes:
        outs = [o for o in producer.outputs if o]
        if len(outs) != 1 or outs[0] in graph.outputs or SUFFIX in producer.name:
            continue
        acts = [i for i in producer.inputs if i and graph.tensor(i).data is None]
        for late in sorted(set(readers.get(outs[0], [])))[1:]:
            if late > step[producer.name] + 1 and all(last_use[a] >= late for a in acts):
                found.append((producer, late))
    return found


def _split(
    graph: Graph, names: list[str], producer: Node, late: int
) -> tuple[Graph, list[str], tuple[str, str]]:
    """``graph`` with a copy of ``producer`` run just before step ``late``, feeding every
    reader of its output from that step on."""
    result = graph.copy()
    out = producer.outputs[0]
    twin_name, twin_out = producer.name + SUFFIX, out + SUFFIX
    twin = Node(twin_name, producer.op, list(producer.inputs), [twin_out],
                copy.deepcopy(producer.attrs))  # fmt: skip
    tensor = copy.deepcopy(result.tensor(out))
    tensor.name = twin_out
    result.tensors[twin_out] = tensor
    by_name = {n.name: n for n in result.nodes}
    for name in names[late:]:
        node = by_name[name]
        node.inputs = [twin_out if i == out else i for i in node.inputs]
    result.nodes.append(twin)
    new_names = [*names[:late], twin_name, *names[late:]]
    result.nodes = [({**by_name, twin_name: twin})[n] for n in new_names]
    return result, new_names, (producer.name, twin_name)
