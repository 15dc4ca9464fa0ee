"""Model-specific C from an NHWC IR graph and a memory plan (``crosslevel.plan/1``).

Why generated code: TFLite Micro interprets the flatbuffer with generic kernels and
plans its arena at run time; the generated library instead calls kernels with constant
shapes (so the compiler specializes and vectorizes them), keeps weights as ``const``
arrays (flash) already re-laid out for the chosen kernel variant, folds the input zero
point into the bias where it can, and addresses every activation at the offset the memory
level planned inside one static arena of exactly the planned size (no malloc).

All quantization constants (multipliers, shifts, clamps) are computed here with the same
functions the bit-exact NumPy executor uses (``runtime.int8_kernels``), so the C code only
does the run-time integer arithmetic. A graph the generator cannot compile fails with
UnsupportedOperatorError naming the operator and the node, before any C is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import DTYPE_BYTES, Graph, Node, Tensor
from crosslevel.memory.plan import InvalidPlanError, Plan
from crosslevel.runtime import int8_kernels as k

KERNEL_HEADER = "cl_kernels.h"
CTYPES = {"int8": "int8_t", "float32": "float"}
INT8_ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
FLOAT_CLAMPS = {
    "NONE": ("-FLT_MAX", "FLT_MAX"),
    "RELU": ("0.0f", "FLT_MAX"),
    "RELU6": ("0.0f", "6.0f"),
    "RELU_N1_TO_1": ("-1.0f", "1.0f"),
}
# Kernel choice for int8 convolutions: a GEMM (dot products of length k = kh*kw*cin)
# when the dot product is long enough to fill vector registers, else the direct kernel
# (outer-product updates over output channels). Measured on the host: see the report.
GEMM_MIN_K = 16
CONV_CHOICES = ("direct", "gemm")


@dataclass(frozen=True)
class IOSpec:
    """One input or output of the generated function."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass
class GeneratedModel:
    """The generated sources (file name -> text) and what callers need to drive them."""

    symbol: str  # C prefix: ``<symbol>_invoke``, ``<symbol>_arena_bytes``
    files: dict[str, str]
    arena_bytes: int
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    variants: dict[str, str] = field(default_factory=dict)  # node -> kernel variant
    profile_nodes: list[str] = field(default_factory=list)  # -DCL_PROFILE slot -> node
    stack_scratch_bytes: int = 0  # accumulator row + im2col patch on the stack (not in the arena)


# ----------------------------------------------------------------------------------
# emission context
# ----------------------------------------------------------------------------------
class _Ctx:
    """Collects constant arrays and statements while the nodes are emitted."""

    def __init__(self, graph: Graph, plan: Plan, forced: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.forced = dict(forced or {})  # node -> "direct" | "gemm" (measured tuning)
        self.offsets = {b.id: b.offset for b in plan.tensors}
        self.pairs = {p.node: p for p in plan.inplace}
        self.chunks = {b.node: b for b in plan.scratch if b.id.startswith("chunk:")}
        self.consts: list[str] = []
        self.by_key: dict[str, str] = {}
        self.acc_len = 1
        self.profiled: list[str] = []  # profile slot -> node name
        self.col_len = 0
        self.variants: dict[str, str] = {}

    def act(self, name: str, node: Node) -> str:
        """A pointer expression to an activation in the arena (or a constant array)."""
        tensor = self.graph.tensor(name)
        ctype = _ctype(tensor, node)
        if tensor.is_constant:
            return self.array(f"t:{name}", ctype, np.asarray(tensor.data).reshape(-1))
        return f"(({ctype} *)(cl_arena + {self.offsets[name]}))"

    def array(self, key: str, ctype: str, values: np.ndarray) -> str:
        """A ``static const`` array in flash; identical keys share one array."""
        if key in self.by_key:
            return self.by_key[key]
        ident = f"cl_c{len(self.by_key)}"
        self.by_key[key] = ident
        self.consts.append(
            f"static const {ctype} {ident}[{max(values.size, 1)}] = {{{_literals(ctype, values)}}};"
        )
        return ident

    def need_acc(self, n: int) -> None:
        self.acc_len = max(self.acc_len, int(n))

    def need_col(self, n: int) -> None:
        self.col_len = max(self.col_len, int(n))


def _literals(ctype: str, values: np.ndarray) -> str:
    if values.size == 0:
        return "0"
    if ctype == "float":
        flat = values.astype(np.float32).reshape(-1)
        if not np.all(np.isfinite(flat)):
            raise InvalidModelError("a float constant is not finite")
        items = [float(v).hex() + "f" for v in flat.tolist()]
    else:
        items = [str(int(v)) for v in values.reshape(-1).tolist()]
    lines = [",".join(items[i : i + 24]) for i in range(0, len(items), 24)]
    return "\n  " + ",\n  ".join(lines) + "\n"


def _ctype(tensor: Tensor, node: Node) -> str:
    if tensor.dtype == "int32":
        return "int32_t"
    ctype = CTYPES.get(tensor.dtype)
    if ctype is None:
        raise UnsupportedOperatorError(
            node.op, node.name, f"tensor {tensor.name!r} is {tensor.dtype}"
        )
    return ctype


def _q(graph: Graph, name: str, node: Node) -> tuple[float, int]:
    tensor = graph.tensor(name)
    if tensor.quant is None or tensor.quant.per_channel:
        raise UnsupportedOperatorError(
            node.op, node.name, f"{name!r} needs per-tensor quantization"
        )
    return float(tensor.quant.scale[0]), int(tensor.quant.zero_point[0])


def _dtype(graph: Graph, node: Node) -> str:
    """The operator's element type: every activation it touches must share it."""
    names = [n for n in [node.inputs[0], *node.outputs] if n]
    dtypes = {graph.tensor(n).dtype for n in names}
    if len(dtypes) != 1 or next(iter(dtypes)) not in CTYPES:
        raise UnsupportedOperatorError(node.op, node.name, f"element types {sorted(dtypes)}")
    return next(iter(dtypes))


def _act(node: Node, dtype: str) -> str:
    act = str(node.attrs.get("activation", "NONE"))
    if act not in INT8_ACTIVATIONS:
        raise UnsupportedOperatorError(f"{node.op} with fused {act}", node.name)
    return act


def _shape4(graph: Graph, name: str, node: Node) -> tuple[int, int, int, int]:
    shape = graph.tensor(name).shape
    if len(shape) != 4:
        raise UnsupportedOperatorError(node.op, node.name, f"{name!r} has rank {len(shape)}, not 4")
    return shape[0], shape[1], shape[2], shape[3]


def _pair(value: Any, default: int = 1) -> tuple[int, int]:
    if value is None:
        return default, default
    first, second = value
    return int(first), int(second)


def _ints(*values: object) -> str:
    return ", ".join(str(int(v)) for v in values)  # type: ignore[call-overload]


def _args(*values: int | str) -> str:
    """Kernel arguments: integers, or C expressions of the piece index ``k``."""
    return ", ".join(v if isinstance(v, str) else str(int(v)) for v in values)


# A spatial kernel call for one window geometry: (x, ih, iw, pt, pl, y, oh, ow) -> C lines
Call = Callable[[str, int, int, "int | str", "int | str", str, int, int], list[str]]


@dataclass(frozen=True)
class _Geom:
    x: str
    y: str
    ih: int
    iw: int
    oh: int
    ow: int
    pt: int
    pl: int
    sh: int
    sw: int
    cin: int
    piece_row_bytes: int  # one output row
    pixel_bytes: int  # one output pixel


def _const(graph: Graph, node: Node, idx: int) -> np.ndarray | None:
    if idx >= len(node.inputs) or not node.inputs[idx]:
        return None
    tensor = graph.tensor(node.inputs[idx])
    if tensor.data is None:
        raise UnsupportedOperatorError(node.op, node.name, f"input {idx} is not a constant")
    return np.asarray(tensor.data)


def _float_const(graph: Graph, node: Node, idx: int) -> np.ndarray | None:
    """A float32 weight or bias; int8 weights beside float activations (TFLite's hybrid
    dynamic-range quantization) are refused rather than silently mis-scaled."""
    value = _const(graph, node, idx)
    if value is not None and value.dtype != np.float32:
        raise UnsupportedOperatorError(
            node.op, node.name, f"hybrid operator: {value.dtype} constant on float activations"
        )
    return value


# ----------------------------------------------------------------------------------
# per-operator emitters: each returns the C statements of one node
# ----------------------------------------------------------------------------------
def _stage(ctx: _Ctx, node: Node, w_scales: np.ndarray, channels: int) -> tuple[str, str, str]:
    g = ctx.graph
    in_scale, _ = _q(g, node.inputs[0], node)
    out_scale, out_zp = _q(g, node.outputs[0], node)
    stage = k.conv_output_stage(in_scale, w_scales, out_scale, out_zp, _act(node, "int8"), channels)
    mult = ctx.array(f"m:{node.name}", "int32_t", stage.multiplier.astype(np.int64))
    shift = ctx.array(f"s:{node.name}", "int32_t", stage.shift.astype(np.int64))
    return mult, shift, _ints(stage.zero_point, stage.act_min, stage.act_max)


def _weights_q(graph: Graph, node: Node) -> np.ndarray:
    w = graph.tensor(node.inputs[1])
    if w.dtype != "int8" or w.quant is None:
        raise UnsupportedOperatorError(node.op, node.name, "weights are not quantized int8")
    if np.any(w.quant.zero_point != 0):
        raise UnsupportedOperatorError(node.op, node.name, "weights are not symmetric")
    return w.quant.scale


def _bias_i32(graph: Graph, node: Node, channels: int) -> np.ndarray:
    bias = _const(graph, node, 2)
    if bias is None:
        return np.zeros(channels, dtype=np.int64)
    if bias.dtype != np.int32 or bias.size != channels:
        raise UnsupportedOperatorError(node.op, node.name, f"bias is {bias.dtype}{bias.shape}")
    return bias.astype(np.int64).reshape(-1)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.int64).astype(np.int32).astype(np.int64)


def _conv(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    _, ih, iw, cin = _shape4(g, node.inputs[0], node)
    _, oh, ow, cout = _shape4(g, node.outputs[0], node)
    w = _const(g, node, 1)
    if w is None or w.ndim != 4 or w.shape[0] != cout or w.shape[3] != cin:
        raise UnsupportedOperatorError(node.op, node.name, "only ungrouped OHWI convolutions")
    kh, kw = w.shape[1], w.shape[2]
    sh, sw = _pair(node.attrs.get("strides"))
    dh, dw = _pair(node.attrs.get("dilations"))
    pt, pl, pb, pr = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    _check_window(node, (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), (oh, ow))
    geom = _geom(ctx, node, (ih, iw, cin), (oh, ow, cout), (sh, sw), (pt, pl))
    if dtype == "float32":
        _float_const(g, node, 1)
        wt = ctx.array(f"w:{node.name}", "float", w.transpose(1, 2, 3, 0).reshape(-1))
        bias = _float_const(g, node, 2)
        b = ctx.array(f"b:{node.name}", "float", bias.reshape(-1)) if bias is not None else "0"
        lo, hi = FLOAT_CLAMPS[_act(node, dtype)]
        ctx.variants[node.name] = "direct"

        def call_f(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str, oh: int,
                   ow: int) -> list[str]:  # fmt: skip
            return [
                f"cl_conv_f32({x}, {_args(ih, iw, cin)}, {wt}, {b},",
                f"            {_args(kh, kw, sh, sw, dh, dw, pt, pl)},",
                f"            {y}, {_args(oh, ow, cout)}, {lo}, {hi});",
            ]

        return _place(ctx, node, call_f, geom)
    _, in_zp = _q(g, node.inputs[0], node)
    mult, shift, tail = _stage(ctx, node, _weights_q(g, node), cout)
    bias = _bias_i32(g, node, cout)
    ctx.need_acc(cout)
    pointwise = kh == kw == 1 and pt == pl == pb == pr == 0
    pair = ctx.pairs.get(node.name)
    if pointwise and pair is not None and pair.granularity != "pixel":
        pointwise = False  # row pieces are cut by the padding arguments: im2col has them
    variant = _conv_variant(pointwise, kh * kw * cin, ctx.forced.get(node.name))
    ctx.variants[node.name] = variant
    if variant in ("1x1-gemm", "im2col-gemm"):
        w2 = w.reshape(cout, kh * kw * cin).astype(np.int64)  # OHWI rows: the col order
        folded = _wrap32(bias - in_zp * w2.sum(axis=1))  # bias + in_off * sum(w)
        wa = ctx.array(f"w:{node.name}", "int8_t", w2)
        ba = ctx.array(f"bf:{node.name}", "int32_t", folded)
        if variant == "1x1-gemm":

            def call_1x1(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str,
                         oh: int, ow: int) -> list[str]:  # fmt: skip
                return [
                    f"cl_conv_s8_1x1({x}, {_args(ih, iw, cin)}, {wa}, {ba}, {_args(sh, sw)},",
                    f"               {y}, {_args(oh, ow, cout)}, {mult}, {shift}, {tail}, acc);",
                ]

            return _place(ctx, node, call_1x1, geom)
        ctx.need_col(kh * kw * cin)

        def call_col(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str, oh: int,
                     ow: int) -> list[str]:  # fmt: skip
            return [
                f"cl_conv_s8_im2col({x}, {_args(ih, iw, cin)}, {wa}, {ba},",
                f"                  {_args(kh, kw, sh, sw, dh, dw, pt, pl)},",
                f"                  {y}, {_args(oh, ow, cout, in_zp)}, {mult}, {shift}, {tail},",
                "                  acc, col);",
            ]

        return _place(ctx, node, call_col, geom)
    wt = ctx.array(f"w:{node.name}", "int8_t", w.transpose(1, 2, 3, 0).reshape(-1))
    ba = ctx.array(f"b:{node.name}", "int32_t", bias)

    def call_direct(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str, oh: int,
                    ow: int) -> list[str]:  # fmt: skip
        return [
            f"cl_conv_s8_direct({x}, {_args(ih, iw, cin)}, {wt}, {ba},",
            f"                  {_args(kh, kw, sh, sw, dh, dw, pt, pl)},",
            f"                  {y}, {_args(oh, ow, cout, -in_zp)}, {mult}, {shift}, {tail}, acc);",
        ]

    return _place(ctx, node, call_direct, geom)


def _geom(
    ctx: _Ctx,
    node: Node,
    ins: tuple[int, int, int],
    outs: tuple[int, int, int],
    strides: tuple[int, int],
    pads: tuple[int, int],
) -> _Geom:
    esize = DTYPE_BYTES[ctx.graph.tensor(node.outputs[0]).dtype]
    x, y = ctx.act(node.inputs[0], node), ctx.act(node.outputs[0], node)
    ih, iw, cin = ins
    oh, ow, cout = outs
    return _Geom(x, y, ih, iw, oh, ow, pads[0], pads[1], strides[0], strides[1], cin,
                 ow * cout * esize, cout * esize)  # fmt: skip


def _place(ctx: _Ctx, node: Node, call: Call, g: _Geom) -> list[str]:
    """The kernel call, or (in-place pair) one call per output piece computed into the
    node's chunk buffer and then copied over the consumed part of the input, walking the
    pieces forward or backward as the plan says (``memory.inplace``)."""
    pair = ctx.pairs.get(node.name)
    if pair is None:
        return call(g.x, g.ih, g.iw, g.pt, g.pl, g.y, g.oh, g.ow)
    if pair.input != node.inputs[0]:
        raise InvalidPlanError(f"plan: in-place pair of {node.name!r} is not on its input 0")
    if pair.granularity == "row":
        count, piece = g.oh, g.piece_row_bytes
        lines = lambda c: call(g.x, g.ih, g.iw, f"{g.pt} - k * {g.sh}", g.pl, c, 1, g.ow)  # noqa: E731
    elif pair.granularity == "column" and g.oh == 1:
        count, piece = g.ow, g.pixel_bytes
        lines = lambda c: call(g.x, g.ih, g.iw, g.pt, f"{g.pl} - k * {g.sw}", c, 1, 1)  # noqa: E731
    elif pair.granularity == "pixel" and (g.ih, g.iw) == (g.oh, g.ow) and g.sh == g.sw == 1:
        count, piece = g.oh * g.ow, g.pixel_bytes
        lines = lambda c: call(f"({g.x} + (size_t)k * {g.cin})", 1, 1, 0, 0, c, 1, 1)  # noqa: E731
    else:
        raise InvalidPlanError(
            f"plan: in-place {pair.granularity} pieces of {node.name!r} ({node.op}) are not "
            "supported by the C generator"
        )
    chunk = ctx.chunks.get(node.name)
    if chunk is None or chunk.size_bytes < piece:
        raise InvalidPlanError(f"plan: node {node.name!r} lacks a {piece}-byte chunk buffer")
    ctype = CTYPES[ctx.graph.tensor(node.outputs[0]).dtype]
    cptr = f"(({ctype} *)(cl_arena + {chunk.offset}))"
    loop = f"k = {count - 1}; k >= 0; --k" if pair.reverse else f"k = 0; k < {count}; ++k"
    ctx.variants[node.name] += f" in-place-{pair.granularity}{'-reverse' if pair.reverse else ''}"
    return [
        f"for (int {loop}) {{",
        *["  " + ln for ln in lines(cptr)],
        f"  memcpy((uint8_t *){g.y} + (size_t)k * {piece}, {cptr}, {piece});",
        "}",
    ]


def _conv_variant(pointwise: bool, k: int, forced: str | None = None) -> str:
    """The int8 convolution kernel of a layer: ``forced`` ("direct" or "gemm", from
    ``codegen.tune``) when given, else the GEMM_MIN_K rule."""
    gemm = "1x1-gemm" if pointwise else "im2col-gemm"
    if forced is not None:
        if forced not in CONV_CHOICES:
            raise ValueError(f"unknown convolution variant {forced!r}")
        return gemm if forced == "gemm" else "direct"
    return gemm if k >= GEMM_MIN_K else "direct"


def _depthwise(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    _, ih, iw, cin = _shape4(g, node.inputs[0], node)
    _, oh, ow, cout = _shape4(g, node.outputs[0], node)
    mul = int(node.attrs.get("depth_multiplier", 1))
    w = _const(g, node, 1)
    if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[3] != cout or cout != cin * mul:
        raise InvalidModelError(f"node {node.name!r}: depthwise weights do not fit its tensors")
    kh, kw = w.shape[1], w.shape[2]
    sh, sw = _pair(node.attrs.get("strides"))
    dh, dw = _pair(node.attrs.get("dilations"))
    pt, pl, pb, pr = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    _check_window(node, (ih, iw), (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr), (oh, ow))
    geom = _geom(ctx, node, (ih, iw, cin), (oh, ow, cout), (sh, sw), (pt, pl))
    ctx.variants[node.name] = "depthwise" if mul == 1 else "depthwise-multiplier"
    if dtype == "float32":
        _float_const(g, node, 1)
        wa = ctx.array(f"w:{node.name}", "float", w.reshape(-1))
        bias = _float_const(g, node, 2)
        b = ctx.array(f"b:{node.name}", "float", bias.reshape(-1)) if bias is not None else "0"
        lo, hi = FLOAT_CLAMPS[_act(node, dtype)]

        def call_f(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str, oh: int,
                   ow: int) -> list[str]:  # fmt: skip
            return [
                f"cl_dwconv_f32({x}, {_args(ih, iw, cin, mul)}, {wa}, {b},",
                f"              {_args(kh, kw, sh, sw, dh, dw, pt, pl)},",
                f"              {y}, {_args(oh, ow)}, {lo}, {hi});",
            ]

        return _place(ctx, node, call_f, geom)
    _, in_zp = _q(g, node.inputs[0], node)
    mult, shift, tail = _stage(ctx, node, _weights_q(g, node), cout)
    wa = ctx.array(f"w:{node.name}", "int8_t", w.reshape(-1))
    ba = ctx.array(f"b:{node.name}", "int32_t", _bias_i32(g, node, cout))
    ctx.need_acc(cout)

    def call(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str, oh: int,
             ow: int) -> list[str]:  # fmt: skip
        return [
            f"cl_dwconv_s8({x}, {_args(ih, iw, cin, mul)}, {wa}, {ba},",
            f"             {_args(kh, kw, sh, sw, dh, dw, pt, pl)},",
            f"             {y}, {_args(oh, ow, -in_zp)}, {mult}, {shift}, {tail}, acc);",
        ]

    return _place(ctx, node, call, geom)


def _check_window(
    node: Node,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
    out: tuple[int, int],
) -> None:
    """The declared output must be what the window gives: the C code trusts the shapes."""
    if min(*strides, *dilations, *kernel) < 1 or min(pads) < 0:
        raise InvalidModelError(f"node {node.name!r}: non-positive window parameters")
    for i in range(2):
        span = dilations[i] * (kernel[i] - 1) + 1
        size = (hw[i] + pads[i] + pads[i + 2] - span) // strides[i] + 1
        if size != out[i]:
            raise InvalidModelError(
                f"node {node.name!r} ({node.op}): output {out} does not match its window"
            )


def _fully_connected(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    w = _const(g, node, 1)
    xt, yt = g.tensor(node.inputs[0]), g.tensor(node.outputs[0])
    if w is None or w.ndim != 2 or xt.num_elements % w.shape[1]:
        raise InvalidModelError(f"node {node.name!r}: weights do not fit the input")
    nout, kk = w.shape
    rows = xt.num_elements // kk
    if yt.num_elements != rows * nout:
        raise InvalidModelError(f"node {node.name!r}: output does not fit the weights")
    x, y = ctx.act(node.inputs[0], node), ctx.act(node.outputs[0], node)
    ctx.variants[node.name] = "gemv"
    if dtype == "float32":
        _float_const(g, node, 1)
        wt = ctx.array(f"w:{node.name}", "float", np.ascontiguousarray(w.T).reshape(-1))
        bias = _float_const(g, node, 2)
        b = ctx.array(f"b:{node.name}", "float", bias.reshape(-1)) if bias is not None else "0"
        lo, hi = FLOAT_CLAMPS[_act(node, dtype)]
        return [f"cl_fc_f32({x}, {_ints(rows, kk)}, {wt}, {b}, {y}, {nout}, {lo}, {hi});"]
    scales = _weights_q(g, node)
    _, in_zp = _q(g, node.inputs[0], node)
    mult, shift, tail = _stage(ctx, node, scales, nout)
    folded = _wrap32(_bias_i32(g, node, nout) - in_zp * w.astype(np.int64).sum(axis=1))
    wa = ctx.array(f"w:{node.name}", "int8_t", w.reshape(-1))
    ba = ctx.array(f"bf:{node.name}", "int32_t", folded)
    ctx.need_acc(nout)
    return [
        f"cl_fc_s8({x}, {_ints(rows, kk)}, {wa}, {ba}, {y}, {nout}, {mult}, {shift}, {tail}, acc);"
    ]


def _pool(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    _, ih, iw, ch = _shape4(g, node.inputs[0], node)
    _, oh, ow, och = _shape4(g, node.outputs[0], node)
    kh, kw = _pair(node.attrs.get("kernel"))
    sh, sw = _pair(node.attrs.get("strides"))
    pt, pl, pb, pr = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    if och != ch:
        raise InvalidModelError(f"node {node.name!r}: pooling changes the channel count")
    _check_window(node, (ih, iw), (kh, kw), (sh, sw), (1, 1), (pt, pl, pb, pr), (oh, ow))
    geom = _geom(ctx, node, (ih, iw, ch), (oh, ow, ch), (sh, sw), (pt, pl))
    kind = "max" if node.op == "MAX_POOL_2D" else "avg"
    ctx.variants[node.name] = f"{kind}pool"
    if dtype == "float32":
        lo, hi = FLOAT_CLAMPS[_act(node, dtype)]
        fn, tail = f"cl_{kind}pool_f32", f"{lo}, {hi}"
    else:
        out_scale, out_zp = _q(g, node.outputs[0], node)
        _q(g, node.inputs[0], node)
        lo_i, hi_i = k.activation_range(_act(node, dtype), out_scale, out_zp)
        fn, tail = f"cl_{kind}pool_s8", _ints(lo_i, hi_i) + (", acc" if kind == "avg" else "")
        if kind == "avg":
            ctx.need_acc(ch)

    def call(x: str, ih: int, iw: int, pt: int | str, pl: int | str, y: str, oh: int,
             ow: int) -> list[str]:  # fmt: skip
        geometry = _args(ih, iw, ch, kh, kw, sh, sw, pt, pl)
        return [f"{fn}({x}, {geometry}, {y}, {_args(oh, ow)}, {tail});"]

    return _place(ctx, node, call, geom)


def _mean(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    _, ih, iw, ch = _shape4(g, node.inputs[0], node)
    axes = sorted({int(a) % 4 for a in node.attrs.get("axes", ())})
    if (
        axes != [1, 2]
        or g.tensor(node.outputs[0]).num_elements != g.tensor(node.inputs[0]).shape[0] * ch
    ):
        raise UnsupportedOperatorError(node.op, node.name, f"MEAN over axes {axes} (only H, W)")
    if g.tensor(node.inputs[0]).shape[0] != 1:
        raise UnsupportedOperatorError(node.op, node.name, "MEAN with batch > 1")
    x, y = ctx.act(node.inputs[0], node), ctx.act(node.outputs[0], node)
    ctx.variants[node.name] = "mean"
    count = ih * iw
    if dtype == "float32":
        return [f"cl_mean_hw_f32({x}, {_ints(count, ch)}, {y});"]
    si, zi = _q(g, node.inputs[0], node)
    so, zo = _q(g, node.outputs[0], node)
    real = np.float64(np.float32(si)) / np.float64(np.float32(so))
    mult, shift = k.quantize_multiplier(real)
    m, s = int(mult[0]), int(shift[0])
    extra = min(count.bit_length() - 1, 32, 31 + s)  # as k.mean: 1/count in the multiplier
    m = (m << extra) // count
    s -= extra
    ctx.need_acc(ch)
    return [f"cl_mean_hw_s8({x}, {_ints(count, ch)}, {y}, {_ints(zi, m, s, zo)}, acc);"]


def _add(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    a, b, out = (g.tensor(n) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    if not (a.num_elements == b.num_elements == out.num_elements):
        raise UnsupportedOperatorError(node.op, node.name, "broadcasting ADD")
    if b.dtype != a.dtype:
        raise UnsupportedOperatorError(node.op, node.name, "mixed element types")
    xa, xb, y = (ctx.act(n, node) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    ctx.variants[node.name] = "elementwise"
    n = out.num_elements
    pair = ctx.pairs.get(node.name)
    # in place: element i is read before it is written; an output above its input
    # (negative delta) is walked last element first
    rev = int(pair is not None and pair.reverse)
    if pair is not None:
        ctx.variants[node.name] += " in-place-element" + ("-reverse" if rev else "")
    if dtype == "float32":
        lo, hi = FLOAT_CLAMPS[_act(node, dtype)]
        return [f"cl_add_f32({xa}, {xb}, {y}, {n}L, {lo}, {hi}, {rev});"]
    s1, z1 = _q(g, node.inputs[0], node)
    s2, z2 = _q(g, node.inputs[1], node)
    so, zo = _q(g, node.outputs[0], node)
    p = k.add_params(s1, z1, s2, z2, so, zo, _act(node, dtype))
    fields = [p.input1_offset, p.input2_offset, p.output_offset, p.left_shift,
              p.input1_multiplier[0], p.input1_shift[0], p.input2_multiplier[0],
              p.input2_shift[0], p.output_multiplier[0], p.output_shift[0], p.act_min,
              p.act_max]  # fmt: skip
    return [
        "{",
        f"  static const cl_add_params p = {{{_ints(*fields)}}};",
        f"  cl_add_s8({xa}, {xb}, {y}, {n}L, &p, {rev});",
        "}",
    ]


def _softmax(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    xt = g.tensor(node.inputs[0])
    if not xt.shape or int(node.attrs.get("axis", -1)) % len(xt.shape) != len(xt.shape) - 1:
        raise UnsupportedOperatorError(node.op, node.name, "softmax runs on the last axis only")
    n = xt.shape[-1]
    rows = xt.num_elements // max(n, 1)
    x, y = ctx.act(node.inputs[0], node), ctx.act(node.outputs[0], node)
    beta = float(node.attrs.get("beta", 1.0))
    ctx.variants[node.name] = "softmax"
    if dtype == "float32":
        return [f"cl_softmax_f32({x}, {y}, {_ints(rows, n)}, {float(np.float32(beta)).hex()}f);"]
    in_scale, _ = _q(g, node.inputs[0], node)
    out_scale, out_zp = _q(g, node.outputs[0], node)
    if out_zp != -128 or np.float32(out_scale) != np.float32(1.0 / 256):
        raise UnsupportedOperatorError(
            node.op, node.name, "int8 softmax needs output scale 1/256 and zero point -128"
        )
    p = k.softmax_params(beta, in_scale)
    args = _ints(rows, n, p.input_multiplier, p.input_left_shift, p.diff_min)
    return [f"cl_softmax_s8({x}, {y}, {args});"]


def _reshape(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    xt, yt = g.tensor(node.inputs[0]), g.tensor(node.outputs[0])
    if xt.nbytes != yt.nbytes or xt.dtype != yt.dtype:
        raise InvalidModelError(f"node {node.name!r} (RESHAPE) changes the size of its tensor")
    ctx.variants[node.name] = "copy"
    x, y = ctx.act(node.inputs[0], node), ctx.act(node.outputs[0], node)
    if x == y:  # the plan put both at one offset (in place): nothing to move
        return ["/* same bytes as the input */"]
    return [f"memmove({y}, {x}, {yt.nbytes}); /* may overlap in an in-place plan */"]


def _pad(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
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
        scale, zp = _q(g, node.outputs[0], node)
        q = zp if value == 0.0 else k.quantize_scalar(value, scale, zp)
        fill = np.frombuffer(np.int8(np.clip(q, -128, 127)).tobytes(), dtype=np.uint8)
    ctx.variants[node.name] = "copy"
    x, y = ctx.act(node.inputs[0], node), ctx.act(node.outputs[0], node)
    esize = np.dtype(dtype).itemsize
    fill_c = f"  static const uint8_t fill[{esize}] = {{{_ints(*fill.tolist())}}};"
    if node.name in ctx.pairs:
        return _pad_in_place(ctx, node, (x, y), in_shape, before, out_shape, esize, fill_c)
    return [
        "{",
        f"  static const int in_shape[4] = {{{_ints(*in_shape)}}};",
        f"  static const int before[4] = {{{_ints(*before)}}};",
        f"  static const int out_shape[4] = {{{_ints(*out_shape)}}};",
        fill_c,
        f"  cl_pad((const uint8_t *){x}, in_shape, before, out_shape, {esize}, fill,",
        f"         (uint8_t *){y});",
        "}",
    ]


def _pad_in_place(
    ctx: _Ctx,
    node: Node,
    xy: tuple[str, str],
    in_shape: list[int],
    before: list[int],
    out_shape: list[int],
    esize: int,
    fill_c: str,
) -> list[str]:
    """PAD following an in-place pair: output row (or, for H = 1, column) k is padded
    from input row k - before into the chunk buffer, then copied over the consumed input."""
    pair = ctx.pairs[node.name]
    x, y = xy
    if in_shape[0] != 1 or before[0] != 0:
        raise InvalidPlanError(f"plan: in-place PAD {node.name!r} pads the batch axis")
    if pair.granularity == "row":
        axis = 1
    elif pair.granularity == "column" and in_shape[1] == out_shape[1] == 1:
        axis = 2
    else:
        raise InvalidPlanError(f"plan: in-place {pair.granularity} PAD {node.name!r}")
    count, length = out_shape[axis], in_shape[axis]
    piece_in = [1, 1, *in_shape[2:]] if axis == 1 else [1, 1, 1, in_shape[3]]
    piece_out = [1, 1, *out_shape[2:]] if axis == 1 else [1, 1, 1, out_shape[3]]
    piece_before = [0, 0, *before[2:]] if axis == 1 else [0, 0, 0, before[3]]
    in_bytes = int(np.prod(piece_in)) * esize
    piece = int(np.prod(piece_out)) * esize
    chunk = ctx.chunks.get(node.name)
    if chunk is None or chunk.size_bytes < piece:
        raise InvalidPlanError(f"plan: node {node.name!r} lacks a {piece}-byte chunk buffer")
    loop = f"k = {count - 1}; k >= 0; --k" if pair.reverse else f"k = 0; k < {count}; ++k"
    ctx.variants[node.name] = f"copy in-place-{pair.granularity}" + (
        "-reverse" if pair.reverse else ""
    )
    return [
        "{",
        f"  static const int in_piece[4] = {{{_ints(*piece_in)}}};",
        "  static const int no_piece[4] = {0, 1, 1, 1};",
        f"  static const int before[4] = {{{_ints(*piece_before)}}};",
        f"  static const int out_piece[4] = {{{_ints(*piece_out)}}};",
        fill_c,
        f"  for (int {loop}) {{",
        f"    int src = k - {before[axis]};",
        f"    int inside = src >= 0 && src < {length};",
        f"    cl_pad((const uint8_t *){x} + (size_t)(inside ? src : 0) * {in_bytes},",
        "           inside ? in_piece : no_piece, before, out_piece, "
        f"{esize}, fill, cl_arena + {chunk.offset});",
        f"    memcpy((uint8_t *){y} + (size_t)k * {piece}, cl_arena + {chunk.offset}, {piece});",
        "  }",
        "}",
    ]


def _concat(ctx: _Ctx, node: Node) -> list[str]:
    g = ctx.graph
    dtype = _dtype(g, node)
    if str(node.attrs.get("activation", "NONE")) != "NONE":
        raise UnsupportedOperatorError(node.op, node.name, "fused activation on CONCATENATION")
    yt = g.tensor(node.outputs[0])
    axis = int(node.attrs.get("axis", 0)) % len(yt.shape)
    parts = [g.tensor(n) for n in node.inputs if n]
    esize = np.dtype(dtype).itemsize
    outer = int(np.prod(yt.shape[:axis], dtype=np.int64))
    out_chunk = int(np.prod(yt.shape[axis:], dtype=np.int64)) * esize
    if dtype == "int8":
        want = _q(g, node.outputs[0], node)
        if any(_q(g, p.name, node) != want for p in parts):
            # TFLM copies raw values; differing quantization would need a requantize
            raise UnsupportedOperatorError(node.op, node.name, "inputs quantized differently")
    lines, at = [], 0
    for part in parts:
        if part.dtype != dtype or len(part.shape) != len(yt.shape):
            raise InvalidModelError(f"node {node.name!r}: concatenation inputs do not fit")
        chunk = int(np.prod(part.shape[axis:], dtype=np.int64)) * esize
        x = ctx.act(part.name, node)
        lines.append(
            f"cl_concat_part((const uint8_t *){x}, {outer}L, {chunk}L, "
            f"(uint8_t *){ctx.act(yt.name, node)}, {out_chunk}L, {at}L);"
        )
        at += chunk
    if at != out_chunk:
        raise InvalidModelError(f"node {node.name!r}: concatenation sizes do not add up")
    ctx.variants[node.name] = "copy"
    return lines


EMITTERS: dict[str, Callable[[_Ctx, Node], list[str]]] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "FULLY_CONNECTED": _fully_connected,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "MEAN": _mean,
    "ADD": _add,
    "SOFTMAX": _softmax,
    "RESHAPE": _reshape,
    "PAD": _pad,
    "CONCATENATION": _concat,
}
SUPPORTED_OPS = tuple(EMITTERS)
# operators whose emitters follow an in-place pair of the plan (RESHAPE copies with memmove)
INPLACE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "RESHAPE", "PAD"}
)


# ----------------------------------------------------------------------------------
# whole model
# ----------------------------------------------------------------------------------
def c_symbol(name: str) -> str:
    """A C identifier prefix from a model name (``vww_96_int8`` -> ``vww_96_int8``)."""
    ident = re.sub(r"[^0-9a-zA-Z_]", "_", name).strip("_").lower() or "model"
    if ident == "main":  # TFLite's subgraph name; keep the C namespace unambiguous
        ident = "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def check_supported(graph: Graph) -> None:
    """Raise UnsupportedOperatorError for the first node no emitter handles."""
    for node in graph.nodes:
        if node.op not in EMITTERS:
            raise UnsupportedOperatorError(node.op, node.name, "the C generator lacks it")
        if len([o for o in node.outputs if o]) != 1:
            raise UnsupportedOperatorError(node.op, node.name, "only single-output nodes")


def _ordered_nodes(graph: Graph, plan: Plan) -> list[Node]:
    """The plan's operator order, checked against the graph (names, topology, sizes)."""
    if plan.patch_stages:
        raise InvalidPlanError("plan: patch stages are not supported by the C generator yet")
    by_name = {n.name: n for n in graph.nodes}
    if sorted(plan.order) != sorted(by_name):
        raise InvalidPlanError("plan: its operator order does not name the model's nodes")
    nodes = [by_name[n] for n in plan.order]
    ready = set(graph.inputs) | {t.name for t in graph.tensors.values() if t.is_constant}
    for node in nodes:
        late = [i for i in node.inputs if i and i not in ready]
        if late:
            raise InvalidPlanError(f"plan: node {node.name!r} runs before {late[0]!r} exists")
        ready.update(node.outputs)
    placed = {b.id: b for b in plan.tensors}
    for tensor in graph.activations():
        used = tensor.name in ready
        if not used:
            continue
        buf = placed.get(tensor.name)
        if buf is None:
            raise InvalidPlanError(f"plan: no offset for tensor {tensor.name!r}")
        if buf.size_bytes < tensor.nbytes or buf.offset + buf.size_bytes > plan.arena_bytes:
            raise InvalidPlanError(f"plan: tensor {tensor.name!r} does not fit its planned region")
        if buf.offset % 16:
            raise InvalidPlanError(f"plan: tensor {tensor.name!r} is not 16-byte aligned")
    ops = {n.name: n.op for n in nodes}
    for pair in plan.inplace:
        if ops.get(pair.node) not in INPLACE_OPS:
            raise InvalidPlanError(
                f"plan: in-place pair at {pair.node!r} ({ops.get(pair.node)}) is not supported "
                "by the C generator"
            )
    return nodes


def generate_c(
    graph: Graph, plan: Plan, name: str | None = None, variants: dict[str, str] | None = None
) -> GeneratedModel:
    """The C library of ``graph`` (NHWC, int8 or float32) laid out as ``plan`` says;
    ``name`` (default: the graph's) gives the C prefix of the model's functions;
    ``variants`` forces int8 convolution kernels per node ("direct" | "gemm")."""
    if graph.layout != "NHWC":
        raise UnsupportedOperatorError(
            "graph", graph.name, f"the C generator takes NHWC graphs, not {graph.layout}"
        )
    graph.validate()
    check_supported(graph)
    nodes = _ordered_nodes(graph, plan)
    ctx = _Ctx(graph, plan, variants)
    body: list[str] = []
    for node in nodes:
        try:
            lines = EMITTERS[node.op](ctx, node)
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidModelError(f"node {node.name!r} ({node.op}): {exc}") from None
        body.append(f"  /* {node.op} {node.name} [{ctx.variants.get(node.name, '')}] */")
        body.append("  " + _guard(ctx, node) + " CL_PROF_BEGIN();")
        body.extend("  " + line for line in lines)
        body.append(f"  CL_PROF_END({len(ctx.profiled)}); CL_UNPOISON(0, sizeof(cl_arena));")
        ctx.profiled.append(node.name)
    sym = c_symbol(name or graph.name)
    ins = [_io(graph, n) for n in graph.inputs]
    outs = [_io(graph, n) for n in graph.outputs]
    files = {
        "model.h": _header(sym, ins, outs, plan.arena_bytes),
        "model.c": _source(sym, ctx, body, ins, outs, plan),
        "main.c": _main(sym, ins, outs),
        KERNEL_HEADER: kernel_source(),
    }
    return GeneratedModel(
        sym,
        files,
        plan.arena_bytes,
        ins,
        outs,
        dict(ctx.variants),
        list(ctx.profiled),
        4 * ctx.acc_len + ctx.col_len,
    )


def _guard(ctx: _Ctx, node: Node) -> str:
    """The ASan check of one node (``-DCL_ASAN_CHECK``): the whole arena poisoned, then
    only the bytes of its planned inputs, outputs and chunk buffer made addressable, so
    a kernel touching any other arena byte aborts the debug build. Overlapping regions
    (in-place pairs) are merged first: ASan's partial granules must not shrink a region."""
    spans = []
    for name in [*node.inputs, *node.outputs]:
        if name and name in ctx.offsets:
            spans.append((ctx.offsets[name], ctx.offsets[name] + ctx.graph.tensor(name).nbytes))
    chunk = ctx.chunks.get(node.name)
    if chunk is not None and node.name in ctx.pairs:
        spans.append((chunk.offset, chunk.offset + chunk.size_bytes))
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return " ".join(["CL_POISON_ALL();", *(f"CL_UNPOISON({lo}, {hi - lo});" for lo, hi in merged)])


def _io(graph: Graph, name: str) -> IOSpec:
    tensor = graph.tensor(name)
    if tensor.dtype not in CTYPES:
        raise UnsupportedOperatorError("graph", graph.name, f"I/O {name!r} is {tensor.dtype}")
    return IOSpec(name, tensor.shape, tensor.dtype)


def kernel_source() -> str:
    """The kernel header shipped inside the package (``crosslevel/codegen/c``)."""
    return resources.files("crosslevel.codegen").joinpath("c", KERNEL_HEADER).read_text("utf-8")


def _params(ins: list[IOSpec], outs: list[IOSpec]) -> str:
    args = [f"const {CTYPES[s.dtype]} *in{i}" for i, s in enumerate(ins)]
    args += [f"{CTYPES[s.dtype]} *out{i}" for i, s in enumerate(outs)]
    return ", ".join(args)


def _header(sym: str, ins: list[IOSpec], outs: list[IOSpec], arena: int) -> str:
    guard = f"{sym.upper()}_H"
    lines = [
        f"/* Generated by crosslevel: {sym}. Do not edit. */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        f"#define {sym.upper()}_ARENA_BYTES {arena}",
    ]
    for kind, specs in (("INPUT", ins), ("OUTPUT", outs)):
        for i, s in enumerate(specs):
            lines.append(
                f"#define {sym.upper()}_{kind}{i}_BYTES {s.nbytes} "
                f"/* {s.dtype}{list(s.shape)} {s.name} */"
            )
    lines += [
        "",
        "/* Runs the model: inputs and outputs are caller buffers (may alias nothing in the",
        " * arena). Returns 0 on success, 1 if a pointer is NULL. Not reentrant. */",
        f"int {sym}_invoke({_params(ins, outs)});",
        "/* The size of the static arena compiled into the library (bytes). */",
        f"size_t {sym}_arena_bytes(void);",
        "",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines)


def _source(
    sym: str, ctx: _Ctx, body: list[str], ins: list[IOSpec], outs: list[IOSpec], plan: Plan
) -> str:
    arena = max(plan.arena_bytes, 16)
    copy_in = [
        f"  memcpy(cl_arena + {ctx.offsets[s.name]}, in{i}, {s.nbytes});" for i, s in enumerate(ins)
    ]
    copy_out = [
        f"  memcpy(out{i}, cl_arena + {ctx.offsets[s.name]}, {s.nbytes});"
        for i, s in enumerate(outs)
    ]
    null_check = " || ".join(
        [f"!in{i}" for i in range(len(ins))] + [f"!out{i}" for i in range(len(outs))]
    )
    lines = [
        f"/* Generated by crosslevel from model {plan.model!r}, plan strategy {plan.strategy!r}.",
        f" * Arena: {plan.arena_bytes} bytes at the plan's offsets; weights are const (flash). */",
        f'#include "{KERNEL_HEADER}"',
        '#include "model.h"',
        "",
        "#if defined(__GNUC__)",
        "#define CL_ALIGN16 __attribute__((aligned(16)))",
        "#else",
        "#define CL_ALIGN16",
        "#endif",
        "",
        f"static uint8_t cl_arena[{arena}] CL_ALIGN16;",
        "",
        "/* Debug check (-fsanitize=address -DCL_ASAN_CHECK): around each operator, every",
        " * arena byte outside its planned inputs, outputs and chunk buffer is poisoned. */",
        "#if defined(CL_ASAN_CHECK)",
        "#include <sanitizer/asan_interface.h>",
        "#define CL_POISON_ALL() ASAN_POISON_MEMORY_REGION(cl_arena, sizeof(cl_arena))",
        "#define CL_UNPOISON(off, n) ASAN_UNPOISON_MEMORY_REGION(cl_arena + (off), (n))",
        "#else",
        "#define CL_POISON_ALL() ((void)0)",
        "#define CL_UNPOISON(off, n) ((void)0)",
        "#endif",
        "",
        "/* Tuning build (-DCL_PROFILE): processor time per operator, summed over runs. */",
        "#if defined(CL_PROFILE)",
        "#include <time.h>",
        f"static double cl_prof[{max(len(ctx.profiled), 1)}];",
        "static clock_t cl_t0;",
        "#define CL_PROF_BEGIN() (cl_t0 = clock())",
        "#define CL_PROF_END(i) (cl_prof[(i)] += (double)(clock() - cl_t0))",
        f"const double *{sym}_profile(void);",
        f"const double *{sym}_profile(void) {{ return cl_prof; }}",
        "#else",
        "#define CL_PROF_BEGIN() ((void)0)",
        "#define CL_PROF_END(i) ((void)0)",
        "#endif",
        "",
        *ctx.consts,
        "",
        f"size_t {sym}_arena_bytes(void) {{ return sizeof(cl_arena); }}",
        "",
        f"int {sym}_invoke({_params(ins, outs)}) {{",
        f"  int32_t acc[{ctx.acc_len}];",
        *([f"  int8_t col[{ctx.col_len}]; /* im2col patch */"] if ctx.col_len else []),
        f"  if ({null_check}) return 1;",
        *copy_in,
        *body,
        *copy_out,
        "  (void)acc;",
        "  return 0;",
        "}",
        "",
    ]
    return "\n".join(lines)


def _main(sym: str, ins: list[IOSpec], outs: list[IOSpec]) -> str:
    """A test program: ``main IN.bin OUT.bin`` (raw inputs in order -> raw outputs)."""
    decl, reads, writes, args = [], [], [], []
    for i, s in enumerate(ins):
        decl.append(f"static {CTYPES[s.dtype]} in{i}[{s.nbytes // np.dtype(s.dtype).itemsize}];")
        reads.append(
            f"  if (fread(in{i}, 1, sizeof in{i}, f) != sizeof in{i}) {{ fclose(f); return 3; }}"
        )
        args.append(f"in{i}")
    for i, s in enumerate(outs):
        decl.append(f"static {CTYPES[s.dtype]} out{i}[{s.nbytes // np.dtype(s.dtype).itemsize}];")
        writes.append(
            f"  if (fwrite(out{i}, 1, sizeof out{i}, f) != sizeof out{i}) "
            "{ fclose(f); return 5; }"
        )
        args.append(f"out{i}")
    lines = [
        "/* Test main generated by crosslevel: main IN.bin OUT.bin */",
        "#include <stdio.h>",
        '#include "model.h"',
        "",
        *decl,
        "",
        "int main(int argc, char **argv) {",
        "  FILE *f;",
        '  if (argc != 3) { fprintf(stderr, "usage: %s IN.bin OUT.bin\\n", argv[0]); return 2; }',
        '  f = fopen(argv[1], "rb");',
        "  if (!f) return 3;",
        *reads,
        "  fclose(f);",
        f"  if ({sym}_invoke({', '.join(args)}) != 0) return 4;",
        '  f = fopen(argv[2], "wb");',
        "  if (!f) return 5;",
        *writes,
        "  fclose(f);",
        "  return 0;",
        "}",
        "",
    ]
    return "\n".join(lines)
