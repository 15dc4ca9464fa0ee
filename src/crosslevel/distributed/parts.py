"""Per-tier model files and the runtime that runs each: ONNX or int8 TFLite.

Float graphs (and QDQ graphs) are cut into ONNX parts and run with ONNX Runtime. Int8
graphs imported from ``.tflite`` compute with TFLite's integer kernels (requantizing
multipliers, fused integer clamps), which ONNX cannot express; they are cut into int8
``.tflite`` parts (``ir.tflite_io.export_tflite``) and run in TFLite Micro, so a split
reproduces the whole model bit for bit. Their cut tensors stay int8 on the wire; the plan
records each one's scale and zero point (``quant`` in its tensor spec), which both parts
already carry in their files.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.errors import InvalidModelError
from crosslevel.ir.graph import Graph

ONNX, TFLITE = "onnx", "tflite"
_INTEGER = ("int8", "uint8", "int16")


def part_format(graph: Graph) -> str:
    """TFLITE when the graph computes on quantized integer activations, else ONNX."""
    producer = graph.producers()
    for name, tensor in graph.tensors.items():
        if name in producer and tensor.dtype in _INTEGER and tensor.quant is not None:
            return TFLITE
    return ONNX


def export_part(graph: Graph, fmt: str) -> bytes:
    if fmt == TFLITE:
        from crosslevel.ir.tflite_io import export_tflite

        return export_tflite(graph)
    from crosslevel.ir.onnx import export_onnx

    return export_onnx(graph).SerializeToString()


def format_of(path: str | Path) -> str:
    return TFLITE if str(path).endswith(".tflite") else ONNX


class PartSession:
    """One part loaded once and run many times, in its format's runtime."""

    def __init__(self, model: bytes | str | Path, fmt: str | None = None) -> None:
        if fmt is None:
            fmt = format_of(model) if not isinstance(model, bytes) else ONNX
        self.fmt = fmt
        if fmt == TFLITE:
            from crosslevel.runtime.tflm import TflmInterpreter

            data = model if isinstance(model, bytes) else Path(model).read_bytes()
            self._tflm = TflmInterpreter(data)
        else:
            from crosslevel.runtime.ort import make_session

            self._ort = make_session(model if isinstance(model, bytes) else Path(model))

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.fmt == TFLITE:
            return self._tflm.run(list(inputs))
        from crosslevel.runtime.ort import run_session

        return run_session(self._ort, inputs)

    def check(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], who: str) -> None:
        """The plan feeds and reads a part by the specs it lists: they must be the model's
        (names for ONNX; count, shapes and dtypes for TFLite, whose files keep no
        reliable names)."""
        if self.fmt == TFLITE:
            got = [(list(shape), str(dtype)) for shape, dtype in self._tflm.input_specs]
            want = [(list(s["shape"]), s["dtype"]) for s in inputs]
            if got != want or self._tflm.num_outputs != len(outputs):
                raise InvalidModelError(f"partition plan: {who}: the .tflite part takes {got} "
                                        f"and gives {self._tflm.num_outputs} outputs; the plan "
                                        f"lists {want} and {len(outputs)}")  # fmt: skip
            return
        for key, specs, got_args in (("inputs", inputs, self._ort.get_inputs()),
                                     ("outputs", outputs, self._ort.get_outputs())):  # fmt: skip
            want_names = [s["name"] for s in specs]
            if [g.name for g in got_args] != want_names:
                raise InvalidModelError(
                    f"partition plan: {who} lists {key} {want_names}, but its model has "
                    f"{[g.name for g in got_args]}"
                )


def time_part(model: bytes, fmt: str, inputs: Sequence[np.ndarray], repeats: int = 20) -> float:
    """Median ms of ``repeats`` runs after three warm-up runs (one thread)."""
    if fmt == ONNX:
        from crosslevel.runtime.ort import time_onnx

        return time_onnx(model, inputs, repeats=repeats, warmup=3).median_ms
    session = PartSession(model, fmt)
    for _ in range(3):
        session.run(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
