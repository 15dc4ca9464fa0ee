"""IR -> ONNX: an exporter to opset 17.

Export: NCHW graphs map node for node. NHWC graphs (from TFLite) keep every tensor in its
IR (NHWC) shape, and only the operators whose ONNX form is channels-first (convolutions,
pooling, batch norm) are wrapped in ``Transpose`` nodes, with their weights converted.
So flattening, reshapes, concatenation axes and means keep their TFLite meaning. Fused
activations become separate nodes. Int8 graphs with TFLite semantics are refused; QDQ
graphs (float compute between ``QUANTIZE``/``DEQUANTIZE``) export back as QDQ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.onnx.common import (
    DTYPE_TO_ONNX,
    EXPORT_IR_VERSION,
    EXPORT_OPSET,
    _ints,
    _Names,
    _same_quant,
)

# =========================================================================== export

_FLOAT = ("float32", "float16")
_QUANT_DATA_MOVES = ("RESHAPE", "TRANSPOSE", "IDENTITY", "DROPOUT")
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


def export_onnx(graph: Graph) -> onnx.ModelProto:
    """Export a float or QDQ IR graph (NCHW or NHWC) as an ONNX opset-17 model.

    The exported tensors keep their IR names and shapes, so graph inputs and outputs are
    named as in the IR and an NHWC graph takes NHWC inputs. Raises CrosslevelError for
    graphs whose int8 semantics ONNX cannot express (TFLite integer kernels).
    """
    graph.validate()
    _refuse_integer_semantics(graph)
    exporter = _Exporter(graph)
    for node in graph.nodes:
        exporter.export_node(node)
    return exporter.model()


def _quantized(tensor: Tensor) -> bool:
    """An integer tensor with quantization: its values mean ``scale * (q - zero_point)``."""
    return tensor.quant is not None and tensor.dtype not in _FLOAT


def _refuse_integer_semantics(graph: Graph) -> None:
    """Refuse nodes that compute on quantized tensors (TFLite int8 or hybrid kernels).

    QDQ graphs compute in float between DEQUANTIZE and QUANTIZE, which ONNX expresses;
    TFLite's int8 kernels (requantizing multipliers, fused integer clamps) and its hybrid
    kernels (int8 weights, activations quantized on the fly) it does not.
    """
    for node in graph.nodes:
        tensors = [graph.tensor(n) for n in [*node.inputs, *node.outputs] if n]
        if node.op == "QUANTIZE":
            bad = graph.tensor(node.inputs[0]).dtype not in _FLOAT
        elif node.op == "DEQUANTIZE":
            bad = graph.tensor(node.outputs[0]).dtype not in _FLOAT
        elif node.op in _QUANT_DATA_MOVES:
            a, b = graph.tensor(node.inputs[0]), graph.tensor(node.outputs[0])
            bad = (_quantized(a) or _quantized(b)) and not (
                a.dtype == b.dtype and _same_quant_or_none(a.quant, b.quant)
            )
        else:
            bad = any(_quantized(t) for t in tensors)
        if not bad:
            continue
        hybrid = all(not _quantized(graph.tensor(n)) for n in [node.inputs[0], *node.outputs] if n)
        kind = (
            "hybrid operator (int8 weights, float activations: TFLite dynamic-range quantization)"
            if hybrid
            else "int8 operator with TFLite integer semantics"
        )
        raise UnsupportedOperatorError(
            node.op,
            node.name,
            f"{kind}; export_onnx handles float and QDQ graphs only "
            "(run such TFLite models with TFLite Micro)",
        )


def _same_quant_or_none(a: QuantParams | None, b: QuantParams | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return _same_quant(a, b)


class _Exporter:
    """Builds the ONNX graph node by node, naming new values so they never collide."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.used = _Names(set(graph.tensors))  # value names
        self.node_names = _Names()  # ONNX keeps node names in their own namespace

    # ----- naming and values ---------------------------------------------------------
    def fresh(self, base: str) -> str:
        return self.used.claim(base)

    def value(self, name: str) -> str:
        """ONNX name of IR tensor ``name`` (constants become initializers on first use)."""
        if not name:
            return ""
        tensor = self.g.tensor(name)
        if tensor.is_constant and name not in self.inits:
            assert tensor.data is not None
            self.inits[name] = numpy_helper.from_array(
                np.asarray(tensor.data).astype(tensor.dtype), name
            )
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def add(self, op: str, inputs: list[str], outputs: list[str], base: str, **attrs: Any) -> None:
        name = self.node_names.claim(base)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def transposed(self, name: str, perm: tuple[int, ...], base: str) -> str:
        """``name`` permuted: a new initializer for constants, a Transpose node otherwise."""
        tensor = self.g.tensor(name)
        if tensor.is_constant:
            assert tensor.data is not None
            return self.const(
                f"{name}_t", np.asarray(tensor.data).astype(tensor.dtype).transpose(perm)
            )
        out = self.fresh(f"{name}_t")
        self.add("Transpose", [self.value(name)], [out], f"{base}_transpose", perm=list(perm))
        return out

    # ----- node export ---------------------------------------------------------------
    def export_node(self, node: Node) -> None:
        handler = _EXPORTERS.get(node.op)
        if handler is None:
            raise UnsupportedOperatorError(node.op, node.name, "no ONNX export for this operator")
        handler(self, node)

    def finish(self, node: Node, core: str, wrapped: tuple[int, ...] | None) -> None:
        """Route ``core`` (the raw result) through the fused activation and layout back."""
        activation = str(node.attrs.get("activation", "NONE"))
        target = node.outputs[0]
        if activation != "NONE":
            after = target if wrapped is None else self.fresh(f"{target}_act")
            _emit_activation(self, activation, core, after, node.name)
            core = after
        if wrapped is not None:
            self.add("Transpose", [core], [target], f"{node.name}_to_nhwc", perm=list(wrapped))

    def core_name(self, node: Node, wrapped: bool) -> str:
        """Where the operator itself writes: the IR output unless something follows it."""
        if not wrapped and node.attrs.get("activation", "NONE") == "NONE":
            return node.outputs[0]
        return self.fresh(f"{node.outputs[0]}_raw")

    def channels_first(self, node: Node, perm: tuple[int, ...] | None) -> str:
        x = self.value(node.inputs[0])
        if perm is None:
            return x
        out = self.fresh(f"{x}_nchw")
        self.add("Transpose", [x], [out], f"{node.name}_to_nchw", perm=list(perm))
        return out

    # ----- model ---------------------------------------------------------------------
    def model(self) -> onnx.ModelProto:
        g = self.g
        inputs = [_value_info(g.tensor(n)) for n in g.inputs]
        outputs = [_value_info(g.tensor(n)) for n in g.outputs]
        graph = helper.make_graph(
            self.nodes, g.name or "crosslevel", inputs, outputs, list(self.inits.values())
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
            producer_name="crosslevel",
        )
        model.ir_version = EXPORT_IR_VERSION
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise InvalidModelError(f"exported ONNX model fails the checker: {exc}") from exc
        return model


def _value_info(tensor: Tensor) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(tensor.name, DTYPE_TO_ONNX[tensor.dtype], tensor.shape)


def _emit_activation(ex: _Exporter, activation: str, src: str, dst: str, base: str) -> None:
    if activation == "RELU":
        ex.add("Relu", [src], [dst], f"{base}_relu")
    elif activation == "TANH":
        ex.add("Tanh", [src], [dst], f"{base}_tanh")
    elif activation in ("RELU6", "RELU_N1_TO_1"):
        lo, hi = (0.0, 6.0) if activation == "RELU6" else (-1.0, 1.0)
        _emit_clip(ex, src, dst, lo, hi, base)
    else:
        raise UnsupportedOperatorError(f"fused {activation}", base)


def _emit_clip(ex: _Exporter, src: str, dst: str, lo: float, hi: float, base: str) -> None:
    dtype = np.dtype(ex.g.tensor(dst).dtype if dst in ex.g.tensors else "float32")
    lo_name = "" if lo == -math.inf else ex.const(f"{base}_min", np.array(lo, dtype=dtype))
    hi_name = "" if hi == math.inf else ex.const(f"{base}_max", np.array(hi, dtype=dtype))
    inputs = [src, lo_name, hi_name]
    while inputs[-1] == "":
        inputs.pop()
    ex.add("Clip", inputs, [dst], f"{base}_clip")


def _spatial_perm(ex: _Exporter, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(to channels-first, back) permutations for NHWC graphs; None for NCHW."""
    if ex.g.layout == "NCHW":
        return None
    to_first = (0, rank - 1, *range(1, rank - 1))
    back = tuple(int(i) for i in np.argsort(to_first))
    return to_first, back


def _export_conv(ex: _Exporter, node: Node) -> None:
    x_shape = ex.g.tensor(node.inputs[0]).shape
    w_shape = ex.g.tensor(node.inputs[1]).shape
    perms = _spatial_perm(ex, 4)
    if node.op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C*M] -> [C*M, 1, kh, kw], group C
        weight = ex.transposed(node.inputs[1], (3, 0, 1, 2), node.name)
        groups = x_shape[3 if ex.g.layout == "NHWC" else 1]
        kernel = (w_shape[1], w_shape[2])
    elif ex.g.layout == "NHWC":  # OHWI -> OIHW
        weight = ex.transposed(node.inputs[1], NHWC_TO_NCHW, node.name)
        groups = x_shape[3] // w_shape[3]
        kernel = (w_shape[1], w_shape[2])
    else:
        weight = ex.value(node.inputs[1])
        groups = int(node.attrs.get("groups", 1))
        kernel = (w_shape[2], w_shape[3])
    x = ex.channels_first(node, perms[0] if perms else None)
    bias = ex.value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    core = ex.core_name(node, perms is not None)
    ex.add(
        "Conv",
        [x, weight, *([bias] if bias else [])],
        [core],
        node.name,
        kernel_shape=list(kernel),
        strides=_ints(node.attrs.get("strides", (1, 1))),
        dilations=_ints(node.attrs.get("dilations", (1, 1))),
        pads=_ints(node.attrs.get("pads", (0, 0, 0, 0))),
        group=int(groups),
    )
    ex.finish(node, core, perms[1] if perms else None)


def _export_pool(ex: _Exporter, node: Node) -> None:
    perms = _spatial_perm(ex, 4)
    x = ex.channels_first(node, perms[0] if perms else None)
    core = ex.core_name(node, perms is not None)
    attrs: dict[str, Any] = {
        "kernel_shape": _ints(node.attrs["kernel"]),
        "strides": _ints(node.attrs.get("strides", (1, 1))),
        "pads": _ints(node.attrs.get("pads", (0, 0, 0, 0))),
    }
    if node.op == "AVERAGE_POOL_2D":
        ex.add("AveragePool", [x], [core], node.name, count_include_pad=0, **attrs)
    else:
        ex.add("MaxPool", [x], [core], node.name, **attrs)
    ex.finish(node, core, perms[1] if perms else None)


def _export_batchnorm(ex: _Exporter, node: Node) -> None:
    rank = len(ex.g.tensor(node.inputs[0]).shape)
    # BATCH_NORM's channel axis: 1 in NCHW graphs and below rank 4, else 3 (NHWC)
    perms = _spatial_perm(ex, 4) if rank == 4 else None
    if rank > 4 and ex.g.layout == "NHWC":
        raise UnsupportedOperatorError("BATCH_NORM", node.name, f"rank-{rank} NHWC input")
    x = ex.channels_first(node, perms[0] if perms else None)
    core = ex.core_name(node, perms is not None)
    params = [ex.value(n) for n in node.inputs[1:5]]
    eps = float(node.attrs.get("epsilon", 1e-5))
    ex.add("BatchNormalization", [x, *params], [core], node.name, epsilon=eps)
    ex.finish(node, core, perms[1] if perms else None)


def _export_fc(ex: _Exporter, node: Node) -> None:
    x = ex.value(node.inputs[0])
    x_shape = ex.g.tensor(node.inputs[0]).shape
    out_features, k = ex.g.tensor(node.inputs[1]).shape
    bias = ex.value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else ""
    core = ex.core_name(node, False)
    if node.attrs.get("keep_num_dims", False):
        w_t = ex.transposed(node.inputs[1], (1, 0), node.name)
        mm = ex.fresh(f"{core}_mm") if bias else core
        ex.add("MatMul", [x, w_t], [mm], node.name)
        if bias:
            ex.add("Add", [mm, bias], [core], f"{node.name}_bias")
    else:
        if len(x_shape) != 2:
            rows = math.prod(x_shape) // k
            flat = ex.fresh(f"{x}_2d")
            shape = ex.const(f"{node.name}_shape", np.array([rows, k], dtype=np.int64))
            ex.add("Reshape", [x, shape], [flat], f"{node.name}_flatten")
            x = flat
        w = ex.value(node.inputs[1])
        ex.add("Gemm", [x, w, *([bias] if bias else [])], [core], node.name, transB=1)
    ex.finish(node, core, None)


def _export_simple(onnx_op: str, **fixed: Any) -> Callable[[_Exporter, Node], None]:
    def export(ex: _Exporter, node: Node) -> None:
        core = ex.core_name(node, False)
        ex.add(onnx_op, [ex.value(i) for i in node.inputs if i], [core], node.name, **fixed)
        ex.finish(node, core, None)

    return export


def _export_batch_matmul(ex: _Exporter, node: Node) -> None:
    inputs = []
    for k, flag in ((0, "adj_x"), (1, "adj_y")):
        name = node.inputs[k]
        if node.attrs.get(flag, False):
            rank = len(ex.g.tensor(name).shape)
            name = ex.transposed(name, (*range(rank - 2), rank - 1, rank - 2), node.name)
        else:
            name = ex.value(name)
        inputs.append(name)
    ex.add("MatMul", inputs, [node.outputs[0]], node.name)


def _export_mean(ex: _Exporter, node: Node) -> None:
    axes = _ints(node.attrs["axes"])
    keep = int(bool(node.attrs.get("keepdims", True)))
    ex.add(
        "ReduceMean",
        [ex.value(node.inputs[0])],
        [node.outputs[0]],
        node.name,
        axes=axes,
        keepdims=keep,
    )


def _export_reshape(ex: _Exporter, node: Node) -> None:
    shape = np.array(ex.g.tensor(node.outputs[0]).shape, dtype=np.int64)
    target = ex.const(f"{node.name}_shape", shape)
    ex.add("Reshape", [ex.value(node.inputs[0]), target], [node.outputs[0]], node.name)


def _export_transpose(ex: _Exporter, node: Node) -> None:
    perm = _ints(node.attrs["perm"])
    ex.add("Transpose", [ex.value(node.inputs[0])], [node.outputs[0]], node.name, perm=perm)


def _export_concat(ex: _Exporter, node: Node) -> None:
    core = ex.core_name(node, False)
    inputs = [ex.value(i) for i in node.inputs if i]
    ex.add("Concat", inputs, [core], node.name, axis=int(node.attrs["axis"]))
    ex.finish(node, core, None)


def _export_pad(ex: _Exporter, node: Node) -> None:
    pairs = [(int(b), int(a)) for b, a in node.attrs["pads"]]
    flat = np.array([b for b, _ in pairs] + [a for _, a in pairs], dtype=np.int64)
    dtype = np.dtype(ex.g.tensor(node.inputs[0]).dtype)
    pads = ex.const(f"{node.name}_pads", flat)
    value = ex.const(f"{node.name}_value", np.array(node.attrs.get("value", 0.0), dtype=dtype))
    ex.add(
        "Pad",
        [ex.value(node.inputs[0]), pads, value],
        [node.outputs[0]],
        node.name,
        mode="constant",
    )


def _export_softmax(ex: _Exporter, node: Node) -> None:
    x = ex.value(node.inputs[0])
    beta = float(node.attrs.get("beta", 1.0))
    if beta != 1.0:
        scaled = ex.fresh(f"{x}_beta")
        b = ex.const(f"{node.name}_beta", np.array(beta, dtype=np.float32))
        ex.add("Mul", [x, b], [scaled], f"{node.name}_beta")
        x = scaled
    axis = int(node.attrs.get("axis", -1))
    ex.add("Softmax", [x], [node.outputs[0]], node.name, axis=axis)


def _export_layernorm(ex: _Exporter, node: Node) -> None:
    inputs = [ex.value(i) for i in node.inputs[:3]]
    while inputs and inputs[-1] == "":
        inputs.pop()
    ex.add(
        "LayerNormalization",
        inputs,
        [node.outputs[0]],
        node.name,
        axis=int(node.attrs.get("axis", -1)),
        epsilon=float(node.attrs.get("epsilon", 1e-5)),
    )


def _quant_inputs(ex: _Exporter, tensor: Tensor, base: str) -> tuple[list[str], dict[str, Any]]:
    quant = tensor.quant
    if quant is None:
        raise InvalidModelError(f"tensor {tensor.name!r} has no quantization parameters")
    per_axis = quant.axis is not None and quant.scale.size > 1
    scale = quant.scale if per_axis else quant.scale.reshape(())
    zp = quant.zero_point if per_axis else quant.zero_point.reshape(())
    names = [
        ex.const(f"{base}_scale", scale.astype(np.float32)),
        ex.const(f"{base}_zero_point", zp.astype(tensor.dtype)),
    ]
    return names, ({"axis": int(quant.axis)} if per_axis and quant.axis is not None else {})


def _export_quantize(ex: _Exporter, node: Node) -> None:
    out = ex.g.tensor(node.outputs[0])
    params, attrs = _quant_inputs(ex, out, node.name)
    ex.add("QuantizeLinear", [ex.value(node.inputs[0]), *params], [out.name], node.name, **attrs)


def _export_dequantize(ex: _Exporter, node: Node) -> None:
    src = ex.g.tensor(node.inputs[0])
    if src.quant is None and src.dtype in _FLOAT:  # TFLite float16 weights
        to = DTYPE_TO_ONNX[ex.g.tensor(node.outputs[0]).dtype]
        ex.add("Cast", [ex.value(src.name)], [node.outputs[0]], node.name, to=to)
        return
    params, attrs = _quant_inputs(ex, src, node.name)
    ex.add("DequantizeLinear", [ex.value(src.name), *params], [node.outputs[0]], node.name, **attrs)


def _export_clip(ex: _Exporter, node: Node) -> None:
    lo = float(node.attrs.get("min", -math.inf))
    hi = float(node.attrs.get("max", math.inf))
    _emit_clip(ex, ex.value(node.inputs[0]), node.outputs[0], lo, hi, node.name)


def _export_activation_op(activation: str) -> Callable[[_Exporter, Node], None]:
    def export(ex: _Exporter, node: Node) -> None:
        _emit_activation(ex, activation, ex.value(node.inputs[0]), node.outputs[0], node.name)

    return export


def _export_rsqrt(ex: _Exporter, node: Node) -> None:
    root = ex.fresh(f"{node.outputs[0]}_sqrt")
    ex.add("Sqrt", [ex.value(node.inputs[0])], [root], f"{node.name}_sqrt")
    ex.add("Reciprocal", [root], [node.outputs[0]], node.name)


def _export_leaky_relu(ex: _Exporter, node: Node) -> None:
    alpha = float(node.attrs.get("alpha", 0.01))
    ex.add("LeakyRelu", [ex.value(node.inputs[0])], [node.outputs[0]], node.name, alpha=alpha)


_EXPORTERS: dict[str, Callable[[_Exporter, Node], None]] = {
    "CONV_2D": _export_conv,
    "DEPTHWISE_CONV_2D": _export_conv,
    "AVERAGE_POOL_2D": _export_pool,
    "MAX_POOL_2D": _export_pool,
    "BATCH_NORM": _export_batchnorm,
    "FULLY_CONNECTED": _export_fc,
    "BATCH_MATMUL": _export_batch_matmul,
    "MEAN": _export_mean,
    "RESHAPE": _export_reshape,
    "TRANSPOSE": _export_transpose,
    "CONCATENATION": _export_concat,
    "PAD": _export_pad,
    "SOFTMAX": _export_softmax,
    "LAYER_NORM": _export_layernorm,
    "QUANTIZE": _export_quantize,
    "DEQUANTIZE": _export_dequantize,
    "ADD": _export_simple("Add"),
    "SUB": _export_simple("Sub"),
    "MUL": _export_simple("Mul"),
    "DIV": _export_simple("Div"),
    "POW": _export_simple("Pow"),
    "MAXIMUM": _export_simple("Max"),
    "MINIMUM": _export_simple("Min"),
    "RELU": _export_activation_op("RELU"),
    "RELU6": _export_activation_op("RELU6"),
    "RELU_N1_TO_1": _export_activation_op("RELU_N1_TO_1"),
    "TANH": _export_activation_op("TANH"),
    "CLIP": _export_clip,
    "LEAKY_RELU": _export_leaky_relu,
    "LOGISTIC": _export_simple("Sigmoid"),
    "HARD_SWISH": _export_simple("HardSwish"),
    "SQRT": _export_simple("Sqrt"),
    "RSQRT": _export_rsqrt,
    "EXP": _export_simple("Exp"),
    "ERF": _export_simple("Erf"),
    "ABS": _export_simple("Abs"),
    "NEG": _export_simple("Neg"),
    "IDENTITY": _export_simple("Identity"),
    "DROPOUT": _export_simple("Identity"),
}
