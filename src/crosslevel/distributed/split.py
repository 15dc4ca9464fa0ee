"""Cut one IR graph into per-tier sub-graphs (device, edge[, cloud]).

An assignment maps every node to a tier index (0 = device, 1 = edge, 2 = cloud). It is
valid when it is monotone along every data edge (a node never runs on an earlier tier
than its producers: no ping-pong) and the graph inputs are held by the device. Tier k's
sub-graph takes as inputs the tensors it reads that an earlier tier produced (or the graph
inputs) and outputs the tensors it produces that a later tier reads, plus the graph
outputs it produces. A tensor from the device that the cloud reads crosses both links: the
edge forwards it (``boundary`` names what crosses each link).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from crosslevel.errors import InvalidModelError
from crosslevel.ir.graph import Graph


@dataclass
class Split:
    """The parts of one assignment: ``parts[k]`` is tier k's graph or None if it is empty."""

    parts: list[Graph | None]
    boundary: list[list[str]]  # boundary[k]: tensors sent from tier k to tier k + 1
    returned: list[list[str]]  # returned[k]: graph outputs sent back from tier k + 1 down


def check_assignment(graph: Graph, tier_of: Mapping[str, int], n_tiers: int) -> None:
    """Raise InvalidModelError unless ``tier_of`` is a complete, monotone assignment."""
    producer = graph.producers()
    for node in graph.nodes:
        tier = tier_of.get(node.name)
        if tier is None or not 0 <= tier < n_tiers:
            raise InvalidModelError(f"node {node.name!r} has no tier in 0..{n_tiers - 1}")
        for name in node.inputs:
            src = producer.get(name)
            if src is not None and tier_of[src.name] > tier:
                raise InvalidModelError(
                    f"node {node.name!r} on tier {tier} reads {name!r} from tier "
                    f"{tier_of[src.name]}: a cut must keep each part closed under predecessors"
                )


def tensor_tiers(graph: Graph, tier_of: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Per activation: (tier that produces it, last tier that reads it).

    Graph outputs go back to the device separately (``Split.returned``).
    """
    spans: dict[str, tuple[int, int]] = {}
    for name in graph.inputs:
        spans[name] = (0, 0)
    for node in graph.nodes:
        for out in node.outputs:
            if out:
                spans[out] = (tier_of[node.name], tier_of[node.name])
    for node in graph.nodes:
        for name in node.inputs:
            if name in spans:
                first, last = spans[name]
                spans[name] = (first, max(last, tier_of[node.name]))
    return spans


def split_graph(graph: Graph, tier_of: Mapping[str, int], n_tiers: int) -> Split:
    """The per-tier sub-graphs of a valid assignment (see the module docstring)."""
    check_assignment(graph, tier_of, n_tiers)
    spans = tensor_tiers(graph, tier_of)
    boundary = [sorted(n for n, (a, b) in spans.items() if a <= k < b) for k in range(n_tiers - 1)]
    producer = graph.producers()
    returned = [
        [o for o in graph.outputs if o in producer and tier_of[producer[o].name] > k]
        for k in range(n_tiers - 1)
    ]
    parts = [_part(graph, tier_of, k, spans) for k in range(n_tiers)]
    return Split(parts, boundary, returned)


def _part(
    graph: Graph, tier_of: Mapping[str, int], k: int, spans: dict[str, tuple[int, int]]
) -> Graph | None:
    nodes = [n for n in graph.nodes if tier_of[n.name] == k]
    if not nodes:
        return None
    produced = {o for n in nodes for o in n.outputs if o}
    read = [i for n in nodes for i in n.inputs if i]
    inputs = list(
        dict.fromkeys(i for i in read if i not in produced and not graph.tensors[i].is_constant)
    )
    outputs = [o for n in nodes for o in n.outputs if o and (spans[o][1] > k or o in graph.outputs)]
    used = produced | set(read)  # activations and constants of this part
    part = Graph(
        name=f"{graph.name}_tier{k}",
        tensors={name: graph.tensors[name] for name in graph.tensors if name in used},
        nodes=list(nodes),
        inputs=inputs,
        outputs=list(dict.fromkeys(outputs)),
        layout=graph.layout,
        metadata=dict(graph.metadata),
    )
    part = part.copy()
    part.validate()
    return part
