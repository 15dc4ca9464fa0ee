"""The model level (accuracy-changing) and the memory level (preserving); the graph and
operator levels are in ``graph_operator.py``.

Each is a ``space.Level``. The model level wraps ``model.compress``; the memory level
wraps ``memory.strategies``. Both cache per process what they computed, keyed by the knob
values that determine it (an explicit cache object owned by the level, not global state):
the memory knob alone never re-runs fine-tuning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslevel.ir.graph import Graph
from crosslevel.memory.plan import Plan
from crosslevel.memory.strategies import TFLM_RULES, plan_strategies
from crosslevel.search.space import Candidate, Knob, KnobValue

PRUNE_CHOICES: tuple[KnobValue, ...] = (0.0, 0.25, 0.5, 0.75)
QUANT_CHOICES: tuple[KnobValue, ...] = ("none", "int8")
ENERGY_CHOICES: tuple[KnobValue, ...] = (1.0, 0.95, 0.8)  # 1.0: no low-rank factorization
STRATEGY_CHOICES: tuple[KnobValue, ...] = ("tflm", "reorder", "optimal", "inplace", "patch")


@dataclass
class ModelLevel:
    """Pruning ratio, int8 quantization and low-rank energy of a zoo model on real data.

    Cheap (``exact=False``): the passes on the cached trained baseline of seed 0 without
    fine-tuning; the IR has the deployed shapes, so params, flash, MACs, the arena and
    the predicted latency are those of the deployed model. Exact: ``model.compress`` over
    ``seeds`` seeds (fine-tuning, accuracy of the deployed ONNX model in ONNX Runtime on
    held-out data, host latency measured), and the IR of the deployed model itself.
    """

    model: str
    data: str
    seeds: int = 3
    epochs: int | None = None
    cache_dir: Path | None = None
    latency_repeats: int = 50
    name: str = "model"
    changes_accuracy: bool = True
    evaluations: int = 0  # exact evaluations run (compress calls), for tests and the report
    _cheap: dict[tuple[Any, ...], tuple[Graph, str]] = field(default_factory=dict, repr=False)
    _exact: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (
            Knob("prune", PRUNE_CHOICES, "structured channel pruning ratio"),
            Knob("quant", QUANT_CHOICES, "int8 post-training quantization"),
            Knob("energy", ENERGY_CHOICES, "low-rank: kept fraction of sum(S^2); 1 = off"),
        )

    def config(self, values: Mapping[str, KnobValue]) -> Any:
        from crosslevel.model.compress import CompressConfig

        prune = float(values["prune"] or 0.0)  # type: ignore[arg-type]
        energy = float(values["energy"] or 1.0)  # type: ignore[arg-type]
        return CompressConfig(
            model=self.model, data=self.data, prune=prune if prune > 0 else None,
            quant="int8" if values["quant"] == "int8" else None,
            energy=energy if energy < 1.0 else None, epochs=self.epochs, seeds=self.seeds,
            latency_repeats=self.latency_repeats,
        )  # fmt: skip

    @staticmethod
    def key(values: Mapping[str, KnobValue]) -> tuple[Any, ...]:
        return (values["prune"], values["quant"], values["energy"])

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        cfg = self.config(values)
        cand.figures["model_label"] = cfg.label()
        if exact:
            return self._apply_exact(cand, values)
        graph, dtype = self._cheap_graph(values)
        cand.graph, cand.figures["dtype"] = graph, dtype
        return cand

    def _cheap_graph(self, values: Mapping[str, KnobValue]) -> tuple[Graph, str]:
        key = self.key(values)
        if key not in self._cheap:
            self._cheap[key] = _structural_graph(self, self.config(values))
        return self._cheap[key]

    def _apply_exact(self, cand: Candidate, values: Mapping[str, KnobValue]) -> Candidate:
        key = self.key(values)
        if key not in self._exact:
            from crosslevel.model.compress import compress

            self.evaluations += 1
            result = compress(self.config(values), cache_dir=self.cache_dir)
            self._exact[key] = (result, _deployed_graph(result))
        result, graph = self._exact[key]
        after, before = result.after, result.before
        cand.graph = graph
        cand.figures |= {
            "dtype": after.dtype,
            "accuracy": after.accuracy.mean,
            "accuracy_std": after.accuracy.std,
            "accuracy_values": list(after.accuracy.values),
            "accuracy_seeds": len(after.accuracy.values),
            "baseline_accuracy": before.accuracy.mean,
            "host_latency_ms": after.latency_ms,
        }
        cand.artifacts["model.onnx"] = result.model_onnx
        if result.model_tflite is not None:
            cand.artifacts["int8.tflite"] = result.model_tflite
        cand.artifacts["compress_result"] = result.to_json()
        return cand


def _structural_graph(level: ModelLevel, cfg: Any) -> tuple[Graph, str]:
    """The IR with the deployed shapes, without fine-tuning (see ``ModelLevel``)."""
    from crosslevel.ir.torch_io import import_torch
    from crosslevel.model.baselines import trained_baseline
    from crosslevel.model.lowrank import factorize_and_finetune
    from crosslevel.model.prune import prune_and_finetune
    from crosslevel.model.qdq import calibration_samples, quantize_tflite_int8

    base = trained_baseline(level.model, level.data, 0, level.cache_dir)
    module = base.module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skipped-layer warnings show in the exact run
        if cfg.prune is not None:
            module = prune_and_finetune(module, base.data, cfg.prune, epochs=0).model
        if cfg.energy is not None:
            module = factorize_and_finetune(module, base.data, energy=cfg.energy, epochs=0).model
    if cfg.quant == "int8":
        from crosslevel.model.compress import TFLITE_CALIBRATION

        samples = calibration_samples(base.data.x_train, TFLITE_CALIBRATION, 0)
        return quantize_tflite_int8(module, level.model, samples).int8_graph, "int8"
    # As exported, before graph passes: those are the graph level's knobs.
    return import_torch(module, (1, *base.data.input_shape)), "float32"


def _deployed_graph(result: Any) -> Graph:
    """The IR of what is deployed: the int8 .tflite, or the float ONNX as exported (graph
    passes are the graph level's knobs)."""
    if result.model_tflite is not None:
        from crosslevel.ir.tflite_io import import_tflite

        return import_tflite(result.model_tflite)
    from crosslevel.ir.onnx import import_onnx

    return import_onnx(result.model_onnx)


@dataclass
class MemoryLevel:
    """The activation-arena strategy of ``memory.strategies`` for the candidate's graph.

    Its cost effect: ``peak_ram_bytes`` is the plan's exact arena; the patch strategy's
    recomputation adds ``extra_macs``. Outputs do not change (each chosen plan is proven
    by execution before it is written), so it preserves accuracy.
    """

    time_limit_s: float = 2.0
    name: str = "memory"
    changes_accuracy: bool = False
    _plans: dict[int, tuple[Graph, dict[str, Plan]]] = field(default_factory=dict, repr=False)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("strategy", STRATEGY_CHOICES, "arena strategy (memory.strategies)"),)

    def plans(self, graph: Graph) -> dict[str, Plan]:
        # Keyed by identity; the graph is kept in the entry so its id cannot be reused.
        entry = self._plans.get(id(graph))
        if entry is None or entry[0] is not graph:
            entry = (graph, plan_strategies(graph, self.time_limit_s))
            self._plans[id(graph)] = entry
        return entry[1]

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        strategy = str(values["strategy"])
        plan = self.plans(cand.graph)[strategy]
        cand.plan = plan
        cand.figures["peak_ram_bytes"] = plan.arena_bytes
        cand.figures["extra_macs"] = sum(s["extra_macs"] for s in plan.patch_stages)
        cand.figures["memory_strategy"] = strategy
        cand.figures["tflm_rules"] = strategy in TFLM_RULES
        return cand
