"""TensorFlow Lite flatbuffers to and from the IR (NHWC graphs).

Both directions use the flatbuffers object API of the schema module that ships inside the
``tflite-micro`` wheel, so that what we read and write is exactly what TFLM itself parses.

Import (``import_tflite``) reads subgraph 0 of a ``.tflite`` file into a ``Graph`` with
layout ``NHWC``. The file is untrusted: the header, the number of objects, every index and
every buffer size are checked before anything is allocated, and every failure of the
generated parser (it can raise ``struct.error``, ``IndexError``, ``ValueError``...) ends in
one ``InvalidModelError``. Operators outside the vocabulary (custom ops, control flow)
raise ``UnsupportedOperatorError`` naming the operator and the node.

What the IR does not model but a faithful write-back needs is kept under clear keys:

* ``graph.metadata["tflite"]``: schema ``version``, ``description``, ``subgraph_name``, the
  operator-code table (``opcodes``, in file order, unused entries included), model
  ``metadata`` entries (``min_runtime_version``...), ``signature_defs`` by tensor name,
  per-tensor ``tensors`` extras (file name when the IR name differs, ``shape_signature``,
  ``has_rank``, quantization ``min``/``max``) and an ``offline_plan`` found in the file.
* ``node.attrs``: ``tflite_version`` (operator version), ``tflite_options`` (builtin option
  fields the IR has no attribute for, with their ``_type``), ``tflite_param_tensor`` (name
  of the constant shape/axes/perm/paddings tensor that TFLite passes as a second input and
  the IR keeps as an attribute), ``padding`` (``SAME``/``VALID``, the file's mode; ``pads``
  holds the explicit pads TensorFlow derives from it).

Export (``export_tflite``) writes an NHWC graph back, optionally with an offline memory
plan (metadata ``OfflineMemoryAllocation``) indexed by ``tflite_tensor_order(graph)``;
``tflite_tensors(graph)`` gives the same order with sizes, including tensors the exporter
adds (a PAD output, shape constants). Constant buffers are deduplicated by content and
16-byte aligned; unused tensors are not written (TFLM rejects tensors without a lifetime).
int8 follows TFLite's scheme: symmetric per-channel weights (axis 0 for CONV_2D and
FULLY_CONNECTED, axis 3 for DEPTHWISE_CONV_2D), int32 bias with scale s_in * s_w.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from crosslevel.errors import CrosslevelError, InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import DTYPE_BYTES, Graph, Node, QuantParams, Tensor, unique_name

FILE_IDENTIFIER = b"TFL3"
META_KEY = "tflite"
OFFLINE_PLAN_NAME = "OfflineMemoryAllocation"
MAX_ELEMENTS = 2**31 - 1  # TFLM sizes tensors with 32-bit byte counts
MAX_RANK = 8
BUFFER_ALIGNMENT = 16  # what the TFLite converter uses; MCUs fault on misaligned floats

Shape = tuple[int, ...]

_OP_NAMES: dict[int, str] = {
    code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}
_OP_CODES: dict[str, int] = {name: code for code, name in _OP_NAMES.items()}
_DTYPES: dict[int, str] = {
    schema.TensorType.FLOAT32: "float32",
    schema.TensorType.FLOAT16: "float16",
    schema.TensorType.INT8: "int8",
    schema.TensorType.UINT8: "uint8",
    schema.TensorType.INT16: "int16",
    schema.TensorType.INT32: "int32",
    schema.TensorType.INT64: "int64",
    schema.TensorType.BOOL: "bool",
}
_TYPE_CODES: dict[str, int] = {name: code for code, name in _DTYPES.items()}
_TYPE_NAMES: dict[int, str] = {
    code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")
}
_ACTIVATIONS: dict[int, str] = {
    schema.ActivationFunctionType.NONE: "NONE",
    schema.ActivationFunctionType.RELU: "RELU",
    schema.ActivationFunctionType.RELU_N1_TO_1: "RELU_N1_TO_1",
    schema.ActivationFunctionType.RELU6: "RELU6",
    schema.ActivationFunctionType.TANH: "TANH",
}
_ACTIVATION_CODES: dict[str, int] = {name: code for code, name in _ACTIVATIONS.items()}
_PADDINGS: dict[int, str] = {schema.Padding.SAME: "SAME", schema.Padding.VALID: "VALID"}
_PADDING_CODES: dict[str, int] = {name: code for code, name in _PADDINGS.items()}

# Smallest operator version that declares int8 support (TFLite's op_version.cc); an exported
# int8 operator never gets a lower version, so LiteRT accepts it too (TFLM ignores versions).
_INT8_MIN_VERSION: dict[str, int] = {
    "CONV_2D": 3,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 4,
    "ADD": 2,
    "SUB": 2,
    "MUL": 2,
    "AVERAGE_POOL_2D": 2,
    "MAX_POOL_2D": 2,
    "SOFTMAX": 2,
    "DEQUANTIZE": 2,
    "MEAN": 2,
    "PAD": 2,
    "CONCATENATION": 2,
    "RELU": 2,
    "RELU6": 2,
    "LOGISTIC": 2,
    "TANH": 2,
    "TRANSPOSE": 2,
    "BATCH_MATMUL": 2,
    "LEAKY_RELU": 2,
    "QUANTIZE": 1,
    "RESHAPE": 1,
    "HARD_SWISH": 1,
    "RELU_N1_TO_1": 1,
    "DIV": 1,
}


# ====================================================================================
# reading and checking the flatbuffer
# ====================================================================================
def _read_source(source: str | Path | bytes | bytearray | memoryview) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "TFLite model"
    path = Path(source)
    try:
        return path.read_bytes(), f"TFLite model {path.name}"
    except OSError as exc:
        raise InvalidModelError(f"cannot read TFLite model {path}: {exc.strerror or exc}") from None


def _check_header(buf: bytes, label: str) -> None:
    if len(buf) < 8:
        raise InvalidModelError(f"{label} is too short ({len(buf)} bytes) to be a TFLite file")
    if buf[4:8] != FILE_IDENTIFIER:
        raise InvalidModelError(
            f"{label} is not a TFLite flatbuffer: file identifier {bytes(buf[4:8])!r}, "
            f"expected {FILE_IDENTIFIER!r}"
        )
    root = int.from_bytes(buf[0:4], "little")
    if not 8 <= root <= len(buf) - 4:
        raise InvalidModelError(f"{label} has a root table offset {root} outside the file")


class _Budget:
    """Caps the number of tables the object API would build.

    A flatbuffer can point many vector entries at one table, so a small hostile file could
    make the object API build billions of objects (a hang). Distinct tables need at least
    4 bytes each, so a real file never holds more than ``len(buf) // 4`` of them.
    """

    def __init__(self, buf: bytes, label: str) -> None:
        self.left = len(buf) // 4
        self.label = label

    def take(self, count: int, what: str) -> int:
        if count < 0 or count > self.left:
            raise InvalidModelError(
                f"{self.label} declares more {what} ({count}) than its size can hold"
            )
        self.left -= count
        return count


def _check_object_counts(buf: bytes, label: str) -> None:
    """Walk the vectors' lengths with the lazy API before building Python objects."""
    root = schema.Model.GetRootAs(buf, 0)
    budget = _Budget(buf, label)
    budget.take(root.OperatorCodesLength(), "operator codes")
    budget.take(root.BuffersLength(), "buffers")
    budget.take(root.MetadataLength(), "metadata entries")
    budget.take(root.ExternalBuffersLength(), "external buffers")
    budget.take(root.ExternalBufferGroupsLength(), "external buffer groups")
    for j in range(budget.take(root.SignatureDefsLength(), "signature defs")):
        sig = root.SignatureDefs(j)
        budget.take(sig.InputsLength() + sig.OutputsLength(), "signature tensors")
    for s in range(budget.take(root.SubgraphsLength(), "subgraphs")):
        sub = root.Subgraphs(s)
        budget.take(2 * sub.OperatorsLength(), "operators")
        for t in range(budget.take(sub.TensorsLength(), "tensors")):
            tensor = sub.Tensors(t)
            if tensor.Sparsity() is not None:
                raise InvalidModelError(
                    f"{label}: tensor {t} of subgraph {s} is stored sparse, which is not supported"
                )
            budget.take(int(tensor.Quantization() is not None), "quantization tables")
            budget.take(tensor.VariantTensorsLength(), "variant tensors")


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _tensor_shape(t: Any, where: str) -> Shape:
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
    if len(shape) > MAX_RANK:
        raise InvalidModelError(f"{where} has rank {len(shape)} (at most {MAX_RANK} supported)")
    if any(d < 0 for d in shape):
        raise InvalidModelError(f"{where} has a negative dimension {shape}")
    if _numel(shape) > MAX_ELEMENTS:
        raise InvalidModelError(f"{where} has an absurd shape {shape} (over 2**31 elements)")
    return shape


def _buffer_bytes(model: Any, buf: bytes, index: int) -> bytes | None:
    """The bytes of buffer ``index``: inline data, or an (offset, size) span of the file."""
    b = model.buffers[index]
    if b.offset > 1:  # models over 2 GB keep buffers after the flatbuffer (schema: offset > 1)
        if b.size < 0 or b.offset + b.size > len(buf):
            raise InvalidModelError(
                f"buffer {index} lies outside the file (offset {b.offset}, size {b.size}, "
                f"file {len(buf)} bytes)"
            )
        return bytes(buf[b.offset : b.offset + b.size]) if b.size else None
    if b.data is None or len(b.data) == 0:
        return None
    return np.asarray(b.data, dtype=np.uint8).tobytes()


def _check_indices(values: Any, limit: int, what: str, allow_missing: bool = False) -> None:
    low = -1 if allow_missing else 0
    for v in values if values is not None else ():
        if not low <= int(v) < limit:
            raise InvalidModelError(f"{what} refers to index {int(v)}, outside 0..{limit - 1}")


def _check_subgraph(model: Any, buf: bytes, s: int, sub: Any) -> None:
    tensors = sub.tensors or []
    n_t, n_b, n_c = len(tensors), len(model.buffers or []), len(model.operatorCodes or [])
    for vector in ("tensors", "inputs", "outputs"):
        if getattr(sub, vector) is None:  # TFLM dereferences these without a check
            raise InvalidModelError(f"subgraph {s} has no {vector} vector")
    for t, tensor in enumerate(tensors):
        where = f"tensor {t} of subgraph {s}"
        if tensor.shape is None:
            raise InvalidModelError(f"{where} has no shape vector")
        if not 0 <= tensor.buffer < max(n_b, 1):
            raise InvalidModelError(f"{where} refers to buffer {tensor.buffer} of {n_b}")
        if getattr(tensor, "externalBuffer", 0):
            raise InvalidModelError(f"{where} keeps its data in an external file (not supported)")
        shape = _tensor_shape(tensor, where)
        data = _buffer_bytes(model, buf, tensor.buffer) if n_b else None
        dtype = _DTYPES.get(tensor.type)
        if data is not None and dtype is not None:
            want = _numel(shape) * DTYPE_BYTES[dtype]
            if len(data) != want:
                raise InvalidModelError(
                    f"{where} of shape {shape} needs {want} bytes but its buffer has {len(data)}"
                )
    _check_indices(sub.inputs, n_t, f"subgraph {s} inputs")
    _check_indices(sub.outputs, n_t, f"subgraph {s} outputs")
    for i, op in enumerate(sub.operators or []):
        if not 0 <= op.opcodeIndex < n_c:
            raise InvalidModelError(f"operator {i} of subgraph {s} uses opcode {op.opcodeIndex}")
        if op.inputs is None or op.outputs is None:
            raise InvalidModelError(f"operator {i} of subgraph {s} has no inputs/outputs vector")
        _check_indices(op.inputs, n_t, f"operator {i} inputs", allow_missing=True)
        _check_indices(op.outputs, n_t, f"operator {i} outputs")
        _check_indices(op.intermediates, n_t, f"operator {i} intermediates")


def _check_structure(model: Any, buf: bytes) -> None:
    if not model.subgraphs:
        raise InvalidModelError("the model has no subgraph")
    n_b = len(model.buffers or [])
    for entry in model.metadata or []:
        if not 0 <= entry.buffer < n_b:
            raise InvalidModelError(f"metadata entry refers to buffer {entry.buffer} of {n_b}")
    for s, sub in enumerate(model.subgraphs):
        if sub is None:
            raise InvalidModelError(f"subgraph {s} is missing")
        _check_subgraph(model, buf, s, sub)


def _load(buf: bytes, label: str) -> Any:
    try:
        _check_header(buf, label)
        _check_object_counts(buf, label)
        model = schema.ModelT.InitFromPackedBuf(buf, 0)
        _check_structure(model, buf)
    except CrosslevelError as exc:
        if str(exc).startswith(label):
            raise
        raise type(exc)(f"{label}: {exc}") from None
    except Exception as exc:  # the generated parser raises anything on corrupt input
        kind = type(exc).__name__ if type(exc).__module__ == "builtins" else "struct.error"
        raise InvalidModelError(
            f"{label} is not a valid TFLite flatbuffer: corrupt offsets or lengths ({kind}: {exc})"
        ) from None
    return model


def load_tflite_model(source: str | Path | bytes) -> tuple[Any, bytes]:
    """Parse and structurally check a ``.tflite`` file: ``(schema.ModelT, file bytes)``.

    Checks what a runtime would trust blindly (indices, buffer spans and sizes, object
    counts), so that a file passing here cannot make TFLM read out of bounds. Every
    failure is one InvalidModelError.
    """
    buf, label = _read_source(source)
    return _load(buf, label), buf


# ====================================================================================
# padding as TensorFlow computes it
# ====================================================================================
def tf_padding(
    mode: str,
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int] = (1, 1),
) -> tuple[int, int, int, int]:
    """Explicit pads (top, left, bottom, right) of TensorFlow's ``SAME``/``VALID`` modes.

    SAME: output = ceil(in / stride), the total padding split with the extra cell at the
    end (bottom/right), as TensorFlow and TFLite do.
    """
    if mode == "VALID":
        return (0, 0, 0, 0)
    if mode != "SAME":
        raise InvalidModelError(f"unknown padding mode {mode!r}")
    before, after = [], []
    for i in range(2):
        span = dilations[i] * (kernel[i] - 1) + 1
        out = -(-hw[i] // strides[i])
        total = max((out - 1) * strides[i] + span - hw[i], 0)
        before.append(total // 2)
        after.append(total - total // 2)
    return (before[0], before[1], after[0], after[1])


# ====================================================================================
# import: flatbuffer -> IR
# ====================================================================================
def _opcode_name(oc: Any) -> str:
    code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
    name = _OP_NAMES.get(code, f"BUILTIN_{code}")
    if name == "CUSTOM":
        custom = oc.customCode.decode("utf-8", "replace") if oc.customCode else "?"
        return f"CUSTOM({custom})"
    return name


def _decode(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


@dataclass
class _Importer:
    """State of one import: the parsed model, IR names per tensor index, tensor extras."""

    model: Any
    buf: bytes
    names: list[str] = field(default_factory=list)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensors: dict[str, Tensor] = field(default_factory=dict)

    @property
    def sub(self) -> Any:
        return self.model.subgraphs[0]

    def assign_names(self) -> None:
        """IR names: the file's names, made unique (the file may repeat or omit names)."""
        taken: set[str] = set()
        for k, t in enumerate(self.sub.tensors or []):
            raw = t.name if isinstance(t.name, bytes) else b""
            name = unique_name(taken, _decode(raw) or f"tensor_{k}")
            taken.add(name)
            self.names.append(name)
            if name.encode("utf-8") != raw:
                self.extras.setdefault(name, {})["file_name"] = raw

    def tensor(self, k: int) -> Tensor:
        """The IR tensor of file index ``k`` (created on first use)."""
        name = self.names[k]
        if name not in self.tensors:
            self.tensors[name] = self._make_tensor(k, name)
        return self.tensors[name]

    def const_value(self, k: int, node: Node, what: str) -> np.ndarray:
        """Values of a constant parameter input (shape, axes, perm, paddings)."""
        if k < 0 or k >= len(self.names):
            raise InvalidModelError(f"node {node.name!r} ({node.op}) lacks its {what} input")
        t = self._make_tensor(k, self.names[k])
        if t.data is None:
            raise UnsupportedOperatorError(
                node.op, node.name, f"its {what} is computed, not constant"
            )
        if t.dtype not in ("int32", "int64"):
            raise InvalidModelError(f"node {node.name!r}: {what} tensor has dtype {t.dtype}")
        return t.data

    def _make_tensor(self, k: int, name: str) -> Tensor:
        t = self.sub.tensors[k]
        where = f"tensor {name!r}"
        dtype = _DTYPES.get(t.type)
        if dtype is None:
            type_name = _TYPE_NAMES.get(t.type, str(t.type))
            raise InvalidModelError(f"{where} has type {type_name}, which is not supported")
        shape = _tensor_shape(t, where)
        raw = _buffer_bytes(self.model, self.buf, t.buffer)
        data = None
        if raw is not None:
            data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
            data = data.astype(dtype).reshape(shape)
        if t.isVariable and data is not None:
            if np.any(data):
                raise InvalidModelError(f"variable {where} has an initial value (not supported)")
            data = None
        self._record_extras(name, t)
        quant = _import_quant(t.quantization, shape, where, self.extras.setdefault(name, {}))
        return Tensor(name, shape, dtype, data=data, quant=quant, is_variable=bool(t.isVariable))

    def _record_extras(self, name: str, t: Any) -> None:
        extra = self.extras.setdefault(name, {})
        if t.shapeSignature is not None:
            extra["shape_signature"] = [int(d) for d in t.shapeSignature]
        if t.hasRank:
            extra["has_rank"] = True


def _import_quant(q: Any, shape: Shape, where: str, extra: dict[str, Any]) -> QuantParams | None:
    if q is None:
        return None
    if q.detailsType:
        raise InvalidModelError(f"{where} uses custom quantization (not supported)")
    if q.min is not None and len(q.min):
        extra["quant_min"] = [float(v) for v in q.min]
    if q.max is not None and len(q.max):
        extra["quant_max"] = [float(v) for v in q.max]
    if q.scale is None or len(q.scale) == 0:
        return None
    scale = np.asarray(q.scale, dtype=np.float32)
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise InvalidModelError(f"{where} has a quantization scale that is not finite and positive")
    zp = np.asarray(q.zeroPoint if q.zeroPoint is not None else [], dtype=np.int64)
    if zp.size == 0:
        zp = np.zeros(scale.shape, dtype=np.int64)
    axis: int | None = None
    dim = int(q.quantizedDimension)
    if scale.size > 1:
        if not 0 <= dim < len(shape) or shape[dim] != scale.size:
            raise InvalidModelError(
                f"{where} of shape {shape} has {scale.size} scales on axis {dim}"
            )
        axis = dim
    elif dim:
        extra["quantized_dimension"] = dim
    return QuantParams(scale, zp, axis)


def _node_label(index: int, imp: _Importer, op: Any) -> str:
    outs = [int(k) for k in (op.outputs if op.outputs is not None else [])]
    name = imp.names[outs[0]] if outs and 0 <= outs[0] < len(imp.names) else "?"
    return f"{index} ({name})"


def _options(op: Any, cls: Any, node: Node) -> Any:
    """The operator's builtin options of class ``cls`` (defaults when absent)."""
    opts = op.builtinOptions
    if opts is None:
        return cls()
    if not isinstance(opts, cls):
        raise InvalidModelError(
            f"node {node.name!r} ({node.op}) carries {type(opts).__name__[:-1]} "
            f"instead of {cls.__name__[:-1]}"
        )
    return opts


def _leftover(opts: Any, mapped: set[str]) -> dict[str, Any]:
    """Option fields the IR has no attribute for, so that export can write them back."""
    rec: dict[str, Any] = {"_type": type(opts).__name__}
    for key, value in vars(opts).items():
        if key in mapped:
            continue
        if isinstance(value, bool | int | float):
            rec[key] = value
        elif isinstance(value, np.ndarray) and value.ndim == 1:
            rec[key] = value.tolist()
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            rec[key] = list(value)
    return rec


def _activation(code: int, node: Node) -> str:
    if code not in _ACTIVATIONS:
        raise UnsupportedOperatorError(f"{node.op} with fused activation {code}", node.name)
    return _ACTIVATIONS[code]


def _positive(values: tuple[int, ...], what: str, node: Node) -> tuple[int, ...]:
    if any(v < 1 for v in values):
        raise InvalidModelError(f"node {node.name!r} ({node.op}) has {what} {values}")
    return values


def _padding_mode(code: int, node: Node) -> str:
    if code not in _PADDINGS:
        raise InvalidModelError(f"node {node.name!r} ({node.op}) has padding mode {code}")
    return _PADDINGS[code]


def _rank4(imp: _Importer, name: str, node: Node) -> Shape:
    shape = imp.tensors[name].shape
    if len(shape) != 4:
        raise InvalidModelError(f"node {node.name!r} ({node.op}) needs rank-4 {name!r}: {shape}")
    return shape


def _window_attrs(
    node: Node, x: Shape, kernel: tuple[int, int], opts: Any, dilations: tuple[int, int]
) -> set[str]:
    strides = _positive((int(opts.strideH), int(opts.strideW)), "strides", node)
    mode = _padding_mode(int(opts.padding), node)
    node.attrs.update(
        strides=strides,
        padding=mode,
        pads=tf_padding(mode, (x[1], x[2]), kernel, strides, dilations),  # type: ignore[arg-type]
        activation=_activation(int(opts.fusedActivationFunction), node),
    )
    return {"strideH", "strideW", "padding", "fusedActivationFunction"}


def _imp_conv(imp: _Importer, node: Node, op: Any) -> set[str]:
    depthwise = node.op == "DEPTHWISE_CONV_2D"
    cls = schema.DepthwiseConv2DOptionsT if depthwise else schema.Conv2DOptionsT
    opts = _options(op, cls, node)
    if len(node.inputs) < 2 or not node.inputs[0] or not node.inputs[1]:
        raise InvalidModelError(f"node {node.name!r} ({node.op}) lacks its input or weights")
    x, w = _rank4(imp, node.inputs[0], node), _rank4(imp, node.inputs[1], node)
    dil = _positive((int(opts.dilationHFactor), int(opts.dilationWFactor)), "dilations", node)
    mapped = _window_attrs(node, x, (w[1], w[2]), opts, dil)  # type: ignore[arg-type]
    node.attrs["dilations"] = dil
    if depthwise:
        if x[3] == 0 or w[3] % x[3]:
            raise InvalidModelError(f"node {node.name!r}: weights {w} do not fit input {x}")
        node.attrs["depth_multiplier"] = w[3] // x[3]
        mapped.add("depthMultiplier")
    else:
        if w[3] == 0 or x[3] % w[3]:
            raise InvalidModelError(f"node {node.name!r}: weights {w} do not fit input {x}")
        node.attrs["groups"] = x[3] // w[3]
    return mapped | {"dilationHFactor", "dilationWFactor"}


def _imp_pool(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.Pool2DOptionsT, node)
    x = _rank4(imp, node.inputs[0], node)
    kernel = _positive((int(opts.filterHeight), int(opts.filterWidth)), "window", node)
    node.attrs["kernel"] = kernel
    return _window_attrs(node, x, kernel, opts, (1, 1)) | {"filterHeight", "filterWidth"}  # type: ignore[arg-type]


def _imp_fc(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.FullyConnectedOptionsT, node)
    if int(opts.weightsFormat) != schema.FullyConnectedOptionsWeightsFormat.DEFAULT:
        raise UnsupportedOperatorError("FULLY_CONNECTED with shuffled weights", node.name)
    if len(node.inputs) < 2 or not node.inputs[1]:
        raise InvalidModelError(f"node {node.name!r} (FULLY_CONNECTED) lacks its weights")
    if len(imp.tensors[node.inputs[1]].shape) != 2:
        raise InvalidModelError(f"node {node.name!r}: FULLY_CONNECTED weights must be 2-D")
    node.attrs["activation"] = _activation(int(opts.fusedActivationFunction), node)
    node.attrs["keep_num_dims"] = bool(opts.keepNumDims)
    return {"fusedActivationFunction", "keepNumDims"}


_BINARY_OPTIONS = {
    "ADD": schema.AddOptionsT,
    "SUB": schema.SubOptionsT,
    "MUL": schema.MulOptionsT,
    "DIV": schema.DivOptionsT,
}


def _imp_binary(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, _BINARY_OPTIONS[node.op], node)
    node.attrs["activation"] = _activation(int(opts.fusedActivationFunction), node)
    return {"fusedActivationFunction"}


def _imp_softmax(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.SoftmaxOptionsT, node)
    node.attrs.update(axis=-1, beta=float(opts.beta))
    return {"beta"}


def _imp_concat(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.ConcatenationOptionsT, node)
    node.attrs["axis"] = int(opts.axis)
    node.attrs["activation"] = _activation(int(opts.fusedActivationFunction), node)
    return {"axis", "fusedActivationFunction"}


def _take_param(imp: _Importer, node: Node, op: Any, what: str) -> np.ndarray | None:
    """Move TFLite's constant second input (shape/axes/perm/paddings) into the attributes."""
    inputs = [int(k) for k in op.inputs]
    if len(inputs) < 2 or inputs[1] < 0:
        return None
    value = imp.const_value(inputs[1], node, what)
    node.attrs["tflite_param_tensor"] = imp.names[inputs[1]]
    node.inputs = node.inputs[:1]
    return value


def _imp_reshape(imp: _Importer, node: Node, op: Any) -> set[str]:
    value = _take_param(imp, node, op, "shape")
    opts = op.builtinOptions
    if value is None and isinstance(opts, schema.ReshapeOptionsT) and opts.newShape is not None:
        value = np.asarray(opts.newShape)
    if value is None:
        value = np.asarray(imp.tensors[node.outputs[0]].shape)
    node.attrs["shape"] = [int(d) for d in value.reshape(-1)]
    return {"newShape"}


def _imp_mean(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.ReducerOptionsT, node)
    axes = _take_param(imp, node, op, "axes")
    if axes is None:
        raise InvalidModelError(f"node {node.name!r} (MEAN) lacks its axes input")
    node.attrs.update(axes=[int(a) for a in axes.reshape(-1)], keepdims=bool(opts.keepDims))
    return {"keepDims"}


def _imp_transpose(imp: _Importer, node: Node, op: Any) -> set[str]:
    perm = _take_param(imp, node, op, "perm")
    if perm is None:
        raise InvalidModelError(f"node {node.name!r} (TRANSPOSE) lacks its perm input")
    node.attrs["perm"] = [int(p) for p in perm.reshape(-1)]
    return set()


def _imp_pad(imp: _Importer, node: Node, op: Any) -> set[str]:
    # PAD has exactly (input, paddings); a pad value would be PADV2's third input, which
    # the IR would otherwise drop silently and pad with zeros.
    if len(op.inputs) > 2:
        raise InvalidModelError(f"node {node.name!r} (PAD) has {len(op.inputs)} inputs, not 2")
    pads = _take_param(imp, node, op, "paddings")
    if pads is None or pads.ndim != 2 or pads.shape[1] != 2 or np.any(pads < 0):
        raise InvalidModelError(f"node {node.name!r} (PAD) needs non-negative [rank, 2] paddings")
    node.attrs.update(pads=[(int(b), int(a)) for b, a in pads], value=0.0)
    return set()


def _imp_matmul(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.BatchMatMulOptionsT, node)
    if opts.adjX or opts.adjY:
        raise UnsupportedOperatorError("BATCH_MATMUL with adj_x/adj_y", node.name)
    return {"adjX", "adjY"}


def _imp_leaky(imp: _Importer, node: Node, op: Any) -> set[str]:
    opts = _options(op, schema.LeakyReluOptionsT, node)
    node.attrs["alpha"] = float(opts.alpha)
    return {"alpha"}


def _imp_plain(imp: _Importer, node: Node, op: Any) -> set[str]:
    return set()


_IMPORTERS = {
    "CONV_2D": _imp_conv,
    "DEPTHWISE_CONV_2D": _imp_conv,
    "FULLY_CONNECTED": _imp_fc,
    "AVERAGE_POOL_2D": _imp_pool,
    "MAX_POOL_2D": _imp_pool,
    **{op: _imp_binary for op in _BINARY_OPTIONS},
    "SOFTMAX": _imp_softmax,
    "CONCATENATION": _imp_concat,
    "RESHAPE": _imp_reshape,
    "MEAN": _imp_mean,
    "TRANSPOSE": _imp_transpose,
    "PAD": _imp_pad,
    "BATCH_MATMUL": _imp_matmul,
    "LEAKY_RELU": _imp_leaky,
    **{
        op: _imp_plain
        for op in (
            "QUANTIZE",
            "DEQUANTIZE",
            "RELU",
            "RELU6",
            "RELU_N1_TO_1",
            "LOGISTIC",
            "TANH",
            "HARD_SWISH",
        )
    },
}
# Operators whose second input is a constant parameter the IR keeps as an attribute.
_PARAM_INPUT_OPS = ("RESHAPE", "MEAN", "TRANSPOSE", "PAD")

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(_IMPORTERS))


def _check_supported(imp: _Importer, opnames: list[str]) -> None:
    for i, op in enumerate(imp.sub.operators or []):
        name = opnames[op.opcodeIndex]
        if name not in _IMPORTERS:
            raise UnsupportedOperatorError(name, _node_label(i, imp, op))
        if op.intermediates is not None and len(op.intermediates):
            raise UnsupportedOperatorError(f"{name} with intermediates", _node_label(i, imp, op))
    if len(imp.model.subgraphs) > 1:
        raise UnsupportedOperatorError(
            f"control flow ({len(imp.model.subgraphs)} subgraphs)",
            f"subgraph 1 ({_decode(imp.model.subgraphs[1].name)})",
            "only single-subgraph models are supported",
        )


def _regular_tensor_indices(imp: _Importer, opnames: list[str]) -> list[int]:
    """File indices of tensors the graph keeps: op inputs/outputs and graph I/O.

    A constant that only feeds a parameter slot becomes a node attribute instead.
    """
    used: set[int] = {int(k) for k in imp.sub.inputs} | {int(k) for k in imp.sub.outputs}
    for op in imp.sub.operators or []:
        ins = [int(k) for k in op.inputs]
        if opnames[op.opcodeIndex] in _PARAM_INPUT_OPS:
            ins = ins[:1]
        used.update(k for k in ins if k >= 0)
        used.update(int(k) for k in op.outputs)
    return sorted(used)


def _import_node(imp: _Importer, i: int, op: Any, opname: str, version: int) -> Node:
    names = imp.names
    node = Node(
        f"{opname.lower()}_{i}",
        opname,
        [names[int(k)] if k >= 0 else "" for k in op.inputs],
        [names[int(k)] for k in op.outputs],
    )
    if not node.outputs or not node.inputs or not node.inputs[0]:
        raise InvalidModelError(f"node {node.name!r} ({opname}) lacks its first input or output")
    mapped = _IMPORTERS[opname](imp, node, op)
    node.attrs["tflite_version"] = version
    if op.builtinOptions is not None:
        node.attrs["tflite_options"] = _leftover(op.builtinOptions, mapped)
    return node


def _model_metadata(imp: _Importer) -> tuple[list[dict[str, Any]], dict[str, int]]:
    entries: list[dict[str, Any]] = []
    plan: dict[str, int] = {}
    for entry in imp.model.metadata or []:
        name = _decode(entry.name)
        data = _buffer_bytes(imp.model, imp.buf, entry.buffer) or b""
        if name == OFFLINE_PLAN_NAME:
            plan = _read_offline_plan(data, imp)
        else:
            entries.append({"name": name, "data": data})
    return entries, plan


def _read_offline_plan(data: bytes, imp: _Importer) -> dict[str, int]:
    values = np.frombuffer(data[: len(data) // 4 * 4], dtype="<i4")
    n = len(imp.names)
    if len(values) < 3 or values[2] != n or len(values) != 3 + n:
        raise InvalidModelError("OfflineMemoryAllocation metadata does not match the tensors")
    return {imp.names[k]: int(values[3 + k]) for k in range(n) if imp.names[k] in imp.tensors}


def _signature_defs(imp: _Importer) -> list[dict[str, Any]]:
    sigs = []
    for sig in imp.model.signatureDefs or []:
        if sig.subgraphIndex != 0:
            continue

        def maps(items: Any) -> list[tuple[str, str]]:
            return [
                (_decode(m.name), imp.names[m.tensorIndex])
                for m in items or []
                if 0 <= m.tensorIndex < len(imp.names)
            ]

        sigs.append(
            {
                "key": _decode(sig.signatureKey),
                "inputs": maps(sig.inputs),
                "outputs": maps(sig.outputs),
            }
        )
    return sigs


def _to_graph(model: Any, buf: bytes, graph_name: str | None) -> Graph:
    imp = _Importer(model, buf)
    imp.assign_names()
    opcodes = model.operatorCodes or []
    opnames = [_opcode_name(oc) for oc in opcodes]
    _check_supported(imp, opnames)
    for k in _regular_tensor_indices(imp, opnames):
        imp.tensor(k)
    nodes = [
        _import_node(imp, i, op, opnames[op.opcodeIndex], int(opcodes[op.opcodeIndex].version))
        for i, op in enumerate(imp.sub.operators or [])
    ]
    entries, plan = _model_metadata(imp)
    sub_name = _decode(imp.sub.name)
    info = {
        "version": int(model.version),
        "description": _decode(model.description),
        "subgraph_name": sub_name,
        "opcodes": [
            {"op": n, "version": int(oc.version)} for n, oc in zip(opnames, opcodes, strict=True)
        ],
        "metadata": entries,
        "signature_defs": _signature_defs(imp),
        "tensors": {n: e for n, e in imp.extras.items() if e and n in imp.tensors},
    }
    if plan:
        info["offline_plan"] = plan
    ordered = {n: imp.tensors[n] for n in imp.names if n in imp.tensors}
    graph = Graph(
        name=graph_name or sub_name or "tflite",
        tensors=ordered,
        nodes=nodes,
        inputs=[imp.names[int(k)] for k in imp.sub.inputs],
        outputs=[imp.names[int(k)] for k in imp.sub.outputs],
        layout="NHWC",
        metadata={META_KEY: info},
    )
    graph.validate()
    return graph


def import_tflite(source: str | Path | bytes) -> Graph:
    """Read a ``.tflite`` file (path or bytes) into an NHWC IR graph, validated.

    Raises InvalidModelError for anything malformed or hostile, UnsupportedOperatorError
    (a subclass) for operators outside the vocabulary, custom ops and control flow.
    """
    buf, label = _read_source(source)
    model = _load(buf, label)
    stem = Path(source).stem if isinstance(source, str | Path) else None
    try:
        return _to_graph(model, buf, stem)
    except UnsupportedOperatorError:
        raise
    except CrosslevelError as exc:
        raise InvalidModelError(f"{label}: {exc}") from None
    except Exception as exc:  # defensive: corrupt fields can break any arithmetic above
        raise InvalidModelError(f"{label} is malformed ({type(exc).__name__}: {exc})") from None


# ====================================================================================
# export: IR -> flatbuffer
# ====================================================================================
@dataclass
class _OutTensor:
    name: str
    shape: Shape
    dtype: str
    data: np.ndarray | None = None
    quant: QuantParams | None = None
    is_variable: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class _OutOp:
    op: str
    version: int
    inputs: list[str]
    outputs: list[str]
    options: Any = None


@dataclass
class _Plan:
    """What the exporter writes, in file order: tensors and operators."""

    tensors: dict[str, _OutTensor] = field(default_factory=dict)
    ops: list[_OutOp] = field(default_factory=list)


class _Writer:
    """Turns IR nodes into TFLite operators, adding the tensors TFLite needs."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.plan = _Plan()
        self.extras: dict[str, dict[str, Any]] = graph.metadata.get(META_KEY, {}).get("tensors", {})
        used = set(graph.inputs) | set(graph.outputs)
        for node in graph.nodes:
            used.update(n for n in [*node.inputs, *node.outputs] if n)
        for name, t in graph.tensors.items():
            if name in used:
                self.plan.tensors[name] = _OutTensor(
                    name,
                    t.shape,
                    t.dtype,
                    t.data,
                    t.quant,
                    t.is_variable,
                    dict(self.extras.get(name, {})),
                )

    def t(self, name: str) -> _OutTensor:
        return self.plan.tensors[name]

    def new_tensor(self, base: str, tensor: _OutTensor, reuse: bool = False) -> str:
        """Add ``tensor`` under ``base`` (or a unique variant); reuse an identical constant."""
        old = self.plan.tensors.get(base)
        if reuse and old is not None and _same_constant(old, tensor):
            return base
        name = unique_name(set(self.plan.tensors) | set(self.graph.tensors), base)
        tensor.name = name
        self.plan.tensors[name] = tensor
        return name

    def param(self, node: Node, values: np.ndarray, suffix: str) -> str:
        """The int32 constant tensor TFLite takes as a parameter input."""
        base = str(node.attrs.get("tflite_param_tensor") or f"{node.name}/{suffix}")
        arr = np.ascontiguousarray(values, dtype=np.int32)
        return self.new_tensor(base, _OutTensor(base, arr.shape, "int32", arr), reuse=True)

    def add(
        self, node: Node, inputs: list[str], options: Any = None, op: str | None = None
    ) -> None:
        name = op or node.op
        self.plan.ops.append(
            _OutOp(name, _version(self, node, name), inputs, list(node.outputs), options)
        )


def _same_constant(a: _OutTensor, b: _OutTensor) -> bool:
    return (
        a.data is not None
        and b.data is not None
        and a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(a.data, b.data)
    )


def _version(w: _Writer, node: Node, op: str) -> int:
    version = int(node.attrs.get("tflite_version", 1)) if op == node.op else 1
    first = next((n for n in node.inputs if n), None)
    int8_in = first is not None and w.t(first).dtype == "int8"
    if int8_in or (op == "QUANTIZE" and w.t(node.outputs[0]).dtype == "int8"):
        version = max(version, _INT8_MIN_VERSION.get(op, 1))
    return version


def _new_options(node: Node, cls: Any) -> Any:
    """Builtin options of ``cls``, pre-filled with the fields kept from import."""
    opts = cls()
    rec = node.attrs.get("tflite_options")
    if isinstance(rec, dict) and rec.get("_type") == cls.__name__:
        for key, value in rec.items():
            if key != "_type" and hasattr(opts, key):
                setattr(opts, key, value)
    return opts


def _kept_options(node: Node) -> Any:
    """Options of ops the IR gives no attributes (QUANTIZE...): as the file had them."""
    rec = node.attrs.get("tflite_options")
    cls = getattr(schema, str(rec.get("_type")), None) if isinstance(rec, dict) else None
    if cls is None or not str(rec.get("_type")).endswith("OptionsT"):  # type: ignore[union-attr]
        return None
    return _new_options(node, cls)


def _act_code(node: Node) -> int:
    act = node.attrs.get("activation", "NONE")
    if act not in _ACTIVATION_CODES:
        raise UnsupportedOperatorError(f"{node.op} with fused {act}", node.name)
    return _ACTIVATION_CODES[act]


def _pair(node: Node, key: str, default: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    value = node.attrs.get(key, default)
    return int(value[0]), int(value[1])


def _resolve_padding(w: _Writer, node: Node, kernel: tuple[int, int]) -> tuple[int, str]:
    """SAME/VALID for the node's explicit pads, or a PAD operator in front of it."""
    x = w.t(node.inputs[0])
    strides, dil = _pair(node, "strides"), _pair(node, "dilations")
    pads = tuple(int(p) for p in node.attrs.get("pads", (0, 0, 0, 0)))
    hw = (x.shape[1], x.shape[2])
    for mode in (node.attrs.get("padding"), "VALID", "SAME"):
        if mode in _PADDING_CODES and tf_padding(mode, hw, kernel, strides, dil) == pads:
            return _PADDING_CODES[mode], node.inputs[0]
    if node.op not in ("CONV_2D", "DEPTHWISE_CONV_2D") or min(pads) < 0:
        raise UnsupportedOperatorError(
            node.op,
            node.name,
            f"explicit pads {pads} are neither SAME nor VALID, and TFLite cannot pad a "
            "pooling window with a separate PAD operator",
        )
    top, left, bottom, right = pads
    shape = (x.shape[0], x.shape[1] + top + bottom, x.shape[2] + left + right, x.shape[3])
    padded = w.new_tensor(f"{node.inputs[0]}/padded", _OutTensor("", shape, x.dtype, None, x.quant))
    paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]])
    pad_node = Node(f"{node.name}/pad", "PAD", [node.inputs[0]], [padded])
    w.add(pad_node, [node.inputs[0], w.param(pad_node, paddings, "paddings")])
    return _PADDING_CODES["VALID"], padded


def _check_int8_weights(w: _Writer, node: Node, axis: int) -> None:
    """TFLite int8 conventions: symmetric weights (per-channel on ``axis``), int32 bias
    with scale s_in * s_w (filled in when the IR left the bias unquantized)."""
    weights = w.t(node.inputs[1])
    x = w.t(node.inputs[0])
    if weights.dtype != "int8":
        return
    if weights.quant is None:
        raise InvalidModelError(
            f"node {node.name!r}: int8 weights {weights.name!r} lack quantization"
        )
    if x.dtype == "int8" and np.any(weights.quant.zero_point != 0):
        raise InvalidModelError(
            f"node {node.name!r}: int8 weights must be symmetric (zero point 0)"
        )
    if weights.quant.per_channel and weights.quant.axis != axis:
        raise InvalidModelError(
            f"node {node.name!r}: per-channel weights must be quantized on axis {axis} for "
            f"{node.op}, not {weights.quant.axis}"
        )
    bias = w.t(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if bias is not None and bias.quant is None and x.quant is not None and bias.dtype == "int32":
        scale = x.quant.scale[0] * weights.quant.scale
        bias_axis = 0 if scale.size > 1 else None
        bias.quant = QuantParams(scale, np.zeros(scale.shape, np.int64), bias_axis)


def _exp_conv(w: _Writer, node: Node) -> None:
    depthwise = node.op == "DEPTHWISE_CONV_2D"
    weights = w.t(node.inputs[1])
    _check_int8_weights(w, node, 3 if depthwise else 0)
    kernel = (weights.shape[1], weights.shape[2])
    padding, x_name = _resolve_padding(w, node, kernel)
    cls = schema.DepthwiseConv2DOptionsT if depthwise else schema.Conv2DOptionsT
    opts = _new_options(node, cls)
    opts.padding = padding
    opts.strideH, opts.strideW = _pair(node, "strides")
    opts.dilationHFactor, opts.dilationWFactor = _pair(node, "dilations")
    opts.fusedActivationFunction = _act_code(node)
    if depthwise:
        opts.depthMultiplier = int(node.attrs.get("depth_multiplier", 1))
    w.add(node, [x_name, *node.inputs[1:]], opts)


def _exp_pool(w: _Writer, node: Node) -> None:
    kernel = _pair(node, "kernel")
    padding, x_name = _resolve_padding(w, node, kernel)
    opts = _new_options(node, schema.Pool2DOptionsT)
    opts.padding = padding
    opts.strideH, opts.strideW = _pair(node, "strides")
    opts.filterHeight, opts.filterWidth = kernel
    opts.fusedActivationFunction = _act_code(node)
    w.add(node, [x_name], opts)


def _exp_fc(w: _Writer, node: Node) -> None:
    _check_int8_weights(w, node, 0)
    opts = _new_options(node, schema.FullyConnectedOptionsT)
    opts.fusedActivationFunction = _act_code(node)
    opts.keepNumDims = bool(node.attrs.get("keep_num_dims", False))
    w.add(node, list(node.inputs), opts)


def _exp_binary(w: _Writer, node: Node) -> None:
    opts = _new_options(node, _BINARY_OPTIONS[node.op])
    opts.fusedActivationFunction = _act_code(node)
    w.add(node, list(node.inputs), opts)


def _exp_softmax(w: _Writer, node: Node) -> None:
    rank = len(w.t(node.inputs[0]).shape)
    if int(node.attrs.get("axis", -1)) not in (-1, rank - 1):
        raise UnsupportedOperatorError("SOFTMAX", node.name, "TFLite normalizes the last axis only")
    opts = _new_options(node, schema.SoftmaxOptionsT)
    opts.beta = float(node.attrs.get("beta", 1.0))
    w.add(node, list(node.inputs), opts)


def _exp_concat(w: _Writer, node: Node) -> None:
    opts = _new_options(node, schema.ConcatenationOptionsT)
    opts.axis = int(node.attrs["axis"])
    opts.fusedActivationFunction = _act_code(node)
    w.add(node, [n for n in node.inputs if n], opts)


def _exp_reshape(w: _Writer, node: Node) -> None:
    shape = np.asarray([int(d) for d in node.attrs["shape"]])
    opts = _kept_options(node)
    if isinstance(opts, schema.ReshapeOptionsT):
        opts.newShape = shape.tolist()
    w.add(node, [node.inputs[0], w.param(node, shape, "shape")], opts)


def _exp_mean(w: _Writer, node: Node) -> None:
    opts = _new_options(node, schema.ReducerOptionsT)
    opts.keepDims = bool(node.attrs.get("keepdims", True))
    axes = np.asarray([int(a) for a in node.attrs["axes"]])
    w.add(node, [node.inputs[0], w.param(node, axes, "axes")], opts)


def _exp_transpose(w: _Writer, node: Node) -> None:
    perm = np.asarray([int(p) for p in node.attrs["perm"]])
    w.add(node, [node.inputs[0], w.param(node, perm, "perm")], _kept_options(node))


def _exp_pad(w: _Writer, node: Node) -> None:
    if float(node.attrs.get("value", 0.0)) != 0.0:
        raise UnsupportedOperatorError("PAD", node.name, "only zero padding is written (PAD)")
    pads = np.asarray([[int(b), int(a)] for b, a in node.attrs["pads"]]).reshape(-1, 2)
    w.add(node, [node.inputs[0], w.param(node, pads, "paddings")], _kept_options(node))


def _exp_matmul(w: _Writer, node: Node) -> None:
    opts = _new_options(node, schema.BatchMatMulOptionsT)
    opts.adjX = opts.adjY = False
    w.add(node, list(node.inputs), opts)


def _exp_leaky(w: _Writer, node: Node) -> None:
    opts = _new_options(node, schema.LeakyReluOptionsT)
    opts.alpha = float(node.attrs.get("alpha", 0.2))
    w.add(node, list(node.inputs), opts)


def _exp_plain(w: _Writer, node: Node) -> None:
    w.add(node, list(node.inputs), _kept_options(node))


_EXPORTERS = {
    "CONV_2D": _exp_conv,
    "DEPTHWISE_CONV_2D": _exp_conv,
    "FULLY_CONNECTED": _exp_fc,
    "AVERAGE_POOL_2D": _exp_pool,
    "MAX_POOL_2D": _exp_pool,
    **{op: _exp_binary for op in _BINARY_OPTIONS},
    "SOFTMAX": _exp_softmax,
    "CONCATENATION": _exp_concat,
    "RESHAPE": _exp_reshape,
    "MEAN": _exp_mean,
    "TRANSPOSE": _exp_transpose,
    "PAD": _exp_pad,
    "BATCH_MATMUL": _exp_matmul,
    "LEAKY_RELU": _exp_leaky,
    **{op: _exp_plain for op, fn in _IMPORTERS.items() if fn is _imp_plain},
}


def _plan_export(graph: Graph) -> _Plan:
    if graph.layout != "NHWC":
        raise InvalidModelError(
            f"graph {graph.name!r} is in {graph.layout} layout; TFLite needs NHWC: "
            "convert the graph to NHWC before exporting it"
        )
    graph.validate()
    writer = _Writer(graph)
    for node in graph.nodes:
        exporter = _EXPORTERS.get(node.op)
        if exporter is None:
            raise UnsupportedOperatorError(node.op, node.name, "it has no TFLite builtin")
        exporter(writer, node)
    for t in writer.plan.tensors.values():
        if t.dtype in ("int8", "uint8", "int16") and t.quant is None and t.data is None:
            raise InvalidModelError(f"{t.dtype} tensor {t.name!r} has no quantization parameters")
    return writer.plan


def tflite_tensor_order(graph: Graph) -> list[str]:
    """Tensor names in the order ``export_tflite`` writes them (offline plans index this)."""
    return list(_plan_export(graph).tensors)


@dataclass(frozen=True)
class ExportedTensor:
    """One tensor as ``export_tflite`` writes it; ``in_arena`` = TFLM plans it in the head.

    The exporter may add tensors the graph does not have (a PAD output, shape constants),
    so a memory planner writing an offline plan sizes its offsets from this list.
    """

    name: str
    nbytes: int
    in_arena: bool


def tflite_tensors(graph: Graph) -> list[ExportedTensor]:
    """The tensors of ``export_tflite(graph)`` in file order, with their sizes."""
    return [
        ExportedTensor(
            t.name, _numel(t.shape) * DTYPE_BYTES[t.dtype], t.data is None and not t.is_variable
        )
        for t in _plan_export(graph).tensors.values()
    ]


class _AlignedBufferT(schema.BufferT):  # type: ignore[misc]
    """A buffer whose data starts on a 16-byte boundary, as the TFLite converter writes."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (generated API name)
        data_off = None
        if self.data is not None:
            payload = bytes(self.data)
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            builder.vectorNumElems = len(payload)
            data_off = builder.EndVector()
        schema.BufferStart(builder)
        if data_off is not None:
            schema.BufferAddData(builder, data_off)
        return int(schema.BufferEnd(builder))


def _buffer(data: bytes | None) -> Any:
    b = _AlignedBufferT()
    b.data = data
    return b


def _le_bytes(t: _OutTensor) -> bytes:
    assert t.data is not None
    arr = np.asarray(t.data)
    if arr.shape != t.shape and arr.size != _numel(t.shape):
        raise InvalidModelError(f"constant {t.name!r} holds {arr.shape}, declared {t.shape}")
    return np.ascontiguousarray(arr, dtype=np.dtype(t.dtype).newbyteorder("<")).tobytes()


def _quant_t(t: _OutTensor) -> Any:
    extra = t.extras
    q = schema.QuantizationParametersT()
    if t.quant is not None:
        q.scale = t.quant.scale.astype(np.float32)
        q.zeroPoint = t.quant.zero_point.astype(np.int64)
        q.quantizedDimension = int(
            t.quant.axis if t.quant.axis is not None else extra.get("quantized_dimension", 0)
        )
    size = t.quant.scale.size if t.quant is not None else None
    for key, attr in (("quant_min", "min"), ("quant_max", "max")):
        values = extra.get(key)
        if values is not None and (size is None or len(values) == size):
            setattr(q, attr, np.asarray(values, dtype=np.float32))
    if t.quant is None and q.min is None and q.max is None:
        return None
    return q


def _tensor_t(t: _OutTensor, buffer: int) -> Any:
    out = schema.TensorT()
    out.shape = np.asarray(t.shape, dtype=np.int32)
    out.type = _TYPE_CODES[t.dtype]
    out.buffer = buffer
    out.name = t.extras.get("file_name", t.name.encode("utf-8"))
    out.quantization = _quant_t(t)
    out.isVariable = t.is_variable
    sig = t.extras.get("shape_signature")
    if (
        sig is not None
        and len(sig) == len(t.shape)
        and all(s == d for s, d in zip(sig, t.shape, strict=True) if s >= 0)
    ):
        out.shapeSignature = np.asarray(sig, dtype=np.int32)
    out.hasRank = bool(t.extras.get("has_rank", False))
    return out


@dataclass
class _Assembly:
    """The flatbuffer objects being assembled: buffers (deduplicated) and opcodes."""

    buffers: list[Any] = field(default_factory=lambda: [_buffer(None)])
    by_content: dict[bytes, int] = field(default_factory=dict)
    opcodes: list[tuple[str, int]] = field(default_factory=list)

    def buffer_for(self, data: bytes) -> int:
        if data not in self.by_content:
            self.by_content[data] = len(self.buffers)
            self.buffers.append(_buffer(data))
        return self.by_content[data]

    def opcode_for(self, op: str, version: int) -> int:
        if (op, version) not in self.opcodes:
            self.opcodes.append((op, version))
        return self.opcodes.index((op, version))


def _operator_t(asm: _Assembly, op: _OutOp, index: dict[str, int]) -> Any:
    out = schema.OperatorT()
    out.opcodeIndex = asm.opcode_for(op.op, op.version)
    out.inputs = np.asarray([index[n] if n else -1 for n in op.inputs], dtype=np.int32)
    out.outputs = np.asarray([index[n] for n in op.outputs], dtype=np.int32)
    if op.options is not None:
        out.builtinOptionsType = getattr(schema.BuiltinOptions, type(op.options).__name__[:-1])
        out.builtinOptions = op.options
    return out


def _opcode_t(op: str, version: int) -> Any:
    oc = schema.OperatorCodeT()
    code = _OP_CODES[op]
    oc.builtinCode = code
    oc.deprecatedBuiltinCode = min(code, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    oc.version = version
    return oc


def _metadata_t(asm: _Assembly, name: str, data: bytes) -> Any:
    entry = schema.MetadataT()
    entry.name = name.encode("utf-8")
    asm.buffers.append(_buffer(data))  # metadata buffers are never shared with tensors
    entry.buffer = len(asm.buffers) - 1
    return entry


def _signature_t(sig: dict[str, Any], index: dict[str, int]) -> Any | None:
    pairs = [*sig.get("inputs", []), *sig.get("outputs", [])]
    if any(t not in index for _, t in pairs):
        return None  # the graph no longer has the tensors it named
    out = schema.SignatureDefT()
    out.signatureKey = str(sig.get("key", "")).encode("utf-8")
    out.subgraphIndex = 0

    def maps(items: list[tuple[str, str]]) -> list[Any]:
        result = []
        for name, tensor in items:
            m = schema.TensorMapT()
            m.name, m.tensorIndex = name.encode("utf-8"), index[tensor]
            result.append(m)
        return result

    out.inputs, out.outputs = maps(sig.get("inputs", [])), maps(sig.get("outputs", []))
    return out


def _offline_plan_bytes(plan: _Plan, offsets: list[int]) -> bytes:
    tensors = list(plan.tensors.values())
    if len(offsets) != len(tensors):
        raise InvalidModelError(
            f"offline plan has {len(offsets)} offsets for {len(tensors)} tensors "
            "(index it by tflite_tensor_order(graph))"
        )
    for t, off in zip(tensors, offsets, strict=True):
        if not -1 <= int(off) < 2**31:
            raise InvalidModelError(f"offline offset {off} of tensor {t.name!r} is out of range")
        if off != -1 and (t.data is not None or t.is_variable):
            raise InvalidModelError(
                f"offline plan places {t.name!r}, which is constant or variable (use -1)"
            )
    values = [1, 0, len(tensors), *(int(o) for o in offsets)]
    return np.asarray(values, dtype="<i4").tobytes()


def _model_t(graph: Graph, plan: _Plan, offline_offsets: list[int] | None) -> Any:
    info: dict[str, Any] = graph.metadata.get(META_KEY, {})
    asm = _Assembly()
    for entry in info.get("opcodes", []):
        if entry.get("op") in _OP_CODES:
            asm.opcode_for(str(entry["op"]), int(entry.get("version", 1)))
    index = {name: k for k, name in enumerate(plan.tensors)}
    sub = schema.SubGraphT()
    sub.tensors = [
        _tensor_t(t, 0 if t.data is None or t.is_variable else asm.buffer_for(_le_bytes(t)))
        for t in plan.tensors.values()
    ]
    sub.operators = [_operator_t(asm, op, index) for op in plan.ops]
    sub.inputs = np.asarray([index[n] for n in graph.inputs], dtype=np.int32)
    sub.outputs = np.asarray([index[n] for n in graph.outputs], dtype=np.int32)
    sub.name = str(info.get("subgraph_name") or graph.name).encode("utf-8")
    model = schema.ModelT()
    model.version = int(info.get("version", 3))
    model.description = str(info.get("description") or "crosslevel").encode("utf-8")
    model.subgraphs = [sub]
    model.operatorCodes = [_opcode_t(op, v) for op, v in asm.opcodes]
    model.metadata = [
        _metadata_t(asm, str(e["name"]), bytes(e["data"])) for e in info.get("metadata", [])
    ]
    if offline_offsets is not None:
        data = _offline_plan_bytes(plan, offline_offsets)
        model.metadata.append(_metadata_t(asm, OFFLINE_PLAN_NAME, data))
    sigs = [_signature_t(s, index) for s in info.get("signature_defs", [])]
    model.signatureDefs = [s for s in sigs if s is not None] or None
    model.buffers = asm.buffers
    return model


def export_tflite(graph: Graph, offline_offsets: list[int] | None = None) -> bytes:
    """Write an NHWC graph as a ``.tflite`` flatbuffer TFLM can run.

    ``offline_offsets`` (one per tensor of ``tflite_tensor_order(graph)``, -1 = let TFLM
    plan it) is stored as the ``OfflineMemoryAllocation`` metadata TFLM honours.
    Explicit conv pads that are neither SAME nor VALID become a PAD operator in front.
    """
    plan = _plan_export(graph)
    model = _model_t(graph, plan, offline_offsets)
    builder = flatbuffers.Builder(1 << 16)
    try:
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    except flatbuffers.builder.BuilderSizeError:
        raise InvalidModelError(
            f"graph {graph.name!r} is too large for one TFLite flatbuffer (2 GB)"
        ) from None
    return bytes(builder.Output())
