"""The IR's MAC and weight counts of every zoo model against an independent PyTorch count."""

from __future__ import annotations

import pytest
from torch import nn
from torch_counts import count_macs_params

from crosslevel.ir.ops import node_macs
from crosslevel.ir.torch_io import import_torch
from crosslevel.model import zoo

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _torch_weight_elements(model: nn.Module) -> int:
    """Weights of every Conv2d and Linear: what the IR's weighted operators must hold."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))


@pytest.mark.parametrize("name", zoo.list_models())
def test_ir_counts_match_pytorch_hooks(name: str) -> None:
    entry = zoo.ZOO[name]
    model = zoo.build(name).eval()
    macs, _params = count_macs_params(model, entry.input_shape)
    graph = import_torch(model, (1, *entry.input_shape))
    ir_macs = sum(node_macs(graph, n) for n in graph.nodes)
    assert ir_macs == macs
    ir_weights = sum(
        graph.tensors[n.inputs[1]].num_elements
        for n in graph.nodes
        if n.op in WEIGHTED_OPS and graph.tensors[n.inputs[1]].is_constant
    )
    matmul_weights = sum(
        graph.tensors[i].num_elements
        for n in graph.nodes
        if n.op == "BATCH_MATMUL"
        for i in n.inputs
        if graph.tensors[i].is_constant
    )
    assert ir_weights + matmul_weights == _torch_weight_elements(model)
