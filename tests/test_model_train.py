"""Training, evaluation, checkpoints and cached baselines on real offline data."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.ir.torch_io import export_torch_onnx
from crosslevel.model import zoo
from crosslevel.model.baselines import trained_baseline
from crosslevel.model.datasets import load_dataset
from crosslevel.model.evaluate import SeedStats, accuracy_onnx, accuracy_torch, predict_onnx
from crosslevel.model.train import (
    CHECKPOINT_FORMAT,
    TrainConfig,
    distillation_loss,
    load_checkpoint,
    load_state,
    save_checkpoint,
    train,
)


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits", seed=0)


def _trained(digits, epochs: int = 3, seed: int = 0) -> torch.nn.Module:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    model = zoo.build("digits_cnn")
    train(model, digits, TrainConfig(epochs=epochs, seed=seed))
    return model


def test_training_learns_digits_and_is_deterministic(digits) -> None:  # type: ignore[no-untyped-def]
    a, b = _trained(digits), _trained(digits)
    acc = accuracy_torch(a, digits.x_test, digits.y_test)
    assert acc > 0.85  # 3 epochs on 1,437 real images; chance is 0.10
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name


def test_loss_decreases_and_bad_config_is_usage_error(digits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    result = train(zoo.build("digits_cnn"), digits, TrainConfig(epochs=2, max_train_samples=400))
    assert len(result.losses) == 2 and result.losses[1] < result.losses[0]
    with pytest.raises(UsageError):
        TrainConfig(epochs=-1)
    with pytest.raises(UsageError):
        TrainConfig(alpha=1.5)


def test_distillation_loss_limits() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 10, generator=gen), torch.randn(8, 10, generator=gen)
    labels = torch.randint(0, 10, (8,), generator=gen)
    hard = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, 4.0, 0.0), hard)
    # a student equal to its teacher has zero soft loss: only (1 - alpha) * CE is left
    same = distillation_loss(student, student.clone(), labels, 4.0, 0.5)
    assert torch.allclose(same, 0.5 * hard, atol=1e-6)
    assert distillation_loss(student, teacher, labels, 4.0, 1.0) > 0


def test_distillation_trains_student_toward_teacher(digits) -> None:  # type: ignore[no-untyped-def]
    teacher = _trained(digits, epochs=3)
    torch.manual_seed(1)
    student = zoo.build("digits_cnn", width=8)
    result = train(student, digits, TrainConfig(epochs=5, seed=1, alpha=0.9), teacher=teacher)
    assert result.distilled
    agree = np.mean(
        student(torch.from_numpy(digits.x_test)).argmax(1).numpy()
        == teacher(torch.from_numpy(digits.x_test)).argmax(1).numpy()
    )
    assert agree > 0.8


def test_onnx_accuracy_equals_torch_accuracy(digits) -> None:  # type: ignore[no-untyped-def]
    model = _trained(digits, epochs=2)
    onnx_bytes = export_torch_onnx(model, (1, 1, 8, 8))
    logits = predict_onnx(onnx_bytes, digits.x_test[:50])
    with torch.no_grad():
        ref = model(torch.from_numpy(digits.x_test[:50])).numpy()
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
    acc_t = accuracy_torch(model, digits.x_test, digits.y_test)
    acc_o = accuracy_onnx(onnx_bytes, digits.x_test, digits.y_test)
    assert abs(acc_t - acc_o) <= 1 / len(digits.y_test)


def test_seed_stats() -> None:
    stats = SeedStats.of([0.9, 0.92, 0.94])
    assert stats.mean == pytest.approx(0.92) and stats.std == pytest.approx(0.02)
    assert (stats.min, stats.max) == (0.9, 0.94)
    assert stats.percent() == "92.0 ± 2.0 %"
    assert SeedStats.of([0.5]).std == 0.0
    with pytest.raises(UsageError):
        SeedStats.of([])


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    model = _trained(digits, epochs=1)
    path = tmp_path / "ck.npz"
    save_checkpoint(model, path, {"note": "x"})
    state, meta = load_checkpoint(path)
    assert meta == {"note": "x"}
    fresh = zoo.build("digits_cnn")
    load_state(fresh, state)
    fresh.eval()
    x = torch.from_numpy(digits.x_test[:20])
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    assert state["features.0.1.num_batches_tracked"].dim() == 0


def test_checkpoint_refuses_corrupt_and_hostile_files(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    model = _trained(digits, epochs=1)
    good = tmp_path / "good.npz"
    save_checkpoint(model, good)
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "garbage.npz": b"\x00" * 100,
        "empty.npz": b"",
    }
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
    # hostile: an object array is a pickle inside the zip; allow_pickle=False refuses it
    with open(tmp_path / "pickle.npz", "wb") as handle:
        np.savez(handle, w=np.array([{"__reduce__": 1}], dtype=object))
    cases["pickle.npz"] = b""
    # a plain .npy (not an archive) and a pickle under the checkpoint's name
    np.save(tmp_path / "plain.npy", np.zeros(3))
    (tmp_path / "plain.npz").write_bytes((tmp_path / "plain.npy").read_bytes())
    cases["plain.npz"] = b""
    import pickle

    (tmp_path / "raw.npz").write_bytes(pickle.dumps({"a": 1}))
    cases["raw.npz"] = b""
    # a valid archive with a header of the wrong format
    header = np.frombuffer(json.dumps({"format": "other/1"}).encode(), dtype=np.uint8)
    with open(tmp_path / "header.npz", "wb") as handle:
        np.savez(handle, __meta__=header, w=np.zeros(3, np.float32))
    cases["header.npz"] = b""
    # dtype differs from the header's claim
    doc = {"format": CHECKPOINT_FORMAT, "dtypes": {"w": "float64"}, "meta": {}}
    header = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
    with open(tmp_path / "dtype.npz", "wb") as handle:
        np.savez(handle, __meta__=header, w=np.zeros(3, np.float32))
    cases["dtype.npz"] = b""
    with zipfile.ZipFile(good) as zf:
        assert "__meta__.npy" in zf.namelist()
    for name in cases:
        with pytest.raises(InvalidModelError):
            load_checkpoint(tmp_path / name)
    with pytest.raises(InvalidModelError):
        load_checkpoint(tmp_path / "missing.npz")


def test_load_state_rejects_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "w4.npz"
    save_checkpoint(zoo.build("digits_cnn", width=4), path)
    state, _ = load_checkpoint(path)
    with pytest.raises(InvalidModelError, match="shape"):
        load_state(zoo.build("digits_cnn"), state)


def test_baseline_cache_is_used_and_rebuilt(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    first = trained_baseline("digits_cnn", digits, 0, tmp_path, epochs=2)
    assert not first.cached and first.accuracy > 0.8
    files = list((tmp_path / "baselines").glob("*.npz"))
    assert len(files) == 1 and "digits_cnn-digits-s0" in files[0].name
    again = trained_baseline("digits_cnn", digits, 0, tmp_path, epochs=2)
    assert again.cached and again.accuracy == first.accuracy
    files[0].write_bytes(b"PK\x03\x04 broken")
    rebuilt = trained_baseline("digits_cnn", digits, 0, tmp_path, epochs=2)
    assert not rebuilt.cached and rebuilt.accuracy == first.accuracy
    with pytest.raises(UsageError, match="unknown data set"):
        trained_baseline("digits_cnn", "cifar", 0, tmp_path)
    with pytest.raises(UsageError, match="takes inputs"):
        trained_baseline("mnist1d_cnn", digits, 0, tmp_path)
