"""The TFLM wrapper: outputs, arena numbers of the README, clear errors, crash isolation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.model.mlperf_tiny import models_dir
from crosslevel.runtime.tflm import (
    TflmArena,
    TflmError,
    TflmInterpreter,
    capture_fd2,
    measure_tflm_arena,
    parse_allocations,
    run_tflm,
)

MODELS = models_dir()

# shared/models/mlperf-tiny/README.md, "Baselines measured on a project machine"
README_ARENAS = {
    "kws_ref_model.tflite": (16_000, 8_272),
    "pretrainedResnet_quant.tflite": (49_152, 6_832),
    "vww_96_int8.tflite": (73_728, 29_952),
    "ad01_int8.tflite": (768, 3_216),
    "str_ww_ref_model.tflite": (6_656, 9_984),
    "vww_96_float.tflite": (294_912, 29_888),
    "pretrainedResnet.tflite": (196_608, 6_768),
    "ad01_fp32.tflite": (3_072, 3_152),
}
INT8_FILES = [
    "kws_ref_model.tflite",
    "pretrainedResnet_quant.tflite",
    "vww_96_int8.tflite",
    "ad01_int8.tflite",
    "str_ww_ref_model.tflite",
]


def _stock(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The same model through the tflite-micro API directly, without our wrapper."""
    interp = runtime.Interpreter.from_file(str(path), arena_size=4 << 20)
    for k, x in enumerate(inputs):
        interp.set_input(x, k)
    interp.invoke()
    return [interp.get_output(0)]


def _repacked(path: Path, change: Any) -> bytes:
    model = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    change(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("name", INT8_FILES)
def test_arena_of_int8_files_matches_the_readme(name: str) -> None:
    arena = measure_tflm_arena(MODELS / name)
    assert (arena.head_bytes, arena.tail_bytes) == README_ARENAS[name]
    assert arena.total_bytes == sum(README_ARENAS[name])
    assert "Arena allocation head" in arena.raw_text


def test_arena_of_float_files_matches_the_readme_in_process() -> None:
    for name in ("vww_96_float.tflite", "pretrainedResnet.tflite", "ad01_fp32.tflite"):
        arena = measure_tflm_arena((MODELS / name).read_bytes(), isolate=False)
        assert (arena.head_bytes, arena.tail_bytes) == README_ARENAS[name], name


def test_run_tflm_equals_the_stock_interpreter() -> None:
    rng = np.random.default_rng(1)
    path = MODELS / "vww_96_int8.tflite"
    for _ in range(3):
        x = rng.integers(-128, 128, size=(1, 96, 96, 3)).astype(np.int8)
        ours = run_tflm(path, [x])
        assert ours[0].dtype == np.int8 and ours[0].shape == (1, 2)
        assert np.array_equal(ours[0], _stock(path, [x])[0])
        assert np.array_equal(run_tflm(path.read_bytes(), [x])[0], ours[0])


def test_isolated_run_gives_the_same_outputs() -> None:
    path = MODELS / "ad01_fp32.tflite"
    x = np.random.default_rng(2).standard_normal((1, 640)).astype(np.float32)
    assert np.array_equal(run_tflm(path, [x], isolate=True)[0], _stock(path, [x])[0])


def test_interpreter_is_reusable() -> None:
    interp = TflmInterpreter(MODELS / "kws_ref_model.tflite")
    rng = np.random.default_rng(3)
    xs = [rng.integers(-128, 128, size=(1, 49, 10, 1)).astype(np.int8) for _ in range(3)]
    first = [interp.run([x])[0] for x in xs]
    again = [interp.run([x])[0] for x in xs]
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(first[0], f) for f in first[1:])  # inputs matter


def test_prepare_failure_is_a_clear_tflm_error() -> None:
    with pytest.raises(TflmError) as info:
        run_tflm(MODELS / "kws_ref_model_float32.tflite", [np.zeros((1, 49, 10, 1), np.float32)])
    assert info.value.stage == "prepare"
    assert "Hybrid models are not supported" in str(info.value)
    assert "CONV_2D" in str(info.value)
    assert isinstance(info.value, InvalidModelError)  # exit code 4
    with pytest.raises(TflmError, match="Hybrid"):
        measure_tflm_arena(MODELS / "kws_ref_model_float32.tflite")


def test_too_small_arena_is_reported() -> None:
    with pytest.raises(TflmError, match="allocate") as info:
        run_tflm(MODELS / "ad01_int8.tflite", [np.zeros((1, 640), np.int8)], arena_bytes=1000)
    assert info.value.stage == "prepare"


def test_wrong_inputs_are_usage_errors() -> None:
    path = MODELS / "ad01_int8.tflite"
    with pytest.raises(UsageError, match="takes 1 inputs"):
        run_tflm(path, [])
    with pytest.raises(UsageError, match="int8 of shape"):
        run_tflm(path, [np.zeros((1, 640), np.float32)])
    with pytest.raises(UsageError, match=r"\(1, 641\)"):
        run_tflm(path, [np.zeros((1, 641), np.int8)])


def test_corrupt_model_is_refused_before_tflm_sees_it() -> None:
    with pytest.raises(InvalidModelError, match="outputs vector"):
        run_tflm(
            _repacked(
                MODELS / "kws_ref_model.tflite",
                lambda m: setattr(m.subgraphs[0].operators[3], "outputs", None),
            ),
            [np.zeros((1, 49, 10, 1), np.int8)],
        )
    with pytest.raises(InvalidModelError, match="file identifier"):
        run_tflm(b"\x00" * 64, [])


def test_a_model_that_crashes_tflm_is_isolated() -> None:
    """Weights that contradict the activation shapes make TFLM divide by zero (SIGFPE).
    The structural check cannot see it; the default run isolates such a model because the
    IR validation refuses it, so this process survives and gets a TflmError."""
    bad = _repacked(
        MODELS / "kws_ref_model.tflite",
        lambda m: setattr(m.subgraphs[0].tensors[23], "shape", np.array([1, 25, 5, 32], np.int32)),
    )
    with pytest.raises(TflmError, match="crashed") as info:
        run_tflm(bad, [np.zeros((1, 49, 10, 1), np.int8)])
    assert info.value.stage == "run"


def test_parse_allocations_and_fd2_capture() -> None:
    text = (
        "[RecordingMicroAllocator] Arena allocation total 103680 bytes\n"
        "[RecordingMicroAllocator] Arena allocation head 73728 bytes\n"
        "[RecordingMicroAllocator] Arena allocation tail 29952 bytes\n"
    )
    assert parse_allocations(text) == TflmArena(73728, 29952, text)
    with pytest.raises(TflmError, match="no allocation report"):
        parse_allocations("")
    with capture_fd2() as log:
        os.write(2, b"written by C code to fd 2\n")
    assert log[0] == "written by C code to fd 2\n"
