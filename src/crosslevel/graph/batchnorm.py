"""Folding BATCH_NORM into the convolution or fully connected layer before it.

Why: at inference a batch norm is a per-channel affine map, which the weights and bias of
the producing layer absorb exactly: ``w' = w * s`` and ``b' = (b - mean) * s + beta``
with ``s = gamma / sqrt(var + eps)``. The folded graph saves one operator, one
activation-sized tensor in the arena and the BN parameters in flash.

Folded only when the layer's output feeds the BN alone (otherwise the unnormalized value
is still needed), the layer has no fused activation (BN would come after it), every
parameter is a float constant, and BN's channel axis is the layer's output-channel axis.
Weight layouts: CONV_2D OIHW (NCHW) or OHWI (NHWC) scale axis 0; DEPTHWISE_CONV_2D
``[1, kh, kw, C*M]`` axis 3; FULLY_CONNECTED ``[O, K]`` axis 0.
"""

from __future__ import annotations

import numpy as np

from crosslevel.graph.rewrite import (
    OUTPUT_CHANNEL_AXIS,
    batchnorm_channel_axis,
    drop_unreferenced_tensors,
    fresh_tensor_name,
    is_float_node,
    sole_consumer,
)
from crosslevel.ir.graph import Graph, Node, Tensor


def fold_batchnorm(graph: Graph) -> Graph:
    """A copy of ``graph`` with every foldable BATCH_NORM merged into its producer."""
    result = graph.copy()
    fold_batchnorm_in_place(result)
    result.validate()
    return result


def fold_batchnorm_in_place(graph: Graph) -> None:
    producers = graph.producers()
    consumers = graph.consumers()
    removed: set[int] = set()
    for bn in graph.nodes:
        if bn.op != "BATCH_NORM":
            continue
        layer = producers.get(bn.inputs[0])
        if layer is not None and _can_fold(graph, layer, bn, consumers):
            _fold(graph, layer, bn)
            removed.add(id(bn))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    drop_unreferenced_tensors(graph)


def _constant(graph: Graph, name: str) -> bool:
    return bool(name) and graph.tensor(name).is_constant and graph.tensor(name).dtype == "float32"


def _can_fold(graph: Graph, layer: Node, bn: Node, consumers: dict[str, list[Node]]) -> bool:
    if layer.op not in OUTPUT_CHANNEL_AXIS or layer.attrs.get("activation", "NONE") != "NONE":
        return False
    if sole_consumer(graph, layer.outputs[0], consumers) is not bn:
        return False
    if not (is_float_node(graph, layer) and is_float_node(graph, bn)):
        return False
    if len(bn.inputs) < 5 or not all(_constant(graph, name) for name in bn.inputs[1:5]):
        return False
    if not _constant(graph, layer.inputs[1]):
        return False
    if len(layer.inputs) > 2 and layer.inputs[2] and not _constant(graph, layer.inputs[2]):
        return False
    out_shape = graph.tensor(bn.inputs[0]).shape
    rank = len(out_shape)
    axis = batchnorm_channel_axis(graph.layout, rank)
    channels = graph.tensor(layer.inputs[1]).shape[OUTPUT_CHANNEL_AXIS[layer.op]]
    # BN must normalize the layer's output channels: the last axis of an FC output, the
    # layout's channel axis of a convolution output
    if layer.op == "FULLY_CONNECTED":
        feature_axis = rank - 1
    else:
        feature_axis = 1 if graph.layout == "NCHW" else 3
    if axis != feature_axis or out_shape[axis] != channels:
        return False
    return all(graph.tensor(name).num_elements == channels for name in bn.inputs[1:5])


def _fold(graph: Graph, layer: Node, bn: Node) -> None:
    gamma, beta, mean, var = (
        np.asarray(graph.tensor(name).data, dtype=np.float64).reshape(-1) for name in bn.inputs[1:5]
    )
    scale = gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
    w_name = layer.inputs[1]
    weights = np.asarray(graph.tensor(w_name).data, dtype=np.float64)
    axis = OUTPUT_CHANNEL_AXIS[layer.op]
    shape = [1] * weights.ndim
    shape[axis] = -1
    has_bias = len(layer.inputs) > 2 and bool(layer.inputs[2])
    bias = (
        np.asarray(graph.tensor(layer.inputs[2]).data, dtype=np.float64).reshape(-1)
        if has_bias
        else np.zeros_like(scale)
    )
    new_w = _add_constant(graph, f"{w_name}_bnfold", weights * scale.reshape(shape))
    new_b = _add_constant(graph, f"{bn.name}_bias", (bias - mean) * scale + beta)
    layer.inputs = [layer.inputs[0], new_w, new_b]
    del graph.tensors[layer.outputs[0]]
    layer.outputs = [bn.outputs[0]]


def _add_constant(graph: Graph, base: str, value: np.ndarray) -> str:
    name = fresh_tensor_name(graph, base)
    data = np.ascontiguousarray(value.astype(np.float32))
    graph.tensors[name] = Tensor(name, data.shape, "float32", data=data)
    return name
