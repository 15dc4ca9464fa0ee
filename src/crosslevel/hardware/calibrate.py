"""Calibrate the cost model on this machine: measure with ONNX Runtime, fit, report error.

The host is the one device we can measure. We run zoo models and their width/resolution
variants through ONNX Runtime on one thread (float32, as exported from PyTorch) and fit
the cost model in two stages:

1. Per node. ORT's own profiler gives every kernel's time, so each model yields dozens
   of data points. Kernels are mapped back to IR nodes (``NodeMapper``) and each
   operator class gets a dispatch cost, an efficiency that depends on the layer's shape
   (a power law in reduction depth, output channels and output size, plus a penalty for
   depth far from width), a cost for weights beyond what the core's cache holds, and a
   cost per fused epilogue (ReLU6 runs as an extra pass over the output; ReLU does not).
   Why: one efficiency per class cannot tell a 1x1 conv at 39 GMAC/s (MobileNetV1) from
   one at 20 GMAC/s (a MobileNetV2 expand layer), and whole-model times alone cannot
   separate a dozen shape parameters.
2. Whole model. The profiler adds its own few microseconds to every kernel, and a run
   does work no kernel shows, so ``total = scale * sum(nodes - profiler) + overhead`` is
   fitted to unprofiled whole-model times (three numbers).

How good the fit is we report by leave-one-out: for each variant, fit both stages on
all the others (none of the held-out variant's timings, per node or whole) and predict
it. The share of held-out variants within +-10 % and their median absolute percentage
error go into the saved ``Calibration`` beside the factors, so every prediction made
with it can say how far it is to be trusted.

Timing is noisy on a shared machine, so variants are measured in interleaved rounds.
Each keeps its fastest run (``statistic="min"``, the default) and the median of its
quietest round (``statistic="median"``); per-node kernel times are minimums over runs.
Load from other processes only ever adds time, so the minimum is the figure that
repeats from one calibration to the next.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from crosslevel.hardware.cost_model import (
    EFF_LIMITS,
    N_SHAPE_TERMS,
    SHAPE_REF,
    Calibration,
    CostFactors,
    GraphFeatures,
    default_factors,
    epilogues_s,
    node_costs,
    predict_features_s,
    predict_nodes_s,
    shape_terms,
)
from crosslevel.hardware.devices import Device, get_device
from crosslevel.ir.graph import Graph

# Bounds of the fitted factors: efficiencies may exceed 1 where our peak is conservative
# (e.g. Winograd convolutions), and the memory term may beat DRAM when caches hold the model.
_EFF_BOUNDS = (1e-5, 20.0)
_MEM_BOUNDS = (1e-3, 100.0)
_DISPATCH_BOUNDS = (1e-8, 1e-2)
PRIOR_WEIGHT = 0.1  # pulls factors the data cannot see back to their defaults
STATISTICS = ("median", "min")


# ----------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class ModelSpec:
    """One zoo model variant: ``zoo.build(name, **kwargs)``."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.kwargs:
            return self.name
        args = ",".join(f"{k}={_fmt(v)}" for k, v in self.kwargs)
        return f"{self.name}({args})"

    def build(self) -> tuple[Any, tuple[int, ...]]:
        """The torch module (eval mode) and its input shape with the batch dimension."""
        from crosslevel.model import zoo

        kwargs = dict(self.kwargs)
        module = zoo.build(self.name, **kwargs).eval()
        return module, (1, *zoo.ZOO[self.name].input_shape_for(**kwargs))


def _fmt(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "/".join(str(v) for v in value)
    return str(value)


def _spec(name: str, **kwargs: Any) -> ModelSpec:
    return ModelSpec(name, tuple(sorted(kwargs.items())))


def default_models() -> list[ModelSpec]:
    """The default calibration set: zoo models across widths and resolutions (~30)."""
    specs = [
        _spec("mobilenet_v2", width_mult=w, resolution=r)
        for w in (0.35, 0.5, 0.75, 1.0)
        for r in (64, 96, 128)
    ]
    specs += [_spec("mobilenet_v1_025", alpha=a, resolution=r) for a in (0.25, 0.5)
              for r in (64, 96, 128)]  # fmt: skip
    specs += [_spec("mcunet_v2", width_mult=w, resolution=r) for w in (0.5, 1.0) for r in (64, 96)]
    specs += [_spec("ds_cnn", filters=f) for f in (32, 64, 128)]
    specs += [_spec("resnet8", filters=f) for f in ((8, 16, 32), (16, 32, 64), (32, 64, 128))]
    specs += [_spec("digits_cnn", width=w) for w in (8, 16, 32)]
    specs += [_spec("fc_autoencoder", hidden=h) for h in (64, 128, 256)]
    return specs


def quick_models() -> list[ModelSpec]:
    """Four tiny variants for tests (a few seconds in all)."""
    return [
        _spec("digits_cnn", width=8),
        _spec("digits_cnn", width=16),
        _spec("ds_cnn", filters=32),
        _spec("mnist1d_cnn", width=32),
    ]


# ----------------------------------------------------------------------------- measuring
@dataclass
class Measurement:
    """One variant measured on the host: its features and its timing."""

    label: str
    features: GraphFeatures
    measured_ms: float  # median of the quietest round
    runs: int  # timed runs in each round
    round_medians_ms: list[float] = field(default_factory=list)
    min_ms: float = math.nan  # fastest single run over all rounds
    node_ms: dict[str, float] = field(default_factory=dict)  # IR node -> profiled kernel ms


def compile_spec(
    spec: ModelSpec, cache_dir: Path | None = None
) -> tuple[Graph, bytes, tuple[int, ...]]:
    """The IR and ONNX bytes of one variant, through the project's shared torch path.

    One export serves both: ``import_torch`` is exactly ``import_onnx`` of these bytes,
    and exporting twice would double the calibration's slowest step.
    """
    from crosslevel.ir.onnx import import_onnx
    from crosslevel.ir.torch_io import cached_torch_onnx

    module, shape = spec.build()
    onnx_bytes = cached_torch_onnx(module, shape, cache_dir)
    graph = import_onnx(onnx_bytes)
    graph.name = spec.label
    return graph, onnx_bytes, shape


def _time_round(onnx_bytes: bytes, shape: tuple[int, ...], runs: int) -> tuple[float, float]:
    """Median and minimum ms of ``runs`` single-threaded ONNX Runtime runs (3 warm-ups)."""
    from crosslevel.runtime.ort import time_onnx

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    stats = time_onnx(onnx_bytes, [x], repeats=runs, warmup=3, threads=1)
    return stats.median_ms, stats.min_ms


def _runs_for(first_ms: float, budget_s: float) -> int:
    """Runs per round so one round takes about ``budget_s`` (between 5 and 400)."""
    return int(min(400, max(5, budget_s / max(first_ms, 1e-3) * 1e3)))


# ----------------------------------------------------------------------------- profiling
_MAC_IR_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"}
_MAC_ORT_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
_PROFILE_WARMUP = 3  # profiled runs left out (first-run allocation, cold caches)


class NodeMapper:
    """Maps ONNX Runtime's profiled kernels back to the IR node whose cost they are.

    ORT names a kernel after its node, and nodes it rewrote (NCHWc convolutions, fused
    Conv+Relu/Clip/Add) after the output they produce, with a ``_nchwc`` suffix. A name
    that is an IR node or tensor leads to that node; a kernel for a node our model calls
    fused is charged to the node it is fused into; a convolution ORT fused with the
    residual ADD after it is charged to that convolution. Kernels with no IR counterpart
    (layout reorders) are left out: the whole-model overhead covers them.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes = {n.name: n for n in graph.nodes}
        self.order = {n.name: i for i, n in enumerate(graph.nodes)}
        self.producer = {t: n.name for n in graph.nodes for t in n.outputs if t}
        self.fused = {c.name for c in node_costs(graph) if c.fused}

    def _root(self, name: str) -> str:
        while name in self.fused:
            source = self.producer.get(self.nodes[name].inputs[0])
            if source is None:
                break
            name = source
        return name

    def ir_node(self, kernel_name: str, ort_op: str) -> str | None:
        """The IR node a profiled kernel belongs to, or None."""
        base = kernel_name.removesuffix("_kernel_time").removesuffix("_nchwc")
        name = base if base in self.nodes else self.producer.get(base)
        if name is None:
            return None
        name = self._root(name)
        if ort_op in _MAC_ORT_OPS and self.nodes[name].op not in _MAC_IR_OPS:
            sources = [self._root(self.producer[t]) for t in self.nodes[name].inputs
                       if t in self.producer]  # fmt: skip
            macs = [n for n in sources if self.nodes[n].op in _MAC_IR_OPS]
            name = max(macs, key=self.order.__getitem__) if macs else name
        return name


def profile_nodes(
    onnx_bytes: bytes, graph: Graph, shape: tuple[int, ...], runs: int
) -> dict[str, float]:
    """Per IR node, the minimum over ``runs`` of its ONNX Runtime kernel time (ms).

    Uses ORT's own profiler (one thread, like the whole-model timing); its trace is
    written to a temporary folder and removed.
    """
    import onnxruntime as ort

    from crosslevel.runtime.ort import session_options

    mapper = NodeMapper(graph)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="crosslevel-prof-") as tmp:
        options = session_options(1)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(_PROFILE_WARMUP + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return _node_minimums(events, mapper, runs)


def _node_minimums(events: list[dict[str, Any]], mapper: NodeMapper, runs: int) -> dict[str, float]:
    """Sum each run's kernel times per IR node, then the minimum over runs (ms).

    The minimum, because load from other processes only ever adds time: on a shared
    machine a node's median moves by tens of percent from one session to the next.
    """
    per_node: dict[str, list[float]] = {}
    seen: dict[str, int] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        node = mapper.ir_node(event["name"], str(event.get("args", {}).get("op_name", "")))
        if node is None:
            continue
        # The k-th occurrence of a kernel is in run k (the first ones are warm-ups);
        # several kernels may belong to one IR node.
        run = seen.get(event["name"], 0)
        seen[event["name"]] = run + 1
        times = per_node.setdefault(node, [0.0] * runs)
        if _PROFILE_WARMUP <= run < _PROFILE_WARMUP + runs:
            times[run - _PROFILE_WARMUP] += float(event["dur"]) / 1e3
    return {n: float(np.min(t)) for n, t in per_node.items() if np.min(t) > 0}


def measure_models(
    specs: Sequence[ModelSpec],
    device: Device,
    rounds: int = 6,
    round_budget_s: float = 0.1,
    progress: bool = True,
    cache_dir: Path | None = None,
    profile_runs: int = 30,
    profile_rounds: int = 3,
) -> list[Measurement]:
    """Compile every variant, then time and profile them in interleaved rounds.

    Interleaving spreads a burst of load from other processes over all variants instead
    of one; each variant keeps the median of its quietest round and its fastest run. In
    the first ``profile_rounds`` rounds each variant also runs up to ``profile_runs``
    times under ORT's profiler; each IR node keeps its fastest kernel time (no
    profiling when ``profile_runs`` is 0: the fit then uses whole-model times only).
    """
    from rich.progress import Progress

    compiled: list[tuple[ModelSpec, GraphFeatures, bytes, tuple[int, ...]]] = []
    graphs: list[Graph] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("exporting and importing models", total=len(specs))
        for spec in specs:
            graph, onnx_bytes, shape = compile_spec(spec, cache_dir)
            compiled.append((spec, GraphFeatures.of(graph, device, spec.label), onnx_bytes, shape))
            graphs.append(graph)
            bar.advance(task)
        runs = [_runs_for(_time_round(data, shape, 3)[0], round_budget_s)
                for _, _, data, shape in compiled]  # fmt: skip
        medians: list[list[float]] = [[] for _ in compiled]
        minimums: list[list[float]] = [[] for _ in compiled]
        node_ms: list[dict[str, float]] = [{} for _ in compiled]
        task = bar.add_task("timing (ONNX Runtime, 1 thread)", total=rounds * len(compiled))
        for r in range(rounds):
            for i, (_, _, onnx_bytes, shape) in enumerate(compiled):
                median_ms, min_ms = _time_round(onnx_bytes, shape, runs[i])
                medians[i].append(median_ms)
                minimums[i].append(min_ms)
                if profile_runs > 0 and r < profile_rounds:
                    nodes = profile_nodes(onnx_bytes, graphs[i], shape, min(profile_runs, runs[i]))
                    node_ms[i] = _elementwise_min(node_ms[i], nodes)
                bar.advance(task)
    return [
        Measurement(
            spec.label, feat, min(medians[i]), runs[i], medians[i], min(minimums[i]), node_ms[i]
        )  # fmt: skip
        for i, (spec, feat, _, _) in enumerate(compiled)
    ]


def _elementwise_min(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Per-key minimum of two per-node timings (a key missing from one keeps the other)."""
    return {k: min(a.get(k, math.inf), b.get(k, math.inf)) for k in {*a, *b}}


# ----------------------------------------------------------------------------- fitting
def _class_of(key: str) -> str:
    return key.partition("/")[0]


@dataclass
class _Layout:
    """How a parameter vector (log-factors) maps onto CostFactors.

    Order: one efficiency per fitted ``class/dtype`` key, then the memory efficiency,
    then one dispatch cost per fitted operator class.
    """

    keys: list[str]  # efficiency keys fitted
    classes: list[str]  # dispatch classes fitted

    def to_vector(self, factors: CostFactors) -> np.ndarray:
        values = [factors.eff(k) for k in self.keys] + [factors.mem_efficiency]
        values += [factors.dispatch(c) for c in self.classes]
        return np.log(np.asarray(values, dtype=np.float64))

    def to_factors(self, theta: np.ndarray, base: CostFactors) -> CostFactors:
        values = np.exp(theta)
        n = len(self.keys)
        eff = dict(base.efficiency)
        eff.update({k: float(v) for k, v in zip(self.keys, values[:n], strict=True)})
        dispatch = dict(base.dispatch_s)
        dispatch.update({c: float(v) for c, v in zip(self.classes, values[n + 1 :], strict=True)})
        return replace(base, efficiency=eff, mem_efficiency=float(values[n]), dispatch_s=dispatch)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lows = [_EFF_BOUNDS[0]] * len(self.keys) + [_MEM_BOUNDS[0]]
        highs = [_EFF_BOUNDS[1]] * len(self.keys) + [_MEM_BOUNDS[1]]
        lows += [_DISPATCH_BOUNDS[0]] * len(self.classes)
        highs += [_DISPATCH_BOUNDS[1]] * len(self.classes)
        return np.log(lows), np.log(highs)


def fitted_keys(features: Sequence[GraphFeatures]) -> list[str]:
    """Efficiency keys the data can inform: classes with work in some graph."""
    keys = {k for f in features for k, w in zip(f.keys, f.work, strict=True) if w > 0}
    return sorted(keys)


def fitted_classes(features: Sequence[GraphFeatures]) -> list[str]:
    """Operator classes whose dispatch cost the data can inform: those that occur."""
    return sorted({_class_of(k) for f in features for k in f.keys})


class _Stack:
    """Every live node of every graph in flat arrays, so one prediction is a few numpy ops.

    Nodes whose efficiency key is not fitted keep the base factor (``fixed_eff``).
    """

    def __init__(
        self,
        features: Sequence[GraphFeatures],
        layout: _Layout,
        base: CostFactors,
        device: Device,
    ) -> None:
        key_index = {k: i for i, k in enumerate(layout.keys)}
        class_index = {c: i for i, c in enumerate(layout.classes)}
        keys = [k for f in features for k in f.keys]
        self.n_eff = len(layout.keys)
        self.key_idx = np.array([key_index.get(k, -1) for k in keys], dtype=np.int64)
        self.class_idx = np.array([class_index[_class_of(k)] for k in keys], dtype=np.int64)
        self.fixed_eff = np.array([base.eff(k) for k in keys], dtype=np.float64)
        # Shape terms stay as ``base`` has them (fitted on per-node times, or none):
        # each node's efficiency is its key's times this fixed factor.
        exps = np.array([base.shape_exponents.get(k, [0.0] * N_SHAPE_TERMS) for k in keys],
                        dtype=np.float64).reshape(-1, N_SHAPE_TERMS)  # fmt: skip
        shapes = np.concatenate([f.shape.reshape(-1, 3) for f in features])
        if len(shapes) != len(keys):  # features built without shapes: no shape terms
            shapes = np.ones((len(keys), 3)) * np.asarray(SHAPE_REF)
        self.shape_mult = np.exp(np.sum(exps * shape_terms(shapes), axis=1))
        self.shaped = np.any(exps, axis=1)
        self.caps = np.array([base.cap(k) for k in keys])
        weights = np.concatenate([f.weight_bytes for f in features])
        self.weight_s = np.zeros(len(keys))
        if len(weights) == len(keys):
            pairs = zip(keys, weights, strict=True)
            self.weight_s = np.array([base.weight_s(k, w) for k, w in pairs])
        if base.activation_s:  # fixed epilogue costs, as fitted on per-node times
            self.weight_s += np.concatenate([epilogues_s(f, base) for f in features])
        self.work = np.concatenate([f.work for f in features])
        self.bytes = np.concatenate([f.bytes for f in features])
        self.peak = np.concatenate([f.peak for f in features])
        self.graph_id = np.repeat(np.arange(len(features)), [len(f.keys) for f in features])
        self.bandwidth = device.memory_bandwidth_bytes_per_s
        self.n_graphs = len(features)

    def seconds(self, theta: np.ndarray) -> np.ndarray:
        """Predicted seconds of every graph for log-factors ``theta`` (``_Layout`` order)."""
        values = np.exp(theta)
        eff_values = np.append(values[: self.n_eff], 1.0)  # index -1 never selected below
        eff = np.where(self.key_idx >= 0, eff_values[self.key_idx], self.fixed_eff)
        eff = np.where(self.shaped, np.clip(eff * self.shape_mult, EFF_LIMITS[0], self.caps), eff)
        mem = values[self.n_eff]
        dispatch = values[self.n_eff + 1 :][self.class_idx]
        busy = np.maximum(self.work / (self.peak * eff), self.bytes / (self.bandwidth * mem))
        busy = busy + self.weight_s
        return np.bincount(self.graph_id, weights=busy + dispatch, minlength=self.n_graphs)


def fit_factors(
    features: Sequence[GraphFeatures],
    measured_s: Sequence[float],
    device: Device,
    start: CostFactors | None = None,
    prior_weight: float = PRIOR_WEIGHT,
) -> tuple[CostFactors, list[str]]:
    """Least-squares fit of the cost factors to measured whole-model times.

    Residuals are log(predicted / measured), so the fit minimizes relative error; a weak
    prior on log-factors keeps factors the data barely sees near their defaults (with a
    dozen models and as many factors, some are nearly collinear). The max() in the
    roofline makes the problem non-smooth, so we start from the defaults and from a point
    with a 20x cheaper memory term and keep the better fit. Returns the factors and the
    names of those fitted (``class/dtype`` efficiencies, ``dispatch:class``, ``memory``).
    """
    if len(features) != len(measured_s) or not features:
        raise ValueError("need one measured time per graph, and at least one graph")
    if not all(math.isfinite(t) and t > 0 for t in measured_s):
        raise ValueError("measured times must be finite and positive")
    base = start or default_factors(device)
    layout = _Layout(fitted_keys(features), fitted_classes(features))
    stack = _Stack(features, layout, base, device)
    prior = layout.to_vector(base)
    target = np.log(np.asarray(measured_s, dtype=np.float64))

    def residuals(theta: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [np.log(stack.seconds(theta)) - target, prior_weight * (theta - prior)]
        )

    lo, hi = layout.bounds()
    best = None
    for shift in (0.0, 3.0):
        x0 = prior.copy()
        x0[len(layout.keys)] += shift
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        result = least_squares(residuals, x0, bounds=(lo, hi), method="trf")
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    names = [*layout.keys, "memory", *(f"dispatch:{c}" for c in layout.classes)]
    return layout.to_factors(best.x, base), names


# ----------------------------------------------------------------------------- per-node fit
SHAPE_PRIOR_WEIGHT = 0.3  # ridge on shape exponents, in units of log-time residual
_MIN_NODES_FOR_SHAPE = 12  # fewer timed nodes of a class: efficiency without shape terms
_FREE_DISPATCH_S = 1e-8  # a class ORT never runs as its own kernel costs (almost) nothing
_CAP_MARGIN = 1.25  # a shaped node may beat the best kernel seen in calibration by this much


@dataclass
class _ClassData:
    """The profiled nodes of one ``class/dtype`` key, as arrays."""

    work: np.ndarray
    peak: np.ndarray
    log_shape: np.ndarray  # (n, N_SHAPE_TERMS): ``shape_terms`` of each node
    weight_bytes: np.ndarray
    activations: list[str]  # fused epilogue of each node ("" for none)
    seconds: np.ndarray
    elements: np.ndarray = field(init=False)  # output elements of each node
    eff_cap: float = field(init=False)  # the best efficiency any node reached
    masks: dict[str, np.ndarray] = field(init=False)  # epilogue -> nodes that have it

    def __post_init__(self) -> None:
        shape = np.exp(self.log_shape[:, :3]) * np.asarray(SHAPE_REF)
        self.elements = np.asarray(shape[:, 1] * shape[:, 2])
        acts = np.array(self.activations, dtype=object)
        self.masks = {a: (acts == a).astype(np.float64) for a in set(self.activations) if a}
        achieved = self.work / (self.peak * self.seconds)
        best = _CAP_MARGIN * float(np.max(achieved))
        self.eff_cap = float(min(EFF_LIMITS[1], max(EFF_LIMITS[0], best)))


def _class_data(
    features: Sequence[GraphFeatures], node_ms: Sequence[dict[str, float]]
) -> tuple[dict[str, _ClassData], set[str]]:
    """Timed nodes grouped by key, and the keys that occur but ORT never timed."""
    rows: dict[str, list[int | tuple[GraphFeatures, int, float]]] = {}
    present: set[str] = set()
    for feat, times in zip(features, node_ms, strict=True):
        for i, (key, node) in enumerate(zip(feat.keys, feat.nodes, strict=True)):
            present.add(key)
            if times.get(node, 0.0) > 0:
                rows.setdefault(key, []).append((feat, i, times[node] / 1e3))
    data = {key: _stack_rows(items) for key, items in rows.items()}  # type: ignore[arg-type]
    return data, present - set(data)


def _stack_rows(items: Sequence[tuple[GraphFeatures, int, float]]) -> _ClassData:
    return _ClassData(
        work=np.array([f.work[i] for f, i, _ in items]),
        peak=np.array([f.peak[i] for f, i, _ in items]),
        log_shape=shape_terms(np.array([f.shape[i] for f, i, _ in items])),
        weight_bytes=np.array([f.weight_bytes[i] for f, i, _ in items]),
        activations=[f.activations[i] if f.activations else "" for f, i, _ in items],
        seconds=np.array([t for _, _, t in items]),
    )


@dataclass
class _ClassFit:
    dispatch_s: float
    eff: float
    exponents: list[float]
    weight_cost: list[float]  # [seconds per byte, bytes free]
    activation_s: dict[str, list[float]]  # epilogue -> [seconds, seconds per element]


@dataclass
class _ClassParams:
    """Where each parameter of one key's fit sits in the vector (log-values)."""

    varying: list[int]  # shape dimensions with exponents
    has_weights: bool
    epilogues: list[str]
    free_bytes0: float = 256e3  # start of the weight-cost knee

    @property
    def n_exp(self) -> int:
        return len(self.varying)

    def bounds_and_start(self, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = [math.log(_DISPATCH_BOUNDS[0]), math.log(_EFF_BOUNDS[0])] + [-3.0] * self.n_exp
        hi = [math.log(_DISPATCH_BOUNDS[1]), math.log(_EFF_BOUNDS[1])] + [3.0] * self.n_exp
        x0 = [*prior, *([0.0] * self.n_exp)]
        if self.has_weights:  # between ~free and 1 GB/s; free bytes 1 KB .. 64 MB
            lo, hi = [*lo, -34.5, math.log(1e3)], [*hi, -20.7, math.log(64e6)]
            x0 = [*x0, math.log(1e-11), math.log(self.free_bytes0)]
        for _ in self.epilogues:  # fixed part up to 100 us, per element up to 10 ns
            lo, hi = [*lo, -25.0, -34.5], [*hi, math.log(1e-4), math.log(1e-8)]
            x0 = [*x0, math.log(1e-7), math.log(1e-11)]
        lo_a, hi_a = np.array(lo), np.array(hi)
        return lo_a, hi_a, np.clip(np.array(x0), lo_a + 1e-9, hi_a - 1e-9)

    def unpack(self, theta: np.ndarray) -> _ClassFit:
        exps = np.zeros(N_SHAPE_TERMS)
        exps[self.varying] = theta[2 : 2 + self.n_exp]
        at = 2 + self.n_exp
        weights = [math.exp(theta[at]), math.exp(theta[at + 1])] if self.has_weights else [0.0, 0.0]
        at += 2 * int(self.has_weights)
        epi = {
            name: [math.exp(theta[at + 2 * j]), math.exp(theta[at + 2 * j + 1])]
            for j, name in enumerate(self.epilogues)
        }
        return _ClassFit(math.exp(theta[0]), math.exp(theta[1]), [float(e) for e in exps],
                         weights, epi)  # fmt: skip


def _predict_class(data: _ClassData, fit: _ClassFit) -> np.ndarray:
    """Per-node seconds of one key under a trial fit (the ``predict_nodes_s`` formula)."""
    eff = fit.eff * np.exp(data.log_shape @ np.asarray(fit.exponents))
    eff = np.clip(eff, EFF_LIMITS[0], data.eff_cap) if any(fit.exponents) else eff
    per_byte, free_bytes = fit.weight_cost
    seconds = fit.dispatch_s + data.work / (data.peak * eff)
    seconds = seconds + per_byte * np.maximum(0.0, data.weight_bytes - free_bytes)
    for name, (fixed, per_element) in fit.activation_s.items():
        seconds = seconds + data.masks[name] * (fixed + per_element * data.elements)
    return np.asarray(seconds)


def _fit_class(data: _ClassData, eff0: float, dispatch0: float) -> _ClassFit:
    """Dispatch, reference efficiency, shape exponents, weight and epilogue costs of one key.

    Model: ``t = dispatch + work / (peak * eff * prod(shape_i ** exp_i)) + weights * w
    + epilogue`` against the profiled kernel times, by least squares on log(t) (relative
    error). Exponents are fitted only along shape dimensions that vary in this key's
    data, with a ridge pull towards 0; the weight cost only where nodes carry weights.
    """
    enough = len(data.seconds) >= _MIN_NODES_FOR_SHAPE and bool(np.any(data.work > 0))
    params = _ClassParams(
        varying=[j for j in range(N_SHAPE_TERMS) if np.ptp(data.log_shape[:, j]) > 0.1]
        if enough
        else [],
        has_weights=enough and bool(np.ptp(np.log1p(data.weight_bytes)) > 1.0),
        epilogues=sorted({a for a in data.activations if a}),
    )
    target = np.log(data.seconds)
    prior = np.array([math.log(dispatch0), math.log(eff0)])

    def residuals(theta: np.ndarray) -> np.ndarray:
        seconds = _predict_class(data, params.unpack(theta))
        return np.concatenate(
            [
                np.log(seconds) - target,
                PRIOR_WEIGHT * (theta[:2] - prior),
                SHAPE_PRIOR_WEIGHT * theta[2 : 2 + params.n_exp],
            ]  # fmt: skip
        )

    best = None
    for knee in (32e3, 256e3, 1e6) if params.has_weights else (0.0,):
        params.free_bytes0 = knee  # the knee makes the problem non-smooth: several starts
        lo, hi, x0 = params.bounds_and_start(prior)
        # Start below the efficiency cap: above it the clip leaves no gradient to follow.
        x0[1] = max(min(x0[1], math.log(0.5 * data.eff_cap)), lo[1] + 1e-9)
        result = least_squares(residuals, x0, bounds=(lo, hi))
        best = result if best is None or result.cost < best.cost else best
    assert best is not None
    return params.unpack(best.x)


def fit_node_factors(
    features: Sequence[GraphFeatures],
    node_ms: Sequence[dict[str, float]],
    device: Device,
    start: CostFactors | None = None,
) -> tuple[CostFactors, list[str]]:
    """Per-key dispatch, efficiency and shape exponents fitted to profiled kernel times.

    The memory roofline is switched off (its efficiency set to the bound): on the host the
    models sit in cache, and the shape terms capture how well each layer shape runs. Keys
    that occur in the graphs but never got a kernel of their own (ORT folds a residual ADD
    into the convolution before it) are made free. The result predicts *profiled* kernel
    times; ``fit_whole_model`` then maps it onto unprofiled whole-model times.
    """
    base = start or default_factors(device)
    data, untimed = _class_data(features, node_ms)
    eff = dict(base.efficiency)
    dispatch = dict(base.dispatch_s)
    exponents: dict[str, list[float]] = {}
    weight_cost: dict[str, list[float]] = {}
    epilogue: dict[str, list[float]] = {}
    caps: dict[str, float] = {}
    names: list[str] = []
    for key, items in sorted(data.items()):
        cls = _class_of(key)
        fit = _fit_class(items, base.eff(key), base.dispatch(cls))
        dispatch[cls], eff[key] = fit.dispatch_s, fit.eff  # one dtype per class on the host
        names += [key, f"dispatch:{cls}"]
        if any(fit.exponents):
            exponents[key] = fit.exponents
            caps[key] = items.eff_cap
            names.append(f"shape:{key}")
        if fit.weight_cost[0] > 0:
            weight_cost[key] = fit.weight_cost
            names.append(f"weights:{key}")
        for act, pair in fit.activation_s.items():
            epilogue[f"{key}+{act}"] = pair
            names.append(f"epilogue:{key}+{act}")
    for key in sorted(untimed):
        if _class_of(key) not in {_class_of(k) for k in data}:
            eff[key], dispatch[_class_of(key)] = _EFF_BOUNDS[1], _FREE_DISPATCH_S
            names += [key, f"dispatch:{_class_of(key)}"]
    factors = CostFactors(eff, _MEM_BOUNDS[1], dispatch, exponents, weight_cost=weight_cost,
                          activation_s=epilogue, eff_cap=caps)  # fmt: skip
    return factors, names


def fit_whole_model(
    features: Sequence[GraphFeatures],
    measured_s: Sequence[float],
    device: Device,
    node_factors: CostFactors,
) -> CostFactors:
    """Map profiled per-node predictions onto whole unprofiled runs.

    ``total = scale * sum(nodes without the profiler's share) + overhead``: the profiler
    adds a fixed cost to every kernel it times (taken off each class's dispatch and off
    each separately run epilogue op), ORT does work per run that no kernel shows (input
    and output copies, layout reorders), and a residual scale absorbs what the profiler
    does to caches. Three numbers, fitted on log-ratios of whole-model times.
    """
    target = np.log(np.asarray(measured_s, dtype=np.float64))
    parts = [_profiled_parts(f, device, node_factors) for f in features]

    def sums(profiler_s: float) -> np.ndarray:
        """``without_profiler`` applied to every node, vectorized (same arithmetic)."""
        return np.array([
            np.sum(rest + np.maximum(dispatch - profiler_s, _FREE_DISPATCH_S)
                   + np.maximum(fixed - profiler_s * ops, 0.0))
            for rest, dispatch, fixed, ops in parts
        ])  # fmt: skip

    def residuals(theta: np.ndarray) -> np.ndarray:
        totals = math.exp(theta[0]) * sums(theta[1] * 1e-6) + theta[2] * 1e-6
        return np.concatenate([np.log(totals) - target, [PRIOR_WEIGHT * theta[0]]])

    lo, hi = np.array([-2.0, 0.0, 0.0]), np.array([2.0, 50.0, 5e3])
    best = min(
        (least_squares(residuals, np.array([0.0, p0, 5.0]), bounds=(lo, hi))
         for p0 in (0.5, 3.0)),
        key=lambda r: r.cost,
    )  # fmt: skip
    out = without_profiler(node_factors, best.x[1] * 1e-6)
    out.node_scale, out.overhead_s = math.exp(best.x[0]), best.x[2] * 1e-6
    return out


def _profiled_parts(
    feat: GraphFeatures, device: Device, factors: CostFactors
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per node: time without dispatch and epilogue fixed part, the dispatch, that fixed
    part, and the epilogue's op count (node scale 1, as ``fit_node_factors`` returns)."""
    dispatch = np.array([factors.dispatch(_class_of(k)) for k in feat.keys])
    acts = feat.activations or ("",) * len(feat.keys)
    fixed = np.array([factors.activation_s.get(f"{k}+{a}", (0.0, 0.0))[0] if a else 0.0
                      for k, a in zip(feat.keys, acts, strict=True)])  # fmt: skip
    ops = np.array([len(a.split(",")) if a else 0 for a in acts], dtype=np.float64)
    rest = predict_nodes_s(feat, device, replace(factors, node_scale=1.0)) - dispatch - fixed
    return rest, dispatch, fixed, ops


def without_profiler(factors: CostFactors, profiler_s: float) -> CostFactors:
    """``factors`` with a profiler's per-kernel cost taken off (each term kept >= ~0).

    Every class's dispatch is one kernel; an epilogue's fixed part is one kernel per op
    in it when the runtime runs them separately (and ~0 when it fuses them anyway).
    """
    dispatch = {c: max(v - profiler_s, _FREE_DISPATCH_S) for c, v in factors.dispatch_s.items()}
    epilogue = {
        k: [max(0.0, fixed - profiler_s * len(k.partition("+")[2].split(","))), per_element]
        for k, (fixed, per_element) in factors.activation_s.items()
    }
    return replace(factors, dispatch_s=dispatch, activation_s=epilogue)


# ----------------------------------------------------------------------------- error
def error_row(label: str, measured_ms: float, predicted_ms: float) -> dict[str, Any]:
    return {
        "model": label,
        "measured_ms": measured_ms,
        "predicted_ms": predicted_ms,
        "error_pct": 100.0 * (predicted_ms - measured_ms) / measured_ms,
    }


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Share of rows within +-10 % and the median absolute percentage error."""
    ape = np.abs([r["error_pct"] for r in rows])
    return {
        "loo_within_10pct": float(np.mean(ape <= 10.0)) if len(ape) else math.nan,
        "loo_median_ape_pct": float(np.median(ape)) if len(ape) else math.nan,
        "n_models": float(len(rows)),
    }


def fit_measurements(
    measurements: Sequence[Measurement], measured_s: Sequence[float], device: Device
) -> tuple[CostFactors, list[str]]:
    """The calibrated factors from measured variants: per-node first, then whole-model.

    With per-node kernel times (every measurement profiled) the shape-aware per-node
    model is fitted to them and mapped onto the whole-model times (``fit_whole_model``);
    without them the whole-model fit alone (``fit_factors``) is used.
    """
    features = [m.features for m in measurements]
    if not all(m.node_ms for m in measurements):
        return fit_factors(features, measured_s, device)
    node_factors, names = fit_node_factors(features, [m.node_ms for m in measurements], device)
    factors = fit_whole_model(features, measured_s, device, node_factors)
    return factors, [*names, "profiler", "node_scale", "overhead"]


def leave_one_out(
    measurements: Sequence[Measurement],
    device: Device,
    fit: Callable[..., tuple[CostFactors, list[str]]] = fit_measurements,
    statistic: str = "min",
) -> list[dict[str, Any]]:
    """For each variant: fit on the others, predict it; rows of measured vs predicted.

    ``fit(measurements, measured_s, device)`` sees only the other variants: neither the
    held-out variant's whole-model time nor any of its per-node kernel times.
    """
    if len(measurements) < 2:
        raise ValueError("leave-one-out needs at least two measured models")
    targets = [_target_ms(m, statistic) / 1e3 for m in measurements]
    rows = []
    for i, held in enumerate(measurements):
        train = [j for j in range(len(measurements)) if j != i]
        factors, _ = fit([measurements[j] for j in train], [targets[j] for j in train], device)
        predicted_ms = predict_features_s(held.features, device, factors) * 1e3
        rows.append(error_row(held.label, targets[i] * 1e3, predicted_ms))
    return rows


def _runtime_name() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, 1 thread, float32"


def _target_ms(m: Measurement, statistic: str) -> float:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    return m.measured_ms if statistic == "median" else m.min_ms


def calibration_from_measurements(
    measurements: Sequence[Measurement], device: Device, statistic: str = "min"
) -> Calibration:
    """Fit on every measurement, and measure the fit's error by leave-one-out.

    ``statistic`` picks what "measured" means: ``min`` (the fastest run, the default:
    load from other processes only adds time, so on a shared machine the fastest run is
    the figure that repeats, and the per-node kernel times are minimums too) or
    ``median`` (of the quietest round).
    """
    targets = [_target_ms(m, statistic) for m in measurements]
    factors, names = fit_measurements(measurements, [t / 1e3 for t in targets], device)
    rows = leave_one_out(measurements, device, statistic=statistic)
    for row, m in zip(rows, measurements, strict=True):
        row["runs"] = m.runs
        row["median_ms"] = m.measured_ms
        row["min_ms"] = m.min_ms
        row["round_medians_ms"] = list(m.round_medians_ms)
        row["fit_predicted_ms"] = predict_features_s(m.features, device, factors) * 1e3
    return Calibration(
        device=device.name,
        factors=factors,
        fitted_keys=names,
        models=[m.label for m in measurements],
        runtime=f"{_runtime_name()}; measured = {statistic}",
        error=summarize(rows),
        rows=rows,
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def calibrate_host(
    models: Sequence[ModelSpec] | None = None,
    quick: bool = False,
    progress: bool = True,
    rounds: int | None = None,
    device: Device | None = None,
    cache_dir: Path | None = None,
    statistic: str = "min",
) -> Calibration:
    """Measure the host, fit the factors on every variant, and report leave-one-out error.

    ``quick`` uses four tiny models and short rounds (for tests, a few seconds); the
    default set takes about two minutes on two cores (less with a warm ``cache_dir`` of
    ONNX exports).
    """
    host = device or get_device("host")
    specs = list(models) if models is not None else quick_models() if quick else default_models()
    measurements = measure_models(
        specs,
        host,
        rounds=rounds or (2 if quick else 6),
        round_budget_s=0.03 if quick else 0.1,
        progress=progress,
        cache_dir=cache_dir,
    )
    return calibration_from_measurements(measurements, host, statistic)
