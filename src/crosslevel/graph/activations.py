"""Fusing activations into the operator that produces their input.

Why: TFLite (and TFLite Micro) kernels apply RELU/RELU6/RELU_N1_TO_1/TANH on the fly
while writing their output (``attrs["activation"]``), so a separate activation node costs
one more pass over the tensor and one more activation-sized buffer in the arena. ONNX
Runtime and the exporter keep them as separate nodes again (``ir.onnx``).

Fused only when the producer has no fused activation yet, its output feeds the activation
alone (no other reader needs the pre-activation value) and both sides are quantized
identically (float, or the same int8 parameters, where a fused clamp equals a separate
one). ``CLIP`` with bounds (0, 6), (-1, 1) or (0, inf) counts as RELU6, RELU_N1_TO_1, RELU.
"""

from __future__ import annotations

import math

from crosslevel.graph.rewrite import drop_unreferenced_tensors, same_quant, sole_consumer
from crosslevel.ir.graph import Graph, Node

FUSING_PRODUCERS = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "ADD",
        "SUB",
        "MUL",
        "CONCATENATION",
        "AVERAGE_POOL_2D",
        "MAX_POOL_2D",
    }
)
_CLIP_AS = {(0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, math.inf): "RELU"}


def activation_kind(node: Node) -> str | None:
    """The fused-activation name equivalent to ``node``, or None if it is not one."""
    if node.op in ("RELU", "RELU6", "RELU_N1_TO_1", "TANH"):
        return node.op
    if node.op == "CLIP":
        lo = float(node.attrs.get("min", -math.inf))
        hi = float(node.attrs.get("max", math.inf))
        return _CLIP_AS.get((lo, hi))
    return None


def fuse_activations(graph: Graph) -> Graph:
    """A copy of ``graph`` with activations folded into ``attrs["activation"]``."""
    result = graph.copy()
    fuse_activations_in_place(result)
    result.validate()
    return result


def fuse_activations_in_place(graph: Graph) -> None:
    producers = graph.producers()
    consumers = graph.consumers()
    removed: set[int] = set()
    for node in graph.nodes:
        kind = activation_kind(node)
        source = producers.get(node.inputs[0]) if kind else None
        if kind is None or source is None or not _can_fuse(graph, source, node, consumers):
            continue
        del graph.tensors[source.outputs[0]]
        source.outputs = [node.outputs[0]]
        source.attrs["activation"] = kind
        producers[node.outputs[0]] = source
        removed.add(id(node))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]
    drop_unreferenced_tensors(graph)


def _can_fuse(graph: Graph, source: Node, act: Node, consumers: dict[str, list[Node]]) -> bool:
    if source.op not in FUSING_PRODUCERS or len(source.outputs) != 1:
        return False
    if source.attrs.get("activation", "NONE") != "NONE":
        return False
    if sole_consumer(graph, source.outputs[0], consumers) is not act:
        return False
    mid, out = graph.tensor(source.outputs[0]), graph.tensor(act.outputs[0])
    return mid.dtype == out.dtype and same_quant(mid.quant, out.quant)
