"""Safe loading and checking of ONNX models.

The protobuf is parsed before any external file is touched, and every external-data
path is checked to stay inside the model's folder; then ``onnx.checker``, the opset
upgrade, the batch fix and strict shape inference run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto, helper

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.onnx.common import (
    _DEFAULT_DOMAINS,
    MAX_MODEL_BYTES,
    MIN_OPSET,
    ONNX_TO_DTYPE,
    ModelSource,
)

# =========================================================================== loading


def load_onnx_model(source: ModelSource) -> onnx.ModelProto:
    """Parse ``source`` and inline its external data after checking every path.

    The returned model holds all tensor bytes inline, so nothing downstream (checker,
    ``numpy_helper``, ONNX Runtime) ever opens a file the model names.
    """
    base_dir: Path | None = None
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
    elif isinstance(source, bytes | bytearray | memoryview):
        model = _parse(bytes(source), "<bytes>")
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        model = _parse(_read_model_file(path), str(path))
        base_dir = path.resolve().parent
    else:
        raise InvalidModelError(f"cannot load an ONNX model from a {type(source).__name__}")
    _inline_external_data(model, base_dir)
    return model


def _read_model_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise InvalidModelError(f"{path}: {size} bytes is larger than protobuf's 2 GiB limit")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidModelError(f"cannot read ONNX model {path}: {exc.strerror or exc}") from exc


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise InvalidModelError(f"{where}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeError in some builds
        raise InvalidModelError(f"{where}: not a valid ONNX protobuf ({exc})") from exc
    if not model.HasField("graph"):
        raise InvalidModelError(f"{where}: not an ONNX model (no graph in the protobuf)")
    return model


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _inline_external_data(model: onnx.ModelProto, base_dir: Path | None) -> None:
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL:
            tensor.raw_data = _read_external(tensor, base_dir)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT


def _read_external(tensor: onnx.TensorProto, base_dir: Path | None) -> bytes:
    """The bytes of one external tensor, read only from a file inside ``base_dir``."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    where = f"tensor {tensor.name!r}"
    location = info.get("location", "")
    if base_dir is None:
        raise InvalidModelError(
            f"{where} keeps its data in external file {location!r}; load the model from its "
            "path so the file can be found (and checked) beside it"
        )
    path = _safe_external_path(location, base_dir, where)
    if tensor.data_type not in ONNX_TO_DTYPE:
        raise InvalidModelError(f"{where} has an unsupported external data type")
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    expected = math.prod(int(d) for d in tensor.dims) * itemsize
    try:
        offset = int(info.get("offset", "0"))
        length = int(info.get("length", str(expected)))
    except ValueError:
        raise InvalidModelError(f"{where}: external data offset/length are not integers") from None
    if offset < 0 or length != expected:
        raise InvalidModelError(
            f"{where}: external data of {length} bytes at offset {offset}, but its shape "
            f"{list(tensor.dims)} needs {expected} bytes"
        )
    return _read_range(path, offset, length, where)


def _safe_external_path(location: str, base_dir: Path, where: str) -> Path:
    """Refuse absolute paths, ``..`` and symlinks that leave the model's folder."""
    if not location:
        raise InvalidModelError(f"{where}: external data without a location")
    posix, windows = PurePosixPath(location), PureWindowsPath(location)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
        raise InvalidModelError(
            f"{where}: external data location {location!r} must be a relative path inside "
            "the model's folder"
        )
    root = base_dir.resolve()
    path = (root / location).resolve()
    if not path.is_relative_to(root):
        raise InvalidModelError(
            f"{where}: external data {location!r} resolves to {path}, outside the model's "
            f"folder {root}"
        )
    if not path.is_file():
        raise InvalidModelError(f"{where}: external data file {location!r} does not exist")
    return path


def _read_range(path: Path, offset: int, length: int, where: str) -> bytes:
    try:
        size = path.stat().st_size
        if offset + length > size:
            raise InvalidModelError(
                f"{where}: external data needs bytes {offset}..{offset + length} but "
                f"{path.name} has {size}"
            )
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)
    except OSError as exc:
        raise InvalidModelError(f"{where}: cannot read {path.name}: {exc}") from exc


# =========================================================================== checking


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise InvalidModelError("ONNX model does not import the default operator set")
    return int(max(versions))


def _refuse_foreign_domains(model: onnx.ModelProto) -> None:
    for index, node in enumerate(model.graph.node):
        if node.domain not in _DEFAULT_DOMAINS:
            name = node.name or f"{node.op_type}_{index}"
            raise UnsupportedOperatorError(f"{node.domain}::{node.op_type}", name)


def _check(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, and C++ errors surfacing as others
        raise InvalidModelError(f"ONNX checker rejects the model: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Models older than opset 13 are converted (ONNX's own version converter)."""
    version = _default_opset(model)
    if version >= MIN_OPSET:
        return model
    try:
        from onnx import version_converter

        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise InvalidModelError(
            f"model uses opset {version}; crosslevel needs opset {MIN_OPSET}+ and ONNX's "
            f"version converter could not upgrade it: {_first_line(exc)}"
        ) from exc
    _check(converted)
    return converted


def _fix_batch(model: onnx.ModelProto) -> list[str]:
    """Set a symbolic batch (axis 0 of each input) to 1; refuse other unknown dims."""
    initializers = {t.name for t in model.graph.initializer}
    fixed: list[str] = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            raise InvalidModelError(f"graph input {vi.name!r} is not a tensor of known rank")
        for axis, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                if dim.dim_value <= 0:
                    raise InvalidModelError(
                        f"graph input {vi.name!r} has dimension {dim.dim_value} at axis {axis}"
                    )
                continue
            if axis != 0:
                label = dim.dim_param or "unknown"
                raise InvalidModelError(
                    f"graph input {vi.name!r} has a dynamic dimension {label!r} at axis {axis}; "
                    "only the batch (axis 0) may be dynamic, and it is fixed to 1"
                )
            dim.Clear()
            dim.dim_value = 1
            fixed.append(vi.name)
    del model.graph.value_info[:]  # stale symbolic shapes; inference recomputes them
    return fixed


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except Exception as exc:
        raise InvalidModelError(f"ONNX shape inference fails: {_first_line(exc)}") from exc


@dataclass(frozen=True)
class _Info:
    """What ONNX shape inference knows of one value."""

    dtype: str | None
    shape: tuple[int, ...] | None


def _value_infos(model: onnx.ModelProto) -> dict[str, _Info]:
    infos: dict[str, _Info] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        if not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        infos[vi.name] = _Info(ONNX_TO_DTYPE.get(tt.elem_type), shape)
    return infos
