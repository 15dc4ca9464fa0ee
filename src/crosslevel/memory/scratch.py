"""Scratch bytes that TFLM's reference kernels request in Prepare, per operator.

Only rules read from TFLM's reference kernels (and confirmed by matching the measured head
arena of the real models) are listed. ``None`` means the rule is not known: reports must
say so and show TFLM's measured head instead of trusting a re-statement.
"""

from __future__ import annotations

from crosslevel.ir.graph import Graph, Node

# Reference kernels of these operators request no scratch for int8/float32 data.
# (CONV_2D/DEPTHWISE_CONV_2D request a filter-sized scratch only for int4 filters, which
# the IR does not hold.)
_NO_SCRATCH = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "ADD",
        "SUB",
        "MUL",
        "AVERAGE_POOL_2D",
        "MAX_POOL_2D",
        "RESHAPE",
        "SOFTMAX",
        "QUANTIZE",
        "DEQUANTIZE",
        "PAD",
        "CONCATENATION",
        "RELU",
        "RELU6",
        "LOGISTIC",
        "TANH",
        "TRANSPOSE",
        "HARD_SWISH",
        "LEAKY_RELU",
        # MEAN: measured rather than read: the head arena of int8 and float zoo exports
        # with a global-average MEAN equals our restatement without scratch (test_memory).
        "MEAN",
    }
)


def scratch_bytes(graph: Graph, node: Node) -> int | None:
    """Bytes of scratch ``node`` requests in TFLM's Prepare, or None when unknown."""
    if node.op in _NO_SCRATCH:
        return 0
    return None


def unknown_scratch_ops(graph: Graph) -> list[str]:
    """Operator types in ``graph`` whose scratch rule is not known (sorted, unique)."""
    return sorted({n.op for n in graph.nodes if scratch_bytes(graph, n) is None})
