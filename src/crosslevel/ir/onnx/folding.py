"""Static folding: constant and shape subgraphs evaluated with NumPy at import time."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import numpy_helper

from crosslevel.errors import InvalidModelError
from crosslevel.ir.onnx.common import MAX_FOLD_ELEMENTS, ONNX_TO_DTYPE, _ints
from crosslevel.ir.onnx.shapes import flatten_shape, reshape_target, squeeze_shape, unsqueeze_shape

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
