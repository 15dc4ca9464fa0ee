"""Dead-code removal: nodes and tensors that no graph output depends on.

Why a pass of its own: every other rewrite (folding, fusion, identity elimination) leaves
orphaned producers and constants behind; running this last keeps flash (constants) and
the operator list honest. Graph inputs stay even when unused: they are the interface.
"""

from __future__ import annotations

from crosslevel.graph.rewrite import drop_unreferenced_tensors
from crosslevel.ir.graph import Graph


def remove_dead_code(graph: Graph) -> Graph:
    """A copy of ``graph`` without the nodes and tensors that reach no graph output."""
    result = graph.copy()
    remove_dead_code_in_place(result)
    result.validate()
    return result


def remove_dead_code_in_place(graph: Graph) -> None:
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(out in needed for out in node.outputs if out):
            kept.append(node)
            needed.update(name for name in node.inputs if name)
    graph.nodes = kept[::-1]
    drop_unreferenced_tensors(graph)
