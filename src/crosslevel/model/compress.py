"""Apply a combination of model-level passes and report before and after, measured.

The pipeline, per seed (each seed has its own data split, baseline and fine-tuning):

    trained baseline -> [prune + fine-tune (+ KD)] -> [low-rank + fine-tune (+ KD)]
        -> float ONNX -> [int8 QDQ ONNX, calibrated on real training samples
                          (+ quantization-aware fine-tuning if PTQ loses too much)]

int8 QAT (``qat``): "auto" fine-tunes with fake quantization (``model.qat``) when PTQ
loses more than ``qat_threshold`` points on training samples outside the calibration set
(never the test split), "always" runs it regardless, "off" never; QAT is deployed
unless it does worse on those samples. Both test accuracies are in the int8 pass record.

Accuracy is that of the deployed ONNX model run by ONNX Runtime on the held-out split,
as the mean and spread over seeds (DESIGN.md: at least three). The structural figures
(params, flash bytes, MACs, peak activation RAM) come from the IR as it would be deployed:
the float graph after the graph level's BN folding and activation fusion, or for int8
the TFLite-semantics int8 graph (``model.quantize``). Peak RAM is the TFLM-greedy arena
figure of ``report.analyze``. Latency is measured on this host with ONNX Runtime (1
thread, median), before and after in the same run; ``--device`` adds the cost model's
prediction, labelled predicted. Structural figures and latency are taken on the first
seed's models (with per-layer pruning ratios all seeds have the same shapes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from crosslevel.errors import UsageError
from crosslevel.graph.optimize import optimize_graph
from crosslevel.ir.graph import Graph
from crosslevel.ir.ops import node_macs
from crosslevel.ir.torch_io import export_torch_onnx, import_torch
from crosslevel.model.baselines import (
    Baseline,
    check_pair,
    finetune_epochs,
    get_dataset,
    trained_baseline,
)
from crosslevel.model.evaluate import SeedStats, accuracy_onnx, accuracy_torch
from crosslevel.model.lowrank import factorize_and_finetune
from crosslevel.model.prune import (
    IMPORTANCES,
    finetune_epochs_after_pruning,
    prune_and_finetune,
)
from crosslevel.model.qat import DEFAULT_EPOCHS as DEFAULT_QAT_EPOCHS
from crosslevel.model.qat import quantization_aware_finetune
from crosslevel.model.qdq import (
    CALIBRATION_METHODS,
    calibration_samples,
    quantize_qdq,
    quantize_tflite_int8,
)
from crosslevel.model.zoo import ZOO
from crosslevel.report.analyze import memory_figures
from crosslevel.runtime.ort import time_onnx

RESULT_FORMAT = "crosslevel.compress/1"
TFLITE_CALIBRATION = 64  # samples for the TFLite-semantics IR (runs in the NumPy reference)
QAT_MODES = ("auto", "off", "always")
VALIDATION_SAMPLES = 512  # training samples outside the calibration set judge PTQ's loss

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompressConfig:
    """One point of the model level's knob space (None: the pass is off)."""

    model: str
    data: str
    prune: float | None = None
    importance: str = "magnitude"
    global_pruning: bool = False
    quant: str | None = None  # "int8"
    calibration: str = "minmax"
    rank: int | None = None
    energy: float | None = None
    distill: bool = False
    epochs: int | None = None  # fine-tuning epochs per pass; None: recipe (prune), half (low-rank)
    baseline_epochs: int | None = None  # None: the recipe of model.baselines
    seeds: int = 3
    device: str | None = None
    calibration_samples: int = 256
    latency_repeats: int = 300
    qat: str = "auto"  # int8: "auto" (QAT when PTQ loses > qat_threshold), "off", "always"
    qat_threshold: float = 1.0  # points of accuracy PTQ may lose on validation samples
    qat_epochs: int = DEFAULT_QAT_EPOCHS

    def validate(self) -> None:
        """UsageError (exit 2) for any knob out of its range, before any work."""
        if self.model not in ZOO:
            raise UsageError(f"unknown zoo model {self.model!r}; known: {', '.join(ZOO)}")
        check_pair(self.model, get_dataset(self.data, 0))  # unknown or mismatched data
        if self.prune is not None and not 0.0 < self.prune < 1.0:
            raise UsageError(f"--prune must be in (0, 1), got {self.prune}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance must be one of {', '.join(IMPORTANCES)}")
        if self.quant not in (None, "int8"):
            raise UsageError(f"--quant supports int8 only, got {self.quant!r}")
        if self.calibration not in CALIBRATION_METHODS:
            raise UsageError(f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}")
        if self.rank is not None and self.energy is not None:
            raise UsageError("give --rank or --energy, not both")
        if self.rank is not None and self.rank < 1:
            raise UsageError(f"--rank must be >= 1, got {self.rank}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise UsageError(f"--energy must be in (0, 1], got {self.energy}")
        if self.baseline_epochs is not None and self.baseline_epochs < 1:
            raise UsageError(f"--baseline-epochs must be >= 1, got {self.baseline_epochs}")
        if (
            (self.epochs is not None and self.epochs < 0)
            or self.seeds < 1
            or self.calibration_samples < 1
        ):
            raise UsageError("--epochs must be >= 0, --seeds and calibration samples >= 1")
        if self.qat not in QAT_MODES:
            raise UsageError(f"--qat must be one of {', '.join(QAT_MODES)}, got {self.qat!r}")
        if self.qat_threshold < 0 or self.qat_epochs < 1:
            raise UsageError("--qat-threshold must be >= 0 points and --qat-epochs >= 1")
        if self.device is not None:
            from crosslevel.hardware.devices import get_device

            get_device(self.device)

    def finetune_epochs(self) -> int:
        return self.epochs if self.epochs is not None else finetune_epochs(self.model)

    def prune_epochs(self) -> int:
        """Pruning fine-tunes longer by default: see ``model.prune.PRUNE_LR``."""
        if self.epochs is not None:
            return self.epochs
        return finetune_epochs_after_pruning(self.model)

    def label(self) -> str:
        """Short name of the combination, e.g. 'prune 50% +KD + int8'."""
        parts = []
        if self.prune is not None:
            how = f" ({self.importance})" if self.importance != "magnitude" else ""
            parts.append(f"prune {self.prune:.0%}{how}" + (" +KD" if self.distill else ""))
        if self.rank is not None or self.energy is not None:
            knob = f"rank {self.rank}" if self.rank is not None else f"energy {self.energy:g}"
            parts.append(f"low-rank {knob}")
        if self.quant:
            parts.append(f"{self.quant} ({self.calibration})")
        return " + ".join(parts) or "baseline"


@dataclass
class Metrics:
    """The before or after column of the report."""

    label: str
    dtype: str
    accuracy: SeedStats  # deployed ONNX model in ONNX Runtime, held-out split
    accuracy_torch: SeedStats | None  # the float PyTorch model (None for int8)
    params: int
    flash_bytes: int
    macs: int
    peak_ram_bytes: int  # TFLM-greedy activation arena
    latency_ms: float  # measured here, ONNX Runtime, 1 thread, median
    predicted_ms: float | None = None
    predicted_label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["accuracy"] = self.accuracy.to_dict()
        doc["accuracy_torch"] = self.accuracy_torch.to_dict() if self.accuracy_torch else None
        return doc


@dataclass
class CompressResult:
    config: CompressConfig
    before: Metrics
    after: Metrics
    passes: dict[str, Any]
    model_onnx: bytes  # the first seed's deployed model
    model_tflite: bytes | None  # int8 only: the TFLite-semantics int8 model
    notes: list[str] = field(default_factory=list)
    baseline_module: nn.Module | None = None  # the first seed's float models, for callers
    float_module: nn.Module | None = None  # that want other exports (e.g. float .tflite)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "model": self.config.model,
            "data": self.config.data,
            "config": asdict(self.config),
            "label": self.config.label(),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "passes": self.passes,
            "notes": self.notes,
        }


@dataclass
class _SeedRun:
    """One seed's compressed model and its accuracy figures."""

    float_model: nn.Module
    deployed: bytes
    accuracy: float
    accuracy_torch: float
    baseline_onnx: bytes
    baseline_accuracy: float  # the baseline's ONNX export in ONNX Runtime
    baseline: Baseline
    passes: dict[str, Any]
    calibration: np.ndarray | None


def _apply(cfg: CompressConfig, base: Baseline, progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """The float passes (pruning, then low-rank) on one seed's baseline."""
    model, passes = base.module, {}
    data, seed = base.data, base.seed
    if cfg.prune is not None:
        pruned = prune_and_finetune(
            model, data, cfg.prune, cfg.importance, cfg.global_pruning, cfg.prune_epochs(),
            cfg.distill, seed, progress=progress,
        )  # fmt: skip
        model = pruned.model
        passes["prune"] = {
            "ratio": cfg.prune, "importance": cfg.importance, "global": cfg.global_pruning,
            "distill": cfg.distill, "channels": pruned.channels, "skipped": pruned.skipped,
            "params_before": pruned.params_before, "params_after": pruned.params_after,
        }  # fmt: skip
    if cfg.rank is not None or cfg.energy is not None:
        low = factorize_and_finetune(
            model,
            data,
            cfg.rank,
            cfg.energy,
            cfg.finetune_epochs(),
            cfg.distill,
            seed,
            progress=progress,
        )
        model = low.model
        passes["lowrank"] = {
            "rank": cfg.rank, "energy": cfg.energy, "ranks": low.ranks, "skipped": low.skipped,
            "params_before": low.params_before, "params_after": low.params_after,
        }  # fmt: skip
    return model, passes


def _validation(base: Baseline, seed: int, calibration_count: int) -> tuple[np.ndarray, ...]:
    """Training samples the calibration set did not draw (it takes a seeded permutation's
    head; these are its tail): PTQ's loss is judged there, never on the test split."""
    order = np.random.default_rng(seed).permutation(len(base.data.x_train))
    pick = order[calibration_count:][:VALIDATION_SAMPLES]
    if len(pick) == 0:  # every training sample calibrates: judge on them all
        pick = order[:VALIDATION_SAMPLES]
    return base.data.x_train[pick], base.data.y_train[pick]


def _quantize(
    cfg: CompressConfig, model: nn.Module, float_onnx: bytes, calibration: np.ndarray,
    base: Baseline, progress: bool,
) -> tuple[nn.Module, bytes, dict[str, Any]]:  # fmt: skip
    """int8 PTQ, then QAT if PTQ loses more than ``cfg.qat_threshold`` points (or always).

    Returns the float model the int8 artifacts are made from, the deployed QDQ ONNX and
    the pass record: method "ptq" or "qat", losses on validation samples (which decide),
    and the test accuracy of the PTQ model and (when run) of the QAT model, both as
    deployed in ONNX Runtime. QAT is deployed unless it does worse there.
    """
    x_val, y_val = _validation(base, base.seed, len(calibration))
    x, y = base.data.x_test, base.data.y_test
    float_val = accuracy_onnx(float_onnx, x_val, y_val)
    qdq = quantize_qdq(float_onnx, calibration, cfg.calibration)
    ptq_loss = 100 * (float_val - accuracy_onnx(qdq.onnx, x_val, y_val))
    record: dict[str, Any] = {
        "format": "ONNX QDQ", "calibration": cfg.calibration, "samples": len(calibration),
        "weights": "int8 per-channel symmetric",
        "activations": f"{qdq.activation_type} per-tensor", "method": "ptq",
        "qat_mode": cfg.qat, "qat_threshold_points": cfg.qat_threshold,
        "validation_samples": len(x_val), "ptq_validation_loss_points": ptq_loss,
        "ptq_accuracy": accuracy_onnx(qdq.onnx, x, y), "qat_accuracy": None,
        "reduce_range": qdq.reduce_range, "fused_rel_error": qdq.fused_rel_error,
    }  # fmt: skip
    if cfg.qat == "off" or (cfg.qat == "auto" and ptq_loss <= cfg.qat_threshold):
        return model, qdq.onnx, record
    qat = quantization_aware_finetune(
        model, base.data, calibration, cfg.qat_epochs, seed=base.seed, teacher=model,
        progress=progress,
    )  # fmt: skip
    shape = (1, *base.data.input_shape)
    qat_qdq = quantize_qdq(export_torch_onnx(qat.model, shape), calibration, cfg.calibration)
    qat_loss = 100 * (float_val - accuracy_onnx(qat_qdq.onnx, x_val, y_val))
    record |= {
        "qat_epochs": cfg.qat_epochs, "qat_validation_loss_points": qat_loss,
        "qat_accuracy": accuracy_onnx(qat_qdq.onnx, x, y),
    }  # fmt: skip
    if qat_loss > ptq_loss:  # fine-tuning made it worse where it can be judged: keep PTQ
        return model, qdq.onnx, record
    record |= {
        "method": "qat", "reduce_range": qat_qdq.reduce_range,
        "fused_rel_error": qat_qdq.fused_rel_error,
    }  # fmt: skip
    return qat.model, qat_qdq.onnx, record


def _run_seed(cfg: CompressConfig, seed: int, cache_dir: Path | None, progress: bool) -> _SeedRun:
    base = trained_baseline(
        cfg.model, cfg.data, seed, cache_dir, epochs=cfg.baseline_epochs, progress=progress
    )
    shape = (1, *base.data.input_shape)
    model, passes = _apply(cfg, base, progress)
    float_onnx = export_torch_onnx(model, shape)
    deployed, calibration = float_onnx, None
    if cfg.quant == "int8":
        calibration = calibration_samples(base.data.x_train, cfg.calibration_samples, seed)
        model, deployed, passes["int8"] = _quantize(cfg, model, float_onnx, calibration, base,
                                                    progress)  # fmt: skip
    x, y = base.data.x_test, base.data.y_test
    baseline_onnx = export_torch_onnx(base.module, shape)
    return _SeedRun(
        float_model=model,
        deployed=deployed,
        accuracy=accuracy_onnx(deployed, x, y),
        accuracy_torch=accuracy_torch(model, x, y),
        baseline_onnx=baseline_onnx,
        baseline_accuracy=accuracy_onnx(baseline_onnx, x, y),
        baseline=base,
        passes=passes,
        calibration=calibration,
    )


def _int8_decision(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("method", "ptq_validation_loss_points", "qat_validation_loss_points",
            "ptq_accuracy", "qat_accuracy")  # fmt: skip
    return {k: record.get(k) for k in keys}


def graph_figures(graph: Graph) -> dict[str, int]:
    """params, flash bytes, MACs and TFLM-greedy peak RAM of a deployable IR graph."""
    consts = graph.constants()
    return {
        "params": sum(t.num_elements for t in consts),
        "flash_bytes": sum(t.nbytes for t in consts),
        "macs": sum(node_macs(graph, n) for n in graph.nodes),
        "peak_ram_bytes": memory_figures(graph).tflm_greedy_bytes,
    }


def float_graph(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """The float IR as the graph level would deploy it (BN folded, activations fused)."""
    return optimize_graph(import_torch(model, (1, *input_shape)))


def float_tflite(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The float32 ``.tflite`` of ``model`` (NHWC, as the int8 one is laid out)."""
    from crosslevel.graph.layout import to_nhwc
    from crosslevel.ir.tflite_io import export_tflite
    from crosslevel.model.quantize import with_explicit_biases

    return export_tflite(with_explicit_biases(to_nhwc(float_graph(model, input_shape))))


def _metrics(
    label: str,
    dtype: str,
    graph: Graph,
    deployed: bytes,
    accs: list[float],
    torch_accs: list[float] | None,
    sample: np.ndarray,
    cfg: CompressConfig,
) -> Metrics:
    latency = time_onnx(deployed, [sample], repeats=cfg.latency_repeats, warmup=20)
    figures = graph_figures(graph)
    metrics = Metrics(
        label=label,
        dtype=dtype,
        accuracy=SeedStats.of(accs),
        accuracy_torch=SeedStats.of(torch_accs) if torch_accs else None,
        latency_ms=latency.median_ms,
        params=figures["params"],
        flash_bytes=figures["flash_bytes"],
        macs=figures["macs"],
        peak_ram_bytes=figures["peak_ram_bytes"],
    )
    if cfg.device is not None:
        from crosslevel.hardware.cost_model import predict_latency
        from crosslevel.hardware.devices import get_device

        prediction = predict_latency(graph, get_device(cfg.device))
        metrics.predicted_ms, metrics.predicted_label = prediction.total_ms, prediction.label
    return metrics


def compress(
    cfg: CompressConfig,
    cache_dir: Path | None = None,
    progress: bool = False,
    log: Log | None = None,
) -> CompressResult:
    """Run the combination ``cfg`` over ``cfg.seeds`` seeds and measure before/after."""
    cfg.validate()
    runs = []
    for seed in range(cfg.seeds):
        if log:
            log(f"seed {seed}: {cfg.model} on {cfg.data}, {cfg.label()}")
        runs.append(_run_seed(cfg, seed, cache_dir, progress))
    first = runs[0]
    if cfg.quant == "int8":  # the PTQ-or-QAT decision is made per seed
        first.passes["int8"]["per_seed"] = [_int8_decision(r.passes["int8"]) for r in runs]
    shape = first.baseline.data.input_shape
    sample = np.ascontiguousarray(first.baseline.data.x_test[:1])
    before = _metrics(
        "baseline", "float32", float_graph(first.baseline.module, shape), first.baseline_onnx,
        [r.baseline_accuracy for r in runs], [r.baseline.accuracy for r in runs], sample, cfg,
    )  # fmt: skip
    tflite = None
    if cfg.quant == "int8":
        assert first.calibration is not None
        int8 = quantize_tflite_int8(
            first.float_model, cfg.model, first.calibration[:TFLITE_CALIBRATION]
        )
        graph, tflite, dtype, torch_accs = int8.int8_graph, int8.tflite, "int8", None
    else:
        graph, dtype = float_graph(first.float_model, shape), "float32"
        torch_accs = [r.accuracy_torch for r in runs]
    after = _metrics(
        cfg.label(), dtype, graph, first.deployed, [r.accuracy for r in runs], torch_accs,
        sample, cfg,
    )  # fmt: skip
    notes = [
        "accuracy: deployed ONNX model in ONNX Runtime on the held-out split, mean ± sample "
        f"std over {cfg.seeds} seed(s); latency measured on this host (ONNX Runtime, 1 "
        "thread, median); peak RAM: TFLM-greedy activation arena; figures of seed 0",
    ]
    if cfg.quant == "int8":
        notes.append(
            "int8 params/flash/MACs/peak RAM/prediction are of the TFLite-semantics int8 IR "
            "(model.tflite); accuracy and latency of the ONNX QDQ model (model.onnx)"
        )
    if cfg.quant == "int8":
        methods = [d["method"] for d in first.passes["int8"]["per_seed"]]
        notes.append(
            f"int8 method per seed: {', '.join(methods)} (QAT {cfg.qat}: when PTQ loses more "
            f"than {cfg.qat_threshold:g} points on training samples outside the calibration "
            "set, and kept unless it does worse there)"
        )
    if first.passes.get("int8", {}).get("reduce_range"):
        notes.append(
            "ONNX Runtime's fused u8s8 int8 kernels saturated with 8-bit weights (their "
            "outputs strayed from the QDQ model's own semantics): weights were requantized "
            "with a 7-bit range, which runs exactly as the QDQ model specifies"
        )
    if cfg.seeds < 3:
        notes.append(f"only {cfg.seeds} seed(s): DESIGN.md asks for at least 3 for accuracy")
    return CompressResult(
        cfg, before, after, first.passes, first.deployed, tflite, notes,
        first.baseline.module, first.float_model,
    )  # fmt: skip
