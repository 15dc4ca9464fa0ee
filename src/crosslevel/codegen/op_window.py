"""C for the sliding-window operators: CONV_2D, DEPTHWISE_CONV_2D, AVERAGE/MAX_POOL_2D.

Each emitter checks the window against the declared shapes (the C code trusts them),
lays the weights out for its kernel, and hands a KernelCall to ``pieces.emit_spatial``,
which calls it once or once per in-place piece.

Kernel choice for int8 convolutions: a GEMM (dot products of length k = kh*kw*cin; a
1x1 unpadded convolution needs no im2col patch) when the dot product is long enough to
fill vector registers, else the direct kernel (outer-product updates over output
channels). GEMM_MIN_K was measured on the host (8 since the packed-weight VNNI GEMM:
the VWW 1x1 layer with k = 8 took half the direct kernel's time); ``codegen.tune``
measures per layer. The GEMM kernels also get, for VNNI builds only, the flipped-input
bias and the weights packed for cl_pk16_vnni (guarded const arrays: no flash elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosslevel.codegen.context import EmitContext
from crosslevel.codegen.operands import (
    FLOAT_CLAMPS,
    c_args,
    c_ints,
    const_input,
    element_type,
    float_params,
    folded_bias,
    fused_activation,
    int8_weight_scales,
    int32_bias,
    int_pair,
    output_stage,
    quant_params,
    shape4,
)
from crosslevel.codegen.pieces import KernelCall, Region, SpatialNode, emit_spatial, spatial_node
from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Node
from crosslevel.runtime import int8_kernels as k

GEMM_MIN_K = 8
CONV_CHOICES = ("direct", "gemm")  # what ``codegen.tune`` may force per layer


@dataclass(frozen=True)
class Window:
    """A window over NHWC tensors: shapes, kernel, strides, dilations and padding."""

    ih: int
    iw: int
    cin: int
    oh: int
    ow: int
    cout: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pads: tuple[int, int, int, int]  # top, left, bottom, right

    @property
    def geometry(self) -> tuple[int, ...]:
        """kh, kw, sh, sw, dh, dw: the kernels' window arguments."""
        return self.kh, self.kw, self.sh, self.sw, self.dh, self.dw


def _window(ctx: EmitContext, node: Node, kernel: tuple[int, int], dilated: bool) -> Window:
    """The node's window (dilations only for convolutions), checked against its output."""
    _, ih, iw, cin = shape4(ctx.graph, node.inputs[0], node)
    _, oh, ow, cout = shape4(ctx.graph, node.outputs[0], node)
    sh, sw = int_pair(node.attrs.get("strides"))
    dh, dw = int_pair(node.attrs.get("dilations")) if dilated else (1, 1)
    pt, pl, pb, pr = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    win = Window(ih, iw, cin, oh, ow, cout, kernel[0], kernel[1], sh, sw, dh, dw, (pt, pl, pb, pr))
    _check_window(node, win)
    return win


def _check_window(node: Node, win: Window) -> None:
    """The declared output must be what the window gives: the C code trusts the shapes."""
    if min(win.sh, win.sw, win.dh, win.dw, win.kh, win.kw) < 1 or min(win.pads) < 0:
        raise InvalidModelError(f"node {node.name!r}: non-positive window parameters")
    axes = ((win.ih, win.kh, win.sh, win.dh, win.oh), (win.iw, win.kw, win.sw, win.dw, win.ow))
    for i, (size, kernel, stride, dilation, out) in enumerate(axes):
        span = dilation * (kernel - 1) + 1
        if (size + win.pads[i] + win.pads[i + 2] - span) // stride + 1 != out:
            raise InvalidModelError(
                f"node {node.name!r} ({node.op}): output {(win.oh, win.ow)} does not match "
                "its window"
            )


def node_window(ctx: EmitContext, node: Node) -> Window:
    """The window of a convolution, depthwise convolution or pooling node."""
    if node.op == "CONV_2D" or node.op == "DEPTHWISE_CONV_2D":
        w = const_input(ctx.graph, node, 1)
        if w is None or w.ndim != 4:
            raise InvalidModelError(f"node {node.name!r}: weights are not OHWI")
        return _window(ctx, node, (w.shape[1], w.shape[2]), dilated=True)
    return _window(ctx, node, int_pair(node.attrs.get("kernel")), dilated=False)


def _spatial(ctx: EmitContext, node: Node, win: Window) -> SpatialNode:
    ins, outs = (win.ih, win.iw, win.cin), (win.oh, win.ow, win.cout)
    return spatial_node(ctx, node, ins, outs, (win.sh, win.sw), win.pads[:2])


# ----------------------------------------------------------------------------------
# CONV_2D
# ----------------------------------------------------------------------------------
def emit_conv(ctx: EmitContext, node: Node) -> list[str]:
    dtype = element_type(ctx.graph, node)
    _, _, _, cin = shape4(ctx.graph, node.inputs[0], node)
    _, _, _, cout = shape4(ctx.graph, node.outputs[0], node)
    w = const_input(ctx.graph, node, 1)
    if w is None or w.ndim != 4 or w.shape[0] != cout or w.shape[3] != cin:
        raise UnsupportedOperatorError(node.op, node.name, "only ungrouped OHWI convolutions")
    win = _window(ctx, node, (w.shape[1], w.shape[2]), dilated=True)
    spatial = _spatial(ctx, node, win)
    if dtype == "float32":
        return _conv_f32(ctx, node, w, win, spatial)
    return _conv_s8(ctx, node, w, win, spatial)


def _conv_f32(
    ctx: EmitContext, node: Node, w: np.ndarray, win: Window, spatial: SpatialNode
) -> list[str]:
    wt, b, lo, hi = float_params(ctx, node, w.transpose(1, 2, 3, 0).reshape(-1))  # HWIO
    ctx.variants[node.name] = "direct"

    def call(r: Region) -> list[str]:
        return [
            f"{r.kernel}conv_f32({r.x}, {c_args(r.ih, r.iw, win.cin)}, {wt}, {b},",
            f"            {c_args(*win.geometry, r.pad_top, r.pad_left)},",
            f"            {r.y}, {c_args(r.oh, r.ow, win.cout)}, {lo}, {hi});",
        ]

    return emit_spatial(ctx, node, call, spatial)


def _conv_s8(
    ctx: EmitContext, node: Node, w: np.ndarray, win: Window, spatial: SpatialNode
) -> list[str]:
    _, in_zp = quant_params(ctx.graph, node.inputs[0], node)
    mult, shift, tail = output_stage(ctx, node, int8_weight_scales(ctx.graph, node), win.cout)
    stage = f"{mult}, {shift}, {tail}"
    bias = int32_bias(ctx.graph, node, win.cout)
    ctx.need_acc(win.cout)
    variant = _conv_variant(ctx, node, win)
    ctx.variants[node.name] = variant
    if variant == "direct":
        call = _direct_s8(ctx, node, w, bias, in_zp, stage, win)
    else:
        call = _gemm_s8(ctx, node, w, bias, in_zp, stage, win, variant == "1x1-gemm")
    return emit_spatial(ctx, node, call, spatial)


def _direct_s8(
    ctx: EmitContext, node: Node, w: np.ndarray, bias: np.ndarray, in_zp: int, stage: str,
    win: Window,
) -> KernelCall:  # fmt: skip
    """The direct kernel: HWIO weights, the input offset added per MAC."""
    wt = ctx.const_array(f"w:{node.name}", "int8_t", w.transpose(1, 2, 3, 0).reshape(-1))
    ba = ctx.const_array(f"b:{node.name}", "int32_t", bias)

    def call(r: Region) -> list[str]:
        return [
            f"{r.kernel}conv_s8_direct({r.x}, {c_args(r.ih, r.iw, win.cin)}, {wt}, {ba},",
            f"                  {c_args(*win.geometry, r.pad_top, r.pad_left)},",
            f"                  {r.y}, {c_args(r.oh, r.ow, win.cout, -in_zp)}, {stage}, acc);",
        ]

    return call


def _gemm_s8(
    ctx: EmitContext, node: Node, w: np.ndarray, bias: np.ndarray, in_zp: int, stage: str,
    win: Window, pointwise: bool,
) -> KernelCall:  # fmt: skip
    """The GEMM kernels: OHWI weight rows (the im2col column order) and the input offset
    folded into the bias; a pointwise convolution reads its pixels without a patch."""
    rows = w.reshape(win.cout, win.kh * win.kw * win.cin).astype(np.int64)
    wa = ctx.const_array(f"w:{node.name}", "int8_t", rows)
    folded = folded_bias(bias, rows, in_zp)
    ba = ctx.const_array(f"bf:{node.name}", "int32_t", folded)
    # the extra operands of the VNNI kernels: flipped-input bias, packed weights
    vnni = f"{_flipped_input_bias(ctx, node, folded, rows)}, {_packed_weights(ctx, node, rows)}"
    biases = f"{ba}, {vnni}"
    if pointwise:

        def call_1x1(r: Region) -> list[str]:
            return [
                f"{r.kernel}conv_s8_1x1({r.x}, {c_args(r.ih, r.iw, win.cin)}, {wa}, {biases}, "
                f"{c_args(win.sh, win.sw)},",
                f"               {r.y}, {c_args(r.oh, r.ow, win.cout)}, {stage}, acc);",
            ]

        return call_1x1
    ctx.need_col(win.kh * win.kw * win.cin)

    def call_im2col(r: Region) -> list[str]:
        return [
            f"{r.kernel}conv_s8_im2col({r.x}, {c_args(r.ih, r.iw, win.cin)}, {wa}, {biases},",
            f"                  {c_args(*win.geometry, r.pad_top, r.pad_left)},",
            f"                  {r.y}, {c_args(r.oh, r.ow, win.cout, in_zp)}, {stage},",
            "                  acc, col);",
        ]

    return call_im2col


def _flipped_input_bias(ctx: EmitContext, node: Node, folded: np.ndarray, rows: np.ndarray) -> str:
    """The VNNI GEMM's bias when its inputs are flipped to unsigned (x + 128):
    folded - 128 * sum(w) per channel, wrapped to int32 as the kernels' adds wrap. Made
    here once rather than per kernel call (a whole weight pass: as long as the GEMM of a
    few pixels), so even one-pixel pieces and short stage rows take the flipped-input
    path. Only VNNI builds store it (CL_IF_VNNI: NULL elsewhere)."""
    flipped = (folded - 128 * rows.sum(axis=1)).astype(np.int32).astype(np.int64)
    return f"CL_IF_VNNI({ctx.const_array(f'bx:{node.name}', 'int32_t', flipped, 'CL_SIMD_VNNI')})"


def _packed_weights(ctx: EmitContext, node: Node, rows: np.ndarray) -> str:
    """The weight rows [cout][k] in the layout of the VNNI packed GEMM (cl_pk16_vnni): per
    block of 16 output channels and group of 4 inputs, the 4 inputs of the 16 channels;
    zero rows pad the last block and zero columns pad k to a multiple of 4 (cl_pk_len).
    Only VNNI builds store it (CL_IF_VNNI: NULL elsewhere)."""
    cout, k = rows.shape
    padded = np.zeros((-(-cout // 16) * 16, -(-k // 4) * 4), dtype=np.int64)
    padded[:cout, :k] = rows
    packed = padded.reshape(padded.shape[0] // 16, 16, -1, 4).transpose(0, 2, 1, 3)
    return f"CL_IF_VNNI({ctx.const_array(f'wp:{node.name}', 'int8_t', packed, 'CL_SIMD_VNNI')})"


def _conv_variant(ctx: EmitContext, node: Node, win: Window) -> str:
    """The int8 kernel of a convolution: "direct", "1x1-gemm" or "im2col-gemm"; the
    tuned choice ("direct" | "gemm") when ``generate_c`` was given one, else GEMM_MIN_K."""
    pointwise = win.kh == win.kw == 1 and win.pads == (0, 0, 0, 0)
    pair = ctx.inplace_pairs.get(node.name)
    if pointwise and pair is not None and pair.granularity != "pixel":
        pointwise = False  # row pieces are cut by the padding arguments: im2col has them
    gemm = "1x1-gemm" if pointwise else "im2col-gemm"
    forced = ctx.forced_variants.get(node.name)
    if forced is not None:
        if forced not in CONV_CHOICES:
            raise ValueError(f"unknown convolution variant {forced!r}")
        return gemm if forced == "gemm" else "direct"
    return gemm if win.kh * win.kw * win.cin >= GEMM_MIN_K else "direct"


# ----------------------------------------------------------------------------------
# DEPTHWISE_CONV_2D
# ----------------------------------------------------------------------------------
def emit_depthwise(ctx: EmitContext, node: Node) -> list[str]:
    dtype = element_type(ctx.graph, node)
    _, _, _, cin = shape4(ctx.graph, node.inputs[0], node)
    _, _, _, cout = shape4(ctx.graph, node.outputs[0], node)
    mul = int(node.attrs.get("depth_multiplier", 1))
    w = const_input(ctx.graph, node, 1)
    if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[3] != cout or cout != cin * mul:
        raise InvalidModelError(f"node {node.name!r}: depthwise weights do not fit its tensors")
    win = _window(ctx, node, (w.shape[1], w.shape[2]), dilated=True)
    spatial = _spatial(ctx, node, win)
    ctx.variants[node.name] = "depthwise" if mul == 1 else "depthwise-multiplier"
    input_offset: tuple[int, ...] = ()  # the int8 kernel adds -zp_in to each input value
    if dtype == "float32":
        wa, b, lo, hi = float_params(ctx, node, w.reshape(-1))
        fn, tail = "dwconv_f32", f"{lo}, {hi}"
    else:
        _, in_zp = quant_params(ctx.graph, node.inputs[0], node)
        mult, shift, zp_range = output_stage(ctx, node, int8_weight_scales(ctx.graph, node), cout)
        wa = ctx.const_array(f"w:{node.name}", "int8_t", w.reshape(-1))
        b = ctx.const_array(f"b:{node.name}", "int32_t", int32_bias(ctx.graph, node, cout))
        ctx.need_acc(cout)
        fn, tail = "dwconv_s8", f"{mult}, {shift}, {zp_range}, acc"
        input_offset = (-in_zp,)

    def call(r: Region) -> list[str]:
        indent = " " * (len(r.kernel + fn) + 1)
        return [
            f"{r.kernel}{fn}({r.x}, {c_args(r.ih, r.iw, cin, mul)}, {wa}, {b},",
            f"{indent}{c_args(*win.geometry, r.pad_top, r.pad_left)},",
            f"{indent}{r.y}, {c_args(r.oh, r.ow, *input_offset)}, {tail});",
        ]

    return emit_spatial(ctx, node, call, spatial)


# ----------------------------------------------------------------------------------
# AVERAGE_POOL_2D, MAX_POOL_2D
# ----------------------------------------------------------------------------------
def emit_pool(ctx: EmitContext, node: Node) -> list[str]:
    dtype = element_type(ctx.graph, node)
    _, _, _, ch = shape4(ctx.graph, node.inputs[0], node)
    _, _, _, och = shape4(ctx.graph, node.outputs[0], node)
    kernel = int_pair(node.attrs.get("kernel"))
    if och != ch:
        raise InvalidModelError(f"node {node.name!r}: pooling changes the channel count")
    win = _window(ctx, node, kernel, dilated=False)
    spatial = _spatial(ctx, node, win)
    kind = "max" if node.op == "MAX_POOL_2D" else "avg"
    ctx.variants[node.name] = f"{kind}pool"
    if dtype == "float32":
        lo, hi = FLOAT_CLAMPS[fused_activation(node)]
        fn, tail = f"{kind}pool_f32", f"{lo}, {hi}"
    else:
        out_scale, out_zp = quant_params(ctx.graph, node.outputs[0], node)
        quant_params(ctx.graph, node.inputs[0], node)  # the input must be per-tensor too
        lo_i, hi_i = k.activation_range(fused_activation(node), out_scale, out_zp)
        fn, tail = f"{kind}pool_s8", c_ints(lo_i, hi_i) + (", acc" if kind == "avg" else "")
        if kind == "avg":
            ctx.need_acc(ch)

    def call(r: Region) -> list[str]:
        geometry = c_args(r.ih, r.iw, ch, win.kh, win.kw, win.sh, win.sw, r.pad_top, r.pad_left)
        return [f"{r.kernel}{fn}({r.x}, {geometry}, {r.y}, {c_args(r.oh, r.ow)}, {tail});"]

    return emit_spatial(ctx, node, call, spatial)
