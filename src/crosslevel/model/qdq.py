"""int8 post-training quantization: an ONNX QDQ model for ONNX Runtime, and a TFLite IR.

Two artifacts from one float model and one set of real calibration samples:

* ``quantize_qdq``: ONNX Runtime's ``quantize_static`` in QDQ format, weights int8
  per-channel (symmetric), activations per-tensor with min-max, percentile or entropy
  calibration through a ``CalibrationDataReader`` over the samples. Activations are
  uint8 by default because that is ONNX Runtime's fast int8 path on x86 (u8 x s8 VNNI);
  uint8 with zero point z + 128 holds the same real values as TFLite's int8 with z.
* ``quantize_tflite_int8``: the project's own PTQ (``model.quantize``, TFLite Micro
  semantics, min-max) on the BN-folded NHWC IR, plus its ``.tflite`` export, so the
  memory level and the int8 executor (and TFLM, bit-exact) run the same model.

ONNX Runtime's optimized x86 u8s8 kernels add products pairwise in int16 and saturate
when large uint8 activations meet large int8 weights (measured here: mnist1d_cnn's first
conv fell from 94 % to 84 % accuracy while the same QDQ model run unfused stayed at 94 %).
So every quantized model is run both ways on calibration samples; if the fused run strays
from the QDQ semantics, weights are requantized with 7-bit range (``reduce_range``),
which cannot saturate, and the result records that.

Calibration must be real data (the training split): a quantizer calibrated on noise
clips the real activations. No samples is a UsageError, not a silent fallback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.ir.onnx import load_onnx_model

CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
}
DEFAULT_CALIBRATION_SAMPLES = 256
PERCENTILE = 99.999
SATURATION_CHECK_SAMPLES = 64
# Rounding alone keeps the fused and unfused runs within a few output steps (<1 %);
# saturation produced 20-70 % here.
SATURATION_TOLERANCE = 0.05


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ORT's calibrators print progress to stdout and warn through logging."""
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


class ArrayCalibrationReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration samples one at a time (batch 1, the model's input shape)."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self.input_name = input_name
        self.samples = np.ascontiguousarray(samples, dtype=np.float32)
        self._iter: Iterator[dict[str, np.ndarray]] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        assert self._iter is not None
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter({self.input_name: s[None]} for s in self.samples)


def calibration_samples(x_train: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` samples drawn without replacement from real training inputs."""
    if len(x_train) == 0 or count < 1:
        raise UsageError("int8 calibration needs at least one real calibration sample")
    pick = np.random.default_rng(seed).permutation(len(x_train))[:count]
    return np.ascontiguousarray(x_train[pick], dtype=np.float32)


@dataclass
class QdqModel:
    """A QDQ ONNX model and how it was made."""

    onnx: bytes
    method: str
    activation_type: str
    reduce_range: bool  # True: weights in 7 bits, because the 8-bit fused kernels saturated
    fused_rel_error: float  # max |fused - unfused| / max |unfused| of the final model


def quantize_qdq(
    model_onnx: bytes,
    calibration: np.ndarray,
    method: str = "minmax",
    activation_type: str = "uint8",
    allow_reduce_range: bool = True,
) -> QdqModel:
    """A QDQ ONNX model of ``model_onnx`` (float, batch 1) calibrated on ``calibration``.

    ``calibration``: real inputs (N, *input shape without batch). ``method``: minmax,
    percentile (99.999th percentile of |x|) or entropy (KL-divergence threshold).
    Weights are 8-bit unless ONNX Runtime's fused kernels saturate on them (see above)
    and ``allow_reduce_range``; with it False they stay 8-bit (the same weights as the
    TFLite-semantics IR, which ``model.qdq_check`` compares layer by layer).
    """
    data = quantize_static_qdq(model_onnx, calibration, method, activation_type, reduce_range=False)
    error = fused_error(data, calibration[:SATURATION_CHECK_SAMPLES])
    if error <= SATURATION_TOLERANCE or not allow_reduce_range:
        return QdqModel(data, method, activation_type, False, error)
    data = quantize_static_qdq(model_onnx, calibration, method, activation_type, reduce_range=True)
    error = fused_error(data, calibration[:SATURATION_CHECK_SAMPLES])
    return QdqModel(data, method, activation_type, True, error)


def fused_error(model_qdq: bytes, samples: np.ndarray) -> float:
    """Max |optimized - unoptimized| / max |unoptimized| of the QDQ model on ``samples``."""
    from crosslevel.runtime.ort import make_session, run_session

    fast, ref = make_session(model_qdq, optimize=True), make_session(model_qdq, optimize=False)
    worst, scale = 0.0, 0.0
    for s in np.ascontiguousarray(samples, dtype=np.float32):
        a, b = run_session(fast, [s[None]])[0], run_session(ref, [s[None]])[0]
        worst = max(worst, float(np.max(np.abs(a - b))))
        scale = max(scale, float(np.max(np.abs(b))))
    return worst / max(scale, 1e-12)


def quantize_static_qdq(
    model_onnx: bytes, calibration: np.ndarray, method: str, activation_type: str,
    reduce_range: bool,
) -> bytes:  # fmt: skip
    """One ``quantize_static`` run as configured, without the saturation check."""
    if method not in CALIBRATION_METHODS:
        raise UsageError(
            f"unknown calibration {method!r}; use one of {', '.join(CALIBRATION_METHODS)}"
        )
    if calibration is None or len(calibration) == 0:
        raise UsageError("int8 calibration needs real calibration samples; none were given")
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}.get(activation_type)
    if act is None:
        raise UsageError(f"activation type must be uint8 or int8, got {activation_type!r}")
    try:
        proto = onnx.load_from_string(model_onnx)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InvalidModelError(f"not an ONNX model: {exc}") from exc
    if len(proto.graph.input) != 1:
        raise InvalidModelError(
            f"int8 PTQ here takes one-input models, got {len(proto.graph.input)}"
        )
    extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    with tempfile.TemporaryDirectory(prefix="crosslevel-qdq-") as tmp:
        src, pre, dst = Path(tmp) / "f.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model_onnx)
        try:
            with _quiet():
                _run_quantizer(src, pre, dst, calibration, act, method, extra, reduce_range)
        except (UsageError, InvalidModelError):
            raise
        except Exception as exc:
            raise InvalidModelError(f"ONNX Runtime could not quantize the model: {exc}") from exc
        return load_onnx_model(dst).SerializeToString()


def _run_quantizer(
    src: Path, pre: Path, dst: Path, calibration: np.ndarray, act: QuantType, method: str,
    extra: dict[str, Any], reduce_range: bool,
) -> None:  # fmt: skip
    """quant_pre_process (shape inference, ORT graph optimizations) then quantize_static."""
    input_name = onnx.load(str(src)).graph.input[0].name
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre), str(dst), ArrayCalibrationReader(input_name, calibration),
        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=act,
        weight_type=QuantType.QInt8, calibrate_method=CALIBRATION_METHODS[method],
        extra_options=extra, reduce_range=reduce_range,
    )  # fmt: skip


def qdq_weight_bytes(model_qdq: bytes) -> int:
    """Bytes of the initializers a QDQ model deploys (int8 weights, int32 biases, scales)."""
    proto = onnx.load_from_string(model_qdq)
    return sum(
        int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type)
        for t in proto.graph.initializer
    )


def _itemsize(data_type: int) -> int:
    return int(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize)


def quantize_tflite_int8(module: nn.Module, name: str, calibration: np.ndarray) -> Any:
    """The TFLite-semantics int8 IR and ``.tflite`` of a trained (maybe compressed) module.

    ``name`` is the zoo model it was built from (for its input shape); returns
    ``model.int8_zoo.Int8Model`` (float and int8 NHWC graphs, the .tflite bytes).
    """
    from crosslevel.model.int8_zoo import zoo_int8

    if calibration is None or len(calibration) == 0:
        raise UsageError("int8 calibration needs real calibration samples; none were given")
    return zoo_int8(name, module=module, calibration=calibration)
