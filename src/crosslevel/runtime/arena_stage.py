"""A depth-first stage (``memory/depth_first.py``) replayed inside the arena, row by row.

The stage's schedule says which (node, row) runs next. Each inner tensor lives only in its
line buffer: row q sits in slot q mod (the plan's ring rows), tagged as that very row, so
a ring planned too small makes a later read find a newer row in the slot and fail. The
source is read from its planned place (rows the output already overwrote fail their tag
check the same way), and the output's rows go to their place in its own buffer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.depth_first import (
    accumulator_name,
    build_stage,
    is_row_reduction,
    ring_name,
    row_bytes,
    rows_needed,
)
from crosslevel.memory.inplace import WINDOW_OPS, window_rows, window_span
from crosslevel.runtime.int8_kernels import rounded_average

if TYPE_CHECKING:
    from crosslevel.runtime.arena_executor import _Arena

Array = np.ndarray


def run_stage(graph: Graph, arena: _Arena, record: dict[str, Any], where: str) -> None:
    """Run every node of the stage ``record`` (a plan's ``patch_stages`` entry)."""
    by_name = {n.name: n for n in graph.nodes}
    stage = build_stage(graph, [by_name[name] for name in record["layers"]])
    rings: dict[str, int] = record["rings"]
    row_tags: dict[tuple[str, int], int] = {}
    for name, r in stage.schedule:
        node = by_name[name]
        args = [_rows(graph, arena, node, arg, r, rings, row_tags, where) for arg in node.inputs]
        out = node.outputs[0]
        if is_row_reduction(graph, node):
            _accumulate(graph, arena, node, args[0], r, where)
            continue
        row = _compute_row(graph, node, args, r)
        raw = np.ascontiguousarray(row.astype(graph.tensor(out).dtype, copy=False))
        if out == stage.output:
            arena.write(out, raw, where, r * raw.nbytes)
            continue
        tag = arena.new_tag(f"row {r} of {out!r}")
        row_tags[(out, r)] = tag
        arena.write(ring_name(out), raw, where, (r % rings[out]) * raw.nbytes, tag)


def _rows(
    graph: Graph,
    arena: _Arena,
    node: Node,
    name: str,
    r: int,
    rings: dict[str, int],
    row_tags: dict[tuple[str, int], int],
    where: str,
) -> Array | None:
    """The input rows output row ``r`` of ``node`` reads: from the source's own buffer or
    slot by slot from a line buffer; constants as they are."""
    if not name:
        return None
    tensor = graph.tensor(name)
    if tensor.data is not None:
        return np.asarray(tensor.data)
    lo, hi = rows_needed(graph, node, r)
    _, _, w, c = tensor.shape
    dtype = np.dtype(tensor.dtype)
    size = row_bytes(graph, name)
    if lo >= hi:  # a PAD row of padding only
        return np.zeros((1, 0, w, c), dtype)
    if name not in rings:  # the source, in its own buffer
        return arena.read(name, dtype, (1, hi - lo, w, c), where, lo * size)
    parts = [
        arena.read(ring_name(name), dtype, (1, 1, w, c), where, (q % rings[name]) * size,
                   row_tags.get((name, q), -1))
        for q in range(lo, hi)
    ]  # fmt: skip
    return np.concatenate(parts, axis=1)


def _compute_row(graph: Graph, node: Node, args: list[Array | None], r: int) -> Array:
    from crosslevel.runtime.arena_executor import kernel_for, window_node

    if node.op not in WINDOW_OPS:
        return kernel_for(graph, node, True)(graph, node, args)
    height = graph.tensor(node.inputs[0]).shape[1]
    first_of, reach = window_rows(graph, node, 1)
    _, _, before, after = window_span(first_of(r), reach, height)
    window = window_node(node, 1, before, after)
    return kernel_for(graph, window, True)(graph, window, args)


def _accumulate(
    graph: Graph, arena: _Arena, node: Node, row: Array | None, r: int, where: str
) -> None:
    """Add input row ``r`` of a global average pool to its accumulator in the arena; after
    the last row, write the average as TFLM (int8) or the reference (float) computes it."""
    assert row is not None
    out = node.outputs[0]
    shape = graph.tensor(node.inputs[0]).shape
    integer = np.issubdtype(row.dtype, np.integer)
    kind = np.dtype(np.int64 if integer else np.float64)
    acc = accumulator_name(out)
    channels = shape[3]
    total = row.astype(kind).sum(axis=(0, 1, 2))
    if r > 0:
        total = total + arena.read(acc, kind, (channels,), where)
    arena.write(acc, total, where)
    if r < shape[1] - 1:
        return
    count = shape[1] * shape[2]
    if integer:
        average = rounded_average(total, count, -128, 127)
    else:
        average = (total / count).astype(np.float32)
    arena.write(out, average.reshape(graph.tensor(out).shape), where)
