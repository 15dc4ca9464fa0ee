"""Minimal post-training int8 quantization of a float NHWC graph, with TFLite semantics.

What the result looks like is what TensorFlow Lite Micro's int8 kernels expect and what
the MLPerf Tiny int8 models contain:

* activations (graph input and output included) are int8, per-tensor asymmetric, with
  ranges from min-max calibration widened to include 0 (so zero padding is exact);
* CONV_2D / FULLY_CONNECTED weights are int8 per-channel symmetric on axis 0,
  DEPTHWISE_CONV_2D weights on axis 3, zero points 0, values in [-127, 127];
* biases are int32 with scale ``s_in * s_w[c]`` and zero point 0;
* fused activations stay fused: calibration sees the activated output, so its range
  already reflects the clamp;
* SOFTMAX and LOGISTIC outputs are fixed at scale 1/256, zero point -128, TANH at 1/128, 0;
* operators that only move, select or clamp values (pooling, RESHAPE, TRANSPOSE, PAD,
  CONCATENATION, RELU6) do not rescale in TFLM, so their inputs and output share one
  quantization (one union-find group whose range covers all members);
* ADD/SUB/MUL, MEAN, RELU, LEAKY_RELU and HARD_SWISH rescale and get their own output
  ranges.

Calibration runs the float graph in the NumPy reference executor
(``runtime.reference``), which yields every intermediate tensor at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError, UsageError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor, unique_name
from crosslevel.runtime.reference import run_reference

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights use [-127, 127], as TFLite's converter does
INT32_LIMIT = 2**31 - 1
METHODS = ("minmax",)
# Smallest real range an activation gets. TFLM quantizes a fused RELU6's 6.0 into int32
# with the output scale (it refuses scales below ~2.8e-9), and a range under 1e-5 carries
# no signal worth 8 bits: vanishing activations (deep untrained nets) are then exact 0s.
MIN_RANGE = 1e-5

WEIGHTED_OPS = {"CONV_2D": 0, "FULLY_CONNECTED": 0, "DEPTHWISE_CONV_2D": 3}  # channel axis
# TFLM's kernels for these copy or compare int8 values without rescaling (RELU6 clamps
# to the input's quantized 0 and 6), so input and output must share one quantization.
SHARED_OPS = (
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "RESHAPE", "TRANSPOSE", "PAD", "CONCATENATION", "RELU6",
)  # fmt: skip
RESCALING_OPS = ("ADD", "SUB", "MUL", "MEAN", "RELU", "LEAKY_RELU", "HARD_SWISH")
FIXED_OUTPUT: dict[str, tuple[float, int]] = {
    "SOFTMAX": (1.0 / 256.0, -128),
    "LOGISTIC": (1.0 / 256.0, -128),
    "TANH": (1.0 / 128.0, 0),
}
INT8_OPS = frozenset([*WEIGHTED_OPS, *SHARED_OPS, *RESCALING_OPS, *FIXED_OUTPUT])

CalibrationSample = np.ndarray | Mapping[str, np.ndarray]


@dataclass
class ActivationRange:
    """The real range [lo, hi] an activation took during calibration (0 always inside)."""

    lo: float = 0.0
    hi: float = 0.0

    def add(self, values: np.ndarray) -> None:
        if values.size:
            self.lo = min(self.lo, float(np.min(values)))
            self.hi = max(self.hi, float(np.max(values)))

    def merge(self, other: ActivationRange) -> None:
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)


# --------------------------------------------------------------------------- public API


def quantize_int8(
    graph: Graph,
    calibration_inputs: Sequence[CalibrationSample],
    method: str = "minmax",
) -> Graph:
    """Quantize a float NHWC graph to int8 with TFLite semantics (see the module docstring).

    ``calibration_inputs``: one entry per sample, each an array for a single-input graph
    (a leading batch of samples is split when the graph's batch is 1) or a mapping from
    input name to array. Raises UnsupportedOperatorError naming the first node whose
    operator has no int8 form here (LAYER_NORM, BATCH_MATMUL...).
    """
    if method not in METHODS:
        raise UsageError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    _check_quantizable(graph)
    graph = with_explicit_biases(graph)
    samples = _samples(graph, calibration_inputs)
    ranges = calibrate_ranges(graph, samples)
    return _Quantizer(graph, ranges, len(samples), method).run()


def with_explicit_biases(graph: Graph) -> Graph:
    """A copy where every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED has a bias.

    TFLite's own kernels (LiteRT) refuse a conv without one ("has_bias was not true");
    TFLM accepts it. Low-rank factorization leaves the first layer of each pair without
    a bias, so a zero one is added: the arithmetic is unchanged, it costs 4 bytes per
    channel of flash.
    """
    if all(len(n.inputs) > 2 and n.inputs[2] for n in graph.nodes if n.op in WEIGHTED_OPS):
        return graph
    result = graph.copy()
    for node in result.nodes:
        if node.op not in WEIGHTED_OPS or (len(node.inputs) > 2 and node.inputs[2]):
            continue
        channels = result.tensor(node.inputs[1]).shape[WEIGHTED_OPS[node.op]]
        name = unique_name(result.tensors, f"{node.name}_zero_bias")
        zeros = np.zeros(channels, np.float32)
        result.tensors[name] = Tensor(name, (channels,), "float32", data=zeros)
        node.inputs = [*node.inputs[:2], name, *node.inputs[3:]]
    result.validate()
    return result


def quantize_input(x: np.ndarray, tensor: Tensor) -> np.ndarray:
    """Float data to the int8 values of ``tensor`` (a quantized graph input)."""
    scale, zp = _broadcast_quant(tensor, np.ndim(x))
    q = _round_half_away(np.asarray(x, dtype=np.float64) / scale) + zp
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize_output(q: np.ndarray, tensor: Tensor) -> np.ndarray:
    """int8 values of ``tensor`` (a quantized graph output) back to float32."""
    scale, zp = _broadcast_quant(tensor, np.ndim(q))
    return ((np.asarray(q, dtype=np.float64) - zp) * scale).astype(np.float32)


def calibrate_ranges(
    graph: Graph, samples: Sequence[dict[str, np.ndarray]]
) -> dict[str, ActivationRange]:
    """Min-max range of every activation over the samples, each widened to include 0."""
    ranges = {t.name: ActivationRange() for t in graph.activations()}
    for sample in samples:
        values = run_reference(graph, sample, keep_intermediates=True)
        for name, value in values.items():
            if not np.all(np.isfinite(value)):
                raise InvalidModelError(
                    f"calibration produced non-finite values in tensor {name!r}: the float "
                    "model overflows on these inputs"
                )
            ranges[name].add(value)
    return ranges


# --------------------------------------------------------------------------- checks


def _check_quantizable(graph: Graph) -> None:
    if graph.layout != "NHWC":
        raise InvalidModelError(
            f"graph {graph.name!r} is {graph.layout}; int8 TFLite graphs are NHWC "
            "(convert with crosslevel.graph.layout.to_nhwc first)"
        )
    graph.validate()
    for name in graph.inputs:
        if graph.tensor(name).dtype != "float32":
            raise InvalidModelError(f"graph input {name!r} is not float32: already quantized?")
    for node in graph.nodes:
        if node.op not in INT8_OPS:
            raise UnsupportedOperatorError(
                node.op, node.name, "crosslevel has no int8 (TFLite Micro) form for it"
            )
        if node.op in WEIGHTED_OPS and not graph.tensor(node.inputs[1]).is_constant:
            raise UnsupportedOperatorError(
                node.op, node.name, "int8 needs constant weights, this node multiplies activations"
            )
        for name in node.inputs:
            if name and graph.tensor(name).dtype != "float32":
                raise InvalidModelError(
                    f"node {node.name!r} reads {graph.tensor(name).dtype} tensor {name!r}; "
                    "only float32 graphs are quantized"
                )


def _samples(
    graph: Graph, calibration_inputs: Sequence[CalibrationSample]
) -> list[dict[str, np.ndarray]]:
    """Calibration inputs as one feed dict per sample (batches split along axis 0)."""
    samples: list[dict[str, np.ndarray]] = []
    for item in calibration_inputs:
        if isinstance(item, Mapping):
            samples.append({str(k): _float_array(v) for k, v in item.items()})
            continue
        if len(graph.inputs) != 1:
            raise UsageError(
                f"graph {graph.name!r} has {len(graph.inputs)} inputs: give each calibration "
                "sample as a mapping from input name to array"
            )
        name = graph.inputs[0]
        shape = graph.tensor(name).shape
        array = _float_array(item)
        if tuple(array.shape) == shape:
            samples.append({name: array})
        elif shape and shape[0] == 1 and tuple(array.shape[1:]) == shape[1:]:
            samples.extend({name: array[k : k + 1]} for k in range(array.shape[0]))
        else:
            raise UsageError(
                f"calibration array of shape {tuple(array.shape)} does not fit input "
                f"{name!r} of shape {shape}"
            )
    if not samples:
        raise UsageError("quantization needs at least one calibration sample")
    return samples


def _float_array(value: object) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"calibration data is not numeric: {exc}") from None


# --------------------------------------------------------------------------- arithmetic


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero, like TFLite's std::round (NumPy rounds half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _broadcast_quant(tensor: Tensor, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    if tensor.quant is None:
        raise InvalidModelError(f"tensor {tensor.name!r} is not quantized")
    scale = tensor.quant.scale.astype(np.float64)
    zp = tensor.quant.zero_point.astype(np.float64)
    if tensor.quant.axis is not None and scale.size > 1:
        shape = [1] * ndim
        shape[tensor.quant.axis] = -1
        return scale.reshape(shape), zp.reshape(shape)
    return scale.reshape(()), zp.reshape(())


def activation_params(lo: float, hi: float) -> QuantParams:
    """Per-tensor asymmetric int8 parameters for the real range [lo, hi] (0 included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < MIN_RANGE:  # widen on the side the values are on (up when all are 0)
        if -lo > hi:
            lo = hi - MIN_RANGE
        else:
            hi = lo + MIN_RANGE
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(_round_half_away(np.array(INT8_MIN - lo / scale)), INT8_MIN, INT8_MAX))
    return QuantParams(np.array([scale], np.float32), np.array([zero_point]))


def symmetric_weights(
    w: np.ndarray, axis: int, min_scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8 weights on ``axis``: (int8 values, float32 scales).

    ``min_scale`` raises scales where the bias would otherwise overflow int32.
    """
    moved = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    max_abs = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(max_abs > 0, max_abs / WEIGHT_MAX, 1.0)
    if min_scale is not None:
        scale = np.maximum(scale, min_scale)
    scale = scale.astype(np.float32)  # the file stores float32: quantize with that value
    shape = [1] * moved.ndim
    shape[0] = -1
    q = _round_half_away(moved / scale.astype(np.float64).reshape(shape))
    q = np.clip(q, -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return np.ascontiguousarray(np.moveaxis(q, 0, axis)), scale


def quantize_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int32 bias for the per-channel bias scale ``s_in * s_w``."""
    q = _round_half_away(np.asarray(b, dtype=np.float64) / scale.astype(np.float64))
    return np.clip(q, -INT32_LIMIT, INT32_LIMIT).astype(np.int32)


# --------------------------------------------------------------------------- the pass


class _Groups:
    """Union-find over activation names: members must share one quantization."""

    def __init__(self, names: list[str]) -> None:
        self.parent = {n: n for n in names}

    def find(self, name: str) -> str:
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


class _Quantizer:
    def __init__(self, graph: Graph, ranges: dict[str, ActivationRange], samples: int, method: str):
        self.src = graph
        self.ranges = ranges
        self.samples = samples
        self.method = method
        self.params: dict[str, QuantParams] = {}
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.uses = {name: len(users) for name, users in graph.consumers().items()}

    def run(self) -> Graph:
        self._activation_params()
        for name in self.src.inputs:
            self._add_activation(name)
        for node in self.src.nodes:
            self._quantize_node(node)
        metadata = dict(self.src.metadata)
        metadata["quantization"] = {
            "method": self.method,
            "calibration_samples": self.samples,
            "activations": "int8 per-tensor asymmetric",
            "weights": "int8 per-channel symmetric",
        }
        result = Graph(
            name=self.src.name,
            tensors=self.tensors,
            nodes=self.nodes,
            inputs=list(self.src.inputs),
            outputs=list(self.src.outputs),
            layout="NHWC",
            metadata=metadata,
        )
        result.validate()
        return result

    # ----- activation parameters -------------------------------------------------------
    def _activation_params(self) -> None:
        names = [t.name for t in self.src.activations()]
        groups = _Groups(names)
        for node in self.src.nodes:
            if node.op in SHARED_OPS:
                members = [i for i in node.inputs if i and not self.src.tensor(i).is_constant]
                for name in [*members, node.outputs[0]]:
                    groups.union(node.outputs[0], name)
        merged: dict[str, ActivationRange] = {}
        for name in names:
            merged.setdefault(groups.find(name), ActivationRange()).merge(self.ranges[name])
        for node in self.src.nodes:  # constants moved by shared ops join their group range
            if node.op not in SHARED_OPS:
                continue
            group = merged[groups.find(node.outputs[0])]
            for name in node.inputs:
                data = self.src.tensor(name).data if name else None
                if data is not None:
                    group.add(np.asarray(data))
            if node.op == "PAD":  # the padding value is written into the output too
                group.add(np.array([float(node.attrs.get("value", 0.0))]))
        fixed = self._fixed_params(groups)
        for name in names:
            root = groups.find(name)
            if root in fixed:
                self.params[name] = fixed[root][1]
            else:
                self.params[name] = activation_params(merged[root].lo, merged[root].hi)

    def _fixed_params(self, groups: _Groups) -> dict[str, tuple[str, QuantParams]]:
        fixed: dict[str, tuple[str, QuantParams]] = {}
        for node in self.src.nodes:
            if node.op not in FIXED_OUTPUT:
                continue
            scale, zp = FIXED_OUTPUT[node.op]
            params = QuantParams(np.array([scale], np.float32), np.array([zp]))
            root = groups.find(node.outputs[0])
            if root in fixed and not _same(fixed[root][1], params):
                raise UnsupportedOperatorError(
                    node.op, node.name,
                    f"its fixed int8 output range conflicts with that of {fixed[root][0]!r}, "
                    "whose values are moved into the same tensor without rescaling",
                )  # fmt: skip
            fixed[root] = (node.name, params)
        return fixed

    # ----- tensors ---------------------------------------------------------------------
    def _add_activation(self, name: str) -> str:
        old = self.src.tensor(name)
        self.tensors[name] = Tensor(name, old.shape, "int8", quant=self.params[name])
        return name

    def _add_constant(self, base: str, data: np.ndarray, dtype: str, quant: QuantParams) -> str:
        """A quantized constant; keeps the float name when only one node reads it."""
        name = base if self.uses.get(base, 0) <= 1 and base not in self.tensors else None
        if name is None:
            name = unique_name([*self.src.tensors, *self.tensors], f"{base}_q")
        self.tensors[name] = Tensor(name, data.shape, dtype, data=data, quant=quant)
        return name

    def _const_data(self, name: str) -> np.ndarray:
        data = self.src.tensor(name).data
        assert data is not None
        return np.asarray(data, dtype=np.float64)

    def _quantize_like(self, name: str, params: QuantParams) -> str:
        """A float constant read as an activation, quantized with ``params``."""
        tensor = Tensor(name, self.src.tensor(name).shape, "int8", quant=params)
        return self._add_constant(name, quantize_input(self._const_data(name), tensor), "int8",
                                  params)  # fmt: skip

    # ----- nodes -----------------------------------------------------------------------
    def _quantize_node(self, node: Node) -> None:
        out = node.outputs[0]
        if node.op in WEIGHTED_OPS:
            inputs = self._weighted_inputs(node)
        elif node.op in SHARED_OPS:
            inputs = [self._operand(i, self.params[out]) if i else "" for i in node.inputs]
        else:
            inputs = [self._operand(i, None) if i else "" for i in node.inputs]
        self._add_activation(out)
        self.nodes.append(Node(node.name, node.op, inputs, [out], dict(node.attrs)))

    def _operand(self, name: str, shared: QuantParams | None) -> str:
        """An activation operand, or a constant one quantized (shared or own range)."""
        tensor = self.src.tensor(name)
        if not tensor.is_constant:
            return name
        if shared is not None:
            return self._quantize_like(name, shared)
        values = self._const_data(name)
        params = activation_params(float(values.min()), float(values.max()))
        return self._quantize_like(name, params)

    def _weighted_inputs(self, node: Node) -> list[str]:
        x, w_name = node.inputs[0], node.inputs[1]
        b_name = node.inputs[2] if len(node.inputs) > 2 else ""
        axis = WEIGHTED_OPS[node.op]
        s_in = float(self.params[x].scale[0])
        w = self._const_data(w_name)
        bias = self._const_data(b_name).reshape(-1) if b_name else None
        min_scale = None
        if bias is not None:  # keep |b / (s_in * s_w)| inside int32
            min_scale = np.abs(bias) / (s_in * (INT32_LIMIT // 2))
        q_w, s_w = symmetric_weights(w, axis, min_scale)
        w_params = QuantParams(s_w, np.zeros(s_w.shape, np.int64), axis)
        inputs = [x, self._add_constant(w_name, q_w, "int8", w_params)]
        if bias is not None:
            if bias.size != s_w.size:
                raise InvalidModelError(
                    f"node {node.name!r}: bias has {bias.size} values for {s_w.size} channels"
                )
            b_scale = (np.float64(s_in) * s_w.astype(np.float64)).astype(np.float32)
            b_params = QuantParams(b_scale, np.zeros(b_scale.shape, np.int64), 0)
            q_b = quantize_bias(bias, b_scale).reshape(self.src.tensor(b_name).shape)
            inputs.append(self._add_constant(b_name, q_b, "int32", b_params))
        inputs.extend(node.inputs[3:])
        return inputs


def _same(a: QuantParams, b: QuantParams) -> bool:
    return np.array_equal(a.scale, b.scale) and np.array_equal(a.zero_point, b.zero_point)
