"""C for the operators that only move bytes: RESHAPE, PAD, CONCATENATION.

They copy raw elements, so int8 tensors must keep their quantization (TFLite Micro
copies raw values too); the pad value is quantized here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosslevel.codegen.context import EmitContext
from crosslevel.codegen.operands import c_ints, element_type, quant_params
from crosslevel.codegen.pieces import chunk_buffer, inplace_label, piece_loop
from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Node
from crosslevel.memory.plan import InvalidPlanError
from crosslevel.runtime import int8_kernels as k


def emit_reshape(ctx: EmitContext, node: Node) -> list[str]:
    g = ctx.graph
    xt, yt = g.tensor(node.inputs[0]), g.tensor(node.outputs[0])
    if xt.nbytes != yt.nbytes or xt.dtype != yt.dtype:
        raise InvalidModelError(f"node {node.name!r} (RESHAPE) changes the size of its tensor")
    ctx.variants[node.name] = "copy"
    x, y = ctx.tensor_ptr(node.inputs[0], node), ctx.tensor_ptr(node.outputs[0], node)
    if x == y:  # the plan put both at one offset (in place): nothing to move
        return ["/* same bytes as the input */"]
    return [f"memmove({y}, {x}, {yt.nbytes}); /* may overlap in an in-place plan */"]


# ----------------------------------------------------------------------------------
# PAD
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Padding:
    """A PAD as the rank-4 arguments of ``cl_pad`` (leading axes of size 1 added)."""

    in_shape: list[int]
    before: list[int]
    out_shape: list[int]
    esize: int
    fill_decl: str  # the C declaration of ``fill``: one element of the pad value


def emit_pad(ctx: EmitContext, node: Node) -> list[str]:
    pad = _padding(ctx, node)
    ctx.variants[node.name] = "copy"
    x, y = ctx.tensor_ptr(node.inputs[0], node), ctx.tensor_ptr(node.outputs[0], node)
    if node.name in ctx.inplace_pairs:
        return _pad_in_place(ctx, node, x, y, pad)
    return [
        "{",
        f"  static const int in_shape[4] = {{{c_ints(*pad.in_shape)}}};",
        f"  static const int before[4] = {{{c_ints(*pad.before)}}};",
        f"  static const int out_shape[4] = {{{c_ints(*pad.out_shape)}}};",
        pad.fill_decl,
        f"  cl_pad((const uint8_t *){x}, in_shape, before, out_shape, {pad.esize}, fill,",
        f"         (uint8_t *){y});",
        "}",
    ]


def _padding(ctx: EmitContext, node: Node) -> _Padding:
    g = ctx.graph
    dtype = element_type(g, node)
    xt, yt = g.tensor(node.inputs[0]), g.tensor(node.outputs[0])
    pads = [(int(b), int(a)) for b, a in node.attrs.get("pads", ())]
    if len(pads) != len(xt.shape) or len(xt.shape) > 4:
        raise UnsupportedOperatorError(node.op, node.name, "PAD needs one pair per axis, rank <= 4")
    lead = 4 - len(xt.shape)
    in_shape = [1] * lead + list(xt.shape)
    before = [0] * lead + [b for b, _ in pads]
    out_shape = [1] * lead + [d + b + a for d, (b, a) in zip(xt.shape, pads, strict=True)]
    if tuple(out_shape[lead:]) != yt.shape or min(before) < 0:
        raise InvalidModelError(f"node {node.name!r} (PAD): output shape does not fit the pads")
    value = float(node.attrs.get("value", 0.0))
    if dtype == "float32":
        fill = np.frombuffer(np.float32(value).tobytes(), dtype=np.uint8)
    else:
        scale, zp = quant_params(g, node.outputs[0], node)
        q = zp if value == 0.0 else k.quantize_scalar(value, scale, zp)
        fill = np.frombuffer(np.int8(np.clip(q, -128, 127)).tobytes(), dtype=np.uint8)
    esize = np.dtype(dtype).itemsize
    fill_decl = f"  static const uint8_t fill[{esize}] = {{{c_ints(*fill.tolist())}}};"
    return _Padding(in_shape, before, out_shape, esize, fill_decl)


def _pad_in_place(ctx: EmitContext, node: Node, x: str, y: str, pad: _Padding) -> list[str]:
    """PAD following an in-place pair: output row (or, for H = 1, column) k is padded
    from input row k - before into the chunk buffer, then copied over the consumed input;
    rows that are all padding pad an empty input piece (``no_piece``)."""
    pair = ctx.inplace_pairs[node.name]
    in_shape, before, out_shape = pad.in_shape, pad.before, pad.out_shape
    if in_shape[0] != 1 or before[0] != 0:
        raise InvalidPlanError(f"plan: in-place PAD {node.name!r} pads the batch axis")
    if pair.granularity == "row":
        axis = 1
    elif pair.granularity == "column" and in_shape[1] == out_shape[1] == 1:
        axis = 2
    else:
        raise InvalidPlanError(f"plan: in-place {pair.granularity} PAD {node.name!r}")
    piece_in = [1, 1, *in_shape[2:]] if axis == 1 else [1, 1, 1, in_shape[3]]
    piece_out = [1, 1, *out_shape[2:]] if axis == 1 else [1, 1, 1, out_shape[3]]
    piece_before = [0, 0, *before[2:]] if axis == 1 else [0, 0, 0, before[3]]
    in_bytes = int(np.prod(piece_in)) * pad.esize
    piece = int(np.prod(piece_out)) * pad.esize
    chunk = chunk_buffer(ctx, node, piece)
    ctx.variants[node.name] = "copy " + inplace_label(pair.granularity, pair.reverse)
    return [
        "{",
        f"  static const int in_piece[4] = {{{c_ints(*piece_in)}}};",
        "  static const int no_piece[4] = {0, 1, 1, 1};",
        f"  static const int before[4] = {{{c_ints(*piece_before)}}};",
        f"  static const int out_piece[4] = {{{c_ints(*piece_out)}}};",
        pad.fill_decl,
        f"  for (int {piece_loop(pair, out_shape[axis])}) {{",
        f"    int src = k - {before[axis]};",
        f"    int inside = src >= 0 && src < {in_shape[axis]};",
        f"    cl_pad((const uint8_t *){x} + (size_t)(inside ? src : 0) * {in_bytes},",
        "           inside ? in_piece : no_piece, before, out_piece, "
        f"{pad.esize}, fill, cl_arena + {chunk.offset});",
        f"    memcpy((uint8_t *){y} + (size_t)k * {piece}, cl_arena + {chunk.offset}, {piece});",
        "  }",
        "}",
    ]


# ----------------------------------------------------------------------------------
# CONCATENATION
# ----------------------------------------------------------------------------------
def emit_concat(ctx: EmitContext, node: Node) -> list[str]:
    """Each input copied as ``outer`` blocks into its byte range of each output block."""
    g = ctx.graph
    dtype = element_type(g, node)
    if str(node.attrs.get("activation", "NONE")) != "NONE":
        raise UnsupportedOperatorError(node.op, node.name, "fused activation on CONCATENATION")
    yt = g.tensor(node.outputs[0])
    axis = int(node.attrs.get("axis", 0)) % len(yt.shape)
    parts = [g.tensor(n) for n in node.inputs if n]
    esize = np.dtype(dtype).itemsize
    outer = int(np.prod(yt.shape[:axis], dtype=np.int64))
    out_block = int(np.prod(yt.shape[axis:], dtype=np.int64)) * esize
    if dtype == "int8":
        want = quant_params(g, node.outputs[0], node)
        if any(quant_params(g, p.name, node) != want for p in parts):
            # TFLM copies raw values; differing quantization would need a requantize
            raise UnsupportedOperatorError(node.op, node.name, "inputs quantized differently")
    lines, at = [], 0
    for part in parts:
        if part.dtype != dtype or len(part.shape) != len(yt.shape):
            raise InvalidModelError(f"node {node.name!r}: concatenation inputs do not fit")
        block = int(np.prod(part.shape[axis:], dtype=np.int64)) * esize
        x = ctx.tensor_ptr(part.name, node)
        lines.append(
            f"cl_concat_part((const uint8_t *){x}, {outer}L, {block}L, "
            f"(uint8_t *){ctx.tensor_ptr(yt.name, node)}, {out_block}L, {at}L);"
        )
        at += block
    if at != out_block:
        raise InvalidModelError(f"node {node.name!r}: concatenation sizes do not add up")
    ctx.variants[node.name] = "copy"
    return lines
