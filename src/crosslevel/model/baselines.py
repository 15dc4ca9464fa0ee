"""Trained float baselines of the zoo models, cached in an explicit cache folder.

Every compression pass is judged against a trained baseline of the same model, data and
seed. Training one takes seconds, but benchmarks and the CLI ask for the same baselines
again and again, so they are cached as plain-tensor checkpoints (``model.train``) under
``cache_dir/baselines/`` (default ``$CROSSLEVEL_CACHE`` or ``~/.cache/crosslevel``),
keyed by a hash of model, data set, seed, training recipe and ``BASELINE_VERSION``; a
missing or unreadable entry is rebuilt. Nothing is cached without a folder to put it in.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.model import zoo
from crosslevel.model.datasets import DATASETS, Dataset, load_dataset
from crosslevel.model.evaluate import accuracy_torch
from crosslevel.model.train import (
    TrainConfig,
    load_checkpoint,
    load_state,
    save_checkpoint,
    train,
)

BASELINE_VERSION = "1"  # bump when training code or recipes change what a baseline is

# Epochs that reach useful accuracy in seconds (measured: digits_cnn 99.7 %, mnist1d_cnn
# 94 %, imu_cnn 100 % on seed 0); other models get DEFAULT_EPOCHS.
RECIPE_EPOCHS = {"digits_cnn": 20, "mnist1d_cnn": 30, "imu_cnn": 60}
DEFAULT_EPOCHS = 20


def finetune_epochs(model: str) -> int:
    """Fine-tuning epochs after a pass: half the model's training recipe.

    Measured (mnist1d_cnn, 50 % pruning + KD, seed 1): 10 epochs at lr 1e-3 lost 2.5
    points, 15 at 3e-3 lost 0.3, 30 at 3e-3 lost 0.1.
    """
    return max(1, RECIPE_EPOCHS.get(model, DEFAULT_EPOCHS) // 2)


def default_cache_dir() -> Path:
    """``$CROSSLEVEL_CACHE`` if set, else ``~/.cache/crosslevel``."""
    env = os.environ.get("CROSSLEVEL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "crosslevel"


@dataclass
class Baseline:
    """A trained float model with the data it was trained on and its test accuracy."""

    name: str
    data: Dataset
    module: nn.Module
    seed: int
    config: TrainConfig
    accuracy: float
    cached: bool  # True when loaded from the cache instead of trained now


def check_pair(model: str, data: Dataset) -> zoo.ZooEntry:
    """The zoo entry of ``model``, checked to consume ``data``'s inputs and classes."""
    entry = zoo.ZOO.get(model)
    if entry is None:
        raise UsageError(f"unknown zoo model {model!r}; known: {', '.join(zoo.ZOO)}")
    if tuple(entry.input_shape) != tuple(data.input_shape):
        raise UsageError(
            f"{model} takes inputs {entry.input_shape}, data set {data.name!r} has "
            f"{data.input_shape}"
        )
    if entry.num_outputs != data.num_classes:
        raise UsageError(
            f"{model} has {entry.num_outputs} outputs, {data.name!r} has {data.num_classes} classes"
        )
    return entry


def get_dataset(name: str, seed: int) -> Dataset:
    """``load_dataset`` with an unknown name as a UsageError (exit 2)."""
    if name not in DATASETS:
        raise UsageError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return load_dataset(name, seed=seed)


def recipe(model: str, seed: int, epochs: int | None = None) -> TrainConfig:
    return TrainConfig(epochs=epochs or RECIPE_EPOCHS.get(model, DEFAULT_EPOCHS), seed=seed)


def cache_key(model: str, data: str, config: TrainConfig) -> str:
    doc = {
        "version": BASELINE_VERSION,
        "torch": torch.__version__,
        "model": model,
        "data": data,
        "config": asdict(config),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def trained_baseline(
    model: str,
    data: str | Dataset,
    seed: int = 0,
    cache_dir: Path | None = None,
    epochs: int | None = None,
    progress: bool = False,
    use_cache: bool = True,
) -> Baseline:
    """The trained baseline of ``model`` on ``data`` for ``seed`` (cached when possible).

    ``seed`` picks the data split, the initial weights and the shuffling. ``use_cache``
    False trains without reading or writing the cache.
    """
    dataset = get_dataset(data, seed) if isinstance(data, str) else data
    check_pair(model, dataset)
    config = recipe(model, seed, epochs)
    folder = (cache_dir or default_cache_dir()) / "baselines"
    path = folder / f"{model}-{dataset.name}-s{seed}-{cache_key(model, dataset.name, config)}.npz"
    torch.manual_seed(seed)
    module = zoo.build(model)
    if use_cache and _try_load(module, path):
        module.eval()
        acc = accuracy_torch(module, dataset.x_test, dataset.y_test)
        return Baseline(model, dataset, module, seed, config, acc, cached=True)
    train(module, dataset, config, progress=progress, description=f"{model} seed {seed}")
    acc = accuracy_torch(module, dataset.x_test, dataset.y_test)
    if use_cache:
        meta: dict[str, Any] = {"model": model, "data": dataset.name, "seed": seed}
        meta |= {"accuracy": acc, "config": asdict(config), "version": BASELINE_VERSION}
        save_checkpoint(module, path, meta)
    return Baseline(model, dataset, module, seed, config, acc, cached=False)


def _try_load(module: nn.Module, path: Path) -> bool:
    """Load a cached checkpoint; a missing or damaged one means 'train again'."""
    if not path.is_file():
        return False
    try:
        state, _ = load_checkpoint(path)
        load_state(module, state, str(path))
    except InvalidModelError:
        path.unlink(missing_ok=True)
        return False
    return True
