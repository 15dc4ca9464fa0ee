"""Quantization-aware fine-tuning that simulates crosslevel's int8 scheme during training.

When post-training quantization loses too much, the float model is fine-tuned for a few
epochs with the int8 rounding in the loop, so it learns weights whose quantized form
works. The simulation matches what the exporters then deploy (``model.quantize``,
``model.qdq``):

* weights: per-output-channel symmetric int8 in [-127, 127], scale ``max|w| / 127``,
  taken on the weights *as deployed*, i.e. with the following BatchNorm folded in
  (``w * gamma / sqrt(var + eps)``); BatchNorm statistics are frozen during QAT, so the
  fold is the one the graph level will make;
* activations: per-tensor asymmetric int8 (range widened to include 0) at the tensors
  the int8 graph quantizes: the model input, the output of every activation module (a
  ReLU after Conv-BN is fused, so the ReLU output is the quantized tensor), of a Conv,
  Linear or BatchNorm with no activation after it, and of average pooling. Ranges start
  from min-max over real calibration samples and follow a moving average while training;
* rounding uses a straight-through estimator (``torch.fake_quantize_*``: gradient 1
  inside the range, 0 where clamped).

The module comes back as a plain float module (the fake-quant hooks removed); the int8
IR, ``.tflite`` and QDQ ONNX are made from it by the same exporters as after PTQ, which
recalibrate on the same samples and so land on the ranges QAT trained against.

Limit: only module outputs get activation fake-quant; functional operations in
``forward`` (residual ``+``, ``torch.cat``) are simulated in float. The task models
(digits, mnist1d, IMU CNNs) have none.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from crosslevel.errors import UsageError
from crosslevel.model.datasets import Dataset
from crosslevel.model.quantize import INT8_MAX, INT8_MIN, MIN_RANGE, WEIGHT_MAX
from crosslevel.model.train import TrainConfig, TrainResult, train

DEFAULT_EPOCHS = 3
DEFAULT_LR = 3e-4  # a tenth of the training recipe's: QAT only nudges trained weights
RANGE_MOMENTUM = 0.01  # moving-average weight of one batch's min/max

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Sigmoid, nn.Tanh)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm,)
_POOLS = (nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AvgPool1d)


def fake_quant_weight(weight: torch.Tensor, fold: torch.Tensor | None = None) -> torch.Tensor:
    """``weight`` through per-output-channel symmetric int8 (STE), after folding ``fold``.

    ``fold`` (one factor per output channel, BatchNorm's gamma / sqrt(var + eps)) is the
    factor the graph level multiplies into the weights before they are quantized; the
    result is divided back so the unfolded layer computes the quantized folded product.
    """
    shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    k = fold.reshape(shape) if fold is not None else torch.ones(shape, dtype=weight.dtype)
    folded = weight * k
    max_abs = folded.detach().abs().reshape(folded.shape[0], -1).amax(dim=1)
    scale = torch.where(max_abs > 0, max_abs / WEIGHT_MAX, torch.ones_like(max_abs))
    zero = torch.zeros(scale.shape, dtype=torch.int32)
    quant = torch.fake_quantize_per_channel_affine(
        folded, scale.float(), zero, 0, -WEIGHT_MAX, WEIGHT_MAX
    )
    safe = k.abs() > 1e-12  # a channel BatchNorm zeroed: nothing to quantize
    return torch.where(safe, quant / torch.where(safe, k, torch.ones_like(k)), weight)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of ``model.quantize.activation_params`` for the range [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < MIN_RANGE:
        lo, hi = (hi - MIN_RANGE, hi) if -lo > hi else (lo, lo + MIN_RANGE)
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero = int(np.clip(np.floor(INT8_MIN - lo / scale + 0.5), INT8_MIN, INT8_MAX))
    return float(np.float32(scale)), zero


class _FoldedWeight(nn.Module):
    """Parametrization: the conv/linear weight as int8 sees it (BatchNorm folded)."""

    def __init__(self, norm: nn.Module | None) -> None:
        super().__init__()
        self._norm = [norm]  # a list, so the BatchNorm is not registered twice

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        norm = self._norm[0]
        fold = None
        if norm is not None:
            assert isinstance(norm, _NORMS) and norm.running_var is not None
            gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
            fold = gamma / torch.sqrt(norm.running_var + norm.eps)
        return fake_quant_weight(weight, fold)


@dataclass
class _Range:
    """A tensor's activation range: fixed in eval mode, moving average in training."""

    lo: float = 0.0
    hi: float = 0.0
    seen: bool = False

    def update(self, x: torch.Tensor, momentum: float) -> None:
        lo, hi = float(x.detach().min()), float(x.detach().max())
        if not self.seen:
            self.lo, self.hi, self.seen = lo, hi, True
        else:
            self.lo += momentum * (lo - self.lo)
            self.hi += momentum * (hi - self.hi)

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        scale, zero = activation_qparams(self.lo, self.hi)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, INT8_MIN, INT8_MAX)


@dataclass
class QatResult:
    """The fine-tuned float model and what QAT simulated."""

    model: nn.Module
    epochs: int
    weight_layers: list[str]
    activation_points: list[str]
    finetune: TrainResult | None = None


class _QatWrapper(nn.Module):
    """The module with fake-quant hooks; BatchNorms stay frozen even in train mode."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.ranges: dict[str, _Range] = {}
        self.calibrating = False
        self.handles: list[torch.utils.hooks.RemovableHandle] = []

    def train(self, mode: bool = True) -> _QatWrapper:
        super().train(mode)
        for m in self.module.modules():
            if isinstance(m, _NORMS):
                m.eval()  # the fold must stay the one deployment makes
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self._observe("input", x))

    def _observe(self, name: str, x: torch.Tensor) -> torch.Tensor:
        rng = self.ranges.setdefault(name, _Range())
        if self.calibrating:
            rng.lo, rng.hi = min(rng.lo, float(x.min())), max(rng.hi, float(x.max()))
            return x
        if self.training:
            rng.update(x, RANGE_MOMENTUM)
        return rng.fake_quant(x)


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in module.named_modules() if n and not list(m.children())]


def _plan(module: nn.Module) -> tuple[list[tuple[nn.Module, nn.Module | None, str]], list[str]]:
    """Weighted layers with the BatchNorm that follows each, and activation points.

    Relies on the definition order of leaf modules being their execution order (true of
    ``nn.Sequential`` stacks, which is how every zoo CNN is written).
    """
    leaves = _leaves(module)
    weighted: list[tuple[nn.Module, nn.Module | None, str]] = []
    points: list[str] = []
    for i, (name, m) in enumerate(leaves):
        after = leaves[i + 1][1] if i + 1 < len(leaves) else None
        if isinstance(m, _WEIGHTED):
            norm = after if isinstance(after, _NORMS) else None
            if norm is not None and getattr(norm, "num_features", -1) != _out_channels(m):
                norm = None
            weighted.append((m, norm, name))
            fused = norm is not None or isinstance(after, _ACTIVATIONS)
            if not fused:
                points.append(name)
        elif isinstance(m, _NORMS) and not isinstance(after, _ACTIVATIONS):
            points.append(name)
        elif isinstance(m, _ACTIVATIONS + _POOLS):
            points.append(name)
    return weighted, points


def _out_channels(m: nn.Module) -> int:
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.out_channels
    assert isinstance(m, nn.Linear)
    return m.out_features


@contextmanager
def _fake_quantized(wrapper: _QatWrapper) -> Iterator[tuple[list[str], list[str]]]:
    """Install weight parametrizations and activation hooks; remove them on exit."""
    weighted, points = _plan(wrapper.module)
    named = dict(wrapper.module.named_modules())
    for layer, norm, _ in weighted:
        parametrize.register_parametrization(layer, "weight", _FoldedWeight(norm))
    for name in points:
        hook = _output_hook(wrapper, name)
        wrapper.handles.append(named[name].register_forward_hook(hook))
    try:
        yield [n for _, _, n in weighted], points
    finally:
        for handle in wrapper.handles:
            handle.remove()
        wrapper.handles.clear()
        for layer, _, _ in weighted:  # keep the trained raw weights, drop the rounding
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)


@contextmanager
def simulated_int8(model: nn.Module, calibration: np.ndarray) -> Iterator[nn.Module]:
    """``model`` (changed in place while inside) with int8 fake quantization, in eval mode.

    Activation ranges are min-max over ``calibration``, as PTQ sets them; the module
    yielded computes what the deployed int8 model computes, up to rounding of biases and
    of the fixed-point rescaling. On exit ``model`` is a plain float module again.
    """
    if calibration is None or len(calibration) == 0:
        raise UsageError("int8 simulation needs real calibration samples")
    wrapper = _QatWrapper(model)
    with _fake_quantized(wrapper):
        _calibrate(wrapper, calibration)
        yield wrapper


def _output_hook(wrapper: _QatWrapper, name: str):  # type: ignore[no-untyped-def]
    def hook(_module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        return wrapper._observe(name, output)

    return hook


def _calibrate(wrapper: _QatWrapper, calibration: np.ndarray) -> None:
    """Min-max ranges of every activation point on the real calibration samples."""
    wrapper.eval()
    wrapper.calibrating = True
    try:
        with torch.no_grad():
            for start in range(0, len(calibration), 256):
                chunk = np.ascontiguousarray(calibration[start : start + 256], dtype=np.float32)
                wrapper(torch.from_numpy(chunk))
    finally:
        wrapper.calibrating = False
    for rng in wrapper.ranges.values():
        rng.seen = True


def quantization_aware_finetune(
    model: nn.Module,
    data: Dataset,
    calibration: np.ndarray,
    epochs: int = DEFAULT_EPOCHS,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    teacher: nn.Module | None = None,
    progress: bool = False,
) -> QatResult:
    """Fine-tune a copy of trained float ``model`` with int8 fake quantization.

    ``calibration``: real inputs (N, *input shape) that set the starting activation
    ranges (the same samples PTQ calibrates on). ``teacher``: optional float model to
    distill from (its soft targets carry the float model's knowledge through rounding).
    ``model`` is not changed; the result's model is a plain float module.
    """
    if calibration is None or len(calibration) == 0:
        raise UsageError("quantization-aware fine-tuning needs real calibration samples")
    if epochs < 1:
        raise UsageError(f"QAT needs at least one epoch, got {epochs}")
    student = copy.deepcopy(model)
    wrapper = _QatWrapper(student)
    cfg = TrainConfig(epochs=epochs, lr=lr, seed=seed, weight_decay=0.0)
    with _fake_quantized(wrapper) as (layers, points):
        _calibrate(wrapper, calibration)
        history = train(
            wrapper, data, cfg, teacher=teacher, progress=progress,
            description="quantization-aware fine-tuning",
        )  # fmt: skip
    student.eval()
    return QatResult(student, epochs, layers, ["input", *points], history)
