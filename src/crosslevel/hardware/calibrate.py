"""Calibrate the cost model on this machine: measure with ONNX Runtime, fit, report error.

The host is the one device we can measure. We run zoo models and their width/resolution
variants through ONNX Runtime on one thread (float32, as exported from PyTorch), take
the median of many runs, and fit the cost model's free factors (per operator class
efficiency, memory efficiency, per-operator dispatch) to those medians by least squares
on the log of predicted/measured time (so a 50 us model weighs as much as a 5 ms one).

How good the fit is we report by leave-one-out: for each variant, fit on all the others
and predict it. The share of held-out variants within +-10 % and their median absolute
percentage error go into the saved ``Calibration`` beside the factors, so every
prediction made with it can say how far it is to be trusted.

Timing is noisy on a shared machine, so variants are measured in interleaved rounds and
each keeps the median of its quietest round (the smallest round median): load from other
processes only ever adds time. On a machine that others keep busy even that moves by 5-20 %
from run to run, so the fastest single run is recorded too and ``statistic="min"`` fits
and scores against it instead (it moved by under 2 % between runs here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from crosslevel.hardware.cost_model import (
    Calibration,
    CostFactors,
    GraphFeatures,
    default_factors,
    predict_features_s,
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


def compile_spec(
    spec: ModelSpec, cache_dir: Path | None = None
) -> tuple[Graph, bytes, tuple[int, ...]]:
    """The IR and ONNX bytes of one variant, through the project's shared torch path.

    One export serves both: ``import_torch`` is exactly ``import_onnx`` of these bytes,
    and exporting twice would double the calibration's slowest step.
    """
    from crosslevel.ir.onnx_io import import_onnx
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


def measure_models(
    specs: Sequence[ModelSpec],
    device: Device,
    rounds: int = 6,
    round_budget_s: float = 0.1,
    progress: bool = True,
    cache_dir: Path | None = None,
) -> list[Measurement]:
    """Compile every variant, then time them in ``rounds`` interleaved rounds.

    Interleaving spreads a burst of load from other processes over all variants instead
    of one; each variant keeps the median of its quietest round.
    """
    from rich.progress import Progress

    compiled: list[tuple[ModelSpec, GraphFeatures, bytes, tuple[int, ...]]] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("exporting and importing models", total=len(specs))
        for spec in specs:
            graph, onnx_bytes, shape = compile_spec(spec, cache_dir)
            compiled.append((spec, GraphFeatures.of(graph, device, spec.label), onnx_bytes, shape))
            bar.advance(task)
        runs = [_runs_for(_time_round(data, shape, 3)[0], round_budget_s)
                for _, _, data, shape in compiled]  # fmt: skip
        medians: list[list[float]] = [[] for _ in compiled]
        minimums: list[list[float]] = [[] for _ in compiled]
        task = bar.add_task("timing (ONNX Runtime, 1 thread)", total=rounds * len(compiled))
        for _ in range(rounds):
            for i, (_, _, onnx_bytes, shape) in enumerate(compiled):
                median_ms, min_ms = _time_round(onnx_bytes, shape, runs[i])
                medians[i].append(median_ms)
                minimums[i].append(min_ms)
                bar.advance(task)
    return [
        Measurement(spec.label, feat, min(medians[i]), runs[i], medians[i], min(minimums[i]))
        for i, (spec, feat, _, _) in enumerate(compiled)
    ]


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
        return CostFactors(eff, float(values[n]), dispatch)

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
        mem = values[self.n_eff]
        dispatch = values[self.n_eff + 1 :][self.class_idx]
        busy = np.maximum(self.work / (self.peak * eff), self.bytes / (self.bandwidth * mem))
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


def leave_one_out(
    measurements: Sequence[Measurement],
    device: Device,
    fit: Callable[..., tuple[CostFactors, list[str]]] = fit_factors,
    statistic: str = "median",
) -> list[dict[str, Any]]:
    """For each variant: fit on the others, predict it; rows of measured vs predicted."""
    if len(measurements) < 2:
        raise ValueError("leave-one-out needs at least two measured models")
    targets = [_target_ms(m, statistic) / 1e3 for m in measurements]
    rows = []
    for i, held in enumerate(measurements):
        train = [j for j in range(len(measurements)) if j != i]
        factors, _ = fit([measurements[j].features for j in train], [targets[j] for j in train],
                         device)  # fmt: skip
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
    measurements: Sequence[Measurement], device: Device, statistic: str = "median"
) -> Calibration:
    """Fit on every measurement, and measure the fit's error by leave-one-out.

    ``statistic`` picks what "measured" means: ``median`` (of the quietest round, the
    default) or ``min`` (the fastest run, steadier on a machine others are loading).
    """
    targets = [_target_ms(m, statistic) for m in measurements]
    factors, names = fit_factors(
        [m.features for m in measurements], [t / 1e3 for t in targets], device
    )
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
    statistic: str = "median",
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
