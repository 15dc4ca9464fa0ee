"""Shape helpers for ONNX operators (reshape, flatten, squeeze, padding)."""

from __future__ import annotations

import math
from typing import Any

from crosslevel.ir.onnx.common import _ints

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
