"""Model-level passes: structured pruning, low-rank factorization, int8 PTQ (QDQ + TFLite IR)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.ir.torch_io import export_torch_onnx
from crosslevel.model import zoo
from crosslevel.model.datasets import load_dataset
from crosslevel.model.evaluate import accuracy_onnx, accuracy_torch, predict_onnx, predict_torch
from crosslevel.model.lowrank import choose_rank, factorize, factorize_and_finetune
from crosslevel.model.prune import (
    PruningSkipWarning,
    prune_and_finetune,
    prune_model,
)
from crosslevel.model.qdq import calibration_samples, quantize_qdq, quantize_tflite_int8
from crosslevel.model.train import TrainConfig, train


def _close(out: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def trained(digits):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = zoo.build("digits_cnn")
    train(model, digits, TrainConfig(epochs=4))
    return model


# --------------------------------------------------------------------------- pruning


@pytest.mark.parametrize("importance", ["magnitude", "bn", "taylor"])
def test_pruning_removes_channels_runs_and_exports(importance: str, trained, digits) -> None:  # type: ignore[no-untyped-def]
    import copy

    model = copy.deepcopy(trained)
    example = torch.from_numpy(digits.x_train[:2])
    result = prune_model(model, example, 0.5, importance, data=digits)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32]  # 16, 32, 64 halved
    assert model.head[-1].out_features == 10  # the classifier keeps its classes
    assert result.channels["features.0.0"] == (16, 8)
    assert result.params_after < 0.35 * result.params_before
    onnx_bytes = export_torch_onnx(model, (1, 1, 8, 8))
    weights = onnx.load_from_string(onnx_bytes).graph.initializer
    assert max(int(np.prod(w.dims)) for w in weights) == 32 * 16 * 9
    x = digits.x_test[:16]
    _close(predict_onnx(onnx_bytes, x), predict_torch(model, x))


def test_global_and_per_layer_ratios(trained, digits) -> None:  # type: ignore[no-untyped-def]
    import copy

    example = torch.from_numpy(digits.x_train[:2])
    model = copy.deepcopy(trained)
    result = prune_model(model, example, 0.5, global_pruning=True)
    assert result.removed_channels > 0
    assert result.params_after < result.params_before
    model = copy.deepcopy(trained)
    result = prune_model(model, example, 0.0, layer_ratios={"features.3.0": 0.75})
    assert result.channels["features.3.0"] == (64, 16)
    assert result.channels["features.0.0"] == (16, 16)


def test_pruning_bad_arguments(trained, digits) -> None:  # type: ignore[no-untyped-def]
    example = torch.from_numpy(digits.x_train[:2])
    for ratio in (-0.1, 1.0, 1.5):
        with pytest.raises(UsageError, match="ratio"):
            prune_model(trained, example, ratio)
    with pytest.raises(UsageError, match="importance"):
        prune_model(trained, example, 0.5, importance="random")
    with pytest.raises(UsageError, match="Taylor"):
        prune_model(trained, example, 0.5, importance="taylor")


class _Scaled(nn.Module):
    """A layer with a raw parameter Torch-Pruning has no rule for."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain


def test_unknown_layer_is_skipped_with_named_warning() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), _Scaled(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = prune_model(model, torch.randn(2, 1, 8, 8), 0.5)
    named = [w for w in caught if issubclass(w.category, PruningSkipWarning)]
    assert named and "'1'" in str(named[0].message) and "_Scaled" in str(named[0].message)
    assert result.skipped == ["1"]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_prune_with_distillation_keeps_accuracy(trained, digits) -> None:  # type: ignore[no-untyped-def]
    base = accuracy_torch(trained, digits.x_test, digits.y_test)
    result = prune_and_finetune(trained, digits, 0.5, epochs=4, distill=True)
    assert result.finetune is not None and result.finetune.distilled
    pruned = accuracy_torch(result.model, digits.x_test, digits.y_test)
    assert pruned > base - 0.05
    assert sum(p.numel() for p in trained.parameters()) == result.params_before  # untouched


# --------------------------------------------------------------------------- low rank


def test_lowrank_full_rank_reproduces_the_layers(trained, digits) -> None:  # type: ignore[no-untyped-def]
    result = factorize(trained, rank=10_000, only_if_smaller=False)
    assert set(result.ranks) == {"features.0.0", "features.1.0", "features.3.0", "head.2"}
    assert result.ranks["features.1.0"] == (32, 32)
    x = digits.x_test[:32]
    _close(predict_torch(result.model, x), predict_torch(trained, x))
    onnx_bytes = export_torch_onnx(result.model, (1, 1, 8, 8))
    _close(predict_onnx(onnx_bytes, x), predict_torch(trained, x))


def test_lowrank_conv1d_and_linear_full_rank() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(3, 6, 5, stride=2, padding=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 8, 4)).eval()  # fmt: skip
    result = factorize(model, energy=1.0, only_if_smaller=False)
    assert set(result.ranks) == {"0", "3"}
    x = torch.randn(5, 3, 16)
    with torch.no_grad():
        _close(result.model(x).numpy(), model(x).numpy())


def test_lowrank_reduces_params_and_finetunes(trained, digits) -> None:  # type: ignore[no-untyped-def]
    result = factorize_and_finetune(trained, digits, rank=8, epochs=2)
    assert result.ranks["features.3.0"] == (64, 8)
    assert result.params_after < 0.6 * result.params_before
    assert accuracy_torch(result.model, digits.x_test, digits.y_test) > 0.85
    energy = factorize(trained, energy=0.5)
    full = factorize(trained, energy=0.999)
    assert energy.params_after < full.params_after
    assert "features.0.0" in energy.skipped or "features.0.0" in energy.ranks


def test_choose_rank_and_bad_knobs(trained) -> None:  # type: ignore[no-untyped-def]
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert choose_rank(s, 2, None) == 2 and choose_rank(s, 99, None) == 4
    assert (
        choose_rank(s, None, 9 / 14) == 1
        and choose_rank(s, None, 0.92) == 2
        and choose_rank(s, None, 0.93) == 3
    )
    assert choose_rank(s, None, 1.0) == 3
    for kwargs in ({}, {"rank": 2, "energy": 0.5}, {"rank": 0}, {"energy": 1.5}):
        with pytest.raises(UsageError):
            factorize(trained, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- int8


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_qdq_tracks_float(method: str, trained, digits) -> None:  # type: ignore[no-untyped-def]
    float_onnx = export_torch_onnx(trained, (1, 1, 8, 8))
    cal = calibration_samples(digits.x_train, 128)
    qdq = quantize_qdq(float_onnx, cal, method)
    ops = {n.op_type for n in onnx.load_from_string(qdq.onnx).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = digits.x_test[:100]
    ref, out = predict_onnx(float_onnx, x), predict_onnx(qdq.onnx, x)
    # tolerance: int8 rounding through 4 layers keeps logits within 10 % of their range
    assert np.abs(out - ref).max() <= 0.1 * np.abs(ref).max()
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.97
    acc_f = accuracy_onnx(float_onnx, digits.x_test, digits.y_test)
    assert accuracy_onnx(qdq.onnx, digits.x_test, digits.y_test) >= acc_f - 0.02
    assert qdq.fused_rel_error <= 0.05


def test_qdq_errors(trained) -> None:  # type: ignore[no-untyped-def]
    float_onnx = export_torch_onnx(trained, (1, 1, 8, 8))
    with pytest.raises(UsageError, match="calibration"):
        quantize_qdq(float_onnx, np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(UsageError, match="unknown calibration"):
        quantize_qdq(float_onnx, np.zeros((4, 1, 8, 8), np.float32), "kl")
    with pytest.raises(InvalidModelError):
        quantize_qdq(b"not onnx", np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(UsageError, match="calibration"):
        calibration_samples(np.zeros((0, 1, 8, 8), np.float32), 10)


def test_tflite_int8_ir_of_pruned_model(trained, digits) -> None:  # type: ignore[no-untyped-def]
    import copy

    model = copy.deepcopy(trained)
    prune_model(model, torch.from_numpy(digits.x_train[:2]), 0.5)
    cal = calibration_samples(digits.x_train, 32)
    int8 = quantize_tflite_int8(model, "digits_cnn", cal)
    acts = {t.dtype for t in int8.int8_graph.activations()}
    assert acts == {"int8"} or acts <= {"int8", "int32"}
    assert int8.tflite[4:8] == b"TFL3"
    conv_weights = [
        int8.int8_graph.tensor(n.inputs[1]) for n in int8.int8_graph.nodes if n.op == "CONV_2D"
    ]
    assert [w.shape[0] for w in conv_weights] == [8, 16, 32]
    assert all(w.dtype == "int8" for w in conv_weights)


def test_int8_ir_of_pruned_lowrank_model_is_bit_exact_with_tflm(trained, digits) -> None:  # type: ignore[no-untyped-def]
    import copy

    from crosslevel.model.quantize import dequantize_output, quantize_input
    from crosslevel.runtime.int8_executor import run_int8
    from crosslevel.runtime.tflm import run_tflm

    model = copy.deepcopy(trained)
    prune_model(model, torch.from_numpy(digits.x_train[:2]), 0.25)
    model = factorize(model, rank=8).model
    int8 = quantize_tflite_int8(model, "digits_cnn", calibration_samples(digits.x_train, 64))
    graph = int8.int8_graph
    x_in, y_out = graph.tensor(graph.inputs[0]), graph.tensor(graph.outputs[0])
    hits, n = 0, 60
    for x, label in zip(digits.x_test[:n], digits.y_test[:n], strict=True):
        q = quantize_input(int8.to_model_input(x[None]), x_in)
        ours = run_int8(graph, [q])[0]
        assert np.array_equal(ours, run_tflm(int8.tflite, [q], isolate=False)[0])
        hits += int(np.argmax(dequantize_output(ours, y_out)) == label)
    float_hits = np.sum(predict_torch(model, digits.x_test[:n]).argmax(1) == digits.y_test[:n])
    assert hits >= float_hits - 2
