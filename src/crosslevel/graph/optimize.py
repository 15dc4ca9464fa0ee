"""The computation-graph level's fixed pipeline of accuracy-preserving passes."""

from __future__ import annotations

from collections.abc import Callable

from crosslevel.graph.activations import fuse_activations_in_place
from crosslevel.graph.batchnorm import fold_batchnorm_in_place
from crosslevel.graph.bias import fold_bias_add_in_place
from crosslevel.graph.constants import fold_constants_in_place
from crosslevel.graph.dead_code import remove_dead_code_in_place
from crosslevel.graph.identity import eliminate_identity_in_place
from crosslevel.ir.graph import Graph

# Why this order: identities go first so BN and activations sit right after their
# producers; constants fold before BN folding so computed BN parameters become foldable;
# BN and bias ADDs fold before fusion because Conv -> BN -> ReLU (or MatMul -> Add -> ReLU)
# fuses only once the middle node is gone; the last identity and dead-code sweeps remove
# what the earlier passes left unread.
PIPELINE: tuple[Callable[[Graph], None], ...] = (
    remove_dead_code_in_place,
    eliminate_identity_in_place,
    fold_constants_in_place,
    fold_batchnorm_in_place,
    fold_bias_add_in_place,
    fuse_activations_in_place,
    eliminate_identity_in_place,
    remove_dead_code_in_place,
)


def optimize_graph(graph: Graph) -> Graph:
    """Apply every graph-level pass in a fixed order; the input graph is not changed.

    One copy up front and the passes' in-place forms: a copy per pass would cost more
    than the passes themselves on large graphs.
    """
    result = graph.copy()
    for step in PIPELINE:
        step(result)
        result.validate(check_shapes=False)  # structure after every step, shapes at the end
    result.validate()
    return result
