"""Reading a node's operands for the C generator, and formatting kernel arguments.

The generated C trusts every shape and constant it is given, so each reader here checks
what the kernels assume (rank 4, per-tensor quantization, symmetric int8 weights, int32
biases, float32 weights beside float activations) and refuses anything else with
UnsupportedOperatorError naming the node. The quantization constants are computed with
the functions the bit-exact NumPy executor uses (``runtime.int8_kernels``), so the C code
only does the run-time integer arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crosslevel.codegen.context import CTYPES, EmitContext
from crosslevel.errors import UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node
from crosslevel.runtime import int8_kernels as k

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")  # fused activations the kernels clamp
FLOAT_CLAMPS = {
    "NONE": ("-FLT_MAX", "FLT_MAX"),
    "RELU": ("0.0f", "FLT_MAX"),
    "RELU6": ("0.0f", "6.0f"),
    "RELU_N1_TO_1": ("-1.0f", "1.0f"),
}


# ----------------------------------------------------------------------------------
# tensors and attributes
# ----------------------------------------------------------------------------------
def element_type(graph: Graph, node: Node) -> str:
    """The operator's element type: its first input and its outputs must share it."""
    names = [n for n in [node.inputs[0], *node.outputs] if n]
    dtypes = {graph.tensor(n).dtype for n in names}
    if len(dtypes) != 1 or next(iter(dtypes)) not in CTYPES:
        raise UnsupportedOperatorError(node.op, node.name, f"element types {sorted(dtypes)}")
    return next(iter(dtypes))


def fused_activation(node: Node) -> str:
    act = str(node.attrs.get("activation", "NONE"))
    if act not in ACTIVATIONS:
        raise UnsupportedOperatorError(f"{node.op} with fused {act}", node.name)
    return act


def shape4(graph: Graph, name: str, node: Node) -> tuple[int, int, int, int]:
    """The NHWC shape of a rank-4 tensor."""
    shape = graph.tensor(name).shape
    if len(shape) != 4:
        raise UnsupportedOperatorError(node.op, node.name, f"{name!r} has rank {len(shape)}, not 4")
    return shape[0], shape[1], shape[2], shape[3]


def int_pair(value: Any, default: int = 1) -> tuple[int, int]:
    """An (H, W) attribute such as strides; absent means ``default`` on both axes."""
    if value is None:
        return default, default
    first, second = value
    return int(first), int(second)


def const_input(graph: Graph, node: Node, idx: int) -> np.ndarray | None:
    """The value of constant input ``idx``; None when the node has no such input."""
    if idx >= len(node.inputs) or not node.inputs[idx]:
        return None
    tensor = graph.tensor(node.inputs[idx])
    if tensor.data is None:
        raise UnsupportedOperatorError(node.op, node.name, f"input {idx} is not a constant")
    return np.asarray(tensor.data)


def _float_const_input(graph: Graph, node: Node, idx: int) -> np.ndarray | None:
    """A float32 weight or bias; int8 weights beside float activations (TFLite's hybrid
    dynamic-range quantization) are refused rather than silently mis-scaled."""
    value = const_input(graph, node, idx)
    if value is not None and value.dtype != np.float32:
        raise UnsupportedOperatorError(
            node.op, node.name, f"hybrid operator: {value.dtype} constant on float activations"
        )
    return value


# ----------------------------------------------------------------------------------
# parameters of the float kernels
# ----------------------------------------------------------------------------------
def float_params(ctx: EmitContext, node: Node, weights: np.ndarray) -> tuple[str, str, str, str]:
    """(weights array, bias array or "0", clamp low, clamp high) of a float conv,
    depthwise or fully connected node; ``weights`` is already in the kernel's layout."""
    _float_const_input(ctx.graph, node, 1)
    w = ctx.const_array(f"w:{node.name}", "float", weights)
    bias = _float_const_input(ctx.graph, node, 2)
    b = ctx.const_array(f"b:{node.name}", "float", bias.reshape(-1)) if bias is not None else "0"
    lo, hi = FLOAT_CLAMPS[fused_activation(node)]
    return w, b, lo, hi


# ----------------------------------------------------------------------------------
# int8 quantization
# ----------------------------------------------------------------------------------
def quant_params(graph: Graph, name: str, node: Node) -> tuple[float, int]:
    """(scale, zero point) of a per-tensor quantized tensor."""
    tensor = graph.tensor(name)
    if tensor.quant is None or tensor.quant.per_channel:
        raise UnsupportedOperatorError(
            node.op, node.name, f"{name!r} needs per-tensor quantization"
        )
    return float(tensor.quant.scale[0]), int(tensor.quant.zero_point[0])


def int8_weight_scales(graph: Graph, node: Node) -> np.ndarray:
    """Per-channel scales of symmetric int8 weights (the kernels assume zero point 0)."""
    w = graph.tensor(node.inputs[1])
    if w.dtype != "int8" or w.quant is None:
        raise UnsupportedOperatorError(node.op, node.name, "weights are not quantized int8")
    if np.any(w.quant.zero_point != 0):
        raise UnsupportedOperatorError(node.op, node.name, "weights are not symmetric")
    return w.quant.scale


def int32_bias(graph: Graph, node: Node, channels: int) -> np.ndarray:
    """The int32 bias as int64 (zeros when absent), ready for folding arithmetic."""
    bias = const_input(graph, node, 2)
    if bias is None:
        return np.zeros(channels, dtype=np.int64)
    if bias.dtype != np.int32 or bias.size != channels:
        raise UnsupportedOperatorError(node.op, node.name, f"bias is {bias.dtype}{bias.shape}")
    return bias.astype(np.int64).reshape(-1)


def folded_bias(bias: np.ndarray, weight_rows: np.ndarray, input_zero_point: int) -> np.ndarray:
    """bias - zp_in * sum(w) per output channel, wrapped to int32 as the C code's adds
    wrap: the input offset folded into the bias, so the GEMM kernels skip it per MAC."""
    folded = bias - input_zero_point * weight_rows.astype(np.int64).sum(axis=1)
    return folded.astype(np.int64).astype(np.int32).astype(np.int64)


def output_stage(
    ctx: EmitContext, node: Node, weight_scales: np.ndarray, channels: int
) -> tuple[str, str, str]:
    """The requantization of a conv/depthwise/fully connected node: (multiplier array,
    shift array, "zero point, act min, act max" as C arguments)."""
    in_scale, _ = quant_params(ctx.graph, node.inputs[0], node)
    out_scale, out_zp = quant_params(ctx.graph, node.outputs[0], node)
    act = fused_activation(node)
    stage = k.conv_output_stage(in_scale, weight_scales, out_scale, out_zp, act, channels)
    mult = ctx.const_array(f"m:{node.name}", "int32_t", stage.multiplier.astype(np.int64))
    shift = ctx.const_array(f"s:{node.name}", "int32_t", stage.shift.astype(np.int64))
    return mult, shift, c_ints(stage.zero_point, stage.act_min, stage.act_max)


# ----------------------------------------------------------------------------------
# C argument lists
# ----------------------------------------------------------------------------------
def c_ints(*values: object) -> str:
    """Comma-separated integer literals."""
    return ", ".join(str(int(v)) for v in values)  # type: ignore[call-overload]


def c_args(*values: int | str) -> str:
    """Kernel arguments: integers, or C expressions (of the piece index ``k``)."""
    return ", ".join(v if isinstance(v, str) else str(int(v)) for v in values)
