"""Eliminating operators that do not change values: identities and layout no-ops.

Removed: IDENTITY and DROPOUT (inference), RESHAPE to the input's own shape, TRANSPOSE
with the identity permutation. Collapsed: RESHAPE of a RESHAPE (the second reads the
first's input), TRANSPOSE of a TRANSPOSE (one transpose with the composed permutation,
which disappears when the pair cancels). A producer left without readers is dropped.

Why: exporters emit these (dropout at inference, flatten chains, NHWC<->NCHW transpose
pairs around layout changes); each one costs a copy and an arena buffer on a device.
Quantized tensors are bypassed only when both sides share their quantization, because a
TFLite RESHAPE between differently quantized tensors reinterprets the bytes.
Graph outputs keep their names: when the removed node wrote an output, its input tensor
is renamed to the output's name instead.
"""

from __future__ import annotations

from crosslevel.graph.rewrite import drop_unreferenced_tensors, rename_tensor, same_quant
from crosslevel.ir.graph import Graph, Node

_PASS_THROUGH = ("IDENTITY", "DROPOUT")


def eliminate_identity(graph: Graph) -> Graph:
    """A copy of ``graph`` without value-preserving operators."""
    result = graph.copy()
    while _rewrite_once(result):
        pass
    drop_unreferenced_tensors(result)
    result.validate()
    return result


def _rewrite_once(graph: Graph) -> bool:
    """Apply the first applicable rewrite; False when none applies (fixpoint)."""
    producers = graph.producers()
    for node in graph.nodes:
        if _is_noop(graph, node) and _bypass(graph, node):
            return True
        source = producers.get(node.inputs[0]) if node.inputs else None
        if source is not None and source.op == node.op and node.op in ("RESHAPE", "TRANSPOSE"):
            if _collapse(graph, source, node):
                return True
    return False


def _is_noop(graph: Graph, node: Node) -> bool:
    if node.op in _PASS_THROUGH:
        return len([i for i in node.inputs if i]) >= 1
    if node.op == "RESHAPE":
        return graph.tensor(node.inputs[0]).shape == graph.tensor(node.outputs[0]).shape
    if node.op == "TRANSPOSE":
        return [int(p) for p in node.attrs["perm"]] == list(range(len(node.attrs["perm"])))
    return False


def _same_value(graph: Graph, a: str, b: str) -> bool:
    ta, tb = graph.tensor(a), graph.tensor(b)
    return ta.dtype == tb.dtype and ta.shape == tb.shape and same_quant(ta.quant, tb.quant)


def _bypass(graph: Graph, node: Node) -> bool:
    """Remove ``node`` (output == input); keep a graph output's name. False if it can't."""
    src, dst = node.inputs[0], node.outputs[0]
    if not _same_value(graph, src, dst):
        return False
    if dst not in graph.outputs:
        graph.nodes.remove(node)
        for user in graph.nodes:
            user.inputs = [src if name == dst else name for name in user.inputs]
        del graph.tensors[dst]
        return True
    src_tensor = graph.tensor(src)
    if src in graph.inputs or src in graph.outputs or src_tensor.is_constant:
        return False  # the output must stay a distinct, produced tensor
    graph.nodes.remove(node)
    del graph.tensors[dst]
    rename_tensor(graph, src, dst)
    return True


def _collapse(graph: Graph, first: Node, second: Node) -> bool:
    """Make ``second`` read ``first``'s input directly; drop ``first`` if now unread."""
    origin, mid = first.inputs[0], first.outputs[0]
    if not (same_quant(graph.tensor(origin).quant, graph.tensor(mid).quant)):
        return False
    if second.op == "TRANSPOSE":
        inner = [int(p) for p in first.attrs["perm"]]
        outer = [int(p) for p in second.attrs["perm"]]
        second.attrs["perm"] = tuple(inner[p] for p in outer)
    second.inputs = [origin, *second.inputs[1:]]
    still_read = any(mid in n.inputs for n in graph.nodes) or mid in graph.outputs
    if not still_read:
        graph.nodes.remove(first)
        del graph.tensors[mid]
    return True
