"""Constants, dtype maps and small helpers shared by the ONNX loader, importer and exporter."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from crosslevel.ir.graph import QuantParams

MIN_OPSET = 13
EXPORT_OPSET = 17
EXPORT_IR_VERSION = 8  # the IR version that goes with opset 17
MAX_MODEL_BYTES = 2 * 1024**3  # protobuf cannot hold more
MAX_FOLD_ELEMENTS = 1 << 22  # a folded shape subgraph never allocates more than this

_DEFAULT_DOMAINS = ("", "ai.onnx")

ONNX_TO_DTYPE: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT8: "int8",
    TensorProto.UINT8: "uint8",
    TensorProto.INT16: "int16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
    TensorProto.BOOL: "bool",
}
DTYPE_TO_ONNX: dict[str, int] = {v: k for k, v in ONNX_TO_DTYPE.items()}

ModelSource = str | os.PathLike[str] | bytes | bytearray | memoryview | onnx.ModelProto


class _Names:
    """Names in use, handing out ``base``, ``base_1``, ``base_2``... without repeats.

    Like ``ir.graph.unique_name``, but remembering the last suffix per base: a (possibly
    hostile) model with thousands of equal names must not make naming quadratic.
    """

    def __init__(self, names: set[str] | None = None) -> None:
        self.taken: set[str] = set(names or ())
        self.suffix: dict[str, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.taken

    def add(self, name: str) -> None:
        self.taken.add(name)

    def claim(self, base: str) -> str:
        name, k = base, self.suffix.get(base, 0)
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.suffix[base] = k
        self.taken.add(name)
        return name


def _ints(value: Any) -> list[int]:
    return [int(v) for v in value]


def _same_quant(a: QuantParams, b: QuantParams) -> bool:
    return (
        a.axis == b.axis
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero_point, b.zero_point)
    )
