"""A roofline-style latency and energy predictor over the IR, calibrated where it can be.

For each node ``time = dispatch_s + max(work / (peak * eff[class/dtype]),
bytes / (bandwidth * mem_eff))`` where

* ``work`` is the node's MACs (``ir.ops.node_macs``) for convolutions, FC and matmul, and
  element operations for the rest (pool window reads, elements written or reduced);
* ``bytes`` = input activations + weights + outputs, from the graph's tensor sizes;
* ``eff`` is a per-operator-class, per-dtype fraction of the device's one-core peak, and
  ``mem_eff`` a fraction of its memory bandwidth (it may exceed 1 on a host whose caches
  hold the whole model: the catalogue bandwidth is DRAM's);
* ``dispatch_s`` is the fixed cost of running one operator (interpreter, kernel selection,
  thread-pool hand-off), per operator class because runtimes treat classes differently
  (ONNX Runtime folds a residual ADD into the convolution before it, a RESHAPE is a view);
  it dominates models that run in under ~100 us.

Activations and batch norms that directly follow a convolution / FC / add whose output
nobody else reads are *fused*: every runtime we target folds or fuses them (ONNX Runtime's
Conv+BN folding and FusedConv, the TFLite converter's fused activations), so they cost
nothing here and the node is reported with 0 ms.

Uncalibrated factors per device kind are order-of-magnitude defaults (see
``_DEFAULT_EFF``); the host's are fitted to ONNX Runtime measurements by
``hardware.calibrate`` and saved as a ``Calibration`` (``"format":
"crosslevel.calibration/2"``; /1 files still load) that carries the error it measured.
Every prediction says which of the two it is in its label.

Calibrated factors add terms the defaults leave at zero, because one efficiency per
class cannot tell a 1x1 conv at 39 GMAC/s from one at 20 GMAC/s on the same core:

* ``shape_exponents``: efficiency scales with the node's shape (``shape_terms``: reduction
  depth, output channels, output size, and how far depth is from width), capped at
  ``eff_cap`` (a little above the best kernel of the class seen in calibration);
* ``weight_cost``: weights beyond what the core's cache holds cost time per byte;
* ``activation_s``: a fused epilogue (``NodeCost.activation``) costs a fixed time plus
  time per output element (ReLU6 runs as an extra pass in ONNX Runtime, ReLU does not);
* ``node_scale`` and ``overhead_s``: ``total = node_scale * sum(nodes) + overhead_s``; the
  overhead (per-run work no operator shows) is in ``total_ms`` and ``overhead_ms`` but
  in no node's ``per_node_ms``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.errors import UsageError
from crosslevel.hardware.devices import Device
from crosslevel.ir.graph import Graph, Node
from crosslevel.ir.ops import kernel_hw, node_macs

CALIBRATION_FORMAT = "crosslevel.calibration/2"
# /1 files (no shape exponents, scale or overhead) still load: their defaults are neutral.
_READABLE_FORMATS = ("crosslevel.calibration/1", CALIBRATION_FORMAT)
DTYPES = ("int8", "float32")
OP_CLASSES = (
    "conv", "pointwise", "depthwise", "fc", "pool", "reduce", "elementwise",
    "softmax", "norm", "copy", "view", "other",
)  # fmt: skip

_MAC_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"}
_FUSABLE = {"RELU", "RELU6", "RELU_N1_TO_1", "CLIP", "LEAKY_RELU", "BATCH_NORM", "TANH",
            "LOGISTIC", "HARD_SWISH"}  # fmt: skip
_FUSE_INTO = _MAC_OPS | {"ADD"}
_VIEW_OPS = {"RESHAPE", "IDENTITY", "DROPOUT", "SQUEEZE", "EXPAND_DIMS", "FLATTEN"}
_COPY_OPS = {"TRANSPOSE", "CONCATENATION", "PAD", "SLICE", "STRIDED_SLICE", "GATHER"}
_CLASS_OF_OP = {
    "FULLY_CONNECTED": "fc", "BATCH_MATMUL": "fc", "DEPTHWISE_CONV_2D": "depthwise",
    "AVERAGE_POOL_2D": "pool", "MAX_POOL_2D": "pool", "MEAN": "reduce",
    "SOFTMAX": "softmax", "LAYER_NORM": "norm",
}  # fmt: skip


# ----------------------------------------------------------------------------- features
@dataclass(frozen=True)
class NodeCost:
    """What the cost model needs of one node, independent of the device."""

    name: str
    op: str
    op_class: str
    dtype: str  # "int8" | "float32": the arithmetic the node's kernel runs
    work: float  # MACs, or element operations for non-MAC operators
    bytes: float  # input activations + weights + outputs
    fused: bool  # folded into its producer by every runtime we target
    # Shape of the work, which decides how well a kernel uses the core (a 1x1 conv with
    # K=16 inputs per output runs far below peak, one with K=512 near it):
    depth: float = 1.0  # reduction depth: MACs (or work) per output element
    channels: float = 1.0  # output channels (the last dim of a 2-D output)
    spatial: float = 1.0  # output elements per channel
    weight_bytes: float = 0.0  # constant inputs (weights, biases): streamed in on every run
    activation: str = ""  # ops fused into this node, e.g. "RELU6" or "BATCH_NORM,RELU"

    @property
    def key(self) -> str:
        return f"{self.op_class}/{self.dtype}"


def _op_class(graph: Graph, node: Node) -> str:
    if node.op == "CONV_2D":
        groups = int(node.attrs.get("groups", 1))
        w = graph.tensor(node.inputs[1]).shape
        w_in = w[1] if graph.layout == "NCHW" else w[3]
        if groups > 1 and w_in == 1:
            return "depthwise"
        return "pointwise" if kernel_hw(graph, node) == (1, 1) else "conv"
    if node.op in _CLASS_OF_OP:
        return _CLASS_OF_OP[node.op]
    if node.op in _VIEW_OPS:
        return "view"
    if node.op in _COPY_OPS:
        return "copy"
    from crosslevel.ir.ops import OPS

    spec = OPS.get(node.op)
    return "elementwise" if spec is not None and spec.elementwise else "other"


def _node_dtype(graph: Graph, node: Node) -> str:
    """int8 when the node reads quantized activations (the kernel runs integer math)."""
    for name in node.inputs:
        if name and not graph.tensor(name).is_constant:
            return "int8" if graph.tensor(name).dtype in ("int8", "uint8", "int16") else "float32"
    return "float32"


def _work(graph: Graph, node: Node, op_class: str) -> float:
    if node.op in _MAC_OPS:
        return float(node_macs(graph, node))
    if op_class == "view" or not node.outputs or not node.outputs[0]:
        return 0.0
    out = graph.tensor(node.outputs[0]).num_elements
    if op_class == "pool":
        kh, kw = kernel_hw(graph, node)
        return float(out * kh * kw)
    if op_class == "reduce":
        return float(graph.tensor(node.inputs[0]).num_elements)
    return float(out)


def _bytes(graph: Graph, node: Node, op_class: str) -> float:
    if op_class == "view":  # a reshape moves no data in any runtime we target
        return 0.0
    names = dict.fromkeys([*(i for i in node.inputs if i), *(o for o in node.outputs if o)])
    return float(sum(graph.tensor(n).nbytes for n in names))


def _fused_nodes(graph: Graph) -> set[str]:
    """Names of nodes that runtimes fold into the operator producing their input."""
    producer = graph.producers()
    consumers = graph.consumers()
    outputs = set(graph.outputs)
    fused: set[str] = set()
    for node in graph.nodes:
        if node.op not in _FUSABLE or not node.inputs or not node.inputs[0]:
            continue
        src_name = node.inputs[0]
        src = producer.get(src_name)
        if src is None or src_name in outputs or len(consumers.get(src_name, [])) != 1:
            continue
        if node.op == "BATCH_NORM" and src.op not in _MAC_OPS - {"BATCH_MATMUL"}:
            continue
        if src.op in _FUSE_INTO or (src.name in fused and src.op == "BATCH_NORM"):
            fused.add(node.name)
    return fused


def _shape(graph: Graph, node: Node, work: float) -> tuple[float, float, float]:
    """``(depth, channels, spatial)`` of a node's output, layout-aware; 1s when unknown."""
    if not node.outputs or not node.outputs[0]:
        return 1.0, 1.0, 1.0
    shape = graph.tensor(node.outputs[0]).shape
    elements = float(max(1, math.prod(shape)))
    if len(shape) == 4:
        channels = float(shape[1] if graph.layout == "NCHW" else shape[3])
    else:
        channels = float(shape[-1]) if shape else 1.0
    channels = max(1.0, channels)
    return max(1.0, work / elements), channels, max(1.0, elements / channels)


def _fused_chains(graph: Graph, fused: set[str]) -> dict[str, str]:
    """Node -> the ops fused into it, in order, comma-joined (its activation epilogue).

    Runtimes run some epilogues inside the kernel (ReLU in MLAS's convolution) and others
    as an extra pass over the output (ReLU6 as Clip): calibrated factors price each.
    """
    producer = graph.producers()
    chains: dict[str, list[str]] = {}
    root: dict[str, str] = {}
    for node in graph.nodes:
        if node.name not in fused:
            continue
        src = producer[node.inputs[0]].name
        root[node.name] = root.get(src, src)
        chains.setdefault(root[node.name], []).append(node.op)
    # A convolution whose only reader is an ADD: runtimes fold the residual sum into its
    # epilogue (ONNX Runtime's NCHWc Conv "Sum" input), so it is priced as one.
    consumers = graph.consumers()
    for node in graph.nodes:
        if node.op in _MAC_OPS and node.name not in chains and node.outputs:
            readers = consumers.get(node.outputs[0], [])
            residual = len(readers) == 1 and readers[0].op == "ADD"
            if residual and node.outputs[0] not in graph.outputs:
                chains[node.name] = ["ADD"]
    return {name: ",".join(ops) for name, ops in chains.items()}


def node_costs(graph: Graph) -> list[NodeCost]:
    """Device-independent cost features of every node, in execution order."""
    fused = _fused_nodes(graph)
    chains = _fused_chains(graph, fused)
    costs = []
    for node in graph.nodes:
        op_class = _op_class(graph, node)
        work = _work(graph, node, op_class)
        depth, channels, spatial = _shape(graph, node, work)
        costs.append(
            NodeCost(
                name=node.name,
                op=node.op,
                op_class=op_class,
                dtype=_node_dtype(graph, node),
                work=work,
                bytes=_bytes(graph, node, op_class),
                fused=node.name in fused,
                depth=depth,
                channels=channels,
                spatial=spatial,
                weight_bytes=_weight_bytes(graph, node),
                activation=chains.get(node.name, ""),
            )
        )
    return costs


def _weight_bytes(graph: Graph, node: Node) -> float:
    return float(sum(graph.tensor(n).nbytes for n in dict.fromkeys(node.inputs)
                     if n and graph.tensor(n).is_constant))  # fmt: skip


# ----------------------------------------------------------------------------- factors
# Fractions of the one-core peak that a good runtime reaches, by device kind, for
# (int8, float32). MCU int8 assumes CMSIS-NN-class kernels: the CMSIS-NN paper (Lai et al.
# 2018, arXiv:1801.06601) runs its CIFAR-10 CNN at roughly a third of the SMLAD peak on a
# Cortex-M7; depthwise and element-wise kernels reach much less because they do few MACs
# per byte loaded. MCU float32 assumes TFLM's plain C reference kernels. Application
# processors assume XNNPACK/ORT-class kernels. These are *uncalibrated* starting points.
_DEFAULT_EFF: dict[str, dict[str, tuple[float, float]]] = {
    "mcu": {
        "conv": (0.3, 0.25), "pointwise": (0.35, 0.3), "depthwise": (0.12, 0.15),
        "fc": (0.3, 0.3), "pool": (0.1, 0.1), "reduce": (0.1, 0.1),
        "elementwise": (0.05, 0.08), "softmax": (0.01, 0.02), "norm": (0.02, 0.03),
        "copy": (0.2, 0.2), "view": (1.0, 1.0), "other": (0.02, 0.02),
    },
    "cpu": {
        "conv": (0.5, 0.6), "pointwise": (0.5, 0.7), "depthwise": (0.15, 0.2),
        "fc": (0.4, 0.5), "pool": (0.05, 0.05), "reduce": (0.05, 0.05),
        "elementwise": (0.02, 0.02), "softmax": (0.005, 0.005), "norm": (0.01, 0.01),
        "copy": (0.05, 0.05), "view": (1.0, 1.0), "other": (0.01, 0.01),
    },
    "gpu": {
        "conv": (0.3, 0.4), "pointwise": (0.3, 0.4), "depthwise": (0.05, 0.05),
        "fc": (0.2, 0.3), "pool": (0.02, 0.02), "reduce": (0.02, 0.02),
        "elementwise": (0.01, 0.01), "softmax": (0.002, 0.002), "norm": (0.005, 0.005),
        "copy": (0.02, 0.02), "view": (1.0, 1.0), "other": (0.005, 0.005),
    },
}  # fmt: skip
# Per-operator overhead in core cycles (TFLM's interpreter loop on MCUs, a framework's
# operator dispatch on CPUs, a CUDA kernel launch of ~10 us on the Jetson's GPU).
_DISPATCH_CYCLES = {"mcu": 2000.0, "cpu": 5000.0, "gpu": 9000.0}
_MEM_EFF = {"mcu": 0.8, "cpu": 0.5, "gpu": 0.6}


def _family(device: Device) -> str:
    if device.kind == "mcu":
        return "mcu"
    return "gpu" if device.kind == "edge" and "gpu" in device.cpu.lower() else "cpu"


# Reference shape of the shape terms: efficiency[key] is the efficiency of a node with
# depth 64, 64 output channels and 256 output elements per channel; elsewhere it scales by
# exp(shape_terms . exponents) with the key's ``shape_exponents`` (see ``shape_terms``).
SHAPE_REF = (64.0, 64.0, 256.0)
N_SHAPE_TERMS = 4
EFF_LIMITS = (1e-5, 20.0)  # efficiencies are clipped here (the power law must not run away)


@dataclass
class CostFactors:
    """The free parameters of the model: per class/dtype efficiency, memory, dispatch.

    ``shape_exponents`` (calibrated factors only) make a class's efficiency depend on the
    node's shape; ``node_scale`` and ``overhead_s`` map the summed node times onto a whole
    inference (``total = node_scale * sum(nodes) + overhead_s``): per-node times are fitted
    to a profiler's kernel times, which leave out the runtime's per-run work.
    """

    efficiency: dict[str, float]  # "conv/float32" -> fraction of the one-core peak
    mem_efficiency: float  # fraction of the catalogue's memory bandwidth
    dispatch_s: dict[str, float]  # op class -> seconds per operator
    shape_exponents: dict[str, list[float]] = field(default_factory=dict)  # key -> [a, b, c]
    node_scale: float = 1.0
    overhead_s: float = 0.0
    # key -> [seconds per byte, bytes free]: weights beyond what the core's own cache holds
    # come from a farther one on every run, at a cost added to the node's time.
    weight_cost: dict[str, list[float]] = field(default_factory=dict)
    # "key+activation" -> [seconds, seconds per output element] of a fused epilogue.
    activation_s: dict[str, list[float]] = field(default_factory=dict)
    # key -> the highest efficiency a shaped node may reach: the best its class achieved
    # in calibration, so a power law fitted on small layers cannot extrapolate a large
    # one past what the kernels were ever seen to do.
    eff_cap: dict[str, float] = field(default_factory=dict)

    def weight_s(self, key: str, weight_bytes: float) -> float:
        """Seconds of streaming a node's weights in (0 without a weight factor)."""
        per_byte, free_bytes = self.weight_cost.get(key, (0.0, 0.0))
        return per_byte * max(0.0, weight_bytes - free_bytes)

    def epilogue_s(self, key: str, activation: str, elements: float) -> float:
        """Seconds of a node's fused epilogue (0 without one or without a factor)."""
        if not activation:
            return 0.0
        fixed, per_element = self.activation_s.get(f"{key}+{activation}", (0.0, 0.0))
        return fixed + per_element * elements

    def eff(self, key: str) -> float:
        """Efficiency of a ``class/dtype`` key (the dtype's ``other`` when unknown)."""
        if key in self.efficiency:
            return self.efficiency[key]
        return self.efficiency.get(f"other/{key.partition('/')[2]}", 0.01)

    def shaped_eff(self, key: str, depth: float, channels: float, spatial: float) -> float:
        """Efficiency of a node of ``key`` with this shape (``eff`` without exponents)."""
        exps = self.shape_exponents.get(key)
        if not exps or not any(exps):
            return self.eff(key)
        terms = shape_terms(np.array([[depth, channels, spatial]]))[0]
        log_eff = math.log(self.eff(key)) + float(terms @ np.asarray(exps))
        return float(np.clip(math.exp(log_eff), EFF_LIMITS[0], self.cap(key)))

    def cap(self, key: str) -> float:
        """The highest efficiency a shaped node of ``key`` may reach."""
        return min(EFF_LIMITS[1], self.eff_cap.get(key, EFF_LIMITS[1]))

    def dispatch(self, op_class: str) -> float:
        """Seconds of fixed overhead per operator of ``op_class``."""
        return self.dispatch_s.get(op_class, self.dispatch_s.get("other", 0.0))


def default_factors(device: Device) -> CostFactors:
    """Uncalibrated factors for ``device`` from its kind (see ``_DEFAULT_EFF``)."""
    family = _family(device)
    eff = {
        f"{cls}/{dtype}": pair[i]
        for cls, pair in _DEFAULT_EFF[family].items()
        for i, dtype in enumerate(DTYPES)
    }
    cycles = _DISPATCH_CYCLES[family]
    dispatch = {cls: cycles / device.clock_hz for cls in OP_CLASSES}
    dispatch["view"] *= 0.2  # a reshape is a view: only the interpreter's loop remains
    return CostFactors(eff, _MEM_EFF[family], dispatch)


# ----------------------------------------------------------------------------- calibration
@dataclass
class Calibration:
    """Factors fitted to measurements on one device, with the error they were measured at.

    ``error`` holds the leave-one-out summary (``loo_within_10pct``: share of held-out
    models predicted within +-10 %, ``loo_median_ape_pct``, ``n_models``) and
    ``rows`` the per-model measured/predicted pairs behind it.
    """

    device: str
    factors: CostFactors
    fitted_keys: list[str]
    models: list[str]
    runtime: str
    error: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    created_utc: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": CALIBRATION_FORMAT, **data}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read and validate a calibration file; a bad one ends in one UsageError."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise UsageError(f"cannot read calibration file {path}: {exc}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, where: str = "calibration") -> Calibration:
        if not isinstance(doc, dict) or doc.get("format") not in _READABLE_FORMATS:
            raise UsageError(f'{where}: expected "format": "{CALIBRATION_FORMAT}"')
        try:
            f = doc["factors"]
            factors = CostFactors(
                efficiency={str(k): float(v) for k, v in dict(f["efficiency"]).items()},
                mem_efficiency=float(f["mem_efficiency"]),
                dispatch_s={str(k): float(v) for k, v in dict(f["dispatch_s"]).items()},
                shape_exponents={
                    str(k): _exponents(v) for k, v in dict(f.get("shape_exponents", {})).items()
                },
                node_scale=float(f.get("node_scale", 1.0)),
                overhead_s=float(f.get("overhead_s", 0.0)),
                weight_cost={
                    str(k): _floats(v, 2) for k, v in dict(f.get("weight_cost", {})).items()
                },
                activation_s={
                    str(k): _floats(v, 2) for k, v in dict(f.get("activation_s", {})).items()
                },
                eff_cap={str(k): float(v) for k, v in dict(f.get("eff_cap", {})).items()},
            )
            cal = cls(
                device=str(doc["device"]),
                factors=factors,
                fitted_keys=[str(k) for k in doc.get("fitted_keys", [])],
                models=[str(m) for m in doc.get("models", [])],
                runtime=str(doc.get("runtime", "")),
                error={str(k): float(v) for k, v in dict(doc.get("error", {})).items()},
                rows=list(doc.get("rows", [])),
                created_utc=str(doc.get("created_utc", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where}: malformed calibration ({exc!r})") from None
        values = [*factors.efficiency.values(), *factors.dispatch_s.values()]
        values += [factors.mem_efficiency, factors.node_scale, *factors.eff_cap.values()]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise UsageError(f"{where}: calibration factors must be finite and positive")
        exponents = [x for v in factors.shape_exponents.values() for x in v]
        if not all(math.isfinite(x) for x in [*exponents, factors.overhead_s]):
            raise UsageError(f"{where}: calibration shape exponents must be finite")
        extra = [factors.overhead_s, *(x for v in factors.weight_cost.values() for x in v)]
        extra += [x for v in factors.activation_s.values() for x in v]
        if not all(math.isfinite(v) and v >= 0 for v in extra):
            raise UsageError(f"{where}: calibration overhead and weight costs must be >= 0")
        return cal


def shape_terms(shape: np.ndarray) -> np.ndarray:
    """(n, 3) depth/channels/spatial -> (n, N_SHAPE_TERMS) regressors of log-efficiency.

    log(depth), log(channels), log(spatial) against ``SHAPE_REF``, and log(depth /
    channels) squared: a kernel whose reduction is much shorter or longer than its
    output is wide (a 1x1 expand or project layer) reuses its loads worse than a square one.
    """
    logs = np.log(np.asarray(shape, dtype=np.float64).reshape(-1, 3) / np.asarray(SHAPE_REF))
    ratio = logs[:, 0] - logs[:, 1]
    return np.column_stack([logs, ratio**2])


def _exponents(value: Any) -> list[float]:
    """Shape exponents from JSON; a /1-era triple gets a zero square term."""
    items = [float(x) for x in list(value)]
    if len(items) not in (3, N_SHAPE_TERMS):
        raise ValueError(f"expected {N_SHAPE_TERMS} shape exponents, got {len(items)}")
    return items + [0.0] * (N_SHAPE_TERMS - len(items))


def _floats(value: Any, n: int) -> list[float]:
    """``n`` numbers from a JSON list (TypeError/ValueError when it is not that)."""
    items = [float(x) for x in list(value)]
    if len(items) != n:
        raise ValueError(f"expected {n} numbers, got {len(items)}")
    return items


# ----------------------------------------------------------------------------- prediction
@dataclass
class Prediction:
    """A predicted latency (and energy) of one graph on one device; never a measurement."""

    device: str
    total_ms: float
    per_node_ms: dict[str, float]
    bound: dict[str, str]  # node -> "compute" | "memory" | "dispatch" | "fused"
    label: str
    energy_mj: float
    energy_note: str
    overhead_ms: float = 0.0  # per-inference runtime work in total_ms but in no node


def node_time_s(cost: NodeCost, device: Device, factors: CostFactors) -> tuple[float, str]:
    """Seconds of one node and what bounds it."""
    if cost.fused:
        return 0.0, "fused"
    eff = factors.shaped_eff(cost.key, cost.depth, cost.channels, cost.spatial)
    compute = cost.work / (device.peak_macs_per_s(cost.dtype) * eff)
    memory = cost.bytes / (device.memory_bandwidth_bytes_per_s * factors.mem_efficiency)
    busy = max(compute, memory) + factors.weight_s(cost.key, cost.weight_bytes)
    busy += factors.epilogue_s(cost.key, cost.activation, cost.channels * cost.spatial)
    dispatch = factors.dispatch(cost.op_class)
    if busy < dispatch:
        bound = "dispatch"
    else:
        bound = "compute" if compute >= memory else "memory"
    return factors.node_scale * (dispatch + busy), bound


def predict_latency(
    graph: Graph, device: Device, calibration: Calibration | None = None
) -> Prediction:
    """Predicted latency of ``graph`` on one core of ``device`` (and its energy).

    A calibration applies only to the device it was fitted on (UsageError otherwise): a
    host calibration says nothing about an MCU's kernels.
    """
    if calibration is not None and calibration.device != device.name:
        raise UsageError(
            f"calibration was fitted on {calibration.device!r}, not on {device.name!r}; "
            "predict other devices uncalibrated"
        )
    factors = calibration.factors if calibration is not None else default_factors(device)
    per_node: dict[str, float] = {}
    bound: dict[str, str] = {}
    for cost in node_costs(graph):
        seconds, why = node_time_s(cost, device, factors)
        per_node[cost.name] = seconds * 1e3
        bound[cost.name] = why
    overhead_ms = factors.overhead_s * 1e3
    total_ms = float(sum(per_node.values())) + overhead_ms
    label = (
        f"predicted (calibrated on {calibration.device})"
        if calibration is not None
        else "predicted (uncalibrated)"
    )
    note = (
        f"predicted: active power {device.active_power_w:g} W x latency; excludes idle time "
        "between inferences, sensors and radios"
    )
    if "active_power_w" in device.estimated:
        note += "; the active power itself is an estimate"
    return Prediction(
        device=device.name,
        total_ms=total_ms,
        per_node_ms=per_node,
        bound=bound,
        label=label,
        energy_mj=device.active_power_w * total_ms,  # W x ms = mJ
        energy_note=note,
        overhead_ms=overhead_ms,
    )


# ----------------------------------------------------------------------------- vectorized
@dataclass(frozen=True)
class GraphFeatures:
    """``node_costs`` of one graph as arrays (fused nodes dropped), for fast fitting."""

    name: str
    keys: tuple[str, ...]  # class/dtype key of each node (its class is the part before "/")
    work: np.ndarray
    bytes: np.ndarray
    peak: np.ndarray  # the device's peak MAC/s for each node's dtype
    nodes: tuple[str, ...] = ()  # IR node names, aligned with ``keys``
    shape: np.ndarray = field(default_factory=lambda: np.ones((0, 3)))  # depth, ch., spatial
    weight_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    activations: tuple[str, ...] = ()

    @classmethod
    def of(cls, graph: Graph, device: Device, name: str | None = None) -> GraphFeatures:
        live = [c for c in node_costs(graph) if not c.fused]
        return cls(
            name=name or graph.name,
            keys=tuple(c.key for c in live),
            work=np.array([c.work for c in live], dtype=np.float64),
            bytes=np.array([c.bytes for c in live], dtype=np.float64),
            peak=np.array([device.peak_macs_per_s(c.dtype) for c in live], dtype=np.float64),
            nodes=tuple(c.name for c in live),
            shape=np.array(
                [[c.depth, c.channels, c.spatial] for c in live], dtype=np.float64
            ).reshape(-1, 3),
            weight_bytes=np.array([c.weight_bytes for c in live], dtype=np.float64),
            activations=tuple(c.activation for c in live),
        )


def predict_nodes_s(feat: GraphFeatures, device: Device, factors: CostFactors) -> np.ndarray:
    """Seconds of each live node of a graph (``node_scale`` applied, no overhead)."""
    eff = np.array([factors.eff(k) for k in feat.keys], dtype=np.float64)
    zero = [0.0] * N_SHAPE_TERMS
    exps = np.array([factors.shape_exponents.get(k, zero) for k in feat.keys],
                    dtype=np.float64).reshape(-1, N_SHAPE_TERMS)  # fmt: skip
    if np.any(exps):
        caps = np.array([factors.cap(k) if any(e) else EFF_LIMITS[1] for k, e in
                         zip(feat.keys, exps, strict=True)])  # fmt: skip
        shaped = eff * np.exp(np.sum(exps * shape_terms(feat.shape), axis=1))
        eff = np.where(np.any(exps, axis=1), np.clip(shaped, EFF_LIMITS[0], caps), eff)
    compute = feat.work / (feat.peak * eff)
    memory = feat.bytes / (device.memory_bandwidth_bytes_per_s * factors.mem_efficiency)
    dispatch = np.array([factors.dispatch(k.partition("/")[0]) for k in feat.keys])
    busy = np.maximum(compute, memory)
    if factors.weight_cost and len(feat.weight_bytes) == len(feat.keys):
        busy = busy + np.array(
            [factors.weight_s(k, w) for k, w in zip(feat.keys, feat.weight_bytes, strict=True)]
        )
    return factors.node_scale * (busy + epilogues_s(feat, factors) + dispatch)


def epilogues_s(feat: GraphFeatures, factors: CostFactors) -> np.ndarray:
    """Seconds of each live node's fused epilogue (zeros without epilogue factors)."""
    if not factors.activation_s or len(feat.activations) != len(feat.keys):
        return np.zeros(len(feat.keys))
    elements = feat.shape[:, 1] * feat.shape[:, 2]
    return np.array([factors.epilogue_s(k, a, e) for k, a, e
                     in zip(feat.keys, feat.activations, elements, strict=True)])  # fmt: skip


def predict_features_s(feat: GraphFeatures, device: Device, factors: CostFactors) -> float:
    """Total seconds of a graph from its features: the same formula as ``predict_latency``."""
    return float(np.sum(predict_nodes_s(feat, device, factors))) + factors.overhead_s
