"""Accuracy on the held-out split: in PyTorch and through ONNX Runtime on the export.

Why both: the PyTorch figure is what training optimizes; the ONNX Runtime figure is what
the deployed file does (an export or a QDQ quantization that changes behaviour shows up
as a gap between the two). ONNX models here have a fixed batch of 1 (the deployment
shape), so ONNX Runtime runs them one sample at a time in one session.

Accuracy over seeds follows DESIGN.md: the mean of at least three seeds with its spread
(the sample standard deviation, plus min and max).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from crosslevel.errors import UsageError
from crosslevel.runtime.ort import OnnxModel, make_session, run_session

MIN_SEEDS = 3


def predict_torch(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of ``model`` (eval mode, no grad) on float32 inputs ``x`` (N, ...)."""
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
                outs.append(model(chunk.float()).numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def predict_onnx(model: OnnxModel, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """Logits of an ONNX model with batch dimension 1, one sample per run."""
    session = make_session(model, threads)
    arg = session.get_inputs()[0]
    batch = arg.shape[0] if arg.shape else 1
    if isinstance(batch, int) and batch != 1 and batch != len(x):
        raise UsageError(f"ONNX model has batch {batch}; evaluate with batch 1 or {len(x)}")
    if isinstance(batch, int) and batch == len(x) and batch != 1:
        return run_session(session, [np.ascontiguousarray(x, dtype=np.float32)])[0]
    outs = [run_session(session, [np.ascontiguousarray(s[None], np.float32)])[0] for s in x]
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise UsageError("accuracy of an empty test split is undefined")
    if logits.shape[0] != len(labels):
        raise UsageError(f"{logits.shape[0]} predictions for {len(labels)} labels")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def accuracy_torch(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(predict_torch(model, x), y)


def accuracy_onnx(model: OnnxModel, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(predict_onnx(model, x), y)


@dataclass(frozen=True)
class SeedStats:
    """Mean and spread of one figure over seeds (accuracy in [0, 1])."""

    mean: float
    std: float  # sample standard deviation (ddof=1); 0 for a single value
    min: float
    max: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> SeedStats:
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            raise UsageError("no values to summarize")
        std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        return cls(float(arr.mean()), std, float(arr.min()), float(arr.max()), tuple(values))

    def percent(self) -> str:
        """'97.3 ± 0.4 %' (mean ± sample std over seeds)."""
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} %"

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["values"] = list(self.values)
        doc["seeds"] = len(self.values)
        return doc
