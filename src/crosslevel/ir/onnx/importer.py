"""ONNX -> IR: a checked importer producing NCHW graphs (QDQ included).

Import: parse the protobuf (no external file is touched until its path is checked to stay
inside the model's folder), run ``onnx.checker`` and strict shape inference, fix a
symbolic batch to 1, fold static shape subgraphs (``Shape -> Gather -> Concat -> Reshape``)
with NumPy, and map every remaining node onto the IR vocabulary of ``ir.ops``. Whatever
cannot be represented raises ``UnsupportedOperatorError`` naming the operator and node;
whatever is malformed raises ``InvalidModelError``; nothing else escapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crosslevel.errors import CrosslevelError, InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.onnx.common import (
    DTYPE_TO_ONNX,
    MAX_FOLD_ELEMENTS,
    ONNX_TO_DTYPE,
    ModelSource,
    _ints,
    _Names,
    _same_quant,
)
from crosslevel.ir.onnx.folding import _FOLDERS, _check_fold_size
from crosslevel.ir.onnx.loading import (
    _check,
    _default_opset,
    _fix_batch,
    _infer,
    _refuse_foreign_domains,
    _upgrade_opset,
    _value_infos,
    load_onnx_model,
)
from crosslevel.ir.onnx.shapes import (
    _window_pads,
    flatten_shape,
    reshape_target,
    squeeze_shape,
    unsqueeze_shape,
)
from crosslevel.ir.ops import infer_shapes

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


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


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
