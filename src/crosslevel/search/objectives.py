"""Objectives, hard limits, Pareto fronts and hypervolume of the cross-level search.

Four objectives, all minimized:

* ``accuracy_drop_pp``: baseline accuracy minus the candidate's, in percentage points,
  means over seeds, measured (deployed model, ONNX Runtime, held-out split). 0 for levels
  that cannot change outputs (memory plans are proven by execution);
* ``latency_ms``: predicted on the target device by the cost model (labelled predicted);
  the patch strategy's recomputed MACs scale it by (MACs + extra) / MACs;
* ``peak_ram_bytes``: the exact arena of the memory plan;
* ``flash_bytes``: the bytes of every constant (weights, biases, quantization tables).

Hard limits (the user's demands, and the device's SRAM and flash) are constraints, never
penalties: Optuna's ``constraints_func`` gets ``(value - limit) / limit`` per limit, and
a point counts as feasible only when every entry is <= 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crosslevel.search.space import Candidate

OBJECTIVES = ("accuracy_drop_pp", "latency_ms", "peak_ram_bytes", "flash_bytes")
LABELS = {
    "accuracy_drop_pp": "accuracy drop (pp)",
    "latency_ms": "latency (ms, predicted)",
    "peak_ram_bytes": "peak RAM (B)",
    "flash_bytes": "flash (B)",
}


@dataclass(frozen=True)
class Demands:
    """Hard limits per objective (None: no limit). Sizes in bytes."""

    max_accuracy_drop_pp: float | None = None
    max_latency_ms: float | None = None
    max_ram_bytes: int | None = None
    max_flash_bytes: int | None = None

    def limits(self) -> dict[str, float]:
        """Objective name -> limit, for the limits that are set."""
        pairs = zip(
            OBJECTIVES,
            (self.max_accuracy_drop_pp, self.max_latency_ms, self.max_ram_bytes,
             self.max_flash_bytes),
            strict=True,
        )  # fmt: skip
        return {name: float(v) for name, v in pairs if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_demands(
    device: Any,
    max_accuracy_drop_pp: float | None = None,
    max_latency_ms: float | None = None,
    max_ram_kib: float | None = None,
    max_flash_kib: float | None = None,
) -> Demands:
    """The user's demands tightened by the device: RAM <= its working memory (SRAM on an
    MCU), flash <= its flash (when it has one). KiB are 1,024 bytes."""
    ram = _tighter(max_ram_kib, device.memory_bytes if device is not None else None)
    flash = _tighter(max_flash_kib, device.flash_bytes if device is not None else None)
    return Demands(max_accuracy_drop_pp, max_latency_ms, ram, flash)


def _tighter(user_kib: float | None, device_bytes: int | None) -> int | None:
    options = [int(user_kib * 1024)] if user_kib is not None else []
    if device_bytes:
        options.append(int(device_bytes))
    return min(options) if options else None


def fill_costs(cand: Candidate, device: Any) -> None:
    """Flash, MACs, predicted latency and energy of ``cand.graph`` on ``device``, unless
    a level already set them (synthetic levels set every figure themselves)."""
    if cand.graph is None:
        return
    from crosslevel.hardware.cost_model import predict_latency
    from crosslevel.ir.ops import node_macs

    graph, fig = cand.graph, cand.figures
    consts = graph.constants()
    fig.setdefault("params", sum(t.num_elements for t in consts))
    fig.setdefault("flash_bytes", sum(t.nbytes for t in consts))
    macs = sum(node_macs(graph, n) for n in graph.nodes)
    fig.setdefault("macs", macs)
    if device is not None and "latency_ms" not in fig:
        pred = predict_latency(graph, device)
        scale = (macs + fig.get("extra_macs", 0)) / macs if macs else 1.0
        # The operator level's measured kernel speed ratios, per node (1 where unset).
        node_scale = fig.get("node_latency_scale", {})
        per_node = {n: ms * node_scale.get(n, 1.0) for n, ms in pred.per_node_ms.items()}
        total = pred.total_ms + sum(per_node.values()) - sum(pred.per_node_ms.values())
        kernels = total / pred.total_ms if pred.total_ms else 1.0
        fig["latency_ms"] = total * scale
        fig["energy_mj"] = pred.energy_mj * kernels * scale
        fig["latency_label"] = f"{pred.label} on {device.name}" + (
            ", int8 conv times scaled by host-measured kernel ratios" if node_scale else ""
        )
        fig["per_node_ms"] = per_node


def objective_values(figures: dict[str, Any], baseline_accuracy: float | None) -> list[float]:
    """The four objectives of one evaluated candidate (see the module docstring)."""
    acc = figures.get("accuracy")
    drop = 0.0 if acc is None or baseline_accuracy is None else 100.0 * (baseline_accuracy - acc)
    return [
        drop,
        float(figures["latency_ms"]),
        float(figures["peak_ram_bytes"]),
        float(figures["flash_bytes"]),
    ]


def violations(values: Sequence[float], demands: Demands) -> dict[str, float]:
    """Objective -> (value - limit) / limit for every limit (<= 0: met)."""
    limits = demands.limits()
    out = {}
    for name, value in zip(OBJECTIVES, values, strict=True):
        if name in limits:
            limit = limits[name]
            out[name] = (value - limit) / abs(limit) if limit else value - limit
    return out


def meets(values: Sequence[float], demands: Demands) -> dict[str, bool]:
    """Objective -> whether its limit is met (only limited objectives)."""
    return {name: v <= 0 for name, v in violations(values, demands).items()}


def constraint_vector(values: Sequence[float], demands: Demands) -> list[float]:
    """What Optuna's ``constraints_func`` returns: one entry per objective (0 when
    unlimited) so every trial of a study has the same length."""
    v = violations(values, demands)
    return [v.get(name, 0.0) for name in OBJECTIVES]


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b everywhere and better somewhere (minimization)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def pareto_indices(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (duplicates: the first one kept)."""
    keep: list[int] = []
    for i, p in enumerate(points):
        if any(dominates(q, p) for j, q in enumerate(points) if j != i):
            continue
        if any(list(points[j]) == list(p) for j in keep):
            continue
        keep.append(i)
    return keep


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``points`` below ``reference`` (minimization).

    Recursive slicing on the first axis (HSO): exact and fast enough for the fronts here
    (tens of points, up to four objectives). Points not strictly below the reference in
    every objective add nothing.
    """
    ref = np.asarray(reference, dtype=np.float64)
    pts = np.asarray([p for p in points if np.all(np.asarray(p) < ref)], dtype=np.float64)
    if pts.size == 0:
        return 0.0
    pts = pts.reshape(-1, len(ref))
    return _hso(pts[np.array(pareto_indices(pts.tolist()), dtype=int)], ref)


def _hso(pts: np.ndarray, ref: np.ndarray) -> float:
    if pts.shape[1] == 1:
        return float(ref[0] - pts[:, 0].min())
    order = np.argsort(pts[:, 0])
    pts = pts[order]
    total = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, 0] if i + 1 < len(pts) else ref[0]
        width = upper - pts[i, 0]
        if width > 0:
            total += width * _hso(pts[: i + 1, 1:], ref[1:])
    return total
