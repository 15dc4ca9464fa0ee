"""Seeded training of zoo models on the offline data sets, with optional distillation.

Why so small: the data sets (digits, mnist1d, BasicMotions) and the task CNNs train to
useful accuracy in seconds on one CPU core, so every compression pass can be measured on
real data inside a benchmark run. Adam with a cosine learning-rate decay is enough here.

Determinism: each call seeds torch's global generator (weight init by the caller is
separate) and shuffles with its own ``torch.Generator`` seeded from ``seed``, so the same
model, data and seed give the same weights on the same machine and thread count.

Checkpoints are plain tensors: a NumPy ``.npz`` archive of the state dict plus one
``__meta__`` entry (UTF-8 JSON as uint8), read with ``allow_pickle=False``. Nothing in a
checkpoint can run code; anything that is not such an archive is an InvalidModelError.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.model.datasets import Dataset

CHECKPOINT_FORMAT = "crosslevel.checkpoint/1"
META_KEY = "__meta__"
MAX_CHECKPOINT_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    ``temperature`` and ``alpha`` only matter with a teacher: the loss is
    ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``
    (Hinton et al. 2015; T^2 keeps the soft-target gradients on the CE scale).
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    temperature: float = 4.0
    alpha: float = 0.7
    max_train_samples: int | None = None  # a prefix of the shuffled train split (tests)

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError(
                f"need epochs >= 0, batch_size >= 1 and lr > 0; got {self.epochs}, "
                f"{self.batch_size} and {self.lr}"
            )
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise UsageError(
                f"distillation needs 0 <= alpha <= 1 and temperature > 0; got {self.alpha} "
                f"and {self.temperature}"
            )


@dataclass
class TrainResult:
    """Per-epoch mean training loss (the last entry is the final epoch)."""

    losses: list[float] = field(default_factory=list)
    distilled: bool = False


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Soft-target KL (scaled by T^2) mixed with hard-label cross-entropy."""
    hard = F.cross_entropy(student, labels)
    if alpha == 0.0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
        reduction="batchmean", log_target=True,
    ) * (t * t)  # fmt: skip
    return alpha * soft + (1.0 - alpha) * hard


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs  loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=True,
    )


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig | None = None,
    teacher: nn.Module | None = None,
    progress: bool = False,
    description: str = "training",
) -> TrainResult:
    """Train ``model`` in place on ``data``'s train split; returns the loss history.

    With ``teacher`` (an nn.Module in eval mode, left untouched) the loss is the
    distillation loss of ``TrainConfig``. The model is left in eval mode.
    """
    cfg = config or TrainConfig()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(data.x_train, dtype=np.float32))
    y = torch.from_numpy(np.asarray(data.y_train, dtype=np.int64))
    if cfg.max_train_samples is not None:
        keep = torch.randperm(len(x), generator=gen)[: cfg.max_train_samples]
        x, y = x[keep], y[keep]
    if len(x) == 0:
        raise UsageError(f"data set {data.name!r} has no training samples")
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(1, cfg.epochs * steps_per_epoch)
    )
    if teacher is not None:
        teacher.eval()
    result = TrainResult(distilled=teacher is not None)
    with _progress(progress) as bar:
        task = bar.add_task(description, total=cfg.epochs, loss=float("nan"))
        for _ in range(cfg.epochs):
            loss = _epoch(model, x, y, cfg, gen, opt, sched, teacher)
            result.losses.append(loss)
            bar.update(task, advance=1, loss=loss)
    model.eval()
    return result


def _epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    gen: torch.Generator,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    teacher: nn.Module | None,
) -> float:
    """One pass over the shuffled data; returns the sample-weighted mean loss."""
    model.train()
    order = torch.randperm(len(x), generator=gen)
    total = 0.0
    for start in range(0, len(x), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        if len(idx) < 2 and len(x) >= 2:  # BatchNorm cannot train on a single sample
            continue
        xb, yb = x[idx], y[idx]
        logits = model(xb)
        if teacher is None:
            loss = F.cross_entropy(logits, yb)
        else:
            with torch.no_grad():
                soft = teacher(xb)
            loss = distillation_loss(logits, soft, yb, cfg.temperature, cfg.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
    return total / len(x)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, path: Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``model``'s state dict as plain arrays (``.npz``) with JSON metadata."""
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, value in model.state_dict().items():
        if name == META_KEY:
            raise UsageError(f"state dict entry named {META_KEY!r} clashes with the metadata")
        arrays[name] = value.detach().cpu().numpy()
        dtypes[name] = str(value.dtype).removeprefix("torch.")
    doc = {"format": CHECKPOINT_FORMAT, "dtypes": dtypes, "meta": meta or {}}
    arrays[META_KEY] = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata) of a checkpoint; InvalidModelError for anything else.

    ``allow_pickle=False`` makes NumPy refuse object arrays, so a hostile archive can at
    worst be rejected; every entry must be a numeric array of the dtype the header names.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"checkpoint {path} does not exist")
    if path.stat().st_size > MAX_CHECKPOINT_BYTES:
        raise InvalidModelError(f"checkpoint {path} is larger than {MAX_CHECKPOINT_BYTES} bytes")
    arrays = _read_npz(path)
    doc = _checkpoint_header(path, arrays.pop(META_KEY, None))
    state: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        state[name] = _checkpoint_tensor(path, name, array, doc["dtypes"].get(name))
    missing = set(doc["dtypes"]) - set(state)
    if missing:
        raise InvalidModelError(f"checkpoint {path} lacks entries {sorted(missing)}")
    return state, dict(doc["meta"])


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an uncompressed-or-deflated .npz, no pickles, size bounded."""
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(info.file_size for info in zf.infolist())
        if unpacked > MAX_CHECKPOINT_BYTES:
            raise InvalidModelError(
                f"checkpoint {path} unpacks to {unpacked} bytes (limit {MAX_CHECKPOINT_BYTES})"
            )
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise InvalidModelError(f"checkpoint {path} is not an .npz archive")
            return {name: archive[name] for name in archive.files}
    except InvalidModelError:
        raise
    except Exception as exc:  # zipfile, the .npy header parser and NumPy raise many types
        raise InvalidModelError(f"checkpoint {path} is not a valid .npz archive: {exc}") from exc


def _checkpoint_header(path: Path, raw: np.ndarray | None) -> dict[str, Any]:
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise InvalidModelError(f"checkpoint {path} has no {META_KEY} header")
    try:
        doc = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"checkpoint {path}: header is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT:
        raise InvalidModelError(f"checkpoint {path}: format is not {CHECKPOINT_FORMAT!r}")
    if not isinstance(doc.get("dtypes"), dict) or not isinstance(doc.get("meta"), dict):
        raise InvalidModelError(f"checkpoint {path}: header lacks 'dtypes' or 'meta'")
    return doc


_ALLOWED_DTYPES = {"float32", "float64", "float16", "int64", "int32", "int8", "uint8", "bool"}


def _checkpoint_tensor(path: Path, name: str, array: np.ndarray, dtype: Any) -> torch.Tensor:
    if dtype not in _ALLOWED_DTYPES or array.dtype != np.dtype(str(dtype)):
        raise InvalidModelError(
            f"checkpoint {path}: entry {name!r} has dtype {array.dtype}, header says {dtype!r}"
        )
    return torch.from_numpy(np.array(array, copy=True, order="C"))  # 0-d stays 0-d


def load_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Load ``state`` into ``model``, every name and shape checked (InvalidModelError)."""
    own = model.state_dict()
    if set(own) != set(state):
        diff = sorted(set(own) ^ set(state))[:5]
        raise InvalidModelError(f"{where} does not match the model: entries differ {diff}")
    for name, value in state.items():
        if tuple(own[name].shape) != tuple(value.shape):
            raise InvalidModelError(
                f"{where}: {name!r} has shape {tuple(value.shape)}, the model wants "
                f"{tuple(own[name].shape)}"
            )
    model.load_state_dict(state)


def count_params(model: nn.Module) -> int:
    """Trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
