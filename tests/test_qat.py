"""Quantization-aware fine-tuning: its simulation is our int8 scheme, and compress uses it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crosslevel.errors import UsageError
from crosslevel.model.baselines import trained_baseline
from crosslevel.model.compress import CompressConfig, compress
from crosslevel.model.int8_zoo import zoo_int8
from crosslevel.model.qat import (
    activation_qparams,
    fake_quant_weight,
    quantization_aware_finetune,
    simulated_int8,
)
from crosslevel.model.qdq import calibration_samples
from crosslevel.model.quantize import (
    activation_params,
    dequantize_output,
    quantize_input,
    symmetric_weights,
)
from crosslevel.runtime.int8_executor import run_int8


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("cache")
    return trained_baseline("digits_cnn", "digits", 0, cache, epochs=4)


def test_fake_quant_weight_is_the_deployed_per_channel_int8() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    fold = rng.uniform(0.2, 3.0, 6).astype(np.float32)  # BatchNorm's gamma / sqrt(var + eps)
    weight = torch.from_numpy(w).requires_grad_()
    simulated = fake_quant_weight(weight, torch.from_numpy(fold))
    folded = w * fold[:, None, None, None]
    q, scale = symmetric_weights(folded, axis=0)  # what model.quantize deploys
    deployed = q.astype(np.float64) * scale[:, None, None, None]
    got = simulated.detach().numpy() * fold[:, None, None, None]
    np.testing.assert_allclose(got, deployed, rtol=1e-5, atol=1e-6)
    simulated.sum().backward()  # straight-through: the symmetric range never clamps
    assert weight.grad is not None
    np.testing.assert_allclose(weight.grad.numpy(), np.ones_like(w), rtol=1e-5)


@pytest.mark.parametrize(("lo", "hi"), [(-1.5, 3.0), (0.0, 6.0), (-2.0, -0.5), (0.0, 0.0)])
def test_activation_qparams_match_quantize(lo: float, hi: float) -> None:
    params = activation_params(lo, hi)
    scale, zero = activation_qparams(lo, hi)
    assert scale == pytest.approx(float(params.scale[0]), rel=1e-7)
    assert zero == int(params.zero_point[0])


def test_simulation_tracks_the_int8_ir_closer_than_float(digits) -> None:  # type: ignore[no-untyped-def]
    cal = calibration_samples(digits.data.x_train, 64, 0)
    int8 = zoo_int8("digits_cnn", module=digits.module, calibration=cal)
    graph = int8.int8_graph
    x = digits.data.x_test[:120]
    in_tensor, out_tensor = graph.tensor(graph.inputs[0]), graph.tensor(graph.outputs[0])
    feeds = [quantize_input(int8.to_model_input(s[None]), in_tensor) for s in x]
    ref = np.concatenate([dequantize_output(run_int8(graph, [f])[0], out_tensor) for f in feeds])
    with torch.no_grad():
        plain = digits.module(torch.from_numpy(x)).numpy()
        with simulated_int8(digits.module, cal) as sim:
            simulated = sim(torch.from_numpy(x)).numpy()
        assert np.array_equal(digits.module(torch.from_numpy(x)).numpy(), plain)  # restored
    lsb = float(out_tensor.quant.scale[0])
    sim_error = np.abs(simulated - ref).max() / lsb
    float_error = np.abs(plain - ref).max() / lsb
    assert sim_error <= 3.0, sim_error  # bias and fixed-point rescaling rounding only
    assert sim_error < float_error / 2
    assert np.mean(simulated.argmax(1) == ref.argmax(1)) >= 0.99


def test_qat_returns_a_plain_trained_model(digits) -> None:  # type: ignore[no-untyped-def]
    cal = calibration_samples(digits.data.x_train, 64, 0)
    before = {k: v.clone() for k, v in digits.module.state_dict().items()}
    result = quantization_aware_finetune(digits.module, digits.data, cal, epochs=1)
    assert set(result.model.state_dict()) == set(before)  # no parametrization left behind
    assert any(
        not torch.equal(result.model.state_dict()[k], v) for k, v in before.items()
    )  # fine-tuned
    assert all(torch.equal(digits.module.state_dict()[k], v) for k, v in before.items())
    assert result.weight_layers == ["features.0.0", "features.1.0", "features.3.0", "head.2"]
    assert result.activation_points[0] == "input" and "head.2" in result.activation_points
    assert result.finetune is not None and len(result.finetune.losses) == 1
    with pytest.raises(UsageError, match="calibration"):
        quantization_aware_finetune(digits.module, digits.data, cal[:0])


def test_compress_int8_reports_ptq_and_qat(tmp_path: Path) -> None:
    base = dict(model="digits_cnn", data="digits", quant="int8", seeds=1, epochs=1)
    always = CompressConfig(**base, baseline_epochs=4, qat="always", qat_epochs=1,
                            latency_repeats=10)  # type: ignore[arg-type]  # fmt: skip
    result = compress(always, cache_dir=tmp_path)
    decision = result.passes["int8"]["per_seed"][0]
    assert decision["method"] in ("ptq", "qat")
    assert 0.8 < decision["ptq_accuracy"] <= 1 and 0.8 < decision["qat_accuracy"] <= 1
    deployed = decision["qat_accuracy" if decision["method"] == "qat" else "ptq_accuracy"]
    assert result.after.accuracy.mean == pytest.approx(deployed)
    assert result.model_tflite is not None
    never = CompressConfig(**base, baseline_epochs=4, qat_threshold=100.0,
                           latency_repeats=10)  # type: ignore[arg-type]  # fmt: skip
    record = compress(never, cache_dir=tmp_path).passes["int8"]["per_seed"][0]
    assert record["method"] == "ptq" and record["qat_accuracy"] is None
    assert record["ptq_accuracy"] == decision["ptq_accuracy"]  # same baseline and PTQ
    for bad in ({"qat": "sometimes"}, {"qat_threshold": -1.0}, {"qat_epochs": 0}):
        with pytest.raises(UsageError, match="--qat"):
            CompressConfig(**base, **bad).validate()  # type: ignore[arg-type]
