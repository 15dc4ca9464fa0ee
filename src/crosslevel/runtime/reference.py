"""A NumPy reference executor for float IR graphs (NCHW or NHWC).

Why: calibration of post-training quantization needs every intermediate tensor of the
float graph, and layout passes need an executor that reads the IR exactly as ``ir.ops``
documents it, independent of any exporter. It runs each node in ``graph.nodes`` order in
float64 (so its rounding error is far below ONNX Runtime's float32 error) and returns
float32 arrays. It is a reference, not a fast runtime: convolutions are windowed
``einsum`` products.

Only float tensors are executed; ``QUANTIZE``/``DEQUANTIZE`` convert at the graph's
boundary. Any other operator on int8 data raises UnsupportedOperatorError in
``run_reference``, because integer TFLite semantics are TensorFlow Lite Micro's job
(``runtime.tflm``). ``simulate_quantized`` runs a quantized graph the way QDQ runtimes
do (dequantize, compute in float, requantize each node's output): within about one
output step of TFLM's integer kernels per node, which is how a quantized graph's every
node is checked against TFLM (rounding differences compound over many layers, so whole
deep graphs are compared node by node, not end to end).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams
from crosslevel.ir.ops import channel_axis

Array = np.ndarray
Kernel = Callable[[Graph, Node, list[Array | None]], Array]


def run_reference(
    graph: Graph,
    inputs: Mapping[str, Array] | Sequence[Array],
    keep_intermediates: bool = False,
) -> dict[str, Array]:
    """Execute ``graph`` on ``inputs`` (by name, or in ``graph.inputs`` order).

    Returns the graph outputs by name, or every activation (inputs included) when
    ``keep_intermediates`` is set. Input shapes must equal the declared ones.
    """
    values: dict[str, Array] = {}
    for name, array in _bind_inputs(graph, inputs).items():
        values[name] = array
    with np.errstate(all="ignore"):  # inf/nan propagate as in float32 runtimes
        for node in graph.nodes:
            args = [_value(graph, values, name) if name else None for name in node.inputs]
            values[node.outputs[0]] = run_node(graph, node, args)
    if keep_intermediates:
        return {k: _as_output(graph, k, v) for k, v in values.items()}
    return {name: _as_output(graph, name, values[name]) for name in graph.outputs}


def simulate_quantized(
    graph: Graph,
    inputs: Mapping[str, Array] | Sequence[Array],
    keep_intermediates: bool = False,
) -> dict[str, Array]:
    """Execute a quantized graph node by node with ``simulate_quantized_node``.

    ``inputs`` are the graph's (quantized) input values; returns integer outputs.
    """
    values = dict(_bind_inputs(graph, inputs))
    for node in graph.nodes:
        values[node.outputs[0]] = simulate_quantized_node(graph, node, values)
    if keep_intermediates:
        return values
    return {name: values[name] for name in graph.outputs}


def simulate_quantized_node(graph: Graph, node: Node, values: Mapping[str, Array]) -> Array:
    """One node of a quantized graph: dequantize its inputs (activations from ``values``,
    constants from the graph), run the float kernel, quantize to the output's params."""
    args: list[Array | None] = []
    for name in node.inputs:
        if not name:
            args.append(None)
            continue
        tensor = graph.tensor(name)
        raw = tensor.data if tensor.data is not None else values.get(name)
        if raw is None:
            raise InvalidModelError(f"no value for tensor {name!r} read by {node.name!r}")
        args.append(_dequantized(graph, name, np.asarray(raw)))
    with np.errstate(all="ignore"):
        out = run_node(graph, node, args)
    out_tensor = graph.tensor(node.outputs[0])
    if out_tensor.quant is None:
        return out.astype(out_tensor.dtype)
    scale, zp = _broadcast_params(out_tensor.quant, out.ndim)
    info = np.iinfo(np.dtype(out_tensor.dtype))
    q = _round_half_away(out / scale) + zp
    return np.clip(q, info.min, info.max).astype(out_tensor.dtype)


def _dequantized(graph: Graph, name: str, raw: Array) -> Array:
    tensor = graph.tensor(name)
    if tensor.quant is None or raw.dtype.kind == "f":
        return raw.astype(np.float64)
    scale, zp = _broadcast_params(tensor.quant, raw.ndim)
    return (raw.astype(np.float64) - zp) * scale


def _round_half_away(x: Array) -> Array:
    """TFLite rounds half away from zero (NumPy's round is half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def bind_inputs(
    graph: Graph, inputs: Mapping[str, Array] | Sequence[Array], exact_dtype: bool = False
) -> dict[str, Array]:
    """Graph-input name -> array, checked against the graph (shape; dtype if exact)."""
    if isinstance(inputs, Mapping):
        named = dict(inputs)
    else:
        arrays = list(inputs)
        if len(arrays) != len(graph.inputs):
            raise InvalidModelError(
                f"graph {graph.name!r} has {len(graph.inputs)} inputs, got {len(arrays)} arrays"
            )
        named = dict(zip(graph.inputs, arrays, strict=True))
    bound: dict[str, Array] = {}
    for name in graph.inputs:
        if name not in named:
            raise InvalidModelError(f"no value given for graph input {name!r}")
        tensor = graph.tensor(name)
        array = np.asarray(named[name])
        wrong_dtype = exact_dtype and array.dtype != np.dtype(tensor.dtype)
        if tuple(array.shape) != tensor.shape or wrong_dtype:
            raise InvalidModelError(
                f"input {name!r} is {array.dtype} with shape {tuple(array.shape)}; the graph "
                f"expects {tensor.dtype} with shape {tensor.shape}"
            )
        bound[name] = array
    return bound


def _bind_inputs(graph: Graph, inputs: Mapping[str, Array] | Sequence[Array]) -> dict[str, Array]:
    """Inputs for float execution: float tensors computed in float64."""
    return {
        name: array.astype(np.float64) if graph.tensor(name).dtype.startswith("float") else array
        for name, array in bind_inputs(graph, inputs).items()
    }


def _value(graph: Graph, values: dict[str, Array], name: str) -> Array:
    if name in values:
        return values[name]
    tensor = graph.tensor(name)
    if tensor.data is None:
        raise InvalidModelError(f"tensor {name!r} is read before it is computed")
    data = np.asarray(tensor.data)
    return data.astype(np.float64) if data.dtype.kind == "f" else data


def _as_output(graph: Graph, name: str, value: Array) -> Array:
    dtype = graph.tensor(name).dtype
    return value.astype(np.float32) if dtype.startswith("float") else value.astype(dtype)


def run_node(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    """One node on float input values (``None`` for omitted inputs), fused activation
    applied; checks the result against the declared output shape."""
    out = compute_node(graph, node, args)
    expected = graph.tensor(node.outputs[0]).shape
    if tuple(out.shape) != expected:
        raise InvalidModelError(
            f"node {node.name!r} ({node.op}) computed shape {out.shape}, declared {expected}"
        )
    return out


def compute_node(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    """``run_node`` without the shape check: a piece of the output (the arena executor
    runs in-place nodes row by row) has a shape of its own."""
    kernel = KERNELS.get(node.op)
    if kernel is None:
        raise UnsupportedOperatorError(node.op, node.name, "the reference executor lacks it")
    if node.op not in ("QUANTIZE", "DEQUANTIZE"):
        for name, arg in zip(node.inputs, args, strict=True):
            if arg is not None and arg.dtype.kind != "f":
                raise UnsupportedOperatorError(
                    node.op, node.name, f"input {name!r} is {arg.dtype}; only float runs here"
                )
    out = kernel(graph, node, args)
    return _activation(out, str(node.attrs.get("activation", "NONE")), node)


def _activation(x: Array, activation: str, node: Node) -> Array:
    if activation == "NONE":
        return x
    if activation == "RELU":
        return np.maximum(x, 0.0)
    if activation == "RELU6":
        return np.clip(x, 0.0, 6.0)
    if activation == "RELU_N1_TO_1":
        return np.clip(x, -1.0, 1.0)
    if activation == "TANH":
        return np.tanh(x)
    raise UnsupportedOperatorError(f"{node.op} with fused {activation}", node.name)


def _req(args: list[Array | None], k: int, node: Node) -> Array:
    if k >= len(args) or args[k] is None:
        raise InvalidModelError(f"node {node.name!r} ({node.op}) lacks input {k}")
    value = args[k]
    assert value is not None
    return value


def _pair(value: Any, default: int) -> tuple[int, int]:
    if value is None:
        return default, default
    a, b = value
    return int(a), int(b)


# --------------------------------------------------------------------------- windows


def _to_nhwc(graph: Graph, x: Array) -> Array:
    return x.transpose(0, 2, 3, 1) if graph.layout == "NCHW" else x


def _from_nhwc(graph: Graph, x: Array) -> Array:
    return x.transpose(0, 3, 1, 2) if graph.layout == "NCHW" else x


def _windows(x: Array, kernel: tuple[int, int], node: Node, pad_value: float) -> Array:
    """Sliding windows of an NHWC array: [N, OH, OW, C, kh, kw] after pads and strides."""
    top, left, bottom, right = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    sh, sw = _pair(node.attrs.get("strides"), 1)
    dh, dw = _pair(node.attrs.get("dilations"), 1)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=pad_value)
    span = (dh * (kernel[0] - 1) + 1, dw * (kernel[1] - 1) + 1)
    if padded.shape[1] < span[0] or padded.shape[2] < span[1]:
        raise InvalidModelError(f"node {node.name!r}: window {kernel} larger than its input")
    # axes (1, 2) -> [N, H', W', C, span_h, span_w]; numpy's stubs reject an axis tuple
    win = sliding_window_view(padded, span, axis=(1, 2))  # type: ignore[call-overload]
    return win[:, ::sh, ::sw, :, ::dh, ::dw]


def _conv(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    """Convolution as im2col + one matrix product per group (BLAS, not einsum)."""
    x, w = _to_nhwc(graph, _req(args, 0, node)), _req(args, 1, node)
    groups = int(node.attrs.get("groups", 1))
    if graph.layout == "NCHW":  # OIHW -> OHWI
        w = w.transpose(0, 2, 3, 1)
    out_ch, kh, kw, in_per_group = w.shape
    if groups < 1 or out_ch % groups or in_per_group * groups != x.shape[3]:
        raise InvalidModelError(f"node {node.name!r}: weights {w.shape} do not fit {groups} groups")
    if in_per_group == 1 and groups > 1:  # depthwise in NCHW clothing
        dw = w.transpose(3, 1, 2, 0)  # [1, kh, kw, C*M]
        out = _depthwise_nhwc(x, dw, out_ch // groups, node)
        return _from_nhwc(graph, _add_bias(out, args, node))
    win = _windows(x, (kh, kw), node, 0.0)  # [N, OH, OW, C, kh, kw]
    n, oh, ow = win.shape[:3]
    per_out = out_ch // groups
    parts = []
    for g in range(groups):
        cols = win[:, :, :, g * in_per_group : (g + 1) * in_per_group]
        cols = cols.reshape(n * oh * ow, in_per_group * kh * kw)
        wg = w[g * per_out : (g + 1) * per_out].transpose(0, 3, 1, 2).reshape(per_out, -1)
        parts.append(cols @ wg.T)
    out = np.concatenate(parts, axis=1).reshape(n, oh, ow, out_ch)
    return _from_nhwc(graph, _add_bias(out, args, node))


def _depthwise(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x, w = _to_nhwc(graph, _req(args, 0, node)), _req(args, 1, node)
    mult = int(node.attrs.get("depth_multiplier", 1))
    if w.ndim != 4 or w.shape[0] != 1 or w.shape[3] != x.shape[3] * mult:
        raise InvalidModelError(f"node {node.name!r}: weights {w.shape} vs multiplier {mult}")
    out = _depthwise_nhwc(x, w, mult, node)
    return _from_nhwc(graph, _add_bias(out, args, node))


def _depthwise_nhwc(x: Array, w: Array, mult: int, node: Node) -> Array:
    """Depthwise conv of NHWC ``x`` with ``[1, kh, kw, C*M]`` weights: one shifted
    multiply-add per kernel tap (output channel c*M + m reads input channel c)."""
    _, kh, kw, _ = w.shape
    top, left, bottom, right = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    sh, sw = _pair(node.attrs.get("strides"), 1)
    dh, dw = _pair(node.attrs.get("dilations"), 1)
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    if mult > 1:
        padded = np.repeat(padded, mult, axis=3)
    oh = (padded.shape[1] - (dh * (kh - 1) + 1)) // sh + 1
    ow = (padded.shape[2] - (dw * (kw - 1) + 1)) // sw + 1
    if oh <= 0 or ow <= 0:
        raise InvalidModelError(f"node {node.name!r}: window {(kh, kw)} larger than its input")
    out = np.zeros((x.shape[0], oh, ow, padded.shape[3]))
    for i in range(kh):
        for j in range(kw):
            tap = padded[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh,
                         j * dw : j * dw + (ow - 1) * sw + 1 : sw]  # fmt: skip
            out += tap * w[0, i, j]
    return out


def _add_bias(out: Array, args: list[Array | None], node: Node) -> Array:
    if len(args) > 2 and args[2] is not None:
        return out + args[2].reshape(-1)
    return out


def _pool(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _to_nhwc(graph, _req(args, 0, node))
    kernel = _pair(node.attrs["kernel"], 1)
    if node.op == "MAX_POOL_2D":
        out = _windows(x, kernel, node, -np.inf).max(axis=(4, 5))
    else:  # padded cells are not counted: divide by the number of real cells
        sums = _windows(x, kernel, node, 0.0).sum(axis=(4, 5))
        ones = np.ones((1, *x.shape[1:3], 1))
        counts = _windows(ones, kernel, node, 0.0).sum(axis=(4, 5))
        out = sums / counts
    return _from_nhwc(graph, out)


def _fully_connected(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x, w = _req(args, 0, node), _req(args, 1, node)
    if node.attrs.get("keep_num_dims", False):
        out = x @ w.T
    else:
        out = x.reshape(-1, w.shape[1]) @ w.T
    if len(args) > 2 and args[2] is not None:
        out = out + args[2].reshape(-1)
    return out


# --------------------------------------------------------------------------- others


def _mean(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    axes = tuple(int(a) % x.ndim for a in node.attrs["axes"])
    return x.mean(axis=axes, keepdims=bool(node.attrs.get("keepdims", True)))


def _reshape(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    return _req(args, 0, node).reshape(graph.tensor(node.outputs[0]).shape)


def _transpose(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    return _req(args, 0, node).transpose([int(p) for p in node.attrs["perm"]])


def _concat(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    parts = [a for a in args if a is not None]
    return np.concatenate(parts, axis=int(node.attrs["axis"]))


def _pad(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    pads = [(int(b), int(a)) for b, a in node.attrs["pads"]]
    value = float(node.attrs.get("value", 0.0))
    return np.pad(_req(args, 0, node), pads, constant_values=value)


def _softmax(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node) * float(node.attrs.get("beta", 1.0))
    axis = int(node.attrs.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _batch_norm(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    scale, bias, mean, var = (_req(args, k, node) for k in range(1, 5))
    eps = float(node.attrs.get("epsilon", 1e-5))
    axis = 1 if x.ndim < 4 or graph.layout == "NCHW" else channel_axis(graph.layout)
    shape = [1] * x.ndim
    shape[axis] = -1
    k = (scale / np.sqrt(var + eps)).reshape(shape)
    return (x - mean.reshape(shape)) * k + bias.reshape(shape)


def _layer_norm(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    axis = int(node.attrs.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    eps = float(node.attrs.get("epsilon", 1e-5))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mu) / np.sqrt(var + eps) * _req(args, 1, node)
    if len(args) > 2 and args[2] is not None:
        out = out + args[2]
    return out


def _quant_of(graph: Graph, node: Node, name: str) -> QuantParams:
    quant = graph.tensor(name).quant
    if quant is None:
        raise InvalidModelError(f"node {node.name!r} ({node.op}): {name!r} has no quantization")
    return quant


def _broadcast_params(quant: QuantParams, ndim: int) -> tuple[Array, Array]:
    scale, zp = quant.scale.astype(np.float64), quant.zero_point.astype(np.float64)
    if quant.axis is not None and scale.size > 1:
        shape = [1] * ndim
        shape[quant.axis] = -1
        return scale.reshape(shape), zp.reshape(shape)
    return scale.reshape(()), zp.reshape(())


def _quantize(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node).astype(np.float64)
    out_tensor = graph.tensor(node.outputs[0])
    scale, zp = _broadcast_params(_quant_of(graph, node, node.outputs[0]), x.ndim)
    info = np.iinfo(np.dtype(out_tensor.dtype))
    q = np.clip(_round_half_away(x / scale) + zp, info.min, info.max)
    return q.astype(out_tensor.dtype)


def _dequantize(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    q = _req(args, 0, node).astype(np.float64)
    scale, zp = _broadcast_params(_quant_of(graph, node, node.inputs[0]), q.ndim)
    return (q - zp) * scale


def _binary(fn: Callable[[Array, Array], Array]) -> Kernel:
    def kernel(graph: Graph, node: Node, args: list[Array | None]) -> Array:
        return fn(_req(args, 0, node), _req(args, 1, node))

    return kernel


def _unary(fn: Callable[[Array], Array]) -> Kernel:
    def kernel(graph: Graph, node: Node, args: list[Array | None]) -> Array:
        return fn(_req(args, 0, node))

    return kernel


def _with_attrs(fn: Callable[[Array, dict[str, Any]], Array]) -> Kernel:
    def kernel(graph: Graph, node: Node, args: list[Array | None]) -> Array:
        return fn(_req(args, 0, node), node.attrs)

    return kernel


def _batch_matmul(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    return np.matmul(_req(args, 0, node), _req(args, 1, node))


def _erf(x: Array) -> Array:
    from scipy.special import erf

    return np.asarray(erf(x))


def _clip(x: Array, attrs: dict[str, Any]) -> Array:
    lo = attrs.get("min")
    hi = attrs.get("max")
    return np.clip(x, -np.inf if lo is None else float(lo), np.inf if hi is None else float(hi))


def _leaky_relu(x: Array, attrs: dict[str, Any]) -> Array:
    return np.where(x >= 0, x, x * float(attrs.get("alpha", 0.2)))


KERNELS: dict[str, Kernel] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "FULLY_CONNECTED": _fully_connected,
    "BATCH_MATMUL": _batch_matmul,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "MEAN": _mean,
    "RESHAPE": _reshape,
    "TRANSPOSE": _transpose,
    "CONCATENATION": _concat,
    "PAD": _pad,
    "SOFTMAX": _softmax,
    "BATCH_NORM": _batch_norm,
    "LAYER_NORM": _layer_norm,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "ADD": _binary(np.add),
    "SUB": _binary(np.subtract),
    "MUL": _binary(np.multiply),
    "DIV": _binary(np.divide),
    "POW": _binary(np.power),
    "MAXIMUM": _binary(np.maximum),
    "MINIMUM": _binary(np.minimum),
    "RELU": _unary(lambda x: np.maximum(x, 0.0)),
    "RELU6": _unary(lambda x: np.clip(x, 0.0, 6.0)),
    "RELU_N1_TO_1": _unary(lambda x: np.clip(x, -1.0, 1.0)),
    "CLIP": _with_attrs(_clip),
    "LEAKY_RELU": _with_attrs(_leaky_relu),
    "LOGISTIC": _unary(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "TANH": _unary(np.tanh),
    "HARD_SWISH": _unary(lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0),
    "SQRT": _unary(np.sqrt),
    "RSQRT": _unary(lambda x: 1.0 / np.sqrt(x)),
    "EXP": _unary(np.exp),
    "ERF": _unary(_erf),
    "ABS": _unary(np.abs),
    "NEG": _unary(np.negative),
    "IDENTITY": _unary(lambda x: x),
    "DROPOUT": _unary(lambda x: x),
}
