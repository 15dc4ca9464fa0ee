"""The computation-graph level's fixed pipeline of accuracy-preserving passes."""

from __future__ import annotations

from crosslevel.graph.activations import fuse_activations
from crosslevel.graph.batchnorm import fold_batchnorm
from crosslevel.graph.constants import fold_constants
from crosslevel.graph.dead_code import remove_dead_code
from crosslevel.graph.identity import eliminate_identity
from crosslevel.ir.graph import Graph

# Why this order: identities go first so BN and activations sit right after their
# producers; constants fold before BN folding so computed BN parameters become foldable;
# BN folds before fusion because Conv -> BN -> ReLU fuses only once BN is gone; the last
# identity and dead-code sweeps remove what the earlier passes left unread.
PIPELINE = (
    remove_dead_code,
    eliminate_identity,
    fold_constants,
    fold_batchnorm,
    fuse_activations,
    eliminate_identity,
    remove_dead_code,
)


def optimize_graph(graph: Graph) -> Graph:
    """Apply every graph-level pass in a fixed order; the input graph is not changed."""
    for step in PIPELINE:
        graph = step(graph)
    return graph
