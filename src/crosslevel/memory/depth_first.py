"""Depth-first (patch-based) execution of the first stage: row by row through many layers.

The first layers of a CNN hold its largest activations (MCUNetV2, NeurIPS 2021). Instead
of computing each of them whole, the stage computes its output one row at a time, pulling
from each layer only the rows that row needs; every intermediate tensor keeps just a ring
of recent rows (a line buffer) instead of all of them. A row of a layer is computed once
and kept while a later row still needs it, so unlike MCUNetV2's 2-D patches with
recomputed halos this costs no extra MACs; the halo of each layer is the number of rows
its ring keeps beyond one.

The stage is a prefix of the operator order from the graph input to one tensor (its
output), made of operators that walk rows (convolutions, pooling, same-shape elementwise
operators such as the ADD of a residual block, channel concatenation of an inception
cell) and may end in a global average pool fed row by row into an accumulator; every
tensor made inside it is used only
inside it. ``build_stage`` simulates the pull schedule once: which (node, row) runs in
which order, and how many rows each ring must hold so that no row is overwritten while a
consumer still needs it. The arena executor replays that schedule in the planned ring
buffers; the memory level plans the graph input, the stage output and the rings as
buffers live across the stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.inplace import (
    ELEMENTWISE_OPS,
    WINDOW_OPS,
    InplacePair,
    window_rows,
    window_span,
)
from crosslevel.memory.lifetimes import Buffer, align_up

ROW_OPS = WINDOW_OPS | (ELEMENTWISE_OPS - {"RESHAPE", "QUANTIZE"}) | {"CONCATENATION"}


@dataclass(frozen=True)
class Stage:
    """A depth-first stage: ``nodes`` (in order) make ``output`` row by row from ``source``;
    ``rings`` maps each tensor made inside to the rows its line buffer keeps."""

    nodes: list[str]
    source: str
    output: str
    rings: dict[str, int]
    schedule: list[tuple[str, int]]  # (node, output row) in execution order
    source_rows_needed: list[int]  # per output row: the first source row still to be read

    def ring_bytes(self, graph: Graph, name: str) -> int:
        return self.rings[name] * row_bytes(graph, name)


def row_bytes(graph: Graph, name: str) -> int:
    """Bytes of one row of an NHWC tensor."""
    tensor = graph.tensor(name)
    return tensor.nbytes // tensor.shape[1]


def is_row_reduction(graph: Graph, node: Node) -> bool:
    """A global average pool: its one output row sums every input row, so a stage can
    feed it row by row into an accumulator instead of keeping its whole input."""
    if node.op != "AVERAGE_POOL_2D" or node.attrs.get("activation", "NONE") != "NONE":
        return False
    shape = graph.tensor(node.inputs[0]).shape
    kernel = tuple(int(k) for k in node.attrs.get("kernel", ()))
    pads = tuple(node.attrs.get("pads", (0, 0, 0, 0)))
    return len(shape) == 4 and kernel == tuple(shape[1:3]) and not any(pads)


def steps_of(graph: Graph, node: Node) -> int:
    """How many scheduled steps ``node`` takes in a stage: one per output row, or one per
    input row for a row reduction (each adds a row to its accumulator)."""
    if is_row_reduction(graph, node):
        return int(graph.tensor(node.inputs[0]).shape[1])
    return int(graph.tensor(node.outputs[0]).shape[1])


def rows_needed(graph: Graph, node: Node, r: int) -> tuple[int, int]:
    """Input rows [lo, hi) that step ``r`` of ``node`` reads (clipped to the image)."""
    if node.op not in WINDOW_OPS or is_row_reduction(graph, node):
        return r, r + 1
    height = graph.tensor(node.inputs[0]).shape[1]
    first_of, reach = window_rows(graph, node, 1)
    lo, hi, _, _ = window_span(first_of(r), reach, height)
    return lo, hi


def _walks_rows(graph: Graph, node: Node) -> bool:
    outs = [o for o in node.outputs if o]
    if node.op not in ROW_OPS or len(outs) != 1 or graph.layout != "NHWC":
        return False
    acts = [i for i in node.inputs if i and graph.tensor(i).data is None]
    shapes = [graph.tensor(n).shape for n in [*acts, outs[0]]]
    if is_row_reduction(graph, node):
        shapes = shapes[:-1]  # its output is one row
    if any(len(s) != 4 or s[0] != 1 or s[1] < 2 for s in shapes):
        return False
    if node.op in WINDOW_OPS:
        return len(acts) == 1 and acts[0] == node.inputs[0]
    if node.op == "CONCATENATION":  # along channels: row r is row r of every input
        axis = int(node.attrs.get("axis", -1)) % 4
        return axis == 3 and all(s[:3] == shapes[-1][:3] for s in shapes)
    return all(s == shapes[-1] for s in shapes)  # elementwise: no broadcasting


def stage_ends(graph: Graph, nodes: Sequence[Node]) -> list[int]:
    """Prefix lengths k for which ``nodes[:k]`` is a valid stage (k >= 2)."""
    if len(graph.inputs) != 1:
        return []
    source = graph.inputs[0]
    consumers: dict[str, list[int]] = {}
    for step, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                consumers.setdefault(name, []).append(step)
    ends = []
    made: list[str] = []
    for k, node in enumerate(nodes):
        if not _walks_rows(graph, node):
            break
        acts = [i for i in node.inputs if i and graph.tensor(i).data is None]
        if any(a != source and a not in made for a in acts):
            break
        if made and is_row_reduction(graph, nodes[k - 1]):
            break  # nothing walks the rows of a reduction's single row
        made.append(node.outputs[0])
        inner = made[:-1]
        closed = all(max(consumers.get(t, [k])) <= k for t in inner)
        output = made[-1]
        if k >= 1 and closed and output not in graph.outputs and output in consumers:
            if not any(t in graph.outputs for t in inner):
                ends.append(k + 1)
    return ends


def build_stage(graph: Graph, nodes: Sequence[Node]) -> Stage:
    """Simulate the pull schedule of the stage ``nodes`` and size its line buffers."""
    producer = {n.outputs[0]: n for n in nodes}
    output = nodes[-1].outputs[0]
    source = graph.inputs[0]
    next_row = {t: 0 for t in producer}  # steps done (rows, or rows accumulated)
    users: dict[str, list[Node]] = {}
    for node in nodes:
        for name in node.inputs:
            if name in producer or name == source:
                users.setdefault(name, []).append(node)
    source_rows = graph.tensor(source).shape[1]
    source_needed: list[int] = []
    rings = {t: 1 for t in producer if t != output}
    schedule: list[tuple[str, int]] = []

    def oldest_needed(name: str) -> int:
        """The first row of ``name`` some user's next row still reads."""
        rows = [
            rows_needed(graph, user, next_row[user.outputs[0]])[0]
            for user in users.get(name, [])
            if next_row[user.outputs[0]] < steps_of(graph, user)
        ]
        return min(rows, default=next_row.get(name, source_rows))

    def ensure(name: str, upto: int) -> None:
        node = producer[name]
        while next_row[name] < upto:
            r = next_row[name]
            _, hi = rows_needed(graph, node, r)
            for arg in node.inputs:
                if arg in producer:
                    ensure(arg, hi)
            schedule.append((node.name, r))
            next_row[name] = r + 1
            if name in rings:  # a ring is fullest just after a row is added to it
                rings[name] = max(rings[name], next_row[name] - oldest_needed(name))
            if name == output and not reduces:  # a reduction writes once, at its end
                source_needed.append(oldest_needed(source))

    reduces = is_row_reduction(graph, nodes[-1])
    ensure(output, steps_of(graph, nodes[-1]))
    if reduces:
        source_needed.append(source_rows)
    return Stage([n.name for n in nodes], source, output, rings, schedule, source_needed)


def stage_pair(graph: Graph, stage: Stage, alignment: int) -> InplacePair:
    """The stage's output rows overwriting source rows no later row reads: written after
    the row that needs them, row r may end where the first source row still needed
    starts, so delta >= max_r((r + 1) * out_row - needed(r) * source_row)."""
    out_row, src_row = row_bytes(graph, stage.output), row_bytes(graph, stage.source)
    low = max(
        (r + 1) * out_row - first * src_row for r, first in enumerate(stage.source_rows_needed)
    )
    low = align_up(low, alignment)
    never = -(2**31 - 1)  # the stage has no backward walk
    return InplacePair(
        stage.nodes[-1], stage.source, stage.output, max(low, 0), low, never, 0, "stage"
    )


def stage_buffers(
    graph: Graph, stage: Stage, buffers: Sequence[Buffer], alignment: int
) -> list[Buffer]:
    """The buffers with the stage's inner tensors replaced by their line buffers; the
    stage's source and output are live across all of the stage's steps."""
    end = len(stage.nodes) - 1
    kept = []
    for b in buffers:
        if b.name in stage.rings:
            continue
        if b.name == stage.source:
            b = Buffer(b.name, b.size_bytes, 0, max(b.last, end))
        elif b.name == stage.output:
            b = Buffer(b.name, b.size_bytes, 0, b.last)
        kept.append(b)
    rings = [
        Buffer(ring_name(t), align_up(stage.ring_bytes(graph, t), alignment), 0, end, True)
        for t in stage.rings
    ]
    by_name = {n.name: n for n in graph.nodes}
    if is_row_reduction(graph, by_name[stage.nodes[-1]]):
        channels = graph.tensor(stage.output).shape[-1]
        size = align_up(channels * ACCUMULATOR_BYTES, alignment)
        rings.append(Buffer(accumulator_name(stage.output), size, 0, end, True))
    return kept + rings


ACCUMULATOR_BYTES = 8  # a 64-bit sum per channel (int64 for int8 data, float64 for float)


def accumulator_name(tensor: str) -> str:
    return f"acc:{tensor}"


def ring_name(tensor: str) -> str:
    return f"ring:{tensor}"


def stage_record(graph: Graph, stage: Stage) -> dict[str, object]:
    """The stage as a plan's ``patch_stages`` entry (DESIGN.md's plan contract)."""
    return {
        "layers": list(stage.nodes),
        "grid": [graph.tensor(stage.output).shape[1], 1],  # one full-width row per patch
        "halos": [rows - 1 for rows in stage.rings.values()],
        "extra_macs": 0,  # rows are kept, not recomputed
        "mode": "line-buffer",
        "source": stage.source,
        "output": stage.output,
        "rings": dict(stage.rings),
    }
