"""Elastic width: slicing, weight sharing, write-back, ONNX export and sandwich training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from crosslevel.errors import UsageError
from crosslevel.ir.torch_io import export_torch_onnx
from crosslevel.model import elastic, zoo
from crosslevel.model.datasets import load_dataset
from crosslevel.model.evaluate import accuracy_torch
from crosslevel.model.train import TrainConfig, train
from crosslevel.runtime.ort import make_session, run_session

MODELS = ("digits_cnn", "mnist1d_cnn", "ds_cnn", "resnet8")


def trained_looking(name: str, seed: int = 0) -> nn.Module:
    """A zoo model with random non-trivial BatchNorm statistics and affine terms (eval)."""
    torch.manual_seed(seed)
    model = zoo.build(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def masked_copy(full: nn.Module, name: str, width: float) -> nn.Module:
    """``full`` with every weight, bias and BN entry outside width's slices set to zero.

    A zeroed channel then outputs exactly zero through conv, BN (weight, bias and mean 0)
    and ReLU, and contributes nothing downstream: the narrow network inside the wide one.
    """
    masked = zoo.build(name).eval()
    masked.load_state_dict(full.state_dict())
    slices = elastic.slice_map(name, width)
    with torch.no_grad():
        for key, value in masked.state_dict().items():
            keep = torch.zeros(value.shape, dtype=torch.bool)
            keep[slices[key]] = True
            value[~keep] = 0
    return masked


def example(name: str, batch: int = 4) -> torch.Tensor:
    return torch.randn(
        batch, *zoo.ZOO[name].input_shape, generator=torch.Generator().manual_seed(1)
    )


@pytest.mark.parametrize("name", elastic.ELASTIC_WIDTH_KWARGS)
def test_width_one_is_the_full_model_exactly(name: str) -> None:
    full = trained_looking(name)
    sub = elastic.extract_submodel(full, name, 1.0)
    assert sub.state_dict().keys() == full.state_dict().keys()
    for key, value in full.state_dict().items():
        assert torch.equal(sub.state_dict()[key], value), key
    x = example(name)
    with torch.no_grad():
        assert torch.equal(sub(x), full(x))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("width", [0.5, 0.25])
def test_submodel_forward_equals_masked_full_model(name: str, width: float) -> None:
    full = trained_looking(name)
    sub = elastic.extract_submodel(full, name, width)
    assert sum(p.numel() for p in sub.parameters()) < sum(p.numel() for p in full.parameters())
    x = example(name)
    with torch.no_grad():
        ref = masked_copy(full, name, width)(x)
        np.testing.assert_allclose(
            sub(x).numpy(), ref.numpy(), rtol=1e-5, atol=1e-5 * max(1.0, float(ref.abs().max()))
        )
        # and the mask matters: the unmasked full model computes something else
        assert not torch.allclose(full(x), ref, atol=1e-3)


def test_slices_keep_inputs_and_classes_and_take_channel_prefixes() -> None:
    slices = elastic.slice_map("mnist1d_cnn", 0.5)
    assert slices["features.0.0.weight"] == (slice(0, 16), slice(0, 1), slice(0, 1), slice(0, 5))
    # flatten of 16 channels x 5 steps: the first 80 of the 160 features, all 10 classes
    assert slices["head.1.weight"] == (slice(0, 10), slice(0, 80))
    assert slices["head.1.bias"] == (slice(0, 10),)
    assert slices["features.0.1.num_batches_tracked"] == ()
    depthwise = elastic.slice_map("ds_cnn", 0.25)["blocks.0.0.weight"]
    assert depthwise == (slice(0, 16), slice(0, 1), slice(0, 3), slice(0, 3))


def test_write_back_round_trip_touches_only_the_slices() -> None:
    name, width = "resnet8", 0.5
    full = trained_looking(name)
    before = {k: v.clone() for k, v in full.state_dict().items()}
    sub = elastic.extract_submodel(full, name, width)
    with torch.no_grad():
        for p in sub.parameters():
            p.add_(torch.randn_like(p))
    elastic.write_back(full, sub, name, width)
    again = elastic.extract_submodel(full, name, width)
    for key, value in sub.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    slices = elastic.slice_map(name, width)
    changed = 0
    for key, value in full.state_dict().items():
        outside = torch.ones(value.shape, dtype=torch.bool)
        outside[slices[key]] = False
        assert torch.equal(value[outside], before[key][outside]), key
        changed += int(not torch.equal(value, before[key]))
    assert changed > 0


def test_submodel_exports_to_onnx_and_runs_in_onnx_runtime() -> None:
    name = "ds_cnn"
    sub = elastic.extract_submodel(trained_looking(name), name, 0.25)
    x = example(name, batch=1)
    session = make_session(export_torch_onnx(sub, x))
    got = run_session(session, [x.numpy()])[0]
    with torch.no_grad():
        ref = sub(x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_sandwich_training_yields_every_width_without_retraining() -> None:
    """Narrow slices of a plainly trained model are poor; the sandwich rule makes them work."""
    data = load_dataset("digits", seed=0)
    config = TrainConfig(epochs=5, seed=0)
    torch.manual_seed(0)
    plain = zoo.build("digits_cnn")
    train(plain, data, config)
    torch.manual_seed(0)
    shared = zoo.build("digits_cnn")
    result = elastic.train_sandwich(shared, "digits_cnn", data, (1.0, 0.5, 0.25), config)
    assert result.losses[-1] < result.losses[0]

    def accuracy_at(model: nn.Module, width: float) -> float:
        sub = elastic.extract_submodel(model, "digits_cnn", width, calibration=data.x_train)
        return accuracy_torch(sub, data.x_test, data.y_test)

    assert accuracy_at(shared, 1.0) > 0.9
    for width in (0.5, 0.25):
        assert accuracy_at(shared, width) > accuracy_at(plain, width) + 0.2, width


def test_bad_model_or_width_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no elastic width"):
        elastic.slice_map("inception_cells", 0.5)
    with pytest.raises(UsageError, match=r"width must be in \(0, 1\]"):
        elastic.build_at_width("digits_cnn", 1.5)
    with pytest.raises(UsageError, match=r"width must be in \(0, 1\]"):
        elastic.slice_map("digits_cnn", 0.0)
