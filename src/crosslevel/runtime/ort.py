"""ONNX Runtime: the float reference every float result is checked against, and timing.

Sessions are built with explicit options (1 intra-op thread by default, sequential
execution, CPU provider only) so that a measurement here means the same thing on every
run and matches the single-core MCU/edge setting the cost model predicts for. Models
given as paths go through ``ir.onnx.load_onnx_model`` first, so external data is read
only after its path is checked to stay inside the model's folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from crosslevel.errors import InvalidModelError, UsageError

OnnxModel = onnx.ModelProto | bytes | str | os.PathLike[str]

# ONNX Runtime's element types, as reported by NodeArg.type
_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class LatencyStats:
    """Latency of repeated runs in milliseconds (wall clock, after warm-up)."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    threads: int


def session_options(threads: int = 1, optimize: bool = True) -> ort.SessionOptions:
    """Explicit session options: thread counts, sequential execution, quiet logging.

    ``optimize=False`` disables graph optimizations, so a QDQ model runs its reference
    float semantics (Q/DQ nodes executed as written) instead of fused integer kernels.
    """
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3  # errors only: warnings would go to stderr on every run
    options.enable_mem_pattern = True
    return options


def _model_bytes(model: OnnxModel) -> bytes:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes):
        return model
    if isinstance(model, str | os.PathLike):
        from crosslevel.ir.onnx import load_onnx_model

        return load_onnx_model(Path(model)).SerializeToString()
    raise UsageError(f"cannot run a {type(model).__name__} with ONNX Runtime")


def make_session(model: OnnxModel, threads: int = 1, optimize: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session for ``model`` with ``session_options``."""
    data = _model_bytes(model)
    try:
        return ort.InferenceSession(
            data,
            sess_options=session_options(threads, optimize),
            providers=["CPUExecutionProvider"],
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise InvalidModelError(f"ONNX Runtime cannot load the model: {exc}") from exc


def _feed(session: ort.InferenceSession, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs by name, checked against the session so errors name the input."""
    args = session.get_inputs()
    if len(inputs) != len(args):
        raise UsageError(f"model has {len(args)} inputs, got {len(inputs)} arrays")
    feed: dict[str, np.ndarray] = {}
    for arg, value in zip(args, inputs, strict=True):
        array = np.asarray(value)
        want = _ORT_DTYPES.get(arg.type)
        if want is not None and array.dtype != want:
            raise UsageError(f"input {arg.name!r} wants {want}, got {array.dtype}")
        if len(arg.shape) != array.ndim or any(
            isinstance(d, int) and d != s for d, s in zip(arg.shape, array.shape, strict=True)
        ):
            raise UsageError(f"input {arg.name!r} wants shape {arg.shape}, got {array.shape}")
        feed[arg.name] = np.ascontiguousarray(array)
    return feed


def run_session(session: ort.InferenceSession, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run an existing session once; outputs in the model's output order."""
    feed = _feed(session, inputs)
    try:
        outputs = session.run(None, feed)
    except Exception as exc:
        raise InvalidModelError(f"ONNX Runtime failed to run the model: {exc}") from exc
    return [np.asarray(o) for o in outputs]


def run_onnx(
    model: OnnxModel, inputs: Sequence[np.ndarray], threads: int = 1, optimize: bool = True
) -> list[np.ndarray]:
    """Run ``model`` once on ``inputs`` (in the model's input order) with ONNX Runtime."""
    return run_session(make_session(model, threads, optimize), inputs)


def time_onnx(
    model: OnnxModel,
    inputs: Sequence[np.ndarray],
    repeats: int = 50,
    warmup: int = 5,
    threads: int = 1,
) -> LatencyStats:
    """Latency of ``model`` on ``inputs``: ``warmup`` untimed runs, then ``repeats`` timed."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    session = make_session(model, threads)
    feed = _feed(session, inputs)
    for _ in range(warmup):
        session.run(None, feed)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times[i] = (time.perf_counter() - start) * 1e3
    return LatencyStats(
        median_ms=float(np.median(times)),
        p90_ms=float(np.percentile(times, 90)),
        mean_ms=float(times.mean()),
        min_ms=float(times.min()),
        repeats=repeats,
        threads=threads,
    )
