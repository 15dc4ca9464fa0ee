"""The operator vocabulary of the IR: conventions, shape inference and MAC counts.

Names follow TFLite's builtin operators because TensorFlow Lite Micro is the reference
runtime of the smallest targets; ONNX operators map onto them at import.

Conventions (``L`` = the graph layout, ``NCHW`` or ``NHWC``):

* ``CONV_2D`` inputs ``[x, w, b?]``; attrs ``strides (sh, sw)``, ``dilations (dh, dw)``,
  ``pads (top, left, bottom, right)``, ``groups``, ``activation``. Weights are ``OIHW``
  in NCHW graphs and ``OHWI`` in NHWC graphs; ``I`` is in-channels / groups.
* ``DEPTHWISE_CONV_2D`` (NHWC graphs, TFLite): weights ``[1, kh, kw, C*M]``, attr
  ``depth_multiplier``; NCHW graphs express depthwise as ``CONV_2D`` with groups = C.
* ``FULLY_CONNECTED`` inputs ``[x, w[O, K], b?]``: x is flattened to ``[-1, K]`` unless
  ``keep_num_dims`` (then only the last axis changes). attrs ``activation``.
* ``AVERAGE_POOL_2D`` / ``MAX_POOL_2D``: attrs ``kernel``, ``strides``, ``pads``,
  ``activation``; average pooling never counts padded cells (TFLite and ONNX default).
* ``ADD``/``SUB``/``MUL``/``DIV``: numpy broadcasting; ``activation`` where TFLite fuses one.
* ``MEAN`` attrs ``axes``, ``keepdims``; ``RESHAPE`` attr ``shape``; ``TRANSPOSE`` attr
  ``perm``; ``SOFTMAX`` attrs ``axis``, ``beta``; ``CONCATENATION`` attr ``axis``;
  ``PAD`` attr ``pads`` (``[(before, after)]`` per axis) and ``value``;
  ``BATCH_MATMUL`` is a matmul of two activations; ``BATCH_NORM`` inputs
  ``[x, scale, bias, mean, var]`` attr ``epsilon`` (channel axis from the layout);
  ``LAYER_NORM`` inputs ``[x, scale, bias]`` attrs ``axis``, ``epsilon``;
  ``QUANTIZE`` / ``DEQUANTIZE`` use the quantization of their int8 side;
  ``CLIP`` attrs ``min``, ``max``; ``LEAKY_RELU`` attr ``alpha``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1", "TANH")

Shape = tuple[int, ...]
ShapeFn = Callable[[Graph, Node], list[Shape]]
MacFn = Callable[[Graph, Node], int]


@dataclass(frozen=True)
class OpSpec:
    """What the IR knows of one operator type."""

    name: str
    infer: ShapeFn
    macs: MacFn
    elementwise: bool = False  # output element i depends only on input element i


def _in(graph: Graph, node: Node, k: int = 0) -> Shape:
    return graph.tensor(node.inputs[k]).shape


def _out_elems(graph: Graph, node: Node) -> int:
    return graph.tensor(node.outputs[0]).num_elements


def spatial_axes(layout: str) -> tuple[int, int]:
    """The (H, W) axes of a rank-4 activation."""
    return (2, 3) if layout == "NCHW" else (1, 2)


def channel_axis(layout: str) -> int:
    return 1 if layout == "NCHW" else 3


def conv_output_hw(
    hw: tuple[int, int],
    kernel: tuple[int, int],
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
) -> tuple[int, int]:
    """Output height and width of a convolution or pooling window."""
    out = []
    for i in range(2):
        span = dilations[i] * (kernel[i] - 1) + 1
        size = (hw[i] + pads[i] + pads[i + 2] - span) // strides[i] + 1
        if size <= 0:
            raise InvalidModelError(f"window {kernel} does not fit input {hw} with pads {pads}")
        out.append(size)
    return out[0], out[1]


def kernel_hw(graph: Graph, node: Node) -> tuple[int, int]:
    """Kernel height and width of a convolution (from its weights) or pooling window."""
    if node.op in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        kh, kw = node.attrs["kernel"]
        return int(kh), int(kw)
    w = _in(graph, node, 1)
    if node.op == "DEPTHWISE_CONV_2D" or graph.layout == "NHWC":
        return w[1], w[2]
    return w[2], w[3]


def _make_4d(layout: str, n: int, c: int, h: int, w: int) -> Shape:
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def _window_shape(graph: Graph, node: Node, out_channels: int) -> list[Shape]:
    x = _in(graph, node)
    if len(x) != 4:
        raise InvalidModelError(f"node {node.name!r} ({node.op}) expects a rank-4 input, got {x}")
    ha, wa = spatial_axes(graph.layout)
    oh, ow = conv_output_hw(
        (x[ha], x[wa]),
        kernel_hw(graph, node),
        tuple(node.attrs.get("strides", (1, 1))),  # type: ignore[arg-type]
        tuple(node.attrs.get("dilations", (1, 1))),  # type: ignore[arg-type]
        tuple(node.attrs.get("pads", (0, 0, 0, 0))),  # type: ignore[arg-type]
    )
    return [_make_4d(graph.layout, x[0], out_channels, oh, ow)]


def _conv_shape(graph: Graph, node: Node) -> list[Shape]:
    x, w = _in(graph, node), _in(graph, node, 1)
    cin = x[channel_axis(graph.layout)]
    groups = int(node.attrs.get("groups", 1))
    w_in = w[1] if graph.layout == "NCHW" else w[3]
    if len(w) != 4 or w_in * groups != cin:
        raise InvalidModelError(
            f"node {node.name!r} (CONV_2D): weights {w} do not match {cin} input channels "
            f"in {groups} group(s)"
        )
    return _window_shape(graph, node, w[0])


def _conv_macs(graph: Graph, node: Node) -> int:
    w = _in(graph, node, 1)
    kh, kw = kernel_hw(graph, node)
    w_in = w[1] if graph.layout == "NCHW" else w[3]
    return _out_elems(graph, node) * w_in * kh * kw


def _depthwise_shape(graph: Graph, node: Node) -> list[Shape]:
    x, w = _in(graph, node), _in(graph, node, 1)
    cin = x[channel_axis(graph.layout)]
    mult = int(node.attrs.get("depth_multiplier", 1))
    if len(w) != 4 or w[3] != cin * mult:
        raise InvalidModelError(
            f"node {node.name!r} (DEPTHWISE_CONV_2D): weights {w} do not match "
            f"{cin} channels x multiplier {mult}"
        )
    return _window_shape(graph, node, w[3])


def _depthwise_macs(graph: Graph, node: Node) -> int:
    kh, kw = kernel_hw(graph, node)
    return _out_elems(graph, node) * kh * kw


def _pool_shape(graph: Graph, node: Node) -> list[Shape]:
    x = _in(graph, node)
    return _window_shape(graph, node, x[channel_axis(graph.layout)] if len(x) == 4 else 0)


def _fc_shape(graph: Graph, node: Node) -> list[Shape]:
    x, w = _in(graph, node), _in(graph, node, 1)
    k = w[1]
    if node.attrs.get("keep_num_dims", False):
        if x[-1] != k:
            raise InvalidModelError(f"node {node.name!r}: input {x} does not end in {k}")
        return [(*x[:-1], w[0])]
    elems = int(np.prod(x, dtype=np.int64))
    if elems % k:
        raise InvalidModelError(f"node {node.name!r}: input {x} is not a multiple of {k}")
    return [(elems // k, w[0])]


def _fc_macs(graph: Graph, node: Node) -> int:
    return _out_elems(graph, node) * _in(graph, node, 1)[1]


def _broadcast_shape(graph: Graph, node: Node) -> list[Shape]:
    shapes = [graph.tensor(i).shape for i in node.inputs if i]
    try:
        return [tuple(int(d) for d in np.broadcast_shapes(*shapes))]
    except ValueError:
        raise InvalidModelError(
            f"node {node.name!r} ({node.op}): shapes {shapes} do not broadcast"
        ) from None


def _same_shape(graph: Graph, node: Node) -> list[Shape]:
    return [_in(graph, node)]


def _zero(graph: Graph, node: Node) -> int:
    return 0


def _norm_axis(axis: int, rank: int, node: Node) -> int:
    if not -rank <= axis < rank:
        raise InvalidModelError(f"node {node.name!r}: axis {axis} out of range for rank {rank}")
    return axis % rank


def _mean_shape(graph: Graph, node: Node) -> list[Shape]:
    x = _in(graph, node)
    axes = {_norm_axis(a, len(x), node) for a in node.attrs["axes"]}
    keep = node.attrs.get("keepdims", True)
    return [tuple(1 if i in axes else d for i, d in enumerate(x) if keep or i not in axes)]


def _reshape_shape(graph: Graph, node: Node) -> list[Shape]:
    x = _in(graph, node)
    target = [int(d) for d in node.attrs["shape"]]
    total = int(np.prod(x, dtype=np.int64))
    if target.count(-1) == 1:
        known = int(np.prod([d for d in target if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise InvalidModelError(f"node {node.name!r}: cannot reshape {x} to {target}")
        target[target.index(-1)] = total // known
    if int(np.prod(target, dtype=np.int64)) != total:
        raise InvalidModelError(f"node {node.name!r}: cannot reshape {x} to {target}")
    return [tuple(target)]


def _transpose_shape(graph: Graph, node: Node) -> list[Shape]:
    x = _in(graph, node)
    perm = [int(p) for p in node.attrs["perm"]]
    if sorted(perm) != list(range(len(x))):
        raise InvalidModelError(f"node {node.name!r}: perm {perm} does not fit rank {len(x)}")
    return [tuple(x[p] for p in perm)]


def _concat_shape(graph: Graph, node: Node) -> list[Shape]:
    shapes = [graph.tensor(i).shape for i in node.inputs if i]
    axis = _norm_axis(int(node.attrs["axis"]), len(shapes[0]), node)
    for s in shapes[1:]:
        if len(s) != len(shapes[0]) or any(
            a != b for i, (a, b) in enumerate(zip(s, shapes[0], strict=True)) if i != axis
        ):
            raise InvalidModelError(f"node {node.name!r}: cannot concatenate {shapes} on {axis}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


def _pad_shape(graph: Graph, node: Node) -> list[Shape]:
    x = _in(graph, node)
    pads = node.attrs["pads"]
    if len(pads) != len(x):
        raise InvalidModelError(f"node {node.name!r}: {len(pads)} pad pairs for rank {len(x)}")
    return [tuple(d + int(b) + int(a) for d, (b, a) in zip(x, pads, strict=True))]


def _matmul_shape(graph: Graph, node: Node) -> list[Shape]:
    a, b = _in(graph, node), _in(graph, node, 1)
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        raise InvalidModelError(f"node {node.name!r}: cannot multiply {a} by {b}")
    try:
        batch = np.broadcast_shapes(a[:-2], b[:-2])
    except ValueError:
        raise InvalidModelError(f"node {node.name!r}: batch dims {a} and {b} differ") from None
    return [(*(int(d) for d in batch), a[-2], b[-1])]


def _matmul_macs(graph: Graph, node: Node) -> int:
    return _out_elems(graph, node) * _in(graph, node)[-1]


def _softmax_macs(graph: Graph, node: Node) -> int:
    return 0


_SPECS: list[OpSpec] = [
    OpSpec("CONV_2D", _conv_shape, _conv_macs),
    OpSpec("DEPTHWISE_CONV_2D", _depthwise_shape, _depthwise_macs),
    OpSpec("FULLY_CONNECTED", _fc_shape, _fc_macs),
    OpSpec("BATCH_MATMUL", _matmul_shape, _matmul_macs),
    OpSpec("AVERAGE_POOL_2D", _pool_shape, _zero),
    OpSpec("MAX_POOL_2D", _pool_shape, _zero),
    OpSpec("MEAN", _mean_shape, _zero),
    OpSpec("RESHAPE", _reshape_shape, _zero),
    OpSpec("TRANSPOSE", _transpose_shape, _zero),
    OpSpec("CONCATENATION", _concat_shape, _zero),
    OpSpec("PAD", _pad_shape, _zero),
    OpSpec("SOFTMAX", _same_shape, _softmax_macs),
    OpSpec("BATCH_NORM", _same_shape, _zero, elementwise=True),
    OpSpec("LAYER_NORM", _same_shape, _zero),
    OpSpec("QUANTIZE", _same_shape, _zero, elementwise=True),
    OpSpec("DEQUANTIZE", _same_shape, _zero, elementwise=True),
    *[
        OpSpec(name, _broadcast_shape, _zero, elementwise=True)
        for name in ("ADD", "SUB", "MUL", "DIV", "POW", "MAXIMUM", "MINIMUM")
    ],
    *[
        OpSpec(name, _same_shape, _zero, elementwise=True)
        for name in (
            "RELU",
            "RELU6",
            "RELU_N1_TO_1",
            "CLIP",
            "LEAKY_RELU",
            "LOGISTIC",
            "TANH",
            "HARD_SWISH",
            "SQRT",
            "RSQRT",
            "EXP",
            "ERF",
            "ABS",
            "NEG",
            "IDENTITY",
            "DROPOUT",
        )
    ],
]

OPS: dict[str, OpSpec] = {spec.name: spec for spec in _SPECS}


def register(spec: OpSpec) -> None:
    """Add an operator to the vocabulary (importers of other formats may extend it)."""
    OPS[spec.name] = spec


def spec_of(node: Node) -> OpSpec:
    try:
        return OPS[node.op]
    except KeyError:
        raise UnsupportedOperatorError(node.op, node.name) from None


def infer_shapes(graph: Graph, node: Node) -> list[Shape]:
    """Output shapes of ``node`` computed from its inputs and attributes."""
    return spec_of(node).infer(graph, node)


def node_macs(graph: Graph, node: Node) -> int:
    """Multiply-accumulates of one node (conv, depthwise, FC, matmul; 0 for the rest)."""
    return int(spec_of(node).macs(graph, node))


def check_node_shapes(graph: Graph, node: Node) -> None:
    """Raise InvalidModelError when a node's declared output shapes contradict its inputs."""
    activation = node.attrs.get("activation", "NONE")
    if activation not in ACTIVATIONS:
        raise UnsupportedOperatorError(f"{node.op} with fused {activation}", node.name)
    expected = infer_shapes(graph, node)
    for out, shape in zip(node.outputs, expected, strict=False):
        declared = graph.tensor(out).shape
        if out and tuple(declared) != tuple(shape):
            raise InvalidModelError(
                f"node {node.name!r} ({node.op}) declares output {out!r} with shape "
                f"{declared}, but its inputs give {shape}"
            )


# Operators that slide a window over H and W; everything else maps pixel to pixel or is
# not spatial (FULLY_CONNECTED, MEAN and RESHAPE end a spatial stage).
WINDOW_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D")


@dataclass(frozen=True)
class ReceptiveField:
    """Input window one output pixel sees after a chain of layers, per axis (H, W).

    ``size`` is the window, ``jump`` the input distance between adjacent output pixels
    (the product of strides) and ``start`` the input offset of output pixel 0 (negative
    where padding is read). Patch-based execution sizes its tiles and halos from these.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]


def receptive_field(graph: Graph, chain: list[Node]) -> ReceptiveField:
    """Receptive field of the last node's output on the first node's input."""
    size, jump, start = [1, 1], [1, 1], [0, 0]
    for node in chain:
        if node.op not in WINDOW_OPS:
            if not spec_of(node).elementwise and node.op not in ("PAD",):
                raise InvalidModelError(
                    f"node {node.name!r} ({node.op}) does not map pixels to pixels"
                )
            if node.op == "PAD":
                ha, wa = spatial_axes(graph.layout)
                pads = node.attrs["pads"]
                for i, axis in enumerate((ha, wa)):
                    start[i] -= int(pads[axis][0]) * jump[i]
            continue
        kernel = kernel_hw(graph, node)
        strides = node.attrs.get("strides", (1, 1))
        dilations = node.attrs.get("dilations", (1, 1))
        pads = node.attrs.get("pads", (0, 0, 0, 0))
        for i in range(2):
            start[i] -= int(pads[i]) * jump[i]
            size[i] += (dilations[i] * (kernel[i] - 1)) * jump[i]
            jump[i] *= int(strides[i])
    return ReceptiveField((size[0], size[1]), (jump[0], jump[1]), (start[0], start[1]))
