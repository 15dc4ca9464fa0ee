"""Shared by the ordering tests: brute force over every topological order of a graph."""

from __future__ import annotations

from collections.abc import Iterator

from crosslevel.ir.graph import Graph, Node


def topological_orders(graph: Graph) -> Iterator[list[Node]]:
    """Every topological order, enumerated (the file order is one of them)."""
    producer = graph.producers()
    deps = {
        n.name: {producer[t].name for t in n.inputs if t in producer and producer[t] is not n}
        for n in graph.nodes
    }
    order: list[Node] = []
    done: set[str] = set()

    def extend() -> Iterator[list[Node]]:
        if len(order) == len(graph.nodes):
            yield list(order)
            return
        for node in graph.nodes:
            if node.name not in done and deps[node.name] <= done:
                order.append(node)
                done.add(node.name)
                yield from extend()
                done.discard(node.name)
                order.pop()

    return extend()
