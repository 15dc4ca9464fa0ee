"""Constant folding: evaluate nodes whose inputs are all constants, once, at compile time.

Why: importers and other passes leave arithmetic on weights in the graph (scales applied
to weights, transposed or reshaped constants, concatenated biases); on a device each such
node costs time and arena memory on every inference. The values are computed with the
NumPy reference executor (``runtime.reference``), the same definition of every operator
the rest of crosslevel checks against, so folding never changes what a node means.

Not folded: nodes that touch quantized tensors (their TFLite/QDQ integer semantics are
the runtime's business; a folded DEQUANTIZE would also turn an int8 QDQ weight back into
a float one), nodes writing a graph output (an output must stay produced by a node), and
nodes the reference executor does not implement.
"""

from __future__ import annotations

import numpy as np

from crosslevel.errors import CrosslevelError
from crosslevel.graph.rewrite import drop_unreferenced_tensors, is_float_node
from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.runtime.reference import run_reference


def fold_constants(graph: Graph) -> Graph:
    """A copy of ``graph`` where every foldable all-constant node became a constant tensor."""
    result = graph.copy()
    fold_constants_in_place(result)
    result.validate()
    return result


def fold_constants_in_place(graph: Graph) -> None:
    kept: list[Node] = []
    for node in graph.nodes:
        value = _evaluate(graph, node)
        if value is None:
            kept.append(node)
            continue
        graph.tensors[node.outputs[0]].data = value
    graph.nodes = kept
    drop_unreferenced_tensors(graph)


def _foldable(graph: Graph, node: Node) -> bool:
    inputs = [name for name in node.inputs if name]
    return (
        bool(inputs)
        and len(node.outputs) == 1
        and node.outputs[0] not in graph.outputs
        and all(graph.tensor(name).is_constant for name in inputs)
        and is_float_node(graph, node)
    )


def _evaluate(graph: Graph, node: Node) -> np.ndarray | None:
    """The node's output computed by the reference executor, or None if not foldable."""
    if not _foldable(graph, node):
        return None
    inputs = {name: graph.tensor(name) for name in node.inputs if name}
    out = graph.tensor(node.outputs[0])
    single = Graph(
        name=f"fold_{node.name}",
        tensors={**inputs, out.name: Tensor(out.name, out.shape, out.dtype)},
        nodes=[node],
        inputs=[],
        outputs=[out.name],
        layout=graph.layout,
    )
    try:
        value = run_reference(single, {})[out.name]
    except CrosslevelError:  # an operator or dtype the reference does not execute
        return None
    return np.ascontiguousarray(value.astype(out.dtype))
