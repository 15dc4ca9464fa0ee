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

from crosslevel.graph.rewrite import drop_unreferenced_tensors, same_quant
from crosslevel.ir.graph import Graph, Node

_PASS_THROUGH = ("IDENTITY", "DROPOUT")


def eliminate_identity(graph: Graph) -> Graph:
    """A copy of ``graph`` without value-preserving operators."""
    result = graph.copy()
    eliminate_identity_in_place(result)
    result.validate()
    return result


def eliminate_identity_in_place(graph: Graph) -> None:
    while _sweep(graph):  # a sweep can expose new pairs (a collapse leaves a no-op)
        pass
    drop_unreferenced_tensors(graph)


def _resolve(alias: dict[str, str], name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


def _sweep(graph: Graph) -> bool:
    """One pass in execution order, linear in the graph size; True if anything changed."""
    alias: dict[str, str] = {}  # removed tensor -> the tensor that carries its value
    producers: dict[str, Node] = {}
    kept: list[Node] = []
    collapsed: list[Node] = []
    changed = False
    for node in graph.nodes:
        node.inputs = [_resolve(alias, name) if name else name for name in node.inputs]
        if _is_noop(graph, node) and _bypass(graph, node, alias, producers, kept):
            changed = True
            continue
        first = producers.get(node.inputs[0]) if node.inputs else None
        if first is not None and first.op == node.op and node.op in ("RESHAPE", "TRANSPOSE"):
            if _collapse(graph, first, node):
                collapsed.append(first)
                changed = True
        kept.append(node)
        producers.update((out, node) for out in node.outputs if out)
    graph.nodes = kept
    if collapsed:
        _drop_unread(graph, collapsed)
    return changed


def _is_noop(graph: Graph, node: Node) -> bool:
    if node.op in _PASS_THROUGH:
        return bool(node.inputs and node.inputs[0])
    if node.op == "RESHAPE":
        return graph.tensor(node.inputs[0]).shape == graph.tensor(node.outputs[0]).shape
    if node.op == "TRANSPOSE":
        return [int(p) for p in node.attrs["perm"]] == list(range(len(node.attrs["perm"])))
    return False


def _same_value(graph: Graph, a: str, b: str) -> bool:
    ta, tb = graph.tensor(a), graph.tensor(b)
    return ta.dtype == tb.dtype and ta.shape == tb.shape and same_quant(ta.quant, tb.quant)


def _bypass(
    graph: Graph,
    node: Node,
    alias: dict[str, str],
    producers: dict[str, Node],
    kept: list[Node],
) -> bool:
    """Drop ``node`` (its output equals its input); keep a graph output's name."""
    src, dst = node.inputs[0], node.outputs[0]
    if not _same_value(graph, src, dst):
        return False
    if dst not in graph.outputs:
        alias[dst] = src
        del graph.tensors[dst]
        return True
    source = producers.get(src)
    if source is None or src in graph.outputs:
        return False  # a graph input or constant: the output must stay a produced tensor
    # the producer writes the output name instead; earlier readers are renamed here,
    # later ones through the alias
    source.outputs = [dst if out == src else out for out in source.outputs]
    for done in kept:
        done.inputs = [dst if name == src else name for name in done.inputs]
    producers[dst] = source
    alias[src] = dst
    del graph.tensors[src]
    return True


def _collapse(graph: Graph, first: Node, second: Node) -> bool:
    """Make ``second`` read ``first``'s input directly (composing transposes)."""
    origin, mid = first.inputs[0], first.outputs[0]
    if not same_quant(graph.tensor(origin).quant, graph.tensor(mid).quant):
        return False
    if second.op == "TRANSPOSE":
        inner = [int(p) for p in first.attrs["perm"]]
        outer = [int(p) for p in second.attrs["perm"]]
        second.attrs["perm"] = tuple(inner[p] for p in outer)
    second.inputs = [origin, *second.inputs[1:]]
    return True


def _drop_unread(graph: Graph, candidates: list[Node]) -> None:
    """Remove collapsed-away producers that nothing reads any more."""
    read = {name for node in graph.nodes for name in node.inputs} | set(graph.outputs)
    dead = {id(n) for n in candidates if not any(out in read for out in n.outputs)}
    graph.nodes = [n for n in graph.nodes if id(n) not in dead]
