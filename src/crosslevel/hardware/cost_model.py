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
"crosslevel.calibration/1"``) that carries the error it measured. Every prediction says
which of the two it is in its label.
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


def node_costs(graph: Graph) -> list[NodeCost]:
    """Device-independent cost features of every node, in execution order."""
    fused = _fused_nodes(graph)
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
            )
        )
    return costs


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
# (depth/64)**a * (channels/64)**b * (spatial/256)**c with the key's ``shape_exponents``.
SHAPE_REF = (64.0, 64.0, 256.0)
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

    def eff(self, key: str) -> float:
        """Efficiency of a ``class/dtype`` key (the dtype's ``other`` when unknown)."""
        if key in self.efficiency:
            return self.efficiency[key]
        return self.efficiency.get(f"other/{key.partition('/')[2]}", 0.01)

    def shaped_eff(self, key: str, depth: float, channels: float, spatial: float) -> float:
        """Efficiency of a node of ``key`` with this shape (``eff`` without exponents)."""
        a, b, c = self.shape_exponents.get(key, (0.0, 0.0, 0.0))
        if not (a or b or c):
            return self.eff(key)
        r_d, r_c, r_s = SHAPE_REF
        log_eff = math.log(self.eff(key)) + a * math.log(depth / r_d)
        log_eff += b * math.log(channels / r_c) + c * math.log(spatial / r_s)
        return float(np.clip(math.exp(log_eff), *EFF_LIMITS))

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
                    str(k): _three_floats(v)
                    for k, v in dict(f.get("shape_exponents", {})).items()
                },
                node_scale=float(f.get("node_scale", 1.0)),
                overhead_s=float(f.get("overhead_s", 0.0)),
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
        values += [factors.mem_efficiency, factors.node_scale]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise UsageError(f"{where}: calibration factors must be finite and positive")
        exponents = [x for v in factors.shape_exponents.values() for x in v]
        if not all(math.isfinite(x) for x in [*exponents, factors.overhead_s]):
            raise UsageError(f"{where}: calibration shape exponents must be finite")
        if factors.overhead_s < 0:
            raise UsageError(f"{where}: calibration overhead must not be negative")
        return cal


def _three_floats(value: Any) -> list[float]:
    """A shape-exponent triple from JSON (TypeError/ValueError when it is not one)."""
    items = [float(x) for x in list(value)]
    if len(items) != 3:
        raise ValueError(f"shape exponents need 3 numbers, got {len(items)}")
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
    busy = max(compute, memory)
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
            shape=np.array([[c.depth, c.channels, c.spatial] for c in live],
                           dtype=np.float64).reshape(-1, 3),
        )


def predict_nodes_s(feat: GraphFeatures, device: Device, factors: CostFactors) -> np.ndarray:
    """Seconds of each live node of a graph (``node_scale`` applied, no overhead)."""
    eff = np.array([factors.eff(k) for k in feat.keys], dtype=np.float64)
    exps = np.array([factors.shape_exponents.get(k, (0.0, 0.0, 0.0)) for k in feat.keys],
                    dtype=np.float64).reshape(-1, 3)  # fmt: skip
    if np.any(exps):
        log_ratio = np.log(feat.shape / np.asarray(SHAPE_REF))
        eff = np.clip(eff * np.exp(np.sum(exps * log_ratio, axis=1)), *EFF_LIMITS)
    compute = feat.work / (feat.peak * eff)
    memory = feat.bytes / (device.memory_bandwidth_bytes_per_s * factors.mem_efficiency)
    dispatch = np.array([factors.dispatch(k.partition("/")[0]) for k in feat.keys])
    return factors.node_scale * (np.maximum(compute, memory) + dispatch)


def predict_features_s(feat: GraphFeatures, device: Device, factors: CostFactors) -> float:
    """Total seconds of a graph from its features: the same formula as ``predict_latency``."""
    return float(np.sum(predict_nodes_s(feat, device, factors))) + factors.overhead_s
