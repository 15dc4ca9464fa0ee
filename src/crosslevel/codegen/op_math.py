"""C for FULLY_CONNECTED, MEAN (over H and W), ADD and SOFTMAX.

These run over whole tensors; only ADD follows an in-place pair, which needs no chunk
buffer: element i is read before it is written, so the kernel only has to walk in the
direction the plan says.
"""

from __future__ import annotations

import numpy as np

from crosslevel.codegen.context import EmitContext
from crosslevel.codegen.operands import (
    FLOAT_CLAMPS,
    c_ints,
    const_input,
    element_type,
    float_params,
    folded_bias,
    fused_activation,
    int8_weight_scales,
    int32_bias,
    output_stage,
    quant_params,
    shape4,
)
from crosslevel.codegen.pieces import inplace_label
from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Node
from crosslevel.runtime import int8_kernels as k


def emit_fully_connected(ctx: EmitContext, node: Node) -> list[str]:
    """``rows`` input rows of length ``kk`` times the (nout, kk) weights."""
    g = ctx.graph
    dtype = element_type(g, node)
    w = const_input(g, node, 1)
    xt, yt = g.tensor(node.inputs[0]), g.tensor(node.outputs[0])
    if w is None or w.ndim != 2 or xt.num_elements % w.shape[1]:
        raise InvalidModelError(f"node {node.name!r}: weights do not fit the input")
    nout, kk = w.shape
    rows = xt.num_elements // kk
    if yt.num_elements != rows * nout:
        raise InvalidModelError(f"node {node.name!r}: output does not fit the weights")
    x, y = ctx.tensor_ptr(node.inputs[0], node), ctx.tensor_ptr(node.outputs[0], node)
    ctx.variants[node.name] = "gemv"
    if dtype == "float32":
        wt, b, lo, hi = float_params(ctx, node, np.ascontiguousarray(w.T).reshape(-1))
        return [f"cl_fc_f32({x}, {c_ints(rows, kk)}, {wt}, {b}, {y}, {nout}, {lo}, {hi});"]
    scales = int8_weight_scales(g, node)
    _, in_zp = quant_params(g, node.inputs[0], node)
    mult, shift, tail = output_stage(ctx, node, scales, nout)
    folded = folded_bias(int32_bias(g, node, nout), w, in_zp)
    wa = ctx.const_array(f"w:{node.name}", "int8_t", w.reshape(-1))
    ba = ctx.const_array(f"bf:{node.name}", "int32_t", folded)
    ctx.need_acc(nout)
    return [
        f"cl_fc_s8({x}, {c_ints(rows, kk)}, {wa}, {ba}, {y}, {nout}, {mult}, {shift}, {tail}, acc);"
    ]


def emit_mean(ctx: EmitContext, node: Node) -> list[str]:
    """The global average over H and W of a batch-1 NHWC tensor."""
    g = ctx.graph
    dtype = element_type(g, node)
    batch, ih, iw, ch = shape4(g, node.inputs[0], node)
    axes = sorted({int(a) % 4 for a in node.attrs.get("axes", ())})
    if axes != [1, 2] or g.tensor(node.outputs[0]).num_elements != batch * ch:
        raise UnsupportedOperatorError(node.op, node.name, f"MEAN over axes {axes} (only H, W)")
    if batch != 1:
        raise UnsupportedOperatorError(node.op, node.name, "MEAN with batch > 1")
    x, y = ctx.tensor_ptr(node.inputs[0], node), ctx.tensor_ptr(node.outputs[0], node)
    ctx.variants[node.name] = "mean"
    count = ih * iw
    if dtype == "float32":
        return [f"cl_mean_hw_f32({x}, {c_ints(count, ch)}, {y});"]
    si, zi = quant_params(g, node.inputs[0], node)
    so, zo = quant_params(g, node.outputs[0], node)
    m, s = _mean_multiplier(si, so, count)
    ctx.need_acc(ch)
    return [f"cl_mean_hw_s8({x}, {c_ints(count, ch)}, {y}, {c_ints(zi, m, s, zo)}, acc);"]


def _mean_multiplier(in_scale: float, out_scale: float, count: int) -> tuple[int, int]:
    """(multiplier, shift) of in_scale / (out_scale * count), computed as ``k.mean`` does:
    1/count is folded into the multiplier with up to 32 extra bits of precision."""
    real = np.float64(np.float32(in_scale)) / np.float64(np.float32(out_scale))
    mult, shift = k.quantize_multiplier(real)
    m, s = int(mult[0]), int(shift[0])
    extra = min(count.bit_length() - 1, 32, 31 + s)
    return (m << extra) // count, s - extra


def emit_add(ctx: EmitContext, node: Node) -> list[str]:
    """Element-wise sum of two tensors of one size (no broadcasting)."""
    g = ctx.graph
    dtype = element_type(g, node)
    a, b, out = (g.tensor(n) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    if not (a.num_elements == b.num_elements == out.num_elements):
        raise UnsupportedOperatorError(node.op, node.name, "broadcasting ADD")
    if b.dtype != a.dtype:
        raise UnsupportedOperatorError(node.op, node.name, "mixed element types")
    xa, xb, y = (ctx.tensor_ptr(n, node) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    ctx.variants[node.name] = "elementwise"
    n = out.num_elements
    pair = ctx.inplace_pairs.get(node.name)
    # in place: an output above its input (negative delta) is walked last element first
    rev = int(pair is not None and pair.reverse)
    if pair is not None:
        ctx.variants[node.name] += " " + inplace_label("element", bool(rev))
    if dtype == "float32":
        lo, hi = FLOAT_CLAMPS[fused_activation(node)]
        return [f"cl_add_f32({xa}, {xb}, {y}, {n}L, {lo}, {hi}, {rev});"]
    s1, z1 = quant_params(g, node.inputs[0], node)
    s2, z2 = quant_params(g, node.inputs[1], node)
    so, zo = quant_params(g, node.outputs[0], node)
    p = k.add_params(s1, z1, s2, z2, so, zo, fused_activation(node))
    # the field order of cl_add_params in cl_kernels.h
    fields = [p.input1_offset, p.input2_offset, p.output_offset, p.left_shift,
              p.input1_multiplier[0], p.input1_shift[0], p.input2_multiplier[0],
              p.input2_shift[0], p.output_multiplier[0], p.output_shift[0], p.act_min,
              p.act_max]  # fmt: skip
    return [
        "{",
        f"  static const cl_add_params p = {{{c_ints(*fields)}}};",
        f"  cl_add_s8({xa}, {xb}, {y}, {n}L, &p, {rev});",
        "}",
    ]


def emit_softmax(ctx: EmitContext, node: Node) -> list[str]:
    """Softmax over the last axis; int8 only with TFLite's fixed output quantization."""
    g = ctx.graph
    dtype = element_type(g, node)
    xt = g.tensor(node.inputs[0])
    if not xt.shape or int(node.attrs.get("axis", -1)) % len(xt.shape) != len(xt.shape) - 1:
        raise UnsupportedOperatorError(node.op, node.name, "softmax runs on the last axis only")
    n = xt.shape[-1]
    rows = xt.num_elements // max(n, 1)
    x, y = ctx.tensor_ptr(node.inputs[0], node), ctx.tensor_ptr(node.outputs[0], node)
    beta = float(node.attrs.get("beta", 1.0))
    ctx.variants[node.name] = "softmax"
    if dtype == "float32":
        return [f"cl_softmax_f32({x}, {y}, {c_ints(rows, n)}, {float(np.float32(beta)).hex()}f);"]
    in_scale, _ = quant_params(g, node.inputs[0], node)
    out_scale, out_zp = quant_params(g, node.outputs[0], node)
    if out_zp != -128 or np.float32(out_scale) != np.float32(1.0 / 256):
        raise UnsupportedOperatorError(
            node.op, node.name, "int8 softmax needs output scale 1/256 and zero point -128"
        )
    p = k.softmax_params(beta, in_scale)
    args = c_ints(rows, n, p.input_multiplier, p.input_left_shift, p.diff_min)
    return [f"cl_softmax_s8({x}, {y}, {args});"]
