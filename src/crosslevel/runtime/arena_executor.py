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

An in-place pair of the plan (``memory/inplace.py``) runs at its real granularity: the
node's output is computed piece by piece (row, column, pixel or block of elements, forward or
backward as the plan says), each piece put in the node's piece buffer in the arena and
then copied to its place in the output, which grows over the input, before the next
piece reads its input from the arena. A delta that is too small makes a later piece read
bytes that already carry the output's tag: the violation is reported, never hidden.

Float32 nodes run the reference kernels (``reference.run_node``), int8 ones the int8
executor's; both take NHWC graphs for the pieces of spatial operators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from crosslevel.errors import CrosslevelError, InvalidModelError
from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.inplace import InplacePair, Pieces, pieces, window_rows, window_span
from crosslevel.memory.plan import Plan, PlannedBuffer
from crosslevel.runtime import int8_executor, reference
from crosslevel.runtime.reference import bind_inputs

Array = np.ndarray
_SCRATCH_JUNK = 0xA5  # what a kernel leaves in its scratch: never a plausible tensor
_BLOCK_ELEMENTS = 512  # elementwise pieces: any block size is exact (same positions)


class ArenaViolation(CrosslevelError):
    """Executing a plan read bytes another buffer owns, or left the planned arena."""


@dataclass
class _Arena:
    """The arena bytes, their shadow tags and the plan's buffers by name."""

    data: bytearray
    tags: Array  # int32 per byte: index + 1 of the owning buffer, 0 = free
    buffers: list[PlannedBuffer]
    index: dict[str, int]
    labels: dict[int, str] = field(default_factory=dict)  # finer tags (rows of a ring)

    def new_tag(self, label: str) -> int:
        """A tag of its own for a piece of a buffer (a row in a line buffer)."""
        tag = len(self.buffers) + len(self.labels) + 1
        self.labels[tag] = label
        return tag

    def owner(self, tag: int) -> str:
        if tag in self.labels:
            return self.labels[tag]
        return f"tensor {self.buffers[tag - 1].id!r}" if tag else "no tensor (never written)"

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

    def write(
        self, name: str, value: Array, where: str, start: int = 0, tag: int | None = None
    ) -> None:
        """Write ``value``'s bytes into ``name`` from its byte ``start`` on (tagged as
        ``name``, or with a finer ``tag``)."""
        raw = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
        offset, own = self.span(name, start + raw.size, where)
        tag = own if tag is None else tag
        # np.copyto handles a value that is itself a view of overlapping arena bytes.
        np.copyto(np.frombuffer(self.data, np.uint8, raw.size, offset + start), raw)
        self.tags[offset + start : offset + start + raw.size] = tag

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

    def read(
        self,
        name: str,
        dtype: np.dtype,
        shape: tuple[int, ...],
        where: str,
        start: int = 0,
        tag: int | None = None,
    ) -> Array:
        """A read-only view of ``shape`` from byte ``start`` of ``name``, after checking
        that every byte read still carries ``name``'s tag (or the finer ``tag``)."""
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        offset, own = self.span(name, start + nbytes, where)
        tag = own if tag is None else tag
        offset += start
        owners = self.tags[offset : offset + nbytes]
        wrong = np.flatnonzero(owners != tag)
        if wrong.size:
            what = self.labels.get(tag, f"tensor {name!r}")
            raise ArenaViolation(
                f"{where}: reading {what} at offset {offset}, but byte "
                f"{offset + int(wrong[0])} ({wrong.size} of {nbytes}) is owned by "
                f"{self.owner(int(owners[wrong[0]]))}"
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
    scratch: dict[str, list[PlannedBuffer]] = {}
    for buf in plan.scratch:
        scratch.setdefault(buf.node, []).append(buf)
    pairs = {p.node: p for p in plan.inplace}
    allowed = {(p.input, p.output) for p in plan.inplace}
    stages = {stage["layers"][0]: stage for stage in plan.patch_stages}
    staged = {name for stage in plan.patch_stages for name in stage["layers"]}
    _check_stages(graph, nodes, plan)
    for name, value in bind_inputs(graph, inputs, exact_dtype=True).items():
        arena.write(name, value, "before step 0 (graph input)")
    for step, node in enumerate(nodes):
        where = f"step {step} (node {node.name!r}, {node.op})"
        for buf in scratch.get(node.name, []):  # before the reads: not on an input
            arena.claim_scratch(buf, where)
        if node.name in stages:
            from crosslevel.runtime.arena_stage import run_stage

            run_stage(graph, arena, stages[node.name], where)
        if node.name in staged:  # ran row by row with its stage
            continue
        if node.name in pairs:
            _run_in_pieces(graph, arena, node, pairs[node.name], where)
            continue
        args = [_operand(graph, arena, name, where) if name else None for name in node.inputs]
        out = kernel_for(graph, node)(graph, node, args)
        if out.dtype == np.float64:  # the reference kernels compute in float64
            out = out.astype(np.float32)
        _check_output(graph, node, out)
        arena.check_not_onto_inputs(node, out.nbytes, allowed, where)
        arena.write(node.outputs[0], out, where)
    end = f"after step {len(nodes) - 1} (graph output)"
    return [_read_tensor(graph, arena, name, end).copy() for name in graph.outputs]


def _check_stages(graph: Graph, nodes: list[Node], plan: Plan) -> None:
    """A plan's depth-first stage must be a valid one: a prefix of the order that
    ``stage_ends`` accepts, from the graph input to the output it names."""
    from crosslevel.memory.depth_first import stage_ends

    for stage in plan.patch_stages:
        count = len(stage["layers"])
        names = [n.name for n in nodes[:count]]
        if names != stage["layers"] or count not in stage_ends(graph, nodes):
            raise ArenaViolation(f"the plan's stage {stage['layers'][:3]}... is not a prefix "
                                 "of its order that can run row by row")  # fmt: skip
        if nodes[count - 1].outputs[0] != stage["output"] or stage["source"] != graph.inputs[0]:
            raise ArenaViolation("the plan's stage names the wrong source or output")


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


Kernel = Callable[[Graph, Node, list[Array | None]], Array]


def kernel_for(graph: Graph, node: Node, piece: bool = False) -> Kernel:
    """Reference float kernels for float32 nodes, TFLite's integer kernels otherwise
    (``piece``: a part of the output, exempt from the declared shape)."""
    names = [n for n in (*node.inputs, *node.outputs) if n]
    if all(graph.tensor(n).dtype == "float32" for n in names if graph.tensor(n).data is None):
        return reference.compute_node if piece else reference.run_node
    return int8_executor.run_node


# ----------------------------------------------------------------------------------
# in-place pairs, piece by piece
# ----------------------------------------------------------------------------------
def _run_in_pieces(graph: Graph, arena: _Arena, node: Node, pair: InplacePair, where: str) -> None:
    if pair.output != node.outputs[0] or pair.input not in node.inputs:
        raise ArenaViolation(f"{where}: the plan pairs {pair.input!r} -> {pair.output!r}, "
                             "which are not this node's input and output")  # fmt: skip
    walk = pieces(graph, node, node.inputs.index(pair.input))
    if walk is None or walk.granularity != pair.granularity:
        raise ArenaViolation(f"{where}: node cannot run in place by {pair.granularity}")
    order = range(walk.count - 1, -1, -1) if pair.reverse else range(walk.count)
    if walk.granularity == "element":
        _elementwise_pieces(graph, arena, node, walk, pair.reverse, where)
    elif walk.granularity == "pixel":
        for p in order:
            _pixel(graph, arena, node, p, where)
    else:
        axis = 1 if walk.granularity == "row" else 2
        for r in order:
            _window(graph, arena, node, r, axis, where)


def _elementwise_pieces(
    graph: Graph, arena: _Arena, node: Node, walk: Pieces, reverse: bool, where: str
) -> None:
    """Blocks of elements: each block reads its inputs and writes the same positions, so
    the block size does not change which bytes are read before they are overwritten."""
    out = graph.tensor(node.outputs[0])
    item = np.dtype(out.dtype).itemsize
    starts = list(range(0, walk.count, _BLOCK_ELEMENTS))
    for start in reversed(starts) if reverse else starts:
        n = min(_BLOCK_ELEMENTS, walk.count - start)
        args: list[Array | None] = []
        for name in node.inputs:
            tensor = graph.tensor(name) if name else None
            if tensor is None or tensor.data is not None or node.op == "RESHAPE":
                args.append(None if tensor is None else np.asarray(tensor.data))
                continue
            dtype = np.dtype(tensor.dtype)
            args.append(arena.read(name, dtype, (1, n), where, start * dtype.itemsize))
        if node.op == "RESHAPE":  # a copy of the same bytes
            dtype = np.dtype(graph.tensor(node.inputs[0]).dtype)
            piece = arena.read(node.inputs[0], dtype, (1, n), where, start * item).copy()
        else:
            piece = kernel_for(graph, node, piece=True)(graph, node, args)
        arena.write(node.outputs[0], piece.astype(out.dtype, copy=False), where, start * item)


def _pixel(graph: Graph, arena: _Arena, node: Node, p: int, where: str) -> None:
    """Output pixel ``p`` of a pointwise operator from input pixel ``p``."""
    x = graph.tensor(node.inputs[0])
    channels = x.shape[3]
    dtype = np.dtype(x.dtype)
    pixel = arena.read(
        node.inputs[0], dtype, (1, 1, 1, channels), where, p * channels * dtype.itemsize
    )
    args = [pixel, *(_constant(graph, n) for n in node.inputs[1:])]
    _put_piece(graph, arena, node, kernel_for(graph, node, True)(graph, node, args), p, where)


def _window(graph: Graph, arena: _Arena, node: Node, k: int, axis: int, where: str) -> None:
    """Output row (axis 1) or column (axis 2, for 1-D signals with H = 1) ``k`` of a
    spatial operator from the input rows it needs, with the operator's padding kept only
    where those rows reach past the image."""
    x = graph.tensor(node.inputs[0])
    _, h, w, c = x.shape
    first_of, reach = window_rows(graph, node, axis)
    length, piece = (h, w * c) if axis == 1 else (w, c)
    lo, hi, before, after = window_span(first_of(k), reach, length)
    dtype = np.dtype(x.dtype)
    shape = (1, hi - lo, w, c) if axis == 1 else (1, 1, hi - lo, c)
    rows = arena.read(node.inputs[0], dtype, shape, where, lo * piece * dtype.itemsize)
    window = window_node(node, axis, before, after)
    args = [rows, *(_constant(graph, n) for n in node.inputs[1:])]
    _put_piece(graph, arena, node, kernel_for(graph, window, True)(graph, window, args), k, where)


def window_node(node: Node, axis: int, before: int, after: int) -> Node:
    """``node`` on a window of its input along ``axis``: the padding becomes what the
    window lacks at each end (``before`` rows before it and ``after`` after it fall in
    the image's padding), so the kernel computes exactly the rows of the full operator."""
    if node.op == "PAD":  # pads per dimension: ((before, after), ...)
        per_dim = [tuple(p) for p in node.attrs["pads"]]
        per_dim[axis] = (before, after)
        return replace(node, attrs={**node.attrs, "pads": per_dim})
    pads = list(node.attrs.get("pads", (0, 0, 0, 0)))
    pads[axis - 1], pads[axis + 1] = before, after
    return replace(node, attrs={**node.attrs, "pads": tuple(pads)})


def _constant(graph: Graph, name: str) -> Array | None:
    if not name:
        return None
    tensor = graph.tensor(name)
    if tensor.data is None:
        raise ArenaViolation(f"in-place node reads a second activation {name!r}")
    return np.asarray(tensor.data)


def _put_piece(graph: Graph, arena: _Arena, node: Node, piece: Array, k: int, where: str) -> None:
    """Piece ``k`` goes through the node's piece buffer in the arena, then to its place."""
    out = graph.tensor(node.outputs[0])
    raw = np.ascontiguousarray(piece.astype(out.dtype, copy=False))
    chunk = f"chunk:{node.name}"
    arena.write(chunk, raw, where)
    staged = arena.read(chunk, raw.dtype, raw.shape, where)
    arena.write(node.outputs[0], staged, where, k * raw.nbytes)
