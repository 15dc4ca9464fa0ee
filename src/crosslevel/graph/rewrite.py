"""Small graph-rewriting helpers shared by the computation-graph passes.

Every pass works on ``graph.copy()`` and keeps the graph's interface: graph inputs and
outputs keep their names (a rewrite that would rename an output renames the internal
tensor instead).
"""

from __future__ import annotations

import numpy as np

from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor, unique_name


def sole_consumer(graph: Graph, name: str, consumers: dict[str, list[Node]]) -> Node | None:
    """The one node reading ``name``, if exactly one does and it is not a graph output."""
    if name in graph.outputs:
        return None
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 else None


def fresh_tensor_name(graph: Graph, base: str) -> str:
    """``base`` if no tensor has it (the usual case, checked in O(1)), else a suffixed one."""
    return base if base not in graph.tensors else unique_name(graph.tensors, base)


def drop_unreferenced_tensors(graph: Graph) -> None:
    """Forget tensors no node, input or output refers to (left behind by a rewrite)."""
    referenced = set(graph.inputs) | set(graph.outputs)
    for node in graph.nodes:
        referenced.update(n for n in node.inputs if n)
        referenced.update(n for n in node.outputs if n)
    for name in [n for n in graph.tensors if n not in referenced]:
        del graph.tensors[name]


def same_quant(a: QuantParams | None, b: QuantParams | None) -> bool:
    """Whether two tensors are quantized identically (both float counts as identical)."""
    if a is None or b is None:
        return a is None and b is None
    return (
        a.axis == b.axis
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero_point, b.zero_point)
    )


def is_quantized(tensor: Tensor) -> bool:
    """An integer tensor carrying quantization (its values mean scale * (q - zero_point))."""
    return tensor.quant is not None and tensor.dtype not in ("float32", "float16")


def is_float_node(graph: Graph, node: Node) -> bool:
    """True when no tensor the node touches is quantized (float semantics throughout)."""
    return not any(is_quantized(graph.tensor(n)) for n in [*node.inputs, *node.outputs] if n)


def batchnorm_channel_axis(layout: str, rank: int) -> int:
    """The channel axis BATCH_NORM normalizes over (as ``runtime.reference`` reads it)."""
    return 1 if layout == "NCHW" or rank < 4 else 3


# Axis of a weighted layer's weights that indexes its output channels: 0 for CONV_2D
# (OIHW or OHWI) and FULLY_CONNECTED ([O, K]), 3 for DEPTHWISE_CONV_2D ([1, kh, kw, C*M]).
OUTPUT_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0}
