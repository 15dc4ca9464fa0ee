"""TensorFlow Lite Micro, the reference MCU runtime, behind crosslevel's errors.

``run_tflm`` executes a ``.tflite`` model with the ``tflite-micro`` Python interpreter
(reference kernels, one arena); ``measure_tflm_arena`` reports the arena TFLM's own
planner needs. TFLM reports failures as a bare ``RuntimeError`` and writes the reason to
the C-level stderr (file descriptor 2); both are turned here into one ``TflmError`` whose
message carries TFLM's own lines.

Models are checked structurally first (``load_tflite_model``: indices, buffer spans and
sizes), because TFLM trusts the flatbuffer and may read out of bounds on a corrupt one.
``isolate=True`` additionally runs TFLM in a child process (``python -m
crosslevel.runtime.tflm``), so that even a crash inside TFLM ends in a ``TflmError``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.errors import CrosslevelError, InvalidModelError, UsageError
from crosslevel.ir.tflite_io import _DTYPES as TFLITE_DTYPES
from crosslevel.ir.tflite_io import load_tflite_model

DEFAULT_ARENA_BYTES = 4 * 1024 * 1024
SUBPROCESS_TIMEOUT_S = 300.0
_EXIT_TFLM_ERROR = 3
_EXIT_MODEL_ERROR = 4

ModelSource = bytes | str | Path


class TflmError(InvalidModelError):
    """TFLM refused or failed to run a model; ``stage`` says where (prepare, invoke...)."""

    def __init__(self, stage: str, detail: str) -> None:
        self.stage = stage
        super().__init__(f"TFLM failed to {stage} the model: {detail}")


@dataclass(frozen=True)
class TflmArena:
    """TFLM's arena use: ``head`` = planned activations and scratch, ``tail`` = persistent."""

    head_bytes: int
    tail_bytes: int
    raw_text: str

    @property
    def total_bytes(self) -> int:
        return self.head_bytes + self.tail_bytes


# ----------------------------------------------------------------------------------
# capturing TFLM's C-level stderr
# ----------------------------------------------------------------------------------
@contextlib.contextmanager
def capture_fd2() -> Iterator[list[str]]:
    """Redirect file descriptor 2 into a temporary file; the yielded list gets its text.

    ``contextlib.redirect_stderr`` only swaps Python's ``sys.stderr``; TFLM writes with C
    stdio, so the descriptor itself must be redirected.
    """
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.append(tmp.read().decode("utf-8", "replace"))


def _tflm_reason(log: str, fallback: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return "; ".join(lines[-6:]) if lines else fallback


def _model_bytes(model: ModelSource) -> bytes:
    """The model's bytes after the structural check that keeps TFLM in bounds."""
    _, buf = load_tflite_model(model)
    return buf


# ----------------------------------------------------------------------------------
# running in this process
# ----------------------------------------------------------------------------------
class TflmInterpreter:
    """One TFLM interpreter (model prepared once, invoked many times)."""

    def __init__(self, model: ModelSource, arena_bytes: int = DEFAULT_ARENA_BYTES) -> None:
        from tflite_micro.python.tflite_micro import runtime

        if arena_bytes <= 0:
            raise UsageError(f"arena_bytes must be positive, got {arena_bytes}")
        model_t, self.model_bytes = load_tflite_model(model)
        sub = model_t.subgraphs[0]
        self.input_specs = [_spec(sub.tensors[int(k)]) for k in sub.inputs]
        self.num_outputs = len(sub.outputs)
        with capture_fd2() as log:
            try:
                self._interp = runtime.Interpreter.from_bytes(
                    self.model_bytes, arena_size=int(arena_bytes)
                )
            except Exception as exc:  # TFLM raises RuntimeError with the reason on fd 2
                error: Exception | None = exc
            else:
                error = None
        if error is not None:
            raise TflmError("prepare", _tflm_reason(log[0], str(error))) from None
        self.prepare_log = log[0]

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Set the inputs, invoke, return copies of the outputs."""
        if len(inputs) != len(self.input_specs):
            raise UsageError(f"the model takes {len(self.input_specs)} inputs, got {len(inputs)}")
        for k, (array, (shape, dtype)) in enumerate(zip(inputs, self.input_specs, strict=True)):
            arr = np.asarray(array)
            if arr.dtype != dtype or tuple(arr.shape) != shape:
                got = f"{arr.dtype} {tuple(arr.shape)}"
                raise UsageError(f"input {k} must be {dtype} of shape {shape}, got {got}")
            self._interp.set_input(np.ascontiguousarray(arr), k)
        with capture_fd2() as log:
            try:
                self._interp.invoke()
            except Exception as exc:
                error: Exception | None = exc
            else:
                error = None
        if error is not None:
            raise TflmError("invoke", _tflm_reason(log[0], str(error))) from None
        return [np.array(self._interp.get_output(k), copy=True) for k in range(self.num_outputs)]

    def allocations_text(self) -> str:
        """What ``print_allocations()`` writes to fd 2."""
        with capture_fd2() as log:
            self._interp.print_allocations()
        return log[0]


def _spec(tensor: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    dtype = TFLITE_DTYPES.get(tensor.type)
    if dtype is None:
        raise InvalidModelError(f"model input has a tensor type ({tensor.type}) TFLM cannot take")
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    return shape, np.dtype(dtype)


def parse_allocations(text: str) -> TflmArena:
    """Head and tail bytes from the text of ``print_allocations()``."""
    head = re.search(r"Arena allocation head (\d+) bytes", text)
    tail = re.search(r"Arena allocation tail (\d+) bytes", text)
    if head is None or tail is None:
        raise TflmError("report the arena of", _tflm_reason(text, "no allocation report"))
    return TflmArena(int(head.group(1)), int(tail.group(1)), text)


# ----------------------------------------------------------------------------------
# public entry points
# ----------------------------------------------------------------------------------
def run_tflm(
    model: ModelSource,
    inputs: list[np.ndarray],
    arena_bytes: int = DEFAULT_ARENA_BYTES,
    isolate: bool | None = None,
) -> list[np.ndarray]:
    """Run ``model`` once in TFLM on ``inputs`` (in input order); returns the outputs.

    TFLM trusts the model: a structurally sound file whose shapes contradict its
    operators can still crash it (a division by zero or a null dereference in C++).
    ``isolate=None`` therefore runs in this process only when ``import_tflite`` accepts
    the model (indices, buffers and every operator's shapes checked), and in a child
    process otherwise; ``True``/``False`` force one or the other.
    """
    buf = _model_bytes(model)
    if isolate is None:
        isolate = not _validates(buf)
    if isolate:
        return _run_isolated(buf, inputs, arena_bytes)
    return TflmInterpreter(buf, arena_bytes).run(inputs)


def tflm_every_tensor(model: ModelSource, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Every tensor TFLM holds after one invoke, by the file's tensor index.

    TFLM keeps intermediate tensors only with kPreserveAllTensors (each gets its own
    bytes), which is how per-node results are compared with our executors.
    """
    from tflite_micro.python.tflite_micro import runtime as tflm_runtime

    buf = _model_bytes(model)
    interp = tflm_runtime.Interpreter.from_bytes(
        buf,
        arena_size=8 << 20,
        intrepreter_config=tflm_runtime.InterpreterConfig.kPreserveAllTensors,
    )
    for index, x in enumerate(inputs):
        interp.set_input(x, index)
    interp.invoke()
    model_t, _ = load_tflite_model(buf)
    count = len(model_t.subgraphs[0].tensors)
    return [np.array(interp.GetTensor(index, 0)["tensor_data"]) for index in range(count)]


def _validates(buf: bytes) -> bool:
    from crosslevel.ir.tflite_io import import_tflite

    try:
        import_tflite(buf)
    except InvalidModelError:
        return False
    return True


def measure_tflm_arena(
    model: ModelSource, arena_bytes: int = DEFAULT_ARENA_BYTES, isolate: bool = True
) -> TflmArena:
    """TFLM's arena use for ``model`` (its own planner, or the model's offline plan)."""
    if not isolate:
        return parse_allocations(TflmInterpreter(model, arena_bytes).allocations_text())
    buf = _model_bytes(model)
    proc = _child(["arena", str(int(arena_bytes))], stdin=buf)
    return parse_allocations(proc.stderr.decode("utf-8", "replace"))


# ----------------------------------------------------------------------------------
# child process (python -m crosslevel.runtime.tflm)
# ----------------------------------------------------------------------------------
def _child(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run this module in a fresh interpreter; map its failures to TflmError."""
    src = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "crosslevel.runtime.tflm", *args],
            input=stdin,
            capture_output=True,
            timeout=SUBPROCESS_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise TflmError("run", f"no answer within {SUBPROCESS_TIMEOUT_S:.0f} s") from None
    message = proc.stdout.decode("utf-8", "replace").strip()
    if proc.returncode < 0:
        raise TflmError("run", f"TFLM crashed (signal {-proc.returncode})")
    if proc.returncode == _EXIT_TFLM_ERROR:
        stage, _, detail = message.partition("\t")
        raise TflmError(stage or "run", detail or message)
    if proc.returncode == _EXIT_MODEL_ERROR:
        raise InvalidModelError(message)
    if proc.returncode != 0:
        tail = _tflm_reason(proc.stderr.decode("utf-8", "replace"), message)
        raise TflmError("run", f"child exited with {proc.returncode}: {tail}")
    return proc


def _run_isolated(model: ModelSource, inputs: list[np.ndarray], arena: int) -> list[np.ndarray]:
    buf = _model_bytes(model)
    with tempfile.TemporaryDirectory(prefix="crosslevel-tflm-") as tmp:
        folder = Path(tmp)
        (folder / "model.tflite").write_bytes(buf)
        np.savez(folder / "inputs.npz", *[np.asarray(x) for x in inputs])
        _child(["run", str(int(arena)), str(folder)])
        with np.load(folder / "outputs.npz", allow_pickle=False) as data:
            return [np.array(data[f"arr_{k}"]) for k in range(len(data.files))]


def _child_main(argv: list[str]) -> int:
    """Entry point of the child process: ``arena ARENA`` (model on stdin) or
    ``run ARENA FOLDER``. TFLM's own report goes to fd 2 untouched."""
    try:
        if argv[:1] == ["arena"]:
            buf = sys.stdin.buffer.read()
            interp = TflmInterpreter(buf, int(argv[1]))
            interp._interp.print_allocations()
            return 0
        if argv[:1] == ["run"]:
            folder = Path(argv[2])
            with np.load(folder / "inputs.npz", allow_pickle=False) as data:
                inputs = [np.array(data[f"arr_{k}"]) for k in range(len(data.files))]
            outputs = TflmInterpreter((folder / "model.tflite").read_bytes(), int(argv[1])).run(
                inputs
            )
            np.savez(folder / "outputs.npz", *outputs)
            return 0
    except TflmError as exc:
        print(f"{exc.stage}\t{str(exc).split(': ', 1)[-1]}")
        return _EXIT_TFLM_ERROR
    except CrosslevelError as exc:
        print(str(exc))
        return _EXIT_MODEL_ERROR
    print(f"usage: python -m crosslevel.runtime.tflm arena ARENA | run ARENA FOLDER (got {argv})")
    return 2


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
