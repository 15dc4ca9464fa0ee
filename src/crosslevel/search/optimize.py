"""`crosslevel optimize` without the CLI: search, choose, prove, write OUT/.

The chosen point is the first of ``study.choose``'s order whose memory plan runs inside
its arena with the plain executor's outputs (``memory.verify.verify_in_arena``). Its
artifacts: ``model.onnx`` (what ONNX Runtime runs: int8 QDQ or float), ``plan.json``
(its memory plan), and for int8 points ``model.tflite``: the same int8 model with the
smallest plan within TFLM's rules stored as TFLM's offline plan, written only when the
stock tflite-micro runtime ran it with identical outputs and the planned head arena.
``variants.json`` lists the feasible front (each with its ONNX file under
``variants/``) for the controller.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosslevel.errors import InfeasibleError, UsageError
from crosslevel.hardware.devices import get_device
from crosslevel.ir.graph import Graph
from crosslevel.search.defaults import DEFAULT_DATA, DEFAULT_DEVICE, DEFAULT_MODEL
from crosslevel.search.graph_operator import GraphPassLevel, KernelLevel
from crosslevel.search.levels import MemoryLevel, ModelLevel
from crosslevel.search.objectives import LABELS, OBJECTIVES, Demands, device_demands, meets
from crosslevel.search.space import Candidate, Knob, KnobValue, Level, Space
from crosslevel.search.study import (
    Evaluator,
    Record,
    SearchResult,
    Settings,
    accuracy_tolerance,
    choose,
    diagnose,
    front_hypervolume,
    hv_points,
    reference_point,
    run_search,
    single_level_fronts,
)

RESULT_FORMAT = "crosslevel.optimize/1"
VARIANTS_FORMAT = "crosslevel.variants/1"
MAX_VARIANTS = 6
ZOO_PREFIX = "zoo:"


@dataclass
class GraphLevel:
    """A fixed model (file or zoo graph): no knobs, outputs never change."""

    graph: Graph
    source: str
    file_bytes: bytes | None = None
    kind: str = ""
    name: str = "input"
    changes_accuracy: bool = False

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return ()

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        cand.graph = self.graph
        cand.figures["model_label"] = self.source
        if self.kind == "tflite" and self.file_bytes is not None:
            cand.artifacts["int8.tflite"] = self.file_bytes
        if self.kind == "onnx" and self.file_bytes is not None:
            cand.artifacts["model.onnx"] = self.file_bytes
        return cand


@dataclass
class Request:
    model: str | None = None
    data: str | None = None
    device: str = DEFAULT_DEVICE
    max_latency_ms: float | None = None
    max_ram_kib: float | None = None
    max_flash_kib: float | None = None
    max_accuracy_drop_pp: float | None = None
    settings: Settings = field(default_factory=Settings)
    seeds: int = 3
    epochs: int | None = 4
    ablation_budget: int | None = None  # None: half the budget; 0: no ablations
    max_variants: int = MAX_VARIANTS
    cache_dir: Path | None = None
    ray: bool = False  # evaluate trials on a local Ray cluster started for this run
    ray_address: str | None = None  # ... or on the running cluster at this address
    edge: str | None = None  # with ``link``: the split level places a tail on this device
    link: str | None = None


def space_for(
    model: str | None, data: str | None, seeds: int, epochs: int | None, cache_dir: str | None,
    device: str = DEFAULT_DEVICE, edge: str | None = None, link: str | None = None,
) -> Space:
    """The request's space from plain values: what a Ray worker builds (``SpaceSpec``)."""
    req = Request(model=model, data=data, seeds=seeds, epochs=epochs, device=device, edge=edge,
                  link=link, cache_dir=Path(cache_dir) if cache_dir else None)  # fmt: skip
    return build_space(req)[0]


def _backend(req: Request, demands: Demands, device: str) -> Any:
    """A Ray backend when asked for (None: evaluate in this process)."""
    if not (req.ray or req.ray_address):
        return None
    from crosslevel.search.ray_backend import LOCAL_CPUS, RayBackend, SpaceSpec

    spec = SpaceSpec("crosslevel.search.optimize:space_for", {
        "model": req.model, "data": req.data, "seeds": req.seeds, "epochs": req.epochs,
        "cache_dir": str(req.cache_dir) if req.cache_dir else None, "device": req.device,
        "edge": req.edge, "link": req.link,
    })  # fmt: skip
    req.settings.parallel = max(req.settings.parallel, LOCAL_CPUS)
    return RayBackend(spec, demands, device, address=req.ray_address)


def build_space(req: Request) -> tuple[Space, dict[str, Any]]:
    """The levels searched for this request and a description of the model."""
    if req.model is None:
        name, data = DEFAULT_MODEL, req.data or DEFAULT_DATA
        return _zoo_space(name, data, req), {"model": f"zoo:{name}", "data": data}
    name = req.model[len(ZOO_PREFIX) :] if req.model.startswith(ZOO_PREFIX) else req.model
    from crosslevel.model.zoo import ZOO

    if name in ZOO and req.data is not None:
        return _zoo_space(name, req.data, req), {"model": f"zoo:{name}", "data": req.data}
    if req.data is not None:
        raise UsageError(
            "--data needs a zoo model (a PyTorch model to fine-tune); a model file is "
            "searched over accuracy-preserving levels only"
        )
    from crosslevel.ir.load import load_model

    spec = f"zoo:{name}" if name in ZOO else req.model
    loaded = load_model(spec)
    level = GraphLevel(loaded.graph, loaded.source, loaded.file_bytes, loaded.kind)
    info = {
        "model": loaded.source,
        "data": None,
        "note": "no PyTorch model and --data: only accuracy-preserving levels searched "
        "(graph, memory, operator); outputs are unchanged, so the accuracy drop is 0 by "
        "construction",
    }
    return Space(preserving_levels(level, req)), info


def preserving_levels(first: Level, req: Request) -> list[Level]:
    """``first`` then the accuracy-preserving levels, in the order they apply: graph
    passes before the memory plan (it is made for the rewritten graph), kernels, and
    last the split (it replaces latency, RAM and flash by the device part's)."""
    levels = [first, GraphPassLevel(), MemoryLevel(), KernelLevel(cache_dir=req.cache_dir)]
    if req.edge is not None or req.link is not None:
        levels.append(_split_level(req))
    return levels


def _split_level(req: Request) -> Level:
    """The distributed level between ``req.device`` and ``req.edge`` over ``req.link``."""
    if req.edge is None or req.link is None:
        raise UsageError("--edge and --link go together (the split needs both)")
    from crosslevel.distributed.search_level import SplitLevel
    from crosslevel.hardware.devices import get_device, get_link

    get_device(req.edge)  # unknown names: exit 2 before any search
    # Split point only: int8 cut tensors change outputs, which the search measures only
    # for the model level's knobs.
    return SplitLevel(get_link(req.link), device=req.device, edge=req.edge, compression=False)


def _zoo_space(name: str, data: str, req: Request) -> Space:
    level = ModelLevel(name, data, seeds=req.seeds, epochs=req.epochs, cache_dir=req.cache_dir)
    level.config({k.name: k.choices[0] for k in level.knobs}).validate()  # unknown data: exit 2
    return Space(preserving_levels(level, req))


Progress = Callable[[int, int, str], None]


@dataclass
class Outcome:
    result: dict[str, Any]
    written: list[str]
    records: list[Record]
    demands: Demands


@dataclass
class Prepared:
    """A request checked and resolved before any search (usage errors come out here)."""

    req: Request
    device: Any
    demands: Demands
    space: Space
    info: dict[str, Any]


def check_demands(req: Request) -> None:
    """Each given demand is a finite number, positive (an accuracy drop may be 0): a NaN
    or negative limit would otherwise surface as an overflow or as 'infeasible'."""
    given = {"--max-latency-ms": req.max_latency_ms, "--max-ram-kb": req.max_ram_kib,
             "--max-flash-kb": req.max_flash_kib}  # fmt: skip
    for option, value in given.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} must be a positive number, got {value}")
    drop = req.max_accuracy_drop_pp
    if drop is not None and not (math.isfinite(drop) and drop >= 0):
        raise UsageError(f"--max-accuracy-drop must be >= 0 percentage points, got {drop}")


def prepare(req: Request) -> Prepared:
    req.settings.validate()
    check_demands(req)
    if req.max_variants < 1:
        raise UsageError(f"--max-variants must be >= 1, got {req.max_variants}")
    device = get_device(req.device)  # UsageError naming the known devices
    demands = device_demands(
        device, req.max_accuracy_drop_pp, req.max_latency_ms, req.max_ram_kib, req.max_flash_kib
    )
    space, info = build_space(req)
    return Prepared(req, device, demands, space, info)


def optimize(req: Request | Prepared, out: Path, progress: Progress | None = None) -> Outcome:
    """Search, pick and prove the chosen point, write every file of OUT/."""
    prep = req if isinstance(req, Prepared) else prepare(req)
    req, device, demands, space, info = prep.req, prep.device, prep.demands, prep.space, prep.info
    evaluator = Evaluator(space, demands, device)
    fingerprint = {**info, "device": device.name, "demands": demands.to_dict(),
                   "space": {k: list(v) for k, v in space.params().items()},
                   "seeds": req.seeds, "epochs": req.epochs,
                   "trial": "sampled accuracy-changing knobs + inner front"}  # fmt: skip
    backend = _backend(req, demands, device.name)
    try:
        res, ablations = _search(space, evaluator, req, fingerprint, progress, backend)
    finally:
        if backend is not None:
            backend.close()
    if not res.records:  # not "infeasible": nothing was tried
        raise UsageError(
            f"no candidate was evaluated before the search stopped ({res.stopped_by}); "
            "raise --time-budget or --budget"
        )
    if not res.feasible_front():
        raise InfeasibleError(infeasible_message(res, demands))
    chosen, cand, check = _prove(evaluator, choose(res, demands))
    out.mkdir(parents=True, exist_ok=True)
    written, tflm = _write_artifacts(out, cand)
    variants = _write_variants(out, evaluator, res, demands, chosen, device.name, req.max_variants)
    written.append("variants.json")
    result = assemble(info, device, demands, req, res, ablations, chosen, cand, check, tflm,
                      variants)  # fmt: skip
    from crosslevel.search.report import write_report

    write_report(out, result, cand)
    written += ["report.html", "result.json"]
    return Outcome(result, written, res.records, demands)


def _search(
    space: Space,
    evaluator: Evaluator,
    req: Request,
    fingerprint: dict[str, Any],
    progress: Progress | None,
    backend: Any,
) -> tuple[SearchResult, dict[str, list[Record]]]:
    """The joint search, then (when it found a feasible point) the single-level ones."""
    res = run_search(space, evaluator, req.settings, fingerprint, progress, backend)
    searchable = space.searched()
    budget = req.ablation_budget if req.ablation_budget is not None else req.settings.budget // 2
    if not res.feasible_front() or budget <= 0 or len(searchable) <= 1:
        return res, {}
    ablations = single_level_fronts(space, evaluator, req.settings, budget, backend)
    return res, {k: v for k, v in ablations.items() if k in searchable}


def infeasible_message(res: SearchResult, demands: Demands) -> str:
    diag = diagnose(res, demands)
    label = LABELS.get(diag.hardest, diag.hardest)
    limit = demands.limits()[diag.hardest]
    lines = [
        f"no point meets the demands after {res.evaluated_total} trials "
        f"({len(res.records)} points); hardest "
        "demand: "
        f"{label} <= {limit:g} (even the best point misses it by "
        f"{100 * diag.best_violation:.1f} %)",
        "nearest points:",
    ]
    for r in diag.nearest:
        missed = [LABELS[k] for k, ok in meets(r.values, demands).items() if not ok]
        # An analytic point was never fine-tuned: it has no measured accuracy to show.
        vals = ", ".join(
            f"{LABELS[n]} {_fmt(n, v) if r.measured or n != 'accuracy_drop_pp' else 'not measured'}"
            for n, v in zip(OBJECTIVES, r.values, strict=True)
        )
        lines.append(f"  {_knobs(r.params)} ({r.stage}): {vals}; misses {', '.join(missed)}")
    return "\n".join(lines)


def _fmt(name: str, value: float) -> str:
    if name in ("peak_ram_bytes", "flash_bytes"):
        return f"{int(value):,}"
    return f"{value:.3f}"


def _knobs(params: Mapping[str, KnobValue]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "(no knobs)"


def _prove(evaluator: Evaluator, order: list[Record]) -> tuple[Record, Candidate, dict[str, Any]]:
    """The first point whose plan ran correctly inside its arena."""
    from crosslevel.memory.verify import verify_in_arena

    failures = []
    for rec in order:
        cand = evaluator.candidate(rec.params, exact=True)
        check = verify_in_arena(cand.graph, cand.plan)
        if check.verified:
            return rec, cand, {**asdict(check), "verified": True}
        failures.append(f"{_knobs(rec.params)}: {check.error or 'outputs differ'}")
    raise InfeasibleError("no feasible point's memory plan ran correctly: " + "; ".join(failures))


def _write_artifacts(out: Path, cand: Candidate) -> tuple[list[str], dict[str, Any] | None]:
    from crosslevel.memory.plan import write_plan

    written = []
    for stale in ("model.onnx", "model.tflite"):
        (out / stale).unlink(missing_ok=True)
    if "model.onnx" in cand.artifacts:
        (out / "model.onnx").write_bytes(cand.artifacts["model.onnx"])
        written.append("model.onnx")
    write_plan(cand.plan, out / "plan.json")
    written.append("plan.json")
    tflm = _tflm_file(cand)
    if tflm is not None and tflm["verified"]:
        (out / "model.tflite").write_bytes(tflm.pop("file"))
        written.append("model.tflite")
    elif tflm is not None:
        tflm.pop("file", None)
    return written, tflm


def _tflm_file(cand: Candidate) -> dict[str, Any] | None:
    """The int8 model with the smallest plan within TFLM's rules, checked in tflite-micro."""
    original = cand.artifacts.get("int8.tflite")
    if original is None:
        return None
    from crosslevel.memory.strategies import plan_strategies
    from crosslevel.memory.verify import tflm_ready_file, verify_in_tflm

    plan = plan_strategies(cand.graph, 2.0)["best"]
    ready = tflm_ready_file(cand.graph, plan)
    check = verify_in_tflm(original, ready, cand.graph, plan)
    return {**asdict(check), "verified": check.verified, "strategy": plan.strategy,
            "file": ready}  # fmt: skip


def _variant_name(rec: Record) -> str:
    text = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in rec.params.items()) or "input"
    return re.sub(r"[^A-Za-z0-9_.-]", "", text)


def _write_variants(
    out: Path,
    evaluator: Evaluator,
    res: SearchResult,
    demands: Demands,
    chosen: Record,
    device: str,
    max_variants: int,
) -> list[dict[str, Any]]:
    """variants.json (DESIGN.md contract) over the feasible front, chosen point first."""
    from crosslevel.memory.plan import write_plan

    front = variant_table(chosen, choose(res, demands), max_variants)
    local = _local_fallback(evaluator, front)
    if local is not None:
        front.append(local)
    folder = out / "variants"
    folder.mkdir(exist_ok=True)
    variants = []
    for rec in front:
        cand = evaluator.candidate(rec.params, exact=True)
        name = _variant_name(rec)
        files = {}
        if "model.onnx" in cand.artifacts:
            (folder / f"{name}.onnx").write_bytes(cand.artifacts["model.onnx"])
            files["onnx"] = f"variants/{name}.onnx"
        elif "int8.tflite" in cand.artifacts:  # a .tflite input: the model itself
            (folder / f"{name}.tflite").write_bytes(cand.artifacts["int8.tflite"])
            files["tflite"] = f"variants/{name}.tflite"
        write_plan(cand.plan, folder / f"{name}.plan.json")
        files["plan"] = f"variants/{name}.plan.json"
        variants.append(_variant(rec, name, files, device, rec is chosen))
    doc = {"format": VARIANTS_FORMAT, "device": device, "demands": demands.to_dict(),
           "variants": variants}  # fmt: skip
    (out / "variants.json").write_text(json.dumps(doc, indent=2) + "\n")
    return variants


def variant_table(chosen: Record, order: list[Record], max_variants: int) -> list[Record]:
    """The controller's table: the chosen point, then the front's extremes the controller
    needs when the context moves (the most accurate point, and the fastest for heavy CPU
    load), then the rest in ``choose``'s order, up to ``max_variants``."""
    extremes = [min(order, key=lambda r: r.values), min(order, key=lambda r: r.values[1])]
    table = [chosen]
    for rec in [*extremes, *order]:
        if len(table) < max_variants and all(rec is not r for r in table):
            table.append(rec)
    return table


def _local_fallback(evaluator: Evaluator, table: list[Record]) -> Record | None:
    """For a table of split points only, the most accurate one run wholly on the device:
    the controller's variant for when the link is gone (on RAM and flash an all-edge
    split dominates every all-device point, so the front may hold none)."""
    if SPLIT_KNOB not in table[0].params or any(_split(r.figures) is None for r in table):
        return None
    best = min(table, key=lambda r: r.values[0])
    return evaluator.point({**best.params, SPLIT_KNOB: 1.0})


def _variant(
    rec: Record, name: str, files: dict[str, str], device: str, chosen: bool
) -> dict[str, Any]:
    fig = rec.figures
    if "accuracy" in fig:
        accuracy: dict[str, Any] | None = {
            "kind": "accuracy", "mean": fig["accuracy"], "std": fig.get("accuracy_std"),
            "seeds": fig.get("accuracy_seeds"),
        }  # fmt: skip
    else:
        accuracy = {"kind": "fidelity", "note": "outputs unchanged (memory level only)"}
    return {
        "name": name,
        "chosen": chosen,
        "knobs": rec.params,
        "model_files": files,
        "accuracy": accuracy,
        "accuracy_drop_pp": rec.values[0],
        "latency_ms": {
            "value": rec.values[1],
            "kind": "predicted",
            "device": device,
            "label": fig.get("latency_label", "predicted"),
        },  # fmt: skip
        "host_latency_ms": (
            {"value": fig["host_latency_ms"], "kind": "measured", "device": "host"}
            if "host_latency_ms" in fig
            else None
        ),  # fmt: skip
        "peak_ram_bytes": int(rec.values[2]),
        "flash_bytes": int(rec.values[3]),
        "memory_strategy": fig.get("memory_strategy"),
        "split": _split(fig),
    }


SPLIT_FIGURES = ("device_ms", "remote_ms", "up_bytes", "down_bytes")
SPLIT_KNOB = "split.split"  # the distributed level's split point (1.0: all on the device)


def _split(fig: dict[str, Any]) -> dict[str, float] | None:
    """The controller's split record (``control.variants.Split``) when a distributed level
    set ``split_device_ms``, ``split_remote_ms``, ``split_up_bytes`` and
    ``split_down_bytes``; None for a variant that runs wholly on the device."""
    if not all(f"split_{k}" in fig for k in SPLIT_FIGURES):
        return None
    return {k: fig[f"split_{k}"] for k in SPLIT_FIGURES}


def assemble(
    info: dict[str, Any],
    device: Any,
    demands: Demands,
    req: Request,
    res: SearchResult,
    ablations: dict[str, list[Record]],
    chosen: Record,
    cand: Candidate,
    arena_check: dict[str, Any],
    tflm: dict[str, Any] | None,
    variants: list[dict[str, Any]],
) -> dict[str, Any]:
    """result.json: every number the page shows, from one place."""
    from crosslevel.report.analyze import layer_rows

    joint_hv = front_hypervolume(res.records, res.baseline, demands)
    per_node = cand.figures.get("per_node_ms", {})
    layers = [{**asdict(row), "predicted_ms": per_node.get(row.name)}
              for row in layer_rows(cand.graph)]  # fmt: skip
    return {
        "format": RESULT_FORMAT,
        **info,
        "device": device.to_dict(),
        "demands": demands.to_dict(),
        "objectives": list(OBJECTIVES),
        "settings": {
            **asdict(req.settings),
            "study_path": str(req.settings.study_path or ""),
            "seeds": req.seeds,
            "epochs": req.epochs,
        },  # fmt: skip
        "search": {
            "trials_total": res.trials_total,
            "trials_this_run": res.trials_this_run,
            "evaluated_total": res.evaluated_total,
            "evaluated_this_run": res.evaluated_this_run,
            "measured_this_run": res.measured_this_run,
            "analytic_this_run": res.analytic_this_run,
            "points_total": len(res.records),
            "elapsed_s": res.elapsed_s,
            "stopped_by": res.stopped_by,
            "resumed_from": res.resumed_from,
        },  # fmt: skip
        "baseline": res.baseline.to_dict(),
        "baseline_meets": meets(res.baseline.values, demands),
        "trials": [r.to_dict() for r in res.records],
        "front": [_front_row(r, demands) for r in res.front()],
        "chosen": {
            **_front_row(chosen, demands),
            "arena_check": arena_check,
            "tflm_check": tflm,
        },  # fmt: skip
        "hypervolume": {
            "reference": reference_point(res.baseline),
            "objectives": list(OBJECTIVES[1:]),
            "accuracy_tolerance_pp": accuracy_tolerance(demands),
            "joint": joint_hv,
            "single_level": {
                name: front_hypervolume(recs, res.baseline, demands)
                for name, recs in ablations.items()
            },
            # How many points each hypervolume is over (same filter as the volume).
            "points": {
                "joint": len(hv_points(res.records, demands)),
                **{name: len(hv_points(recs, demands)) for name, recs in ablations.items()},
            },
        },
        "ablations": {
            name: [_front_row(r, demands) for r in recs if r.measured and r.feasible]
            for name, recs in ablations.items()
        },
        "hv_points_joint": hv_points(res.records, demands),
        "layers": layers,
        "variants": variants,
        "notes": _notes(info, cand),
    }


def _front_row(rec: Record, demands: Demands) -> dict[str, Any]:
    return {**rec.to_dict(), "meets": meets(rec.values, demands)}


def _notes(info: dict[str, Any], cand: Candidate) -> list[str]:
    notes = [
        "latency: predicted for the target by the cost model (uncalibrated for MCUs); "
        "host latency, where shown, is measured here with ONNX Runtime (1 thread, median)",
        "peak RAM: the exact arena of the memory plan; flash: bytes of all constants",
    ]
    if info.get("data"):
        notes.insert(
            1,
            "accuracy: deployed ONNX model in ONNX Runtime on held-out data, mean over seeds; "
            "accuracy drop in percentage points against the unoptimized model",
        )
    if info.get("note"):
        notes.append(info["note"])
    if cand.figures.get("dtype") == "int8" and info.get("data"):
        notes.append(
            "int8 points: figures of the TFLite-semantics int8 model (model.tflite); "
            "accuracy of the ONNX QDQ model (model.onnx)"
        )
    return notes
