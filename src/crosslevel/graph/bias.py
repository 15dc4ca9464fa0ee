"""Folding a constant ADD after a convolution or fully connected layer into its bias.

Why: exporters write ``Linear`` on rank-3 inputs as ``MatMul`` + ``Add``, so transformer
graphs carry one extra elementwise node and one extra activation-sized buffer per
projection; the layer's own bias does the same work for free.

Folded when the layer's output feeds the ADD alone, the layer has no fused activation
(the ADD's activation moves onto the layer), the other ADD operand is a float constant
that varies only along the layer's output-channel axis, and the ADD does not broadcast
the layer's output to a larger shape.
"""

from __future__ import annotations

import numpy as np

from crosslevel.graph.rewrite import (
    OUTPUT_CHANNEL_AXIS,
    drop_unreferenced_tensors,
    fresh_tensor_name,
    is_float_node,
    sole_consumer,
)
from crosslevel.ir.graph import Graph, Node, Tensor


def fold_bias_add(graph: Graph) -> Graph:
    """A copy of ``graph`` with constant bias ADDs merged into their producing layer."""
    result = graph.copy()
    fold_bias_add_in_place(result)
    result.validate()
    return result


def fold_bias_add_in_place(graph: Graph) -> None:
    producers = graph.producers()
    consumers = graph.consumers()
    removed: set[int] = set()
    for add in graph.nodes:
        if add.op != "ADD" or len(add.inputs) != 2:
            continue
        for k in (0, 1):
            layer = producers.get(add.inputs[k])
            vector = _bias_vector(graph, layer, add, add.inputs[1 - k], consumers)
            if layer is not None and vector is not None:
                _fold(graph, layer, add, vector)
                removed.add(id(add))
                break
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    drop_unreferenced_tensors(graph)


def _channel_axis(graph: Graph, layer: Node, rank: int) -> int:
    if layer.op == "FULLY_CONNECTED":
        return rank - 1
    return 1 if graph.layout == "NCHW" else 3


def _bias_vector(
    graph: Graph,
    layer: Node | None,
    add: Node,
    other: str,
    consumers: dict[str, list[Node]],
) -> np.ndarray | None:
    """The per-channel vector the ADD contributes, or None when it cannot be folded."""
    if layer is None or layer.op not in OUTPUT_CHANNEL_AXIS:
        return None
    if layer.attrs.get("activation", "NONE") != "NONE" or len(layer.outputs) != 1:
        return None
    if sole_consumer(graph, layer.outputs[0], consumers) is not add:
        return None
    const = graph.tensor(other)
    out_shape = graph.tensor(layer.outputs[0]).shape
    if const.data is None or const.dtype != "float32" or not is_float_node(graph, add):
        return None
    if graph.tensor(add.outputs[0]).shape != out_shape or len(const.shape) > len(out_shape):
        return None
    if len(layer.inputs) > 2 and layer.inputs[2] and not graph.tensor(layer.inputs[2]).is_constant:
        return None
    channels = graph.tensor(layer.inputs[1]).shape[OUTPUT_CHANNEL_AXIS[layer.op]]
    axis = _channel_axis(graph, layer, len(out_shape))
    padded = (1,) * (len(out_shape) - len(const.shape)) + const.shape
    if any(d != 1 for i, d in enumerate(padded) if i != axis) or padded[axis] not in (1, channels):
        return None
    values = np.asarray(const.data, dtype=np.float64).reshape(-1)
    return np.broadcast_to(values, (channels,))


def _fold(graph: Graph, layer: Node, add: Node, vector: np.ndarray) -> None:
    has_bias = len(layer.inputs) > 2 and bool(layer.inputs[2])
    bias = (
        np.zeros(vector.shape) if not has_bias else np.asarray(graph.tensor(layer.inputs[2]).data)
    )
    name = fresh_tensor_name(graph, f"{add.name}_bias")
    data = (bias.astype(np.float64).reshape(-1) + vector).astype(np.float32)
    graph.tensors[name] = Tensor(name, data.shape, "float32", data=data)
    layer.inputs = [layer.inputs[0], layer.inputs[1], name]
    del graph.tensors[layer.outputs[0]]
    layer.outputs = [add.outputs[0]]
    layer.attrs["activation"] = add.attrs.get("activation", "NONE")
