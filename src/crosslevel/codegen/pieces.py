"""Spatial kernel calls, whole or in pieces that follow an in-place pair of the plan.

An in-place pair (``memory.inplace``) lets an operator's output overwrite the part of its
input that no later output piece reads. The C for such a node computes one output piece
(a row, a column of a 1-D signal, or a pixel of a pointwise operator) at a time into the
node's small chunk buffer, then copies it over the consumed input; the plan says whether
the pieces are walked forward or backward so that no piece overwrites input still needed.

A piece is computed by calling the ordinary kernel on a shifted window: output row ``k``
is row 0 of a window whose top padding is ``pad_top - k * stride`` (a negative padding
starts the window ``k * stride - pad_top`` rows into the input), so the kernels need no
piece-aware variant.

A step of a depth-first stage (``codegen.stages``) is a piece too: one output row, made
by the row twin of the kernel (``cl_stages.h``, prefix ``cl_row_``) from row pointers,
because the stage's input rows sit in a line buffer where they need not be adjacent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from crosslevel.codegen.context import CTYPES, EmitContext
from crosslevel.ir.graph import DTYPE_BYTES, Node
from crosslevel.memory.inplace import InplacePair
from crosslevel.memory.plan import InvalidPlanError, PlannedBuffer


@dataclass(frozen=True)
class Region:
    """The geometry arguments of one spatial kernel call. Paddings are integers, or C
    expressions of the piece index ``k`` when the call computes one piece. ``kernel``
    prefixes the kernel's name: "cl_row_" when ``x`` names an array of row pointers."""

    x: str
    ih: int
    iw: int
    pad_top: int | str
    pad_left: int | str
    y: str
    oh: int
    ow: int
    kernel: str = "cl_"


KernelCall = Callable[[Region], list[str]]  # the C lines calling a kernel on a region


@dataclass(frozen=True)
class SpatialNode:
    """A node's NHWC input and output in the arena and its window's stride and padding:
    what cutting its output into pieces needs."""

    x: str
    y: str
    ih: int
    iw: int
    cin: int
    oh: int
    ow: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    row_bytes: int  # one output row
    pixel_bytes: int  # one output pixel

    def whole(self) -> Region:
        return Region(
            self.x, self.ih, self.iw, self.pad_top, self.pad_left, self.y, self.oh, self.ow
        )


def spatial_node(
    ctx: EmitContext,
    node: Node,
    ins: tuple[int, int, int],
    outs: tuple[int, int, int],
    strides: tuple[int, int],
    pads: tuple[int, int],
) -> SpatialNode:
    """The SpatialNode of ``node`` from its (H, W, C) shapes, strides and (top, left) pads."""
    esize = DTYPE_BYTES[ctx.graph.tensor(node.outputs[0]).dtype]
    x, y = ctx.tensor_ptr(node.inputs[0], node), ctx.tensor_ptr(node.outputs[0], node)
    ih, iw, cin = ins
    oh, ow, cout = outs
    return SpatialNode(x, y, ih, iw, cin, oh, ow, strides[0], strides[1], pads[0], pads[1],
                       ow * cout * esize, cout * esize)  # fmt: skip


def emit_spatial(ctx: EmitContext, node: Node, call: KernelCall, s: SpatialNode) -> list[str]:
    """One kernel call over the whole tensors, or (in-place pair) a loop over the pieces,
    or (the step of a depth-first stage being emitted) the call of ``ctx.row_step``."""
    if ctx.row_step is not None:
        return call(ctx.row_step)
    pair = ctx.inplace_pairs.get(node.name)
    if pair is None:
        return call(s.whole())
    if pair.input != node.inputs[0]:
        raise InvalidPlanError(f"plan: in-place pair of {node.name!r} is not on its input 0")
    count, piece_bytes, piece = _piece_region(node, pair, s)
    chunk = chunk_buffer(ctx, node, piece_bytes)
    ctype = CTYPES[ctx.graph.tensor(node.outputs[0]).dtype]
    chunk_ptr = f"(({ctype} *)(cl_arena + {chunk.offset}))"
    ctx.variants[node.name] += " " + inplace_label(pair.granularity, pair.reverse)
    return [
        f"for (int {piece_loop(pair, count)}) {{",
        *["  " + line for line in call(piece(chunk_ptr))],
        f"  memcpy((uint8_t *){s.y} + (size_t)k * {piece_bytes}, {chunk_ptr}, {piece_bytes});",
        "}",
    ]


def _piece_region(
    node: Node, pair: InplacePair, s: SpatialNode
) -> tuple[int, int, Callable[[str], Region]]:
    """(piece count, bytes per output piece, the region of piece ``k`` written to a
    given output pointer) for the pair's granularity."""
    if pair.granularity == "row":
        top = f"{s.pad_top} - k * {s.stride_h}"
        return s.oh, s.row_bytes, lambda y: Region(s.x, s.ih, s.iw, top, s.pad_left, y, 1, s.ow)
    if pair.granularity == "column" and s.oh == 1:
        left = f"{s.pad_left} - k * {s.stride_w}"
        return s.ow, s.pixel_bytes, lambda y: Region(s.x, s.ih, s.iw, s.pad_top, left, y, 1, 1)
    # pixel k as a 1x1 window at input pixel k: right for pointwise (1x1, unpadded) windows
    # only, the ones memory.inplace gives pixel pairs; the window is not re-checked here
    same_grid = (s.ih, s.iw) == (s.oh, s.ow) and s.stride_h == s.stride_w == 1
    if pair.granularity == "pixel" and same_grid:
        pixel = f"({s.x} + (size_t)k * {s.cin})"
        return s.oh * s.ow, s.pixel_bytes, lambda y: Region(pixel, 1, 1, 0, 0, y, 1, 1)
    raise InvalidPlanError(
        f"plan: in-place {pair.granularity} pieces of {node.name!r} ({node.op}) are not "
        "supported by the C generator"
    )


def chunk_buffer(ctx: EmitContext, node: Node, piece_bytes: int) -> PlannedBuffer:
    """The plan's chunk buffer of an in-place node; it must hold one output piece."""
    chunk = ctx.chunk_buffers.get(node.name)
    if chunk is None or chunk.size_bytes < piece_bytes:
        raise InvalidPlanError(f"plan: node {node.name!r} lacks a {piece_bytes}-byte chunk buffer")
    return chunk


def piece_loop(pair: InplacePair, count: int) -> str:
    """The ``for`` header over piece index ``k``, in the direction the plan walks."""
    return f"k = {count - 1}; k >= 0; --k" if pair.reverse else f"k = 0; k < {count}; ++k"


def inplace_label(granularity: str, reverse: bool) -> str:
    """The suffix of a variant name that reports how the node runs in place."""
    return f"in-place-{granularity}" + ("-reverse" if reverse else "")
