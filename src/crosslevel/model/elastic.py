"""Elastic width: narrower sub-networks that share their weights with the full model.

A sub-network at width ``w`` keeps the first ``round(w * C)`` channels of every hidden
layer (HeteroFL, Diao et al. 2021; the channel-prefix form of once-for-all / slimmable
networks). The input layer keeps its input channels and the classifier its classes, so
every width consumes the same data and predicts the same labels. Because a sub-network
is built by the zoo's own constructor with scaled width arguments, its state dict has
the same entries as the full model's, each no larger in every dimension; the slice map
is then simply "the first n entries along each dimension". That holds for flattening
heads too: NCHW flattening is channel-major, so the first k channels are a prefix of
the flattened features.

One trained model yields several variants without retraining: ``train_sandwich``
applies the sandwich rule of universally slimmable networks (Yu & Huang 2019): each
step trains the largest and the smallest width plus random ones in between, the
narrower ones distilled in place from the full width's outputs. BatchNorm statistics
differ between widths (a channel sees other inputs when its neighbours are gone), so
they are recalibrated per width on training data (``calibrate_batchnorm``), as those
papers do after training.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from crosslevel.errors import UsageError
from crosslevel.model import zoo
from crosslevel.model.datasets import Dataset
from crosslevel.model.train import TrainConfig, TrainResult, _progress, distillation_loss

Slices = tuple[slice, ...]
SliceMap = dict[str, Slices]


def _channels(full: int, width: float) -> int:
    return max(1, round(full * width))


# zoo model -> the builder kwargs of its sub-network at width w; the full channel counts
# are the zoo defaults (a test checks that width 1.0 rebuilds exactly the zoo model).
# Models whose channels meet in a concatenation (inception_cells) have no prefix slicing
# and are left out; so are the MobileNets, whose make_divisible rounding is not monotone
# per layer across widths.
ELASTIC_WIDTH_KWARGS: dict[str, Callable[[float], dict[str, object]]] = {
    "digits_cnn": lambda w: {"width": _channels(16, w)},
    "mnist1d_cnn": lambda w: {"width": _channels(32, w)},
    "imu_cnn": lambda w: {"width": _channels(16, w)},
    "ds_cnn": lambda w: {"filters": _channels(64, w)},
    "resnet8": lambda w: {"filters": tuple(_channels(f, w) for f in (16, 32, 64))},
}


def check_width(name: str, width: float) -> None:
    """UsageError unless ``name`` has elastic width and 0 < width <= 1."""
    if name not in ELASTIC_WIDTH_KWARGS:
        raise UsageError(
            f"zoo model {name!r} has no elastic width; use one of {', '.join(ELASTIC_WIDTH_KWARGS)}"
        )
    if not 0.0 < width <= 1.0:
        raise UsageError(f"width must be in (0, 1], got {width}")


def build_at_width(name: str, width: float, **kwargs: object) -> nn.Module:
    """The zoo model ``name`` with its hidden channels scaled by ``width`` (untrained)."""
    check_width(name, width)
    return zoo.build(name, **kwargs, **ELASTIC_WIDTH_KWARGS[name](width))


def _shapes(name: str, width: float, **kwargs: object) -> dict[str, tuple[int, ...]]:
    # on the meta device: no memory and, above all, no draw from torch's global RNG
    with torch.device("meta"):
        module = build_at_width(name, width, **kwargs)
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def slice_map(name: str, width: float, **kwargs: object) -> SliceMap:
    """State-dict entry -> the index slices of the full model's tensor that width uses."""
    full, sub = _shapes(name, 1.0, **kwargs), _shapes(name, width, **kwargs)
    if set(full) != set(sub):
        raise UsageError(f"{name} at width {width} has other layers than at width 1.0")
    slices: SliceMap = {}
    for key, shape in sub.items():
        if len(shape) != len(full[key]) or any(
            s > f for s, f in zip(shape, full[key], strict=True)
        ):
            raise UsageError(f"{name}: {key} at width {width} is {shape}, full is {full[key]}")
        slices[key] = tuple(slice(0, n) for n in shape)
    return slices


def extract_submodel(
    full: nn.Module,
    name: str,
    width: float,
    calibration: np.ndarray | None = None,
    **kwargs: object,
) -> nn.Module:
    """A standalone copy of ``full``'s width-``width`` sub-network (exports to ONNX).

    With ``calibration`` inputs its BatchNorm statistics are recomputed for this width;
    without, they are the full model's (exact at width 1.0). Returned in eval mode.
    """
    sub = build_at_width(name, width, **kwargs)
    state = full.state_dict()
    sub.load_state_dict(
        {key: state[key][s].clone() for key, s in slice_map(name, width, **kwargs).items()}
    )
    if calibration is not None:
        calibrate_batchnorm(sub, calibration)
    return sub.eval()


def write_back(full: nn.Module, sub: nn.Module, name: str, width: float, **kwargs: object) -> None:
    """Copy ``sub``'s weights (trained at ``width``) into ``full``'s slices, in place."""
    state, sub_state = full.state_dict(), sub.state_dict()
    with torch.no_grad():
        for key, s in slice_map(name, width, **kwargs).items():
            state[key][s].copy_(sub_state[key])


def calibrate_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> None:
    """Recompute every BatchNorm's running statistics on inputs ``x`` (no weight changes).

    A cumulative average over the batches (momentum None) so the result does not depend
    on how many batches there are. The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).float())
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


# --------------------------------------------------------------------------- sandwich rule


class SharedWidths:
    """Forward passes of ``full`` at several widths with the full model's own tensors.

    Each width's architecture lives on the meta device; ``functional_call`` runs it on
    views (slices) of the full model's parameters and buffers, so gradients and
    BatchNorm statistic updates land in the full model.
    """

    def __init__(self, full: nn.Module, name: str, widths: Sequence[float], **kwargs: object):
        self.full = full
        self.slices: dict[float, SliceMap] = {}
        self.archs: dict[float, nn.Module] = {}
        for width in widths:
            self.slices[width] = slice_map(name, width, **kwargs)
            with torch.device("meta"):
                self.archs[width] = build_at_width(name, width, **kwargs)

    def forward(self, width: float, x: torch.Tensor) -> torch.Tensor:
        tensors = dict(self.full.named_parameters()) | dict(self.full.named_buffers())
        views = {key: tensors[key][s] for key, s in self.slices[width].items()}
        arch = self.archs[width].train(self.full.training)
        return functional_call(arch, views, (x,))


def sandwich_widths(widths: Sequence[float], n_random: int, rng: random.Random) -> list[float]:
    """Largest, smallest and ``n_random`` widths drawn from the ones between."""
    ordered = sorted(set(widths), reverse=True)
    middle = ordered[1:-1] or ordered
    return [ordered[0], *([ordered[-1]] if len(ordered) > 1 else [])] + [
        rng.choice(middle) for _ in range(n_random)
    ]


def train_sandwich(
    full: nn.Module,
    name: str,
    data: Dataset,
    widths: Sequence[float] = (1.0, 0.75, 0.5, 0.25),
    config: TrainConfig | None = None,
    n_random: int = 1,
    progress: bool = False,
    **kwargs: object,
) -> TrainResult:
    """Train ``full`` in place so that every width in ``widths`` works (sandwich rule).

    Seeding, optimizer and schedule follow ``model.train.train``; the narrower widths
    learn from the full width's detached logits (``distillation_loss`` with the
    config's temperature and alpha). Ends with the full model's BatchNorm statistics
    recalibrated at width 1.0; extract narrower variants with ``calibration`` data.
    """
    cfg = config or TrainConfig()
    for width in widths:
        check_width(name, width)
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    opt = torch.optim.AdamW(full.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * -(-len(x) // cfg.batch_size))
    run = _Sandwich(
        shared=SharedWidths(full, name, sorted({1.0, *widths}), **kwargs),
        widths=widths, n_random=n_random, cfg=cfg, rng=random.Random(cfg.seed),
        gen=torch.Generator().manual_seed(cfg.seed), opt=opt,
        sched=torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps),
    )  # fmt: skip
    result = TrainResult(distilled=True)
    with _progress(progress) as bar:
        task = bar.add_task(f"sandwich {name}", total=cfg.epochs, loss=float("nan"))
        for _ in range(cfg.epochs):
            result.losses.append(run.epoch(x, y))
            bar.update(task, advance=1, loss=result.losses[-1])
    calibrate_batchnorm(full, data.x_train)
    return result


@dataclass
class _Sandwich:
    """The state of one sandwich-rule training run."""

    shared: SharedWidths
    widths: Sequence[float]
    n_random: int
    cfg: TrainConfig
    rng: random.Random  # draws the random middle widths
    gen: torch.Generator  # shuffles the batches
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler

    def epoch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One pass over the shuffled data; the sample-weighted mean loss."""
        self.shared.full.train()
        order = torch.randperm(len(x), generator=self.gen)
        total = 0.0
        for start in range(0, len(x), self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a single sample
                continue
            loss = self.loss(x[idx], y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            total += float(loss.detach()) * len(idx)
        return total / len(x)

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """CE of the widest pass plus in-place distillation of each narrower one."""
        widths = sandwich_widths(self.widths, self.n_random, self.rng)
        teacher = self.shared.forward(widths[0], xb)
        loss = F.cross_entropy(teacher, yb)
        soft = teacher.detach()
        for width in widths[1:]:
            student = self.shared.forward(width, xb)
            loss = loss + distillation_loss(student, soft, yb, self.cfg.temperature, self.cfg.alpha)
        return loss
