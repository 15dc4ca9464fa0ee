"""Independent MAC and parameter counter for PyTorch models, by forward hooks.

Tests use it as the reference the IR's own cost model is checked against, so it reads
nothing but the modules and the shapes seen during one forward pass at batch 1.

What counts as a multiply-accumulate (MAC):
- Conv2d: output elements x (in_channels / groups) x kernel_h x kernel_w;
- Linear: output elements x in_features (any number of leading dims, e.g. tokens);
- matrix products called in forward code (torch.matmul, Tensor.matmul, the @ operator,
  torch.mm/bmm and their Tensor methods), as in attention: output elements x the shared
  inner dimension. They are seen through a TorchFunctionMode, the hook point PyTorch
  offers for functions that are not modules.
Everything else counts 0: biases, BatchNorm, activations, pooling, Add, Concat,
Softmax, LayerNorm, reshapes.

Parameters are the model's nn.Parameter elements (BatchNorm weight and bias included,
running statistics excluded), i.e. the unfolded PyTorch count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

_MATMULS: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.matmul,
        torch.mm,
        torch.bmm,
        torch.Tensor.matmul,
        torch.Tensor.mm,
        torch.Tensor.bmm,
        torch.Tensor.__matmul__,
    }
)


class _MatMulCounter(TorchFunctionMode):
    """Adds output elements x inner dimension for every matrix product called."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in _MATMULS:
            self.macs += out.numel() * args[0].shape[-1]
        return out


def _layer_macs(module: nn.Module, out: torch.Tensor) -> int:
    """MACs of one Conv2d or Linear call, from its output shape."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def count_macs_params(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, parameters) of `model` on one input of `input_shape` (no batch dim).

    Runs one eval-mode forward pass at batch 1 and restores the model's mode.
    """
    total = [0]

    def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        total[0] += _layer_macs(module, out)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _MatMulCounter() as mm:
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return total[0] + mm.macs, params
