"""The computation-graph level: IR-to-IR passes (folding, fusion, elimination).

Each pass is a plain function ``Graph -> Graph`` in its own module that works on a copy,
keeps the names of graph inputs and outputs, and returns a validated graph.
"""

from crosslevel.graph.activations import fuse_activations
from crosslevel.graph.batchnorm import fold_batchnorm
from crosslevel.graph.bias import fold_bias_add
from crosslevel.graph.constants import fold_constants
from crosslevel.graph.dead_code import remove_dead_code
from crosslevel.graph.identity import eliminate_identity
from crosslevel.graph.optimize import optimize_graph

__all__ = [
    "eliminate_identity",
    "fold_batchnorm",
    "fold_bias_add",
    "fold_constants",
    "fuse_activations",
    "optimize_graph",
    "remove_dead_code",
]
