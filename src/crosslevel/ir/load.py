"""One entry point from whatever the user names (a file or a zoo model) to the IR."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.ir.graph import Graph

MAX_MODEL_BYTES = 2 * 1024**3  # flatbuffers and protobuf both stop at 2 GiB
ZOO_PREFIX = "zoo:"
MLPERF_PREFIX = "mlperf:"


@dataclass
class LoadedModel:
    """The IR plus what the reports need to know of where it came from."""

    graph: Graph
    source: str
    kind: str  # "tflite" | "onnx" | "zoo"
    file_bytes: bytes | None = None  # the original file, for flash size and TFLM runs


def load_model(spec: str, int8: bool = False) -> LoadedModel:
    """Load ``spec``: a ``.tflite`` or ``.onnx`` path, ``zoo:NAME`` for a zoo model, or
    ``mlperf:FILE`` for a real MLPerf Tiny model from the shared folder."""
    if spec.startswith(ZOO_PREFIX):
        return _load_zoo(spec[len(ZOO_PREFIX) :], int8)
    if int8:
        raise UsageError("--int8 applies to zoo models; a file is analyzed as it is")
    if spec.startswith(MLPERF_PREFIX):
        from crosslevel.model.mlperf_tiny import models_dir

        spec = str(models_dir() / spec[len(MLPERF_PREFIX) :])
    path = Path(spec)
    if path.is_dir():
        raise UsageError(f"{spec!r} is a folder; name a model file inside it")
    if not path.is_file():
        raise UsageError(f"model file {spec!r} does not exist (or name a zoo model as zoo:NAME)")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise InvalidModelError(f"{spec}: {size} bytes is larger than the 2 GiB format limit")
    data = path.read_bytes()
    if _looks_like_tflite(data) or path.suffix.lower() == ".tflite":
        from crosslevel.ir.tflite_io import import_tflite

        return LoadedModel(import_tflite(data), spec, "tflite", data)
    if path.suffix.lower() == ".onnx":
        from crosslevel.ir.onnx import import_onnx

        # Pass the path (not the bytes) so external data resolves inside the model's folder.
        return LoadedModel(import_onnx(path), spec, "onnx", data)
    raise InvalidModelError(
        f"{spec}: not a TFLite flatbuffer (no 'TFL3' identifier) and not named *.onnx"
    )


def _looks_like_tflite(data: bytes) -> bool:
    return len(data) >= 8 and data[4:8] == b"TFL3"


def _load_zoo(name: str, int8: bool) -> LoadedModel:
    """A zoo model as float IR, or (``int8``) as the int8 .tflite our minimal PTQ makes."""
    from crosslevel.ir.torch_io import import_torch
    from crosslevel.model import zoo

    if name not in zoo.ZOO:
        known = ", ".join(sorted(zoo.ZOO))
        raise UsageError(f"unknown zoo model {name!r}; known: {known}")
    if int8:
        from crosslevel.ir.tflite_io import import_tflite
        from crosslevel.model.int8_zoo import zoo_int8_tflite

        data = zoo_int8_tflite(name)
        return LoadedModel(import_tflite(data), f"zoo:{name} (int8 PTQ)", "tflite", data)
    entry = zoo.ZOO[name]
    module = zoo.build(name)
    graph = import_torch(module, (1, *entry.input_shape))
    graph.name = name
    return LoadedModel(graph, f"zoo:{name}", "zoo")
