"""ORT's QDQ model against our int8 IR: each layer within 1 LSB, end to end on real data."""

from __future__ import annotations

import pytest
import torch

from crosslevel.model.baselines import trained_baseline
from crosslevel.model.qdq import calibration_samples
from crosslevel.model.qdq_check import LSB_SLACK, check_zoo_module

PAIRS = [("digits_cnn", "digits"), ("mnist1d_cnn", "mnist1d")]
HELD_OUT = 300  # test-split samples per model (enough for the 99 % criteria to mean something)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize(("model", "data"), PAIRS)
def test_each_layer_within_1_lsb_and_end_to_end(model: str, data: str, cache) -> None:  # type: ignore[no-untyped-def]
    base = trained_baseline(model, data, 0, cache, epochs=8)
    calibration = calibration_samples(base.data.x_train, 64, 0)
    held_out = base.data.x_test[:HELD_OUT]  # real held-out data
    result = check_zoo_module(base.module, model, calibration, held_out)
    assert result.scale_mismatches == {}  # same calibration, same activation grids
    assert result.samples == len(held_out)
    assert len(result.layers) >= 4
    for layer in result.layers:
        assert layer.max_lsb <= 1.0 + LSB_SLACK, layer
    assert result.end_to_end_within_1_lsb >= 0.99
    assert result.top1_agreement >= 0.99
    convs = [layer for layer in result.layers if "CONV_2D" in layer.ir_ops]
    assert convs and all("Conv" in layer.ort_ops for layer in convs)


def test_the_check_sees_a_model_with_other_weights(cache) -> None:  # type: ignore[no-untyped-def]
    """ORT's 7-bit-weight fallback (model.qdq) is a different quantization: it shows."""
    base = trained_baseline("mnist1d_cnn", "mnist1d", 0, cache, epochs=8)
    calibration = calibration_samples(base.data.x_train, 64, 0)
    result = check_zoo_module(
        base.module, "mnist1d_cnn", calibration, base.data.x_test[:100], reduce_range=True
    )
    assert result.worst_layer_lsb >= 2.0
    assert result.end_to_end_within_1_lsb < 0.99


def test_reference_semantics_also_within_1_lsb(cache) -> None:  # type: ignore[no-untyped-def]
    """The path taken on CPUs whose fused u8s8 kernels saturate: ORT unoptimized."""
    from crosslevel.ir.torch_io import export_torch_onnx
    from crosslevel.model.qdq import quantize_static_qdq, quantize_tflite_int8
    from crosslevel.model.qdq_check import compare_qdq_layers

    base = trained_baseline("digits_cnn", "digits", 0, cache, epochs=8)
    calibration = calibration_samples(base.data.x_train, 64, 0)
    int8 = quantize_tflite_int8(base.module, "digits_cnn", calibration)
    onnx_model = export_torch_onnx(base.module, (1, *calibration.shape[1:]))
    qdq = quantize_static_qdq(onnx_model, calibration, "minmax", "uint8", reduce_range=False)
    result = compare_qdq_layers(
        qdq, int8.int8_graph, base.data.x_test[:100], int8.to_model_input, fused=False
    )
    assert not result.fused and result.worst_layer_lsb <= 1.0 + LSB_SLACK
    assert result.end_to_end_within_1_lsb >= 0.99 and result.top1_agreement >= 0.99
