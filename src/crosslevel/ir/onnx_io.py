"""ONNX <-> IR: a checked importer (NCHW graphs) and an exporter (opset 17).

Import: parse the protobuf (no external file is touched until its path is checked to stay
inside the model's folder), run ``onnx.checker`` and strict shape inference, fix a
symbolic batch to 1, fold static shape subgraphs (``Shape -> Gather -> Concat -> Reshape``)
with NumPy, and map every remaining node onto the IR vocabulary of ``ir.ops``. Whatever
cannot be represented raises ``UnsupportedOperatorError`` naming the operator and node;
whatever is malformed raises ``InvalidModelError``; nothing else escapes.

Export: NCHW graphs map node for node. NHWC graphs (from TFLite) keep every tensor in its
IR (NHWC) shape, and only the operators whose ONNX form is channels-first (convolutions,
pooling, batch norm) are wrapped in ``Transpose`` nodes, with their weights converted.
So flattening, reshapes, concatenation axes and means keep their TFLite meaning. Fused
activations become separate nodes. Int8 graphs with TFLite semantics are refused; QDQ
graphs (float compute between ``QUANTIZE``/``DEQUANTIZE``) export back as QDQ.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crosslevel.errors import CrosslevelError, InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.ops import infer_shapes

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


# =========================================================================== import


def import_onnx(source: ModelSource) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into a validated NCHW IR graph.

    Raises InvalidModelError for malformed input and UnsupportedOperatorError (a subclass)
    naming the operator and node for anything the IR cannot represent.
    """
    try:
        model = load_onnx_model(source)
        _refuse_foreign_domains(model)
        _check(model)
        opset = _default_opset(model)
        model = _upgrade_opset(model)
        fixed = _fix_batch(model)
        model = _infer(model)
        graph = _Importer(model, opset, fixed).run()
    except CrosslevelError:
        raise
    except (MemoryError, RecursionError) as exc:
        raise InvalidModelError(f"ONNX model is too large or too deep: {exc!r}") from exc
    except Exception as exc:  # last line of defence: hostile input never escapes as a crash
        raise InvalidModelError(f"malformed ONNX model: {type(exc).__name__}: {exc}") from exc
    return graph


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


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _ints(value: Any) -> list[int]:
    return [int(v) for v in value]


Handler = Callable[["_Importer", onnx.NodeProto, str], None]


class _Importer:
    """Walks the ONNX nodes in order, folding static values and emitting IR nodes."""

    def __init__(self, model: onnx.ModelProto, opset: int, fixed_batch: list[str]) -> None:
        self.model = model
        g = model.graph
        self.ir = Graph(
            name=g.name or "onnx_model",
            tensors={},
            nodes=[],
            inputs=[],
            outputs=[],
            layout="NCHW",
            metadata={
                "source_format": "onnx",
                "opset": opset,
                "producer": f"{model.producer_name} {model.producer_version}".strip(),
                "fixed_batch_inputs": fixed_batch,
            },
        )
        self.consts: dict[str, np.ndarray] = {}
        self.info = _value_infos(model)
        self.reserved = _Names(_onnx_names(model))
        self.used = _used_names(model)
        self.node_names = _Names()  # ONNX node names seen, and IR names given
        self.ir_node_names: set[str] = set()

    # ----- driver --------------------------------------------------------------------
    def run(self) -> Graph:
        self._load_initializers()
        self._add_inputs()
        for index, node in enumerate(self.model.graph.node):
            self._convert(node, index)
        self._set_outputs()
        self.ir.validate()
        return self.ir

    def _load_initializers(self) -> None:
        g = self.model.graph
        if len(g.sparse_initializer):
            raise InvalidModelError("sparse initializers are not supported")
        for init in g.initializer:
            try:
                self.consts[init.name] = numpy_helper.to_array(init)
            except Exception as exc:
                raise InvalidModelError(f"initializer {init.name!r} is malformed: {exc}") from exc

    def _add_inputs(self) -> None:
        for vi in self.model.graph.input:
            if vi.name in self.consts:
                continue
            info = self.info.get(vi.name)
            if info is None or info.shape is None:
                raise InvalidModelError(f"graph input {vi.name!r} has no static shape")
            if info.dtype is None:
                raise InvalidModelError(f"graph input {vi.name!r} has an unsupported type")
            self.ir.tensors[vi.name] = Tensor(vi.name, info.shape, info.dtype)
            self.ir.inputs.append(vi.name)

    def _set_outputs(self) -> None:
        for vi in self.model.graph.output:
            if vi.name not in self.ir.tensors or self.ir.tensors[vi.name].is_constant:
                raise InvalidModelError(
                    f"graph output {vi.name!r} is a constant: the model computes nothing for it"
                )
            self.ir.outputs.append(vi.name)

    def _convert(self, node: onnx.NodeProto, index: int) -> None:
        name = self.node_names.claim(node.name or f"{node.op_type}_{index}")
        try:
            if node.op_type == "Constant":
                self._set_const(node.output[0], _constant_value(node, name), name)
            elif not self._try_fold(node, name):
                handler = _HANDLERS.get(node.op_type)
                if handler is None:
                    raise UnsupportedOperatorError(node.op_type, name)
                handler(self, node, name)
        except CrosslevelError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as exc:
            raise InvalidModelError(f"node {name!r} ({node.op_type}): {exc}") from exc

    # ----- values --------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A new value name; ``reserved`` holds every ONNX name and every name made here."""
        return self.reserved.claim(base)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.ir.tensors:
            return self.ir.tensors[name].shape
        if name in self.consts:
            return tuple(int(d) for d in self.consts[name].shape)
        raise InvalidModelError(f"tensor {name!r} is used before it is defined")

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def const(self, node: onnx.NodeProto, k: int, what: str, name: str) -> np.ndarray | None:
        """Input ``k`` as a constant array (None when omitted); refuse computed values."""
        if k >= len(node.input) or not node.input[k]:
            return None
        value = self.consts.get(node.input[k])
        if value is None:
            raise UnsupportedOperatorError(node.op_type, name, f"{what} must be a constant")
        return value

    def value(self, name: str) -> str:
        """The IR tensor holding ``name``, creating an IR constant on first use."""
        if name in self.ir.tensors:
            return name
        if name in self.consts:
            return self.add_const(name, self.consts[name])
        raise InvalidModelError(f"tensor {name!r} is used before it is defined")

    def add_const(self, name: str, array: np.ndarray, quant: QuantParams | None = None) -> str:
        dtype = _dtype_name(array.dtype, name)
        self.ir.tensors[name] = Tensor(name, array.shape, dtype, data=np.ascontiguousarray(array))
        self.ir.tensors[name].quant = quant
        return name

    def new_const(self, base: str, array: np.ndarray) -> str:
        return self.add_const(self.fresh(base), array)

    def _set_const(self, name: str, array: np.ndarray, node_name: str) -> None:
        if array.dtype.kind not in "fiub":
            raise UnsupportedOperatorError("Constant", node_name, f"constant of type {array.dtype}")
        self.consts[name] = array

    # ----- emitting ------------------------------------------------------------------
    def emit(
        self,
        op: str,
        inputs: list[str],
        outputs: list[str],
        name: str,
        attrs: dict[str, Any] | None = None,
        dtype: str | None = None,
    ) -> Node:
        """Append an IR node; output shapes come from ``ir.ops`` and must agree with ONNX."""
        if name in self.ir_node_names:  # a second IR node made from one ONNX node
            name = self.node_names.claim(name)
        self.node_names.add(name)
        self.ir_node_names.add(name)
        node = Node(name, op, [self.value(i) if i else "" for i in inputs], outputs, attrs or {})
        shapes = infer_shapes(self.ir, node)
        for out, shape in zip(outputs, shapes, strict=False):
            known = self.info.get(out)
            if known is not None and known.shape is not None and known.shape != tuple(shape):
                raise InvalidModelError(
                    f"node {name!r} ({op}): ONNX declares {out!r} with shape {known.shape} "
                    f"but its inputs give {tuple(shape)}"
                )
            out_dtype = dtype or (known.dtype if known and known.dtype else None)
            out_dtype = out_dtype or self.ir.tensor(node.inputs[0]).dtype
            self.ir.tensors[out] = Tensor(out, shape, out_dtype)
        self.ir.nodes.append(node)
        return node

    # ----- folding of static values ---------------------------------------------------
    def _try_fold(self, node: onnx.NodeProto, name: str) -> bool:
        fold = _FOLDERS.get(node.op_type)
        if fold is None:
            return False
        if node.op_type == "Shape":
            if node.input[0] not in self.ir.tensors and node.input[0] not in self.consts:
                return False
            args: list[np.ndarray | None] = [np.empty(0)]
            attrs = {**_attrs(node), "_shape": self.shape(node.input[0])}
        else:
            present = [i for i in node.input if i]
            if not present or any(i not in self.consts for i in present):
                return False
            args = [self.consts[i] if i else None for i in node.input]
            attrs = _attrs(node)
        _check_fold_size(node.op_type, args, attrs, name)
        results = fold(args, attrs)
        for out, value in zip(node.output, results, strict=False):
            if out:
                value = np.asarray(value)
                if value.size > max(MAX_FOLD_ELEMENTS, *(a.size for a in args if a is not None)):
                    raise InvalidModelError(f"node {name!r}: folded value is too large")
                self.consts[out] = value
        return True


def _onnx_names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {vi.name for vi in g.input}
    names |= {vi.name for vi in g.output}
    for node in g.node:
        names.update(node.input)
        names.update(node.output)
    names.discard("")
    return names


def _dtype_name(dtype: np.dtype, name: str) -> str:
    text = str(np.dtype(dtype))
    if text not in DTYPE_TO_ONNX:
        raise InvalidModelError(
            f"tensor {name!r} has dtype {text}, which crosslevel does not support"
        )
    return text


def _constant_value(node: onnx.NodeProto, name: str) -> np.ndarray:
    attrs = _attrs(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    raise UnsupportedOperatorError("Constant", name, f"constant of kind {sorted(attrs)}")


# =========================================================================== static folding

Folder = Callable[[list[np.ndarray | None], dict[str, Any]], list[np.ndarray]]


def _check_fold_size(
    op: str, args: list[np.ndarray | None], attrs: dict[str, Any], name: str
) -> None:
    """Refuse folds whose output would be huge before allocating it (hostile models)."""
    count = 0
    if op == "ConstantOfShape" and args[0] is not None:
        count = math.prod(int(d) for d in args[0].reshape(-1))
    elif op == "Expand" and args[0] is not None and args[1] is not None:
        shape = np.broadcast_shapes(args[0].shape, tuple(int(d) for d in args[1].reshape(-1)))
        count = math.prod(shape)
    elif op == "Range":
        start, limit, delta = (float(_req(args, k).reshape(-1)[0]) for k in range(3))
        if delta == 0 or not all(math.isfinite(v) for v in (start, limit, delta)):
            raise InvalidModelError(f"node {name!r}: Range({start}, {limit}, {delta})")
        count = max(0, math.ceil((limit - start) / delta))
    elif op in _BINARY_FOLD or op == "Where":
        shapes = [a.shape for a in args if a is not None]
        count = math.prod(np.broadcast_shapes(*shapes))
    elif op == "Gather":
        data, idx = _req(args, 0), _req(args, 1)
        axis = int(attrs.get("axis", 0)) % max(data.ndim, 1)
        count = idx.size * (data.size // max(data.shape[axis], 1) if data.ndim else 1)
    if count > MAX_FOLD_ELEMENTS:
        raise InvalidModelError(f"node {name!r} ({op}) would build {count} elements; refused")


def _axes_arg(args: list[np.ndarray | None], attrs: dict[str, Any], k: int) -> list[int] | None:
    if len(args) > k and args[k] is not None:
        return [int(a) for a in np.asarray(args[k]).reshape(-1)]
    if "axes" in attrs:
        return _ints(attrs["axes"])
    return None


def _req(args: list[np.ndarray | None], k: int) -> np.ndarray:
    if k >= len(args) or args[k] is None:
        raise ValueError(f"input {k} is missing")
    value = args[k]
    assert value is not None
    return value


def _fold_shape(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    shape = list(attrs["_shape"])
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    return [np.array(shape[start : None if end is None else int(end)], dtype=np.int64)]


def _fold_gather(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    data, idx = _req(args, 0), _req(args, 1).astype(np.int64)
    axis = int(attrs.get("axis", 0))
    n = data.shape[axis]
    if np.any(idx < -n) or np.any(idx >= n):
        raise ValueError(f"Gather index out of range for axis of {n}")
    return [np.take(data, np.where(idx < 0, idx + n, idx), axis=axis)]


def _fold_unsqueeze(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    data = _req(args, 0)
    axes = _axes_arg(args, attrs, 1) or []
    return [data.reshape(unsqueeze_shape(data.shape, axes))]


def _fold_squeeze(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    data = _req(args, 0)
    return [data.reshape(squeeze_shape(data.shape, _axes_arg(args, attrs, 1)))]


def _fold_reshape(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    data = _req(args, 0)
    target = [int(d) for d in _req(args, 1).reshape(-1)]
    return [data.reshape(reshape_target(data.shape, target, bool(attrs.get("allowzero", 0))))]


def _fold_flatten(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    data = _req(args, 0)
    return [data.reshape(flatten_shape(data.shape, int(attrs.get("axis", 1))))]


def _fold_slice(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    data = _req(args, 0)
    starts = [int(v) for v in _req(args, 1).reshape(-1)]
    ends = [int(v) for v in _req(args, 2).reshape(-1)]
    axes = _axes_arg(args, {}, 3) or list(range(len(starts)))
    steps = _axes_arg(args, {}, 4) or [1] * len(starts)
    index: list[slice] = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step == 0:
            raise ValueError("Slice step 0")
        index[axis % data.ndim] = slice(start, end, step)
    return [data[tuple(index)]]


def _fold_cast(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    to = int(attrs["to"])
    if to not in ONNX_TO_DTYPE:
        raise ValueError(f"Cast to unsupported type {to}")
    return [_req(args, 0).astype(ONNX_TO_DTYPE[to])]


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.any(b == 0):
            raise ValueError("integer division by zero")
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)
    return np.asarray(a / b).astype(a.dtype)


def _fold_const_of_shape(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    shape = [int(d) for d in _req(args, 0).reshape(-1)]
    fill = attrs.get("value")
    value = numpy_helper.to_array(fill).reshape(-1) if fill is not None else np.zeros(1, np.float32)
    return [np.full(shape, value[0], dtype=value.dtype)]


def _fold_range(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
    start, limit, delta = (_req(args, k).reshape(()) for k in range(3))
    return [np.arange(start, limit, delta).astype(start.dtype)]


def _binary_fold(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Folder:
    def fold(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        a, b = _req(args, 0), _req(args, 1)
        return [np.asarray(fn(a, b)).astype(a.dtype if fn is not np.equal else bool)]

    return fold


def _unary_fold(fn: Callable[[np.ndarray], np.ndarray]) -> Folder:
    def fold(args: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        a = _req(args, 0)
        return [np.asarray(fn(a)).astype(a.dtype)]

    return fold


_BINARY_FOLD: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": _int_div,
    "Pow": np.power,
    "Equal": np.equal,
    "Max": np.maximum,
    "Min": np.minimum,
}

# Shape arithmetic and small integer subgraphs that exporters emit: evaluated here, never
# reaching the IR. Float math on constants (weights preprocessing) folds too.
_FOLDERS: dict[str, Folder] = {
    "Identity": lambda a, _: [_req(a, 0)],
    "Shape": _fold_shape,
    "Size": lambda a, _: [np.array(_req(a, 0).size, dtype=np.int64)],
    "Gather": _fold_gather,
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Concat": lambda a, at: [np.concatenate([x for x in a if x is not None], int(at["axis"]))],
    "Reshape": _fold_reshape,
    "Flatten": _fold_flatten,
    "Transpose": lambda a, at: [np.transpose(_req(a, 0), at.get("perm"))],
    "Slice": _fold_slice,
    "Cast": _fold_cast,
    "ConstantOfShape": _fold_const_of_shape,
    "Range": _fold_range,
    "Expand": lambda a, _: [
        _req(a, 0) * np.ones([int(d) for d in _req(a, 1).reshape(-1)], dtype=_req(a, 0).dtype)
    ],
    "Where": lambda a, _: [np.where(_req(a, 0), _req(a, 1), _req(a, 2))],
    "Neg": _unary_fold(np.negative),
    "Abs": _unary_fold(np.abs),
    "Sqrt": _unary_fold(np.sqrt),
    "Floor": _unary_fold(np.floor),
    "Ceil": _unary_fold(np.ceil),
    **{op: _binary_fold(fn) for op, fn in _BINARY_FOLD.items()},
}


# =========================================================================== shape helpers


def reshape_target(shape: tuple[int, ...], target: list[int], allowzero: bool) -> tuple[int, ...]:
    """Concrete output shape of ONNX Reshape (0 copies a dim unless ``allowzero``; one -1)."""
    out = [
        shape[i] if d == 0 and not allowzero and i < len(shape) else d for i, d in enumerate(target)
    ]
    total = math.prod(shape)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ValueError(f"invalid Reshape target {target}")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {shape} to {target}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise ValueError(f"cannot reshape {shape} to {target}")
    return tuple(out)


def flatten_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    axis = axis % (len(shape) + 1) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        raise ValueError(f"Flatten axis {axis} out of range for rank {len(shape)}")
    return math.prod(shape[:axis]), math.prod(shape[axis:])


def squeeze_shape(shape: tuple[int, ...], axes: list[int] | None) -> tuple[int, ...]:
    if axes is None:
        return tuple(d for d in shape if d != 1)
    norm = {a % len(shape) for a in axes}
    if any(shape[a] != 1 for a in norm):
        raise ValueError(f"cannot squeeze axes {axes} of {shape}")
    return tuple(d for i, d in enumerate(shape) if i not in norm)


def unsqueeze_shape(shape: tuple[int, ...], axes: list[int]) -> tuple[int, ...]:
    rank = len(shape) + len(axes)
    norm = sorted({a % rank for a in axes})
    if len(norm) != len(axes):
        raise ValueError(f"repeated Unsqueeze axes {axes}")
    out: list[int] = []
    dims = iter(shape)
    for i in range(rank):
        out.append(1 if i in norm else next(dims))
    return tuple(out)


def same_pads(
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    upper: bool,
) -> tuple[int, int, int, int]:
    """ONNX SAME_UPPER/SAME_LOWER pads as (top, left, bottom, right)."""
    begin, end = [], []
    for i in range(2):
        out = -(-hw[i] // strides[i])
        total = max((out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - hw[i], 0)
        small, large = total // 2, total - total // 2
        begin.append(small if upper else large)
        end.append(large if upper else small)
    return begin[0], begin[1], end[0], end[1]


def _window_pads(
    attrs: dict[str, Any],
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
) -> tuple[int, int, int, int]:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(hw, kernel, strides, dilations, auto == "SAME_UPPER")
    if auto == "VALID":
        return 0, 0, 0, 0
    if auto != "NOTSET":
        raise ValueError(f"unknown auto_pad {auto!r}")
    pads = _ints(attrs.get("pads", [0, 0, 0, 0]))
    if len(pads) != 4 or any(p < 0 for p in pads):
        raise ValueError(f"pads {pads} are not 4 non-negative values")
    return pads[0], pads[1], pads[2], pads[3]


# =========================================================================== op handlers


def _require_rank(imp: _Importer, node: onnx.NodeProto, name: str, rank: int) -> tuple[int, ...]:
    shape = imp.shape(node.input[0])
    if len(shape) != rank:
        dims = len(shape) - 2
        raise UnsupportedOperatorError(
            node.op_type, name, f"{dims}-D input {shape}; only 2-D (rank-4 NCHW) is supported"
        )
    return shape


def _only_first_output(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    """Refuse optional extra outputs (pool indices, dropout masks, norm statistics)."""
    extra = [o for o in node.output[1:] if o and o in imp.used]
    if extra:
        raise UnsupportedOperatorError(node.op_type, name, f"uses extra output {extra[0]!r}")


def _used_names(model: onnx.ModelProto) -> set[str]:
    used = {i for n in model.graph.node for i in n.input}
    return used | {o.name for o in model.graph.output}


def _conv(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    x = _require_rank(imp, node, name, 4)
    attrs = _attrs(node)
    w_shape = imp.shape(node.input[1])
    kernel = (w_shape[2], w_shape[3])
    strides = tuple(_ints(attrs.get("strides", [1, 1])))
    dilations = tuple(_ints(attrs.get("dilations", [1, 1])))
    pads = _window_pads(attrs, (x[2], x[3]), kernel, strides, dilations)  # type: ignore[arg-type]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    inputs = [node.input[0], node.input[1], *([bias] if bias else [])]
    ir_attrs = {
        "strides": strides,
        "dilations": dilations,
        "pads": pads,
        "groups": int(attrs.get("group", 1)),
        "activation": "NONE",
    }
    imp.emit("CONV_2D", inputs, [node.output[0]], name, ir_attrs)


def _weight_matrix(
    imp: _Importer, source: str, transpose: bool, alpha: float, node: onnx.NodeProto, name: str
) -> str:
    """The IR tensor w[O, K] for a Gemm/MatMul weight given as [K, O] or [O, K]."""
    if imp.is_const(source):
        if not transpose and alpha == 1.0:
            return imp.value(source)
        w = imp.consts[source]
        w = (w.T if transpose else w) * np.asarray(alpha, dtype=w.dtype)
        return imp.new_const(f"{source}_oi", np.ascontiguousarray(w))
    if alpha != 1.0:
        raise UnsupportedOperatorError(node.op_type, name, "alpha != 1 with computed weights")
    if not transpose:
        return imp.value(source)
    out = imp.fresh(f"{source}_oi")
    imp.emit("TRANSPOSE", [source], [out], f"{name}_weight_t", {"perm": (1, 0)})
    return out


def _gemm(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    attrs = _attrs(node)
    if int(attrs.get("transA", 0)):
        raise UnsupportedOperatorError("Gemm", name, "transA=1 is not supported")
    if imp.is_const(node.input[0]):
        raise UnsupportedOperatorError("Gemm", name, "constant A with computed B")
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    w = _weight_matrix(imp, node.input[1], not int(attrs.get("transB", 0)), alpha, node, name)
    out_features = imp.shape(w)[0]
    c = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    bias, extra = _gemm_bias(imp, c, beta, out_features, node, name)
    target = imp.fresh(f"{node.output[0]}_fc") if extra else node.output[0]
    inputs = [node.input[0], w, *([bias] if bias else [])]
    imp.emit(
        "FULLY_CONNECTED", inputs, [target], name, {"activation": "NONE", "keep_num_dims": False}
    )
    if extra:
        imp.emit("ADD", [target, extra], [node.output[0]], f"{name}_c", {"activation": "NONE"})


def _gemm_bias(
    imp: _Importer, c: str, beta: float, n: int, node: onnx.NodeProto, name: str
) -> tuple[str | None, str | None]:
    """(bias vector for FC, or a tensor to ADD afterwards) for Gemm's ``beta * C``."""
    if not c or beta == 0.0:
        return None, None
    if imp.is_const(c):
        value = imp.consts[c].astype(np.float32) * np.float32(beta)
        if value.size in (1, n) and value.ndim <= 2 and (value.ndim < 2 or value.shape[0] == 1):
            return imp.new_const(f"{c}_bias", np.broadcast_to(value.reshape(-1), (n,)).copy()), None
        return None, imp.new_const(f"{c}_scaled", value)
    if beta != 1.0:
        raise UnsupportedOperatorError("Gemm", name, "beta != 1 with a computed C")
    return None, c


def _matmul(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    a, b = node.input[0], node.input[1]
    a_shape, b_shape = imp.shape(a), imp.shape(b)
    if len(a_shape) < 2 or len(b_shape) < 2:
        raise UnsupportedOperatorError("MatMul", name, f"rank-1 operand ({a_shape} x {b_shape})")
    if imp.is_const(b) and len(b_shape) == 2 and not imp.is_const(a):
        w = imp.new_const(f"{b}_oi", np.ascontiguousarray(imp.consts[b].T))
        attrs = {"activation": "NONE", "keep_num_dims": len(a_shape) > 2}
        imp.emit("FULLY_CONNECTED", [a, w], [node.output[0]], name, attrs)
        return
    imp.emit("BATCH_MATMUL", [a, b], [node.output[0]], name)


def _binary(op: str) -> Handler:
    def handle(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
        if len(node.input) != 2:
            raise UnsupportedOperatorError(node.op_type, name, f"{len(node.input)} inputs")
        a, b = node.input
        if op == "POW" and imp.is_const(b) and imp.consts[b].dtype != _dtype_of(imp, a):
            b = imp.new_const(f"{b}_cast", imp.consts[b].astype(_dtype_of(imp, a)))
        attrs = {"activation": "NONE"} if op in ("ADD", "SUB", "MUL", "DIV") else {}
        imp.emit(op, [a, b], [node.output[0]], name, attrs)

    return handle


def _dtype_of(imp: _Importer, name: str) -> str:
    if name in imp.ir.tensors:
        return imp.ir.tensors[name].dtype
    return str(imp.consts[name].dtype)


def _unary(op: str, **fixed: Any) -> Handler:
    def handle(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
        imp.emit(op, [node.input[0]], [node.output[0]], name, dict(fixed))

    return handle


def _leaky_relu(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    alpha = float(_attrs(node).get("alpha", 0.01))
    imp.emit("LEAKY_RELU", [node.input[0]], [node.output[0]], name, {"alpha": alpha})


def _clip(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    lo_arr = imp.const(node, 1, "min", name)
    hi_arr = imp.const(node, 2, "max", name)
    lo = -math.inf if lo_arr is None else float(lo_arr.reshape(-1)[0])
    hi = math.inf if hi_arr is None else float(hi_arr.reshape(-1)[0])
    op, attrs = "CLIP", {"min": lo, "max": hi}
    if (lo, hi) == (0.0, 6.0):
        op, attrs = "RELU6", {}
    elif (lo, hi) == (0.0, math.inf):
        op, attrs = "RELU", {}
    elif (lo, hi) == (-1.0, 1.0):
        op, attrs = "RELU_N1_TO_1", {}
    imp.emit(op, [node.input[0]], [node.output[0]], name, attrs)


def _dropout(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    training = imp.const(node, 2, "training_mode", name)
    if training is not None and bool(training.reshape(-1)[0]):
        raise UnsupportedOperatorError("Dropout", name, "training_mode=True")
    _only_first_output(imp, node, name)
    imp.emit("DROPOUT", [node.input[0]], [node.output[0]], name)


def _softmax(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    rank = len(imp.shape(node.input[0]))
    axis = int(_attrs(node).get("axis", -1)) % rank
    imp.emit("SOFTMAX", [node.input[0]], [node.output[0]], name, {"axis": axis, "beta": 1.0})


def _batchnorm(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    attrs = _attrs(node)
    if int(attrs.get("training_mode", 0)):
        raise UnsupportedOperatorError("BatchNormalization", name, "training_mode=1")
    _only_first_output(imp, node, name)
    if len(imp.shape(node.input[0])) < 2:
        raise UnsupportedOperatorError("BatchNormalization", name, "input of rank < 2")
    eps = float(attrs.get("epsilon", 1e-5))
    imp.emit("BATCH_NORM", list(node.input[:5]), [node.output[0]], name, {"epsilon": eps})


def _layernorm(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    attrs = _attrs(node)
    _only_first_output(imp, node, name)
    rank = len(imp.shape(node.input[0]))
    axis = int(attrs.get("axis", -1)) % rank
    bias = node.input[2] if len(node.input) > 2 else ""
    ir_attrs = {"axis": axis, "epsilon": float(attrs.get("epsilon", 1e-5))}
    imp.emit("LAYER_NORM", [node.input[0], node.input[1], bias], [node.output[0]], name, ir_attrs)


def _pool(op: str) -> Handler:
    def handle(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
        x = _require_rank(imp, node, name, 4)
        attrs = _attrs(node)
        _only_first_output(imp, node, name)
        kernel = tuple(_ints(attrs["kernel_shape"]))
        strides = tuple(_ints(attrs.get("strides", [1, 1])))
        if any(d != 1 for d in _ints(attrs.get("dilations", [1, 1]))):
            raise UnsupportedOperatorError(node.op_type, name, "dilated pooling")
        pads = _window_pads(attrs, (x[2], x[3]), kernel, strides, (1, 1))  # type: ignore[arg-type]
        if int(attrs.get("count_include_pad", 0)) and any(pads):
            raise UnsupportedOperatorError(node.op_type, name, "count_include_pad=1 with padding")
        if int(attrs.get("ceil_mode", 0)) and _ceil_changes(x, kernel, strides, pads):
            raise UnsupportedOperatorError(node.op_type, name, "ceil_mode changes the output size")
        ir_attrs = {"kernel": kernel, "strides": strides, "pads": pads, "activation": "NONE"}
        imp.emit(op, [node.input[0]], [node.output[0]], name, ir_attrs)

    return handle


def _ceil_changes(
    x: tuple[int, ...], kernel: tuple[int, ...], strides: tuple[int, ...], pads: tuple[int, ...]
) -> bool:
    for i in range(2):
        span = x[2 + i] + pads[i] + pads[i + 2] - kernel[i]
        if span % strides[i]:
            return True
    return False


def _global_avg_pool(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    rank = len(imp.shape(node.input[0]))
    if rank < 3:
        raise UnsupportedOperatorError("GlobalAveragePool", name, f"rank-{rank} input")
    axes = tuple(range(2, rank))
    imp.emit("MEAN", [node.input[0]], [node.output[0]], name, {"axes": axes, "keepdims": True})


def _reduce_mean(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    attrs = _attrs(node)
    rank = len(imp.shape(node.input[0]))
    axes_arr = imp.const(node, 1, "axes", name)
    axes = _ints(attrs.get("axes", [])) if axes_arr is None else _ints(axes_arr.reshape(-1))
    if not axes and int(attrs.get("noop_with_empty_axes", 0)):
        imp.emit("IDENTITY", [node.input[0]], [node.output[0]], name)
        return
    norm = tuple(sorted({a % rank for a in axes})) if axes else tuple(range(rank))
    keep = bool(int(attrs.get("keepdims", 1)))
    imp.emit("MEAN", [node.input[0]], [node.output[0]], name, {"axes": norm, "keepdims": keep})


def _reshape_to(imp: _Importer, node: onnx.NodeProto, name: str, shape: tuple[int, ...]) -> None:
    imp.emit("RESHAPE", [node.input[0]], [node.output[0]], name, {"shape": tuple(shape)})


def _reshape(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    target = imp.const(node, 1, "the target shape", name)
    assert target is not None
    allowzero = bool(int(_attrs(node).get("allowzero", 0)))
    shape = reshape_target(imp.shape(node.input[0]), _ints(target.reshape(-1)), allowzero)
    _reshape_to(imp, node, name, shape)


def _flatten(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    shape = flatten_shape(imp.shape(node.input[0]), int(_attrs(node).get("axis", 1)))
    _reshape_to(imp, node, name, shape)


def _squeeze(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    axes_arr = imp.const(node, 1, "axes", name)
    axes = _ints(axes_arr.reshape(-1)) if axes_arr is not None else _attrs(node).get("axes")
    shape = squeeze_shape(imp.shape(node.input[0]), None if axes is None else _ints(axes))
    _reshape_to(imp, node, name, shape)


def _unsqueeze(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    axes_arr = imp.const(node, 1, "axes", name)
    axes = _ints(axes_arr.reshape(-1)) if axes_arr is not None else _ints(_attrs(node)["axes"])
    _reshape_to(imp, node, name, unsqueeze_shape(imp.shape(node.input[0]), axes))


def _transpose(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    rank = len(imp.shape(node.input[0]))
    perm = tuple(_ints(_attrs(node).get("perm", list(range(rank))[::-1])))
    imp.emit("TRANSPOSE", [node.input[0]], [node.output[0]], name, {"perm": perm})


def _concat(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    rank = len(imp.shape(node.input[0]))
    axis = int(_attrs(node)["axis"]) % rank
    inputs = [i for i in node.input if i]
    imp.emit("CONCATENATION", inputs, [node.output[0]], name, {"axis": axis, "activation": "NONE"})


def _pad(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    attrs = _attrs(node)
    mode = attrs.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        raise UnsupportedOperatorError("Pad", name, f"mode {mode!r}")
    rank = len(imp.shape(node.input[0]))
    pads_arr = imp.const(node, 1, "pads", name)
    assert pads_arr is not None
    value_arr = imp.const(node, 2, "constant_value", name)
    axes_arr = imp.const(node, 3, "axes", name)
    axes = (
        list(range(rank)) if axes_arr is None else [a % rank for a in _ints(axes_arr.reshape(-1))]
    )
    flat = _ints(pads_arr.reshape(-1))
    if len(flat) != 2 * len(axes) or any(p < 0 for p in flat):
        raise UnsupportedOperatorError("Pad", name, f"pads {flat} (negative or wrong length)")
    pairs = [(0, 0)] * rank
    for k, axis in enumerate(axes):
        pairs[axis] = (flat[k], flat[k + len(axes)])
    value = 0.0 if value_arr is None else float(value_arr.reshape(-1)[0])
    imp.emit("PAD", [node.input[0]], [node.output[0]], name, {"pads": pairs, "value": value})


def _identity(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    imp.emit("IDENTITY", [node.input[0]], [node.output[0]], name)


def _cast(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    to = ONNX_TO_DTYPE.get(int(_attrs(node)["to"]))
    if to is None or to != _dtype_of(imp, node.input[0]):
        raise UnsupportedOperatorError("Cast", name, f"cast of a computed tensor to {to}")
    imp.emit("IDENTITY", [node.input[0]], [node.output[0]], name)


# ----- QDQ ----------------------------------------------------------------------------


def _qparams(imp: _Importer, node: onnx.NodeProto, name: str, data: str) -> tuple[QuantParams, str]:
    """QuantParams and integer dtype of a QuantizeLinear/DequantizeLinear node."""
    attrs = _attrs(node)
    if int(attrs.get("block_size", 0)):
        raise UnsupportedOperatorError(node.op_type, name, "blocked quantization")
    scale = imp.const(node, 1, "scale", name)
    zero = imp.const(node, 2, "zero point", name)
    assert scale is not None
    dtype = str(zero.dtype) if zero is not None else _quant_dtype(imp, node, data)
    if dtype not in ("int8", "uint8", "int32"):
        raise UnsupportedOperatorError(
            node.op_type, name, f"{dtype} quantization (int8/uint8 only)"
        )
    zp = zero if zero is not None else np.zeros(scale.shape, dtype=np.int64)
    rank = len(imp.shape(data))
    axis: int | None = None
    if scale.ndim == 1 and scale.size > 1:
        axis = int(attrs.get("axis", 1)) % rank
        if imp.shape(data)[axis] != scale.size:
            raise InvalidModelError(f"node {name!r}: {scale.size} scales for axis {axis}")
    quant = QuantParams(scale.reshape(-1), np.asarray(zp).reshape(-1).astype(np.int64), axis)
    return quant, dtype


def _quant_dtype(imp: _Importer, node: onnx.NodeProto, data: str) -> str:
    if node.op_type == "DequantizeLinear":
        return _dtype_of(imp, data)
    to = _attrs(node).get("output_dtype", 0)
    return ONNX_TO_DTYPE.get(int(to), "uint8") if to else "uint8"


def _same_quant(a: QuantParams, b: QuantParams) -> bool:
    return (
        a.axis == b.axis
        and np.array_equal(a.scale, b.scale)
        and np.array_equal(a.zero_point, b.zero_point)
    )


def _quantize_linear(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    quant, dtype = _qparams(imp, node, name, node.input[0])
    imp.emit("QUANTIZE", [node.input[0]], [node.output[0]], name, dtype=dtype)
    imp.ir.tensors[node.output[0]].quant = quant


def _dequantize_linear(imp: _Importer, node: onnx.NodeProto, name: str) -> None:
    source = node.input[0]
    quant, _ = _qparams(imp, node, name, source)
    tensor = imp.ir.tensor(imp.value(source))
    if tensor.quant is None:
        tensor.quant = quant
    elif not _same_quant(tensor.quant, quant):
        raise UnsupportedOperatorError(
            "DequantizeLinear", name, f"{source!r} is dequantized with two different parameters"
        )
    imp.emit("DEQUANTIZE", [source], [node.output[0]], name, dtype="float32")


_HANDLERS: dict[str, Handler] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Add": _binary("ADD"),
    "Sub": _binary("SUB"),
    "Mul": _binary("MUL"),
    "Div": _binary("DIV"),
    "Pow": _binary("POW"),
    "Max": _binary("MAXIMUM"),
    "Min": _binary("MINIMUM"),
    "Relu": _unary("RELU"),
    "Sigmoid": _unary("LOGISTIC"),
    "Tanh": _unary("TANH"),
    "HardSwish": _unary("HARD_SWISH"),
    "Sqrt": _unary("SQRT"),
    "Erf": _unary("ERF"),
    "Exp": _unary("EXP"),
    "Abs": _unary("ABS"),
    "Neg": _unary("NEG"),
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "Dropout": _dropout,
    "Identity": _identity,
    "Cast": _cast,
    "Softmax": _softmax,
    "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm,
    "AveragePool": _pool("AVERAGE_POOL_2D"),
    "MaxPool": _pool("MAX_POOL_2D"),
    "GlobalAveragePool": _global_avg_pool,
    "ReduceMean": _reduce_mean,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Concat": _concat,
    "Pad": _pad,
    "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear,
}


# =========================================================================== export

_FLOAT = ("float32", "float16")
_QUANT_DATA_MOVES = ("RESHAPE", "TRANSPOSE", "IDENTITY", "DROPOUT")
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)


def export_onnx(graph: Graph) -> onnx.ModelProto:
    """Export a float or QDQ IR graph (NCHW or NHWC) as an ONNX opset-17 model.

    The exported tensors keep their IR names and shapes, so graph inputs and outputs are
    named as in the IR and an NHWC graph takes NHWC inputs. Raises CrosslevelError for
    graphs whose int8 semantics ONNX cannot express (TFLite integer kernels).
    """
    graph.validate()
    _refuse_integer_semantics(graph)
    exporter = _Exporter(graph)
    for node in graph.nodes:
        exporter.export_node(node)
    return exporter.model()


def _quantized(tensor: Tensor) -> bool:
    """An integer tensor with quantization: its values mean ``scale * (q - zero_point)``."""
    return tensor.quant is not None and tensor.dtype not in _FLOAT


def _refuse_integer_semantics(graph: Graph) -> None:
    """Refuse nodes that compute on quantized tensors (TFLite int8 or hybrid kernels).

    QDQ graphs compute in float between DEQUANTIZE and QUANTIZE, which ONNX expresses;
    TFLite's int8 kernels (requantizing multipliers, fused integer clamps) and its hybrid
    kernels (int8 weights, activations quantized on the fly) it does not.
    """
    for node in graph.nodes:
        tensors = [graph.tensor(n) for n in [*node.inputs, *node.outputs] if n]
        if node.op == "QUANTIZE":
            bad = graph.tensor(node.inputs[0]).dtype not in _FLOAT
        elif node.op == "DEQUANTIZE":
            bad = graph.tensor(node.outputs[0]).dtype not in _FLOAT
        elif node.op in _QUANT_DATA_MOVES:
            a, b = graph.tensor(node.inputs[0]), graph.tensor(node.outputs[0])
            bad = (_quantized(a) or _quantized(b)) and not (
                a.dtype == b.dtype and _same_quant_or_none(a.quant, b.quant)
            )
        else:
            bad = any(_quantized(t) for t in tensors)
        if not bad:
            continue
        hybrid = all(not _quantized(graph.tensor(n)) for n in [node.inputs[0], *node.outputs] if n)
        kind = (
            "hybrid operator (int8 weights, float activations: TFLite dynamic-range quantization)"
            if hybrid
            else "int8 operator with TFLite integer semantics"
        )
        raise UnsupportedOperatorError(
            node.op,
            node.name,
            f"{kind}; export_onnx handles float and QDQ graphs only "
            "(run such TFLite models with TFLite Micro)",
        )


def _same_quant_or_none(a: QuantParams | None, b: QuantParams | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return _same_quant(a, b)


class _Exporter:
    """Builds the ONNX graph node by node, naming new values so they never collide."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.used = _Names(set(graph.tensors))  # value names
        self.node_names = _Names()  # ONNX keeps node names in their own namespace

    # ----- naming and values ---------------------------------------------------------
    def fresh(self, base: str) -> str:
        return self.used.claim(base)

    def value(self, name: str) -> str:
        """ONNX name of IR tensor ``name`` (constants become initializers on first use)."""
        if not name:
            return ""
        tensor = self.g.tensor(name)
        if tensor.is_constant and name not in self.inits:
            assert tensor.data is not None
            self.inits[name] = numpy_helper.from_array(
                np.asarray(tensor.data).astype(tensor.dtype), name
            )
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def add(self, op: str, inputs: list[str], outputs: list[str], base: str, **attrs: Any) -> None:
        name = self.node_names.claim(base)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))

    def transposed(self, name: str, perm: tuple[int, ...], base: str) -> str:
        """``name`` permuted: a new initializer for constants, a Transpose node otherwise."""
        tensor = self.g.tensor(name)
        if tensor.is_constant:
            assert tensor.data is not None
            return self.const(
                f"{name}_t", np.asarray(tensor.data).astype(tensor.dtype).transpose(perm)
            )
        out = self.fresh(f"{name}_t")
        self.add("Transpose", [self.value(name)], [out], f"{base}_transpose", perm=list(perm))
        return out

    # ----- node export ---------------------------------------------------------------
    def export_node(self, node: Node) -> None:
        handler = _EXPORTERS.get(node.op)
        if handler is None:
            raise UnsupportedOperatorError(node.op, node.name, "no ONNX export for this operator")
        handler(self, node)

    def finish(self, node: Node, core: str, wrapped: tuple[int, ...] | None) -> None:
        """Route ``core`` (the raw result) through the fused activation and layout back."""
        activation = str(node.attrs.get("activation", "NONE"))
        target = node.outputs[0]
        if activation != "NONE":
            after = target if wrapped is None else self.fresh(f"{target}_act")
            _emit_activation(self, activation, core, after, node.name)
            core = after
        if wrapped is not None:
            self.add("Transpose", [core], [target], f"{node.name}_to_nhwc", perm=list(wrapped))

    def core_name(self, node: Node, wrapped: bool) -> str:
        """Where the operator itself writes: the IR output unless something follows it."""
        if not wrapped and node.attrs.get("activation", "NONE") == "NONE":
            return node.outputs[0]
        return self.fresh(f"{node.outputs[0]}_raw")

    def channels_first(self, node: Node, perm: tuple[int, ...] | None) -> str:
        x = self.value(node.inputs[0])
        if perm is None:
            return x
        out = self.fresh(f"{x}_nchw")
        self.add("Transpose", [x], [out], f"{node.name}_to_nchw", perm=list(perm))
        return out

    # ----- model ---------------------------------------------------------------------
    def model(self) -> onnx.ModelProto:
        g = self.g
        inputs = [_value_info(g.tensor(n)) for n in g.inputs]
        outputs = [_value_info(g.tensor(n)) for n in g.outputs]
        graph = helper.make_graph(
            self.nodes, g.name or "crosslevel", inputs, outputs, list(self.inits.values())
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", EXPORT_OPSET)],
            producer_name="crosslevel",
        )
        model.ir_version = EXPORT_IR_VERSION
        try:
            onnx.checker.check_model(model)
        except Exception as exc:
            raise InvalidModelError(f"exported ONNX model fails the checker: {exc}") from exc
        return model


def _value_info(tensor: Tensor) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(tensor.name, DTYPE_TO_ONNX[tensor.dtype], tensor.shape)


def _emit_activation(ex: _Exporter, activation: str, src: str, dst: str, base: str) -> None:
    if activation == "RELU":
        ex.add("Relu", [src], [dst], f"{base}_relu")
    elif activation == "TANH":
        ex.add("Tanh", [src], [dst], f"{base}_tanh")
    elif activation in ("RELU6", "RELU_N1_TO_1"):
        lo, hi = (0.0, 6.0) if activation == "RELU6" else (-1.0, 1.0)
        _emit_clip(ex, src, dst, lo, hi, base)
    else:
        raise UnsupportedOperatorError(f"fused {activation}", base)


def _emit_clip(ex: _Exporter, src: str, dst: str, lo: float, hi: float, base: str) -> None:
    dtype = np.dtype(ex.g.tensor(dst).dtype if dst in ex.g.tensors else "float32")
    lo_name = "" if lo == -math.inf else ex.const(f"{base}_min", np.array(lo, dtype=dtype))
    hi_name = "" if hi == math.inf else ex.const(f"{base}_max", np.array(hi, dtype=dtype))
    inputs = [src, lo_name, hi_name]
    while inputs[-1] == "":
        inputs.pop()
    ex.add("Clip", inputs, [dst], f"{base}_clip")


def _spatial_perm(ex: _Exporter, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(to channels-first, back) permutations for NHWC graphs; None for NCHW."""
    if ex.g.layout == "NCHW":
        return None
    to_first = (0, rank - 1, *range(1, rank - 1))
    back = tuple(int(i) for i in np.argsort(to_first))
    return to_first, back


def _export_conv(ex: _Exporter, node: Node) -> None:
    x_shape = ex.g.tensor(node.inputs[0]).shape
    w_shape = ex.g.tensor(node.inputs[1]).shape
    perms = _spatial_perm(ex, 4)
    if node.op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C*M] -> [C*M, 1, kh, kw], group C
        weight = ex.transposed(node.inputs[1], (3, 0, 1, 2), node.name)
        groups = x_shape[3 if ex.g.layout == "NHWC" else 1]
        kernel = (w_shape[1], w_shape[2])
    elif ex.g.layout == "NHWC":  # OHWI -> OIHW
        weight = ex.transposed(node.inputs[1], NHWC_TO_NCHW, node.name)
        groups = x_shape[3] // w_shape[3]
        kernel = (w_shape[1], w_shape[2])
    else:
        weight = ex.value(node.inputs[1])
        groups = int(node.attrs.get("groups", 1))
        kernel = (w_shape[2], w_shape[3])
    x = ex.channels_first(node, perms[0] if perms else None)
    bias = ex.value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    core = ex.core_name(node, perms is not None)
    ex.add(
        "Conv",
        [x, weight, *([bias] if bias else [])],
        [core],
        node.name,
        kernel_shape=list(kernel),
        strides=_ints(node.attrs.get("strides", (1, 1))),
        dilations=_ints(node.attrs.get("dilations", (1, 1))),
        pads=_ints(node.attrs.get("pads", (0, 0, 0, 0))),
        group=int(groups),
    )
    ex.finish(node, core, perms[1] if perms else None)


def _export_pool(ex: _Exporter, node: Node) -> None:
    perms = _spatial_perm(ex, 4)
    x = ex.channels_first(node, perms[0] if perms else None)
    core = ex.core_name(node, perms is not None)
    attrs: dict[str, Any] = {
        "kernel_shape": _ints(node.attrs["kernel"]),
        "strides": _ints(node.attrs.get("strides", (1, 1))),
        "pads": _ints(node.attrs.get("pads", (0, 0, 0, 0))),
    }
    if node.op == "AVERAGE_POOL_2D":
        ex.add("AveragePool", [x], [core], node.name, count_include_pad=0, **attrs)
    else:
        ex.add("MaxPool", [x], [core], node.name, **attrs)
    ex.finish(node, core, perms[1] if perms else None)


def _export_batchnorm(ex: _Exporter, node: Node) -> None:
    rank = len(ex.g.tensor(node.inputs[0]).shape)
    # BATCH_NORM's channel axis: 1 in NCHW graphs and below rank 4, else 3 (NHWC)
    perms = _spatial_perm(ex, 4) if rank == 4 else None
    if rank > 4 and ex.g.layout == "NHWC":
        raise UnsupportedOperatorError("BATCH_NORM", node.name, f"rank-{rank} NHWC input")
    x = ex.channels_first(node, perms[0] if perms else None)
    core = ex.core_name(node, perms is not None)
    params = [ex.value(n) for n in node.inputs[1:5]]
    eps = float(node.attrs.get("epsilon", 1e-5))
    ex.add("BatchNormalization", [x, *params], [core], node.name, epsilon=eps)
    ex.finish(node, core, perms[1] if perms else None)


def _export_fc(ex: _Exporter, node: Node) -> None:
    x = ex.value(node.inputs[0])
    x_shape = ex.g.tensor(node.inputs[0]).shape
    out_features, k = ex.g.tensor(node.inputs[1]).shape
    bias = ex.value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else ""
    core = ex.core_name(node, False)
    if node.attrs.get("keep_num_dims", False):
        w_t = ex.transposed(node.inputs[1], (1, 0), node.name)
        mm = ex.fresh(f"{core}_mm") if bias else core
        ex.add("MatMul", [x, w_t], [mm], node.name)
        if bias:
            ex.add("Add", [mm, bias], [core], f"{node.name}_bias")
    else:
        if len(x_shape) != 2:
            rows = math.prod(x_shape) // k
            flat = ex.fresh(f"{x}_2d")
            shape = ex.const(f"{node.name}_shape", np.array([rows, k], dtype=np.int64))
            ex.add("Reshape", [x, shape], [flat], f"{node.name}_flatten")
            x = flat
        w = ex.value(node.inputs[1])
        ex.add("Gemm", [x, w, *([bias] if bias else [])], [core], node.name, transB=1)
    ex.finish(node, core, None)


def _export_simple(onnx_op: str, **fixed: Any) -> Callable[[_Exporter, Node], None]:
    def export(ex: _Exporter, node: Node) -> None:
        core = ex.core_name(node, False)
        ex.add(onnx_op, [ex.value(i) for i in node.inputs if i], [core], node.name, **fixed)
        ex.finish(node, core, None)

    return export


def _export_batch_matmul(ex: _Exporter, node: Node) -> None:
    inputs = []
    for k, flag in ((0, "adj_x"), (1, "adj_y")):
        name = node.inputs[k]
        if node.attrs.get(flag, False):
            rank = len(ex.g.tensor(name).shape)
            name = ex.transposed(name, (*range(rank - 2), rank - 1, rank - 2), node.name)
        else:
            name = ex.value(name)
        inputs.append(name)
    ex.add("MatMul", inputs, [node.outputs[0]], node.name)


def _export_mean(ex: _Exporter, node: Node) -> None:
    axes = _ints(node.attrs["axes"])
    keep = int(bool(node.attrs.get("keepdims", True)))
    ex.add(
        "ReduceMean",
        [ex.value(node.inputs[0])],
        [node.outputs[0]],
        node.name,
        axes=axes,
        keepdims=keep,
    )


def _export_reshape(ex: _Exporter, node: Node) -> None:
    shape = np.array(ex.g.tensor(node.outputs[0]).shape, dtype=np.int64)
    target = ex.const(f"{node.name}_shape", shape)
    ex.add("Reshape", [ex.value(node.inputs[0]), target], [node.outputs[0]], node.name)


def _export_transpose(ex: _Exporter, node: Node) -> None:
    perm = _ints(node.attrs["perm"])
    ex.add("Transpose", [ex.value(node.inputs[0])], [node.outputs[0]], node.name, perm=perm)


def _export_concat(ex: _Exporter, node: Node) -> None:
    core = ex.core_name(node, False)
    inputs = [ex.value(i) for i in node.inputs if i]
    ex.add("Concat", inputs, [core], node.name, axis=int(node.attrs["axis"]))
    ex.finish(node, core, None)


def _export_pad(ex: _Exporter, node: Node) -> None:
    pairs = [(int(b), int(a)) for b, a in node.attrs["pads"]]
    flat = np.array([b for b, _ in pairs] + [a for _, a in pairs], dtype=np.int64)
    dtype = np.dtype(ex.g.tensor(node.inputs[0]).dtype)
    pads = ex.const(f"{node.name}_pads", flat)
    value = ex.const(f"{node.name}_value", np.array(node.attrs.get("value", 0.0), dtype=dtype))
    ex.add(
        "Pad",
        [ex.value(node.inputs[0]), pads, value],
        [node.outputs[0]],
        node.name,
        mode="constant",
    )


def _export_softmax(ex: _Exporter, node: Node) -> None:
    x = ex.value(node.inputs[0])
    beta = float(node.attrs.get("beta", 1.0))
    if beta != 1.0:
        scaled = ex.fresh(f"{x}_beta")
        b = ex.const(f"{node.name}_beta", np.array(beta, dtype=np.float32))
        ex.add("Mul", [x, b], [scaled], f"{node.name}_beta")
        x = scaled
    axis = int(node.attrs.get("axis", -1))
    ex.add("Softmax", [x], [node.outputs[0]], node.name, axis=axis)


def _export_layernorm(ex: _Exporter, node: Node) -> None:
    inputs = [ex.value(i) for i in node.inputs[:3]]
    while inputs and inputs[-1] == "":
        inputs.pop()
    ex.add(
        "LayerNormalization",
        inputs,
        [node.outputs[0]],
        node.name,
        axis=int(node.attrs.get("axis", -1)),
        epsilon=float(node.attrs.get("epsilon", 1e-5)),
    )


def _quant_inputs(ex: _Exporter, tensor: Tensor, base: str) -> tuple[list[str], dict[str, Any]]:
    quant = tensor.quant
    if quant is None:
        raise InvalidModelError(f"tensor {tensor.name!r} has no quantization parameters")
    per_axis = quant.axis is not None and quant.scale.size > 1
    scale = quant.scale if per_axis else quant.scale.reshape(())
    zp = quant.zero_point if per_axis else quant.zero_point.reshape(())
    names = [
        ex.const(f"{base}_scale", scale.astype(np.float32)),
        ex.const(f"{base}_zero_point", zp.astype(tensor.dtype)),
    ]
    return names, ({"axis": int(quant.axis)} if per_axis and quant.axis is not None else {})


def _export_quantize(ex: _Exporter, node: Node) -> None:
    out = ex.g.tensor(node.outputs[0])
    params, attrs = _quant_inputs(ex, out, node.name)
    ex.add("QuantizeLinear", [ex.value(node.inputs[0]), *params], [out.name], node.name, **attrs)


def _export_dequantize(ex: _Exporter, node: Node) -> None:
    src = ex.g.tensor(node.inputs[0])
    if src.quant is None and src.dtype in _FLOAT:  # TFLite float16 weights
        to = DTYPE_TO_ONNX[ex.g.tensor(node.outputs[0]).dtype]
        ex.add("Cast", [ex.value(src.name)], [node.outputs[0]], node.name, to=to)
        return
    params, attrs = _quant_inputs(ex, src, node.name)
    ex.add("DequantizeLinear", [ex.value(src.name), *params], [node.outputs[0]], node.name, **attrs)


def _export_clip(ex: _Exporter, node: Node) -> None:
    lo = float(node.attrs.get("min", -math.inf))
    hi = float(node.attrs.get("max", math.inf))
    _emit_clip(ex, ex.value(node.inputs[0]), node.outputs[0], lo, hi, node.name)


def _export_activation_op(activation: str) -> Callable[[_Exporter, Node], None]:
    def export(ex: _Exporter, node: Node) -> None:
        _emit_activation(ex, activation, ex.value(node.inputs[0]), node.outputs[0], node.name)

    return export


def _export_rsqrt(ex: _Exporter, node: Node) -> None:
    root = ex.fresh(f"{node.outputs[0]}_sqrt")
    ex.add("Sqrt", [ex.value(node.inputs[0])], [root], f"{node.name}_sqrt")
    ex.add("Reciprocal", [root], [node.outputs[0]], node.name)


def _export_leaky_relu(ex: _Exporter, node: Node) -> None:
    alpha = float(node.attrs.get("alpha", 0.01))
    ex.add("LeakyRelu", [ex.value(node.inputs[0])], [node.outputs[0]], node.name, alpha=alpha)


_EXPORTERS: dict[str, Callable[[_Exporter, Node], None]] = {
    "CONV_2D": _export_conv,
    "DEPTHWISE_CONV_2D": _export_conv,
    "AVERAGE_POOL_2D": _export_pool,
    "MAX_POOL_2D": _export_pool,
    "BATCH_NORM": _export_batchnorm,
    "FULLY_CONNECTED": _export_fc,
    "BATCH_MATMUL": _export_batch_matmul,
    "MEAN": _export_mean,
    "RESHAPE": _export_reshape,
    "TRANSPOSE": _export_transpose,
    "CONCATENATION": _export_concat,
    "PAD": _export_pad,
    "SOFTMAX": _export_softmax,
    "LAYER_NORM": _export_layernorm,
    "QUANTIZE": _export_quantize,
    "DEQUANTIZE": _export_dequantize,
    "ADD": _export_simple("Add"),
    "SUB": _export_simple("Sub"),
    "MUL": _export_simple("Mul"),
    "DIV": _export_simple("Div"),
    "POW": _export_simple("Pow"),
    "MAXIMUM": _export_simple("Max"),
    "MINIMUM": _export_simple("Min"),
    "RELU": _export_activation_op("RELU"),
    "RELU6": _export_activation_op("RELU6"),
    "RELU_N1_TO_1": _export_activation_op("RELU_N1_TO_1"),
    "TANH": _export_activation_op("TANH"),
    "CLIP": _export_clip,
    "LEAKY_RELU": _export_leaky_relu,
    "LOGISTIC": _export_simple("Sigmoid"),
    "HARD_SWISH": _export_simple("HardSwish"),
    "SQRT": _export_simple("Sqrt"),
    "RSQRT": _export_rsqrt,
    "EXP": _export_simple("Exp"),
    "ERF": _export_simple("Erf"),
    "ABS": _export_simple("Abs"),
    "NEG": _export_simple("Neg"),
    "IDENTITY": _export_simple("Identity"),
    "DROPOUT": _export_simple("Identity"),
}
