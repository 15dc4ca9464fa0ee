"""Structured channel pruning with Torch-Pruning's dependency graph, then fine-tuning.

Why Torch-Pruning: removing an output channel of a conv must also remove the matching
BatchNorm entries, the input channel of every consumer, and keep residual adds and
concatenations consistent. Its DependencyGraph traces the model and groups exactly those
coupled slices; ``MetaPruner`` ranks groups by an importance score and physically
removes them, so the pruned model is a smaller dense model (fewer MACs, parameters and
activation bytes), not a masked one.

Importance: ``magnitude`` (L2 norm of each group's weights), ``bn`` (|gamma| of the
BatchNorm in the group, network slimming) or ``taylor`` (|w * dL/dw|, first-order loss
change, from one backward pass over real training samples). ``global_pruning`` ranks
all layers together (the ratio is then a model-wide budget, so some layers lose more),
otherwise every layer loses the same fraction; ``layer_ratios`` overrides per module.

The classifier layer (the last Linear, or the last conv when there is none) is never
pruned: its outputs are the classes. Modules that hold parameters but are not of a type
Torch-Pruning knows are left alone with a warning naming them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from crosslevel.errors import UsageError
from crosslevel.model.datasets import Dataset
from crosslevel.model.train import TrainConfig, TrainResult, train

IMPORTANCES = ("magnitude", "bn", "taylor")
# Fine-tuning after pruning, chosen on a validation split of the training split (80/20,
# seeds 0-2, 50 % pruning + KD, never the test split), in points lost on validation:
#   mnist1d_cnn: 15 epochs lr 3e-3 -2.60; 30 epochs lr 3e-3 -1.46; 30 epochs lr 1e-2
#   -0.57 (taylor importance -0.21; lr 3e-2 -0.21; 45 epochs +0.10, per-seed spread ~1
#   point); T=2 or 8, alpha 0.5 or 0.9 worse than T=4, alpha 0.7.  digits_cnn: 10
#   epochs lr 3e-3 -1.39; 20 epochs lr 1e-2 -0.58 (taylor 0.00).
# So: the whole training recipe's epochs (a pruned net is a new net to settle) at lr 1e-2.
PRUNE_LR = 1e-2
# Module types Torch-Pruning prunes (or passes channels through) by itself.
_KNOWN = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.LayerNorm,
          nn.GroupNorm, nn.PReLU, nn.Embedding)  # fmt: skip
TAYLOR_SAMPLES = 256


class PruningSkipWarning(UserWarning):
    """A layer the pruner cannot handle was left unpruned (named in the message)."""


@dataclass
class PruneResult:
    """The pruned model and what changed: channels per layer (before, after)."""

    model: nn.Module
    channels: dict[str, tuple[int, int]]
    params_before: int
    params_after: int
    skipped: list[str] = field(default_factory=list)
    finetune: TrainResult | None = None

    @property
    def removed_channels(self) -> int:
        return sum(before - after for before, after in self.channels.values())


def finetune_epochs_after_pruning(model: str) -> int:
    """The whole training recipe of zoo model ``model`` (see PRUNE_LR's measurements)."""
    from crosslevel.model.baselines import DEFAULT_EPOCHS, RECIPE_EPOCHS

    return RECIPE_EPOCHS.get(model, DEFAULT_EPOCHS)


def _check_ratio(ratio: float, what: str = "pruning ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"{what} must be in [0, 1), got {ratio}")


def _importance(kind: str) -> tp.importance.Importance:
    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "bn":
        return tp.importance.BNScaleImportance()
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise UsageError(f"unknown importance {kind!r}; use one of {', '.join(IMPORTANCES)}")


def _classifier(model: nn.Module) -> nn.Module | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return convs[-1] if convs else None


def _unknown_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with parameters of their own that Torch-Pruning has no rule for."""
    found = []
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own and not isinstance(module, _KNOWN):
            found.append((name or type(module).__name__, module))
    return found


def _channels(model: nn.Module) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = m.out_channels
        elif isinstance(m, nn.Linear):
            out[name] = m.out_features
    return out


def _taylor_gradients(model: nn.Module, data: Dataset, seed: int) -> None:
    """One backward pass of the training loss, for Taylor importance."""
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(data.x_train))[:TAYLOR_SAMPLES]
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[pick]))
    y = torch.from_numpy(data.y_train[pick])
    model.eval()  # BN running statistics stay as trained
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    importance: str = "magnitude",
    global_pruning: bool = False,
    layer_ratios: Mapping[str, float] | None = None,
    data: Dataset | None = None,
    seed: int = 0,
) -> PruneResult:
    """Prune ``ratio`` of the channels of ``model`` in place (see the module docstring).

    ``example``: an input batch for tracing. ``layer_ratios``: module name -> ratio for
    those modules. Taylor importance needs ``data`` (its training split gives gradients).
    """
    _check_ratio(ratio)
    named = dict(model.named_modules())
    ratio_dict: dict[nn.Module, float] = {}
    for name, value in (layer_ratios or {}).items():
        _check_ratio(value, f"ratio of layer {name!r}")
        if name not in named:
            raise UsageError(f"no layer {name!r} in {type(model).__name__}")
        ratio_dict[named[name]] = value
    imp = _importance(importance)
    if importance == "taylor" and data is None:
        raise UsageError("Taylor importance needs training data for its gradients")
    ignored: list[nn.Module] = []
    head = _classifier(model)
    if head is not None:
        ignored.append(head)
    skipped = []
    for name, module in _unknown_layers(model):
        warnings.warn(
            f"pruning skips layer {name!r} ({type(module).__name__}): Torch-Pruning has no "
            "rule for its parameters",
            PruningSkipWarning,
            stacklevel=2,
        )
        ignored.append(module)
        skipped.append(name)
    before, params_before = _channels(model), sum(p.numel() for p in model.parameters())
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=imp, global_pruning=global_pruning,
        pruning_ratio=ratio, pruning_ratio_dict=ratio_dict or None, ignored_layers=ignored,
    )  # fmt: skip
    if importance == "taylor":
        assert data is not None
        _taylor_gradients(model, data, seed)
    pruner.step()
    model.zero_grad(set_to_none=True)
    after = _channels(model)
    channels = {n: (before[n], after[n]) for n in before if n in after}
    params_after = sum(p.numel() for p in model.parameters())
    return PruneResult(model, channels, params_before, params_after, skipped)


def prune_and_finetune(
    model: nn.Module,
    data: Dataset,
    ratio: float,
    importance: str = "magnitude",
    global_pruning: bool = False,
    epochs: int = 10,
    distill: bool = False,
    seed: int = 0,
    lr: float = PRUNE_LR,
    progress: bool = False,
) -> PruneResult:
    """Prune a copy of trained ``model`` and fine-tune it on ``data``.

    With ``distill`` the unpruned model is the teacher (Hinton KD, ``TrainConfig``'s
    temperature and alpha). ``model`` itself is not changed.
    """
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model)
    example = torch.from_numpy(np.ascontiguousarray(data.x_train[:2]))
    result = prune_model(student, example, ratio, importance, global_pruning, data=data, seed=seed)
    if epochs > 0:
        cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed)
        result.finetune = train(
            student, data, cfg, teacher=teacher if distill else None, progress=progress,
            description=f"fine-tune pruned ({ratio:.0%})",
        )  # fmt: skip
    student.eval()
    return result
