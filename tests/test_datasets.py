"""Offline data sets: shapes, labels, seeded splits, no network, no global RNG change."""

from __future__ import annotations

import importlib.util
import random
import socket
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from crosslevel.model import zoo
from crosslevel.model.datasets import (
    DATASETS,
    Dataset,
    DatasetUnavailable,
    load_dataset,
)

HAS_AEON = importlib.util.find_spec("aeon") is not None
needs_aeon = pytest.mark.skipif(
    not HAS_AEON, reason="aeon not installed: pip install 'crosslevel[imu]'"
)

# Small mnist1d for most checks: generation time grows with the sample count.
FAST_KWARGS: dict[str, dict[str, int]] = {"mnist1d": {"num_samples": 1000}}
PARAMS = [
    pytest.param(name, marks=needs_aeon) if name == "basic_motions" else name for name in DATASETS
]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any connection attempt fails: the loaders must work offline."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a data set loader tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


def _load(name: str, seed: int = 0) -> Dataset:
    return load_dataset(name, seed=seed, **FAST_KWARGS.get(name, {}))


@pytest.mark.parametrize("name", PARAMS)
def test_shapes_types_and_labels(name: str) -> None:
    ds = _load(name)
    model = next(e for e in zoo.ZOO.values() if e.dataset == name)
    assert ds.name == name
    assert ds.input_shape == model.input_shape
    assert ds.num_classes == model.num_outputs == len(ds.class_names)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), *ds.input_shape)
        assert np.isfinite(x).all()
        assert set(np.unique(y)) == set(range(ds.num_classes))  # stratified: all present


@pytest.mark.parametrize("name", PARAMS)
def test_split_is_deterministic_by_seed_and_stratified(name: str) -> None:
    a, b, c = _load(name, 0), _load(name, 0), _load(name, 1)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_test, c.x_test)
    test = np.bincount(a.y_test)
    total = test + np.bincount(a.y_train)
    share = len(a.y_test) / total.sum()
    assert np.all(np.abs(test - share * total) <= 1)  # each class split in the same ratio


def test_digits_values() -> None:
    ds = load_dataset("digits")
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_mnist1d_default_size_and_untouched_global_rng() -> None:
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.get_state(), random.getstate()
    ds = load_dataset("mnist1d")
    np_after, py_after = np.random.get_state(), random.getstate()
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]
    assert py_before == py_after
    assert len(ds.y_train) + len(ds.y_test) == 4000
    assert ds.input_shape == (1, 1, 40)


@needs_aeon
def test_basic_motions_is_the_uea_set_standardized() -> None:
    ds = load_dataset("basic_motions")
    assert len(ds.y_train) == len(ds.y_test) == 40
    assert ds.class_names == ("badminton", "running", "standing", "walking")
    mean = ds.x_train.mean(axis=(0, 2, 3))
    std = ds.x_train.std(axis=(0, 2, 3))
    np.testing.assert_allclose(mean, 0, atol=1e-4)
    np.testing.assert_allclose(std, 1, atol=1e-3)


def test_basic_motions_without_aeon_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aeon", None)  # makes `import aeon...` raise
    monkeypatch.setitem(sys.modules, "aeon.datasets", None)
    with pytest.raises(DatasetUnavailable, match=r"pip install 'crosslevel\[imu\]'") as info:
        load_dataset("basic_motions")
    assert isinstance(info.value, RuntimeError)


def test_unknown_data_set_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known data sets: digits, mnist1d, basic_motions"):
        load_dataset("imagenet")
