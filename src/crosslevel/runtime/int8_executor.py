"""An int8 reference executor for NHWC IR graphs, bit-exact with TensorFlow Lite Micro.

Why: the float reference executor (``runtime.reference``) cannot check int8 plans, and
TFLM itself cannot run a plan that TFLM's rules forbid (in-place kernels, patches). This
executor runs an int8 graph as imported from ``.tflite`` with TFLite's integer
arithmetic (``runtime.int8_kernels``), so that its outputs equal TFLM's bit for bit; the
memory level then runs the same kernels inside a planned arena.

Supported operators: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, AVERAGE_POOL_2D,
MAX_POOL_2D, MEAN, RESHAPE, TRANSPOSE, PAD, CONCATENATION, SOFTMAX (int8 in, int8 out),
QUANTIZE (float -> int8 and int8 -> int8) and DEQUANTIZE (int8 -> float). Anything else
raises UnsupportedOperatorError naming the node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.runtime import int8_kernels as k
from crosslevel.runtime.reference import bind_inputs

Array = np.ndarray
Kernel = Callable[[Graph, Node, list[Array | None]], Array]

# TFLM (the ``tflite-micro`` wheel) is built without TFLITE_SINGLE_ROUNDING.
SINGLE_ROUNDING = False
# Fused activations TFLite clamps in the int8 domain (TANH is not fusable there).
INT8_ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")


def run_int8(graph: Graph, inputs: Mapping[str, Array] | Sequence[Array]) -> list[Array]:
    """Run an int8 NHWC graph; returns the outputs in ``graph.outputs`` order."""
    values = _execute(graph, inputs)
    return [values[name] for name in graph.outputs]


def run_int8_all(graph: Graph, inputs: Mapping[str, Array] | Sequence[Array]) -> dict[str, Array]:
    """Every activation (graph inputs included) by tensor name, for debugging."""
    return _execute(graph, inputs)


def _execute(graph: Graph, inputs: Mapping[str, Array] | Sequence[Array]) -> dict[str, Array]:
    values = bind_inputs(graph, inputs, exact_dtype=True)
    for node in graph.nodes:
        args = [_value(graph, values, name, node) if name else None for name in node.inputs]
        out = run_node(graph, node, args)
        expected = graph.tensor(node.outputs[0])
        if tuple(out.shape) != expected.shape or out.dtype != np.dtype(expected.dtype):
            raise InvalidModelError(
                f"node {node.name!r} ({node.op}) computed {out.dtype}{tuple(out.shape)}, "
                f"declared {expected.dtype}{expected.shape}"
            )
        values[node.outputs[0]] = out
    return values


def run_node(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    """One node on its input values (``None`` for omitted inputs)."""
    kernel = KERNELS.get(node.op)
    if kernel is None:
        raise UnsupportedOperatorError(node.op, node.name, "the int8 executor lacks it")
    if len(node.outputs) != 1:
        raise UnsupportedOperatorError(node.op, node.name, "only single-output nodes run")
    activation = _activation(node)
    if activation not in INT8_ACTIVATIONS:
        raise UnsupportedOperatorError(f"{node.op} with fused {activation}", node.name)
    try:
        return kernel(graph, node, args)
    except ValueError as exc:  # shapes that do not fit together: a malformed model
        raise InvalidModelError(f"node {node.name!r} ({node.op}): {exc}") from None


def _value(graph: Graph, values: dict[str, Array], name: str, node: Node) -> Array:
    if name in values:
        return values[name]
    tensor = graph.tensor(name)
    if tensor.data is None:
        raise InvalidModelError(f"node {node.name!r} reads {name!r} before it is computed")
    return np.asarray(tensor.data)


# ------------------------------------------------------------------------------------
# quantization parameters
# ------------------------------------------------------------------------------------
def _tensor_q(graph: Graph, name: str, node: Node) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor quantized int8 tensor."""
    tensor = graph.tensor(name)
    if tensor.dtype != "int8":
        raise UnsupportedOperatorError(node.op, node.name, f"{name!r} is {tensor.dtype}, not int8")
    q = _quant(tensor, node)
    if q.per_channel:
        raise UnsupportedOperatorError(node.op, node.name, f"{name!r} is quantized per channel")
    return float(q.scale[0]), int(q.zero_point[0])


def _quant(tensor: Tensor, node: Node) -> QuantParams:
    if tensor.quant is None:
        raise InvalidModelError(
            f"node {node.name!r} ({node.op}): tensor {tensor.name!r} has no quantization"
        )
    return tensor.quant


def _req(args: list[Array | None], i: int, node: Node) -> Array:
    if i >= len(args) or args[i] is None:
        raise InvalidModelError(f"node {node.name!r} ({node.op}) lacks input {i}")
    value = args[i]
    assert value is not None
    return value


def _bias(args: list[Array | None], node: Node) -> Array | None:
    if len(args) < 3 or args[2] is None:
        return None
    bias = args[2]
    if bias.dtype != np.int32:
        raise UnsupportedOperatorError(node.op, node.name, f"bias is {bias.dtype}, not int32")
    return bias


def _weights(graph: Graph, node: Node, args: list[Array | None]) -> tuple[Array, QuantParams]:
    w = _req(args, 1, node)
    if w.dtype != np.int8:
        raise UnsupportedOperatorError(node.op, node.name, f"weights are {w.dtype}, not int8")
    return w, _quant(graph.tensor(node.inputs[1]), node)


def _pair(value: Any, default: int = 1) -> tuple[int, int]:
    if value is None:
        return default, default
    a, b = value
    return int(a), int(b)


def _pads(node: Node) -> tuple[int, int, int, int]:
    top, left, bottom, right = (int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    return top, left, bottom, right


def _activation(node: Node) -> str:
    return str(node.attrs.get("activation", "NONE"))


def _need_nhwc(graph: Graph, node: Node) -> None:
    if graph.layout != "NHWC":
        raise UnsupportedOperatorError(
            node.op, node.name, f"the int8 executor runs NHWC graphs, not {graph.layout}"
        )


# ------------------------------------------------------------------------------------
# kernels on IR nodes
# ------------------------------------------------------------------------------------
def _conv(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    _need_nhwc(graph, node)
    x = _req(args, 0, node)
    in_scale, in_zp = _tensor_q(graph, node.inputs[0], node)
    out_scale, out_zp = _tensor_q(graph, node.outputs[0], node)
    w, wq = _weights(graph, node, args)
    depthwise = node.op == "DEPTHWISE_CONV_2D"
    channels = w.shape[3] if depthwise else w.shape[0]
    if np.any(wq.zero_point != 0):
        raise UnsupportedOperatorError(node.op, node.name, "weights are not symmetric")
    stage = k.conv_output_stage(
        in_scale, wq.scale, out_scale, out_zp, _activation(node), channels, SINGLE_ROUNDING
    )
    strides, dilations = _pair(node.attrs.get("strides")), _pair(node.attrs.get("dilations"))
    if depthwise:
        mult = int(node.attrs.get("depth_multiplier", 1))
        return k.depthwise_conv2d(
            x, in_zp, w, _bias(args, node), stage, mult, strides, dilations, _pads(node)
        )
    if x.shape[3] % w.shape[3] or w.shape[0] % (x.shape[3] // w.shape[3]):
        raise InvalidModelError(f"node {node.name!r}: weights {w.shape} do not fit {x.shape}")
    return k.conv2d(x, in_zp, w, _bias(args, node), stage, strides, dilations, _pads(node))


def _fully_connected(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    in_scale, in_zp = _tensor_q(graph, node.inputs[0], node)
    out_scale, out_zp = _tensor_q(graph, node.outputs[0], node)
    w, wq = _weights(graph, node, args)
    if wq.per_channel and wq.axis not in (0, None):
        raise UnsupportedOperatorError(node.op, node.name, f"weights quantized on axis {wq.axis}")
    w_zp = int(wq.zero_point[0]) if not wq.per_channel else 0
    stage = k.conv_output_stage(
        in_scale, wq.scale, out_scale, out_zp, _activation(node), w.shape[0], SINGLE_ROUNDING
    )
    rows = x if node.attrs.get("keep_num_dims", False) else x.reshape(-1, w.shape[1])
    return k.fully_connected(rows, in_zp, w, w_zp, _bias(args, node), stage)


def _add(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    a, b = _req(args, 0, node), _req(args, 1, node)
    s1, z1 = _tensor_q(graph, node.inputs[0], node)
    s2, z2 = _tensor_q(graph, node.inputs[1], node)
    so, zo = _tensor_q(graph, node.outputs[0], node)
    params = k.add_params(s1, z1, s2, z2, so, zo, _activation(node))
    return k.add(a, b, params, SINGLE_ROUNDING)


def _pool(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    _need_nhwc(graph, node)
    x = _req(args, 0, node)
    _tensor_q(graph, node.inputs[0], node)
    out_scale, out_zp = _tensor_q(graph, node.outputs[0], node)
    lo, hi = k.activation_range(_activation(node), out_scale, out_zp)
    kernel, strides = _pair(node.attrs["kernel"]), _pair(node.attrs.get("strides"))
    if node.op == "MAX_POOL_2D":
        return k.max_pool(x, kernel, strides, _pads(node), lo, hi)
    return k.average_pool(x, kernel, strides, _pads(node), lo, hi)


def _mean(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    si, zi = _tensor_q(graph, node.inputs[0], node)
    so, zo = _tensor_q(graph, node.outputs[0], node)
    axes = tuple(sorted({int(a) % x.ndim for a in node.attrs["axes"]}))
    keep = bool(node.attrs.get("keepdims", True))
    return k.mean(x, axes, keep, si, zi, so, zo, SINGLE_ROUNDING)


def _reshape(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    return _req(args, 0, node).reshape(graph.tensor(node.outputs[0]).shape)


def _transpose(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    return np.ascontiguousarray(_req(args, 0, node).transpose([int(p) for p in node.attrs["perm"]]))


def _pad(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    out_scale, out_zp = _tensor_q(graph, node.outputs[0], node)
    value = float(node.attrs.get("value", 0.0))
    fill = out_zp if value == 0.0 else k.quantize_scalar(value, out_scale, out_zp)
    pads = [(int(b), int(a)) for b, a in node.attrs["pads"]]
    return k.pad(x, pads, int(np.clip(fill, k.INT8_MIN, k.INT8_MAX)))


def _concat(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    parts = [a for a in args if a is not None]
    if any(p.dtype != np.int8 for p in parts):
        raise UnsupportedOperatorError(node.op, node.name, "inputs are not all int8")
    if _activation(node) != "NONE":
        raise UnsupportedOperatorError(node.op, node.name, "TFLM rejects a fused activation")
    return k.concatenation(parts, int(node.attrs["axis"]) % parts[0].ndim)


def _softmax(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    in_scale, _ = _tensor_q(graph, node.inputs[0], node)
    out_scale, out_zp = _tensor_q(graph, node.outputs[0], node)
    if out_zp != -128 or np.float32(out_scale) != np.float32(1.0 / 256):
        raise UnsupportedOperatorError(
            node.op, node.name, "int8 softmax needs output scale 1/256 and zero point -128"
        )
    if int(node.attrs.get("axis", -1)) % x.ndim != x.ndim - 1:
        raise UnsupportedOperatorError(node.op, node.name, "softmax runs on the last axis only")
    params = k.softmax_params(float(node.attrs.get("beta", 1.0)), in_scale, SINGLE_ROUNDING)
    return k.softmax(x, params, SINGLE_ROUNDING)


def _quantize(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    out_scale, out_zp = _tensor_q(graph, node.outputs[0], node)
    if x.dtype == np.float32:
        return k.quantize(x, out_scale, out_zp)
    if x.dtype == np.int8:
        in_scale, in_zp = _tensor_q(graph, node.inputs[0], node)
        return k.requantize(x, in_scale, in_zp, out_scale, out_zp, SINGLE_ROUNDING)
    raise UnsupportedOperatorError(node.op, node.name, f"input is {x.dtype}")


def _dequantize(graph: Graph, node: Node, args: list[Array | None]) -> Array:
    x = _req(args, 0, node)
    scale, zp = _tensor_q(graph, node.inputs[0], node)
    if graph.tensor(node.outputs[0]).dtype != "float32":
        raise UnsupportedOperatorError(node.op, node.name, "only int8 -> float32 runs")
    return k.dequantize(x, scale, zp)


KERNELS: dict[str, Kernel] = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _conv,
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "AVERAGE_POOL_2D": _pool,
    "MAX_POOL_2D": _pool,
    "MEAN": _mean,
    "RESHAPE": _reshape,
    "TRANSPOSE": _transpose,
    "PAD": _pad,
    "CONCATENATION": _concat,
    "SOFTMAX": _softmax,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
}
