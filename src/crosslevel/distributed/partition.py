"""The partition planner: where each node runs, checked by execution, written as a plan.

``plan_partition`` builds the cost problem (per-node times predicted by the cost model for
each tier's device, labelled; links from the catalogue), picks the exact solver that fits
the case (min-cut for two tiers without limits and an additive objective, HiGHS ILP
otherwise), compares it with Neurosurgeon's chain-only search, then proves the split by
running every part and comparing with the whole model (ONNX Runtime and DESIGN.md's
float tolerance; for int8 TFLite graphs, TFLite Micro and bit-exact: ``parts``), times
each part on this host (labelled measured, host) and, when the cut tensors are
int8-compressed, measures the fidelity lost on fixed random inputs.

``write_plan`` writes OUT/plan.json (``crosslevel.partition/1``), one model per non-empty
tier (``tier0_device.onnx`` ..., or ``.tflite`` for int8 graphs) and the whole model
(``model.onnx`` / ``model.tflite``: the device's fallback). ``load_plan`` validates an
untrusted plan: any failure is one InvalidModelError naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.distributed.parts import (
    ONNX,
    TFLITE,
    PartSession,
    export_part,
    part_format,
    time_part,
)
from crosslevel.distributed.problem import OBJECTIVES, Problem
from crosslevel.distributed.solvers import solve_chain, solve_ilp, solve_mincut
from crosslevel.distributed.split import Split, check_assignment, split_graph
from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.files import file_inside, read_json_document
from crosslevel.hardware.cost_model import predict_latency
from crosslevel.hardware.devices import Device, Link
from crosslevel.ir.graph import DTYPE_BYTES, Graph

FORMAT = "crosslevel.partition/1"
ROLES = ("device", "edge", "cloud")
MAX_PLAN_BYTES = 4 * 1024 * 1024
MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024
FIDELITY_INPUTS = 8


@dataclass
class PartitionResult:
    """A solved, verified placement and everything the plan JSON records."""

    problem: Problem
    tier_of: dict[str, int]
    split: Split
    method: str
    value: float
    chain_value: float
    plan: dict[str, Any]
    models: list[bytes | None]  # per tier, in the plan's format (``parts``)
    whole: bytes
    fmt: str = ONNX
    candidate_models: list[list[bytes | None]] = field(default_factory=list)


def node_times(graph: Graph, device: Device) -> tuple[dict[str, float], str]:
    """Per-node predicted ms on ``device`` and the prediction's label."""
    pred = predict_latency(graph, device)
    return {n.name: pred.per_node_ms.get(n.name, 0.0) for n in graph.nodes}, pred.label


def build_problem(
    graph: Graph,
    devices: list[Device],
    links: list[Link],
    objective: str = "latency",
    ram_limit: int | None = None,
    flash_limit: int | None = None,
    compress_int8: bool = False,
) -> Problem:
    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}; use {', '.join(OBJECTIVES)}")
    if not 2 <= len(devices) <= 3 or len(links) != len(devices) - 1:
        raise UsageError("give two or three tiers and one link between each neighbouring pair")
    graph.validate()
    node_ms = [node_times(graph, d)[0] for d in devices]
    return Problem(graph, devices, links, node_ms, objective, ram_limit, flash_limit, compress_int8)


def solve(problem: Problem) -> tuple[dict[str, int], float, str]:
    """The exact solver for the case: min-cut where it applies, HiGHS ILP otherwise."""
    if problem.n_tiers == 2 and problem.additive and not problem.has_limits:
        tier_of, value = solve_mincut(problem)
        return tier_of, value, "mincut (NetworkX, exact)"
    tier_of, value, rounds = solve_ilp(problem)
    return tier_of, value, f"ilp (HiGHS, exact, {rounds} round(s))"


def _random_inputs(graph: Graph, count: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[random_tensor(rng, graph.tensors[n].shape, graph.tensors[n].dtype)
             for n in graph.inputs] for _ in range(count)]  # fmt: skip


def random_tensor(rng: np.random.Generator, shape: Any, dtype: str) -> np.ndarray:
    """Standard normal floats, or integers over the whole range of an integer dtype."""
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        return rng.integers(info.min, int(info.max) + 1, size=shape).astype(kind)
    return rng.standard_normal(shape).astype(kind)


def quantize_int8(x: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Per-tensor asymmetric int8 (min-max of this tensor): what goes on the wire."""
    lo = min(float(x.min()), 0.0)
    hi = max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero = int(np.clip(round(-128 - lo / scale), -128, 127))
    q = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
    return q, scale, zero


def dequantize_int8(q: np.ndarray, scale: float, zero: int) -> np.ndarray:
    return ((q.astype(np.int32) - zero) * np.float32(scale)).astype(np.float32)


class PartRunner:
    """Sessions of a split's parts (ONNX Runtime or TFLM), run in tier order on one host."""

    def __init__(self, split: Split, models: list[bytes | None], fmt: str = ONNX) -> None:
        self.split = split
        self.sessions = [None if m is None else PartSession(m, fmt) for m in models]

    def run_tier(self, k: int, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run tier k on ``values`` (which hold its inputs); returns its outputs by name."""
        part = self.split.parts[k]
        session = self.sessions[k]
        if part is None or session is None:
            return {}
        outs = session.run([values[n] for n in part.inputs])
        return dict(zip(part.outputs, outs, strict=True))

    def run(self, inputs: list[np.ndarray], graph: Graph, compress: bool) -> list[np.ndarray]:
        values = dict(zip(graph.inputs, inputs, strict=True))
        for k in range(len(self.split.parts)):
            if k > 0 and compress:
                for name in self.split.boundary[k - 1]:
                    if values[name].dtype == np.float32:
                        values[name] = dequantize_int8(*quantize_int8(values[name]))
            values.update(self.run_tier(k, values))
        return [values[o] for o in graph.outputs]


def verify_split(
    graph: Graph, runner: PartRunner, whole: bytes, compress: bool, fmt: str = ONNX
) -> dict[str, Any]:
    """Split vs whole model on fixed random inputs: max |diff| and top-1 agreement. Int8
    TFLite parts must be bit-exact (tolerance 0); float ones within DESIGN.md's."""
    session = PartSession(whole, fmt)
    worst = 0.0
    ref_max = 0.0
    agree = 0
    inputs = _random_inputs(graph, FIDELITY_INPUTS)
    for x in inputs:
        ref = session.run(x)
        got = runner.run(x, graph, compress)
        for r, g in zip(ref, got, strict=True):
            worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - g))))
            ref_max = max(ref_max, float(np.max(np.abs(r))))
        agree += int(np.argmax(ref[0]) == np.argmax(got[0]))
    tol = 0.0 if fmt == TFLITE else 1e-5 * max(1.0, ref_max)
    runtime = "TFLite Micro" if fmt == TFLITE else "ONNX Runtime"
    return {
        "inputs": len(inputs),
        "max_abs_diff": worst,
        "tolerance": tol,
        "within_tolerance": worst <= tol,
        "top1_agreement": agree / len(inputs),
        "label": f"fidelity on fixed random inputs (seed 0), split vs whole model in {runtime}",
    }


def measure_parts(
    split: Split, models: list[bytes | None], graph: Graph, fmt: str = ONNX
) -> list[float | None]:
    """Median ms of each part on this host (ONNX Runtime or TFLM, 1 thread)."""
    x = _random_inputs(graph, 1)[0]
    runner = PartRunner(split, models, fmt)
    values = dict(zip(graph.inputs, x, strict=True))
    times: list[float | None] = []
    for k, model in enumerate(models):
        part = split.parts[k]
        if model is None or part is None:
            times.append(None)
            continue
        feed = [values[n] for n in part.inputs]
        times.append(time_part(model, fmt, feed))
        values.update(runner.run_tier(k, values))
    return times


def export_parts(split: Split, fmt: str = ONNX) -> list[bytes | None]:
    return [None if p is None else export_part(p, fmt) for p in split.parts]


def plan_partition(
    graph: Graph,
    roles: list[str],
    devices: list[Device],
    links: list[Link],
    objective: str = "latency",
    ram_limit: int | None = None,
    flash_limit: int | None = None,
    compress_int8: bool = False,
    source: str = "",
    assignment: dict[str, int] | None = None,
    candidates: int = 0,
) -> PartitionResult:
    """Solve, verify by execution and measure one placement (see the module docstring).

    ``assignment`` replaces the solver's choice (benchmarks and tests evaluate given splits);
    ``candidates`` > 0 adds up to that many chain splits for run-time switching
    (``adaptive.plan_candidates``; two tiers only).
    """
    fmt = part_format(graph)
    if fmt == TFLITE and compress_int8:
        raise UsageError("--compress-int8: the cut tensors of an int8 model are int8 already")
    problem = build_problem(graph, devices, links, objective, ram_limit, flash_limit, compress_int8)
    if assignment is not None:
        check_assignment(graph, assignment, problem.n_tiers)  # before costing it
        tier_of, value, method = assignment, problem.cost(assignment), "given"
    else:
        tier_of, value, method = solve(problem)
    chain_tier_of, chain_value, chain_rows = solve_chain(problem)
    split = split_graph(graph, tier_of, problem.n_tiers)
    models = export_parts(split, fmt)
    whole = export_part(graph, fmt)
    fidelity = verify_split(graph, PartRunner(split, models, fmt), whole, compress_int8, fmt)
    if not compress_int8 and not fidelity["within_tolerance"]:
        raise InvalidModelError(
            f"split outputs differ from the whole model by {fidelity['max_abs_diff']:.3g} "
            f"(tolerance {fidelity['tolerance']:.3g}); the plan is not written"
        )
    host_ms = measure_parts(split, models, graph, fmt)
    plan = _plan_json(
        problem, roles, split, tier_of, method, value, fidelity, host_ms, source, models, fmt
    )
    plan["chain_search"] = {
        "method": "Neurosurgeon-style: every prefix of the node order",
        "value": chain_value,
        "splits_evaluated": len(chain_rows),
        "device_nodes": sum(1 for t in chain_tier_of.values() if t == 0),
    }
    result = PartitionResult(
        problem, tier_of, split, method, value, chain_value, plan, models, whole, fmt
    )
    if candidates > 0:
        from crosslevel.distributed.adaptive import candidate_entries, plan_candidates

        if problem.n_tiers != 2:
            raise UsageError("run-time split candidates need a two-tier plan")
        entries, result.candidate_models = candidate_entries(
            problem, plan_candidates(problem, candidates)
        )
        plan["candidates"] = entries
    return result


def _tensor_spec(graph: Graph, name: str) -> dict[str, Any]:
    t = graph.tensors[name]
    spec = {"name": name, "shape": list(t.shape), "dtype": t.dtype, "bytes": t.nbytes}
    if t.quant is not None and t.quant.scale.size == 1:  # an int8 tensor's meaning
        zero = int(np.asarray(t.quant.zero_point).reshape(-1)[0])
        spec["quant"] = {"scale": float(t.quant.scale[0]), "zero_point": zero}
    return spec


def _plan_json(
    problem: Problem,
    roles: list[str],
    split: Split,
    tier_of: dict[str, int],
    method: str,
    value: float,
    fidelity: dict[str, Any],
    host_ms: list[float | None],
    source: str,
    models: list[bytes | None],
    fmt: str,
) -> dict[str, Any]:
    g = problem.graph
    b = problem.breakdown(tier_of)
    labels = [node_times(g, d)[1] for d in problem.devices]
    tiers = []
    for k, (role, dev) in enumerate(zip(roles, problem.devices, strict=True)):
        part = split.parts[k]
        tiers.append(
            {
                "role": role,
                "device": dev.name,
                "nodes": [n.name for n in g.nodes if tier_of[n.name] == k],
                "model_file": None if part is None else f"tier{k}_{role}.{fmt}",
                "inputs": [] if part is None else [_tensor_spec(g, n) for n in part.inputs],
                "outputs": [] if part is None else [_tensor_spec(g, n) for n in part.outputs],
                "compute_ms": b["compute_ms"][k],
                "compute_label": labels[k],
                "host_measured_ms": host_ms[k],
                "sha256": _sha256(models[k]),
            }
        )
    tiers[0]["ram_bytes"] = problem.device_ram(tier_of)
    tiers[0]["flash_bytes"] = problem.device_flash(tier_of)
    links = [
        {
            "name": link.name,
            "from": roles[k],
            "to": roles[k + 1],
            "tensors": [_tensor_spec(g, n) for n in split.boundary[k]],
            "returned": [_tensor_spec(g, n) for n in split.returned[k]],
            "wire_bytes": sum(problem.wire_bytes(n) for n in split.boundary[k]),
            "transfer_ms": b["transfer_ms"][k],
            "rtt_ms": b["rtt_ms"][k],
            "model_up_mbps": link.bandwidth_up_bps / 1e6,
            "model_rtt_ms": link.rtt_ms,
            "label": "predicted from the link model",
        }
        for k, link in enumerate(problem.links)
    ]
    return {
        "format": FORMAT,
        "model": source or g.name,
        "objective": problem.objective,
        "objective_value": value,
        "method": method,
        "compress_int8": problem.compress_int8,
        "ram_limit_bytes": problem.ram_limit,
        "flash_limit_bytes": problem.flash_limit,
        "inputs": [_tensor_spec(g, n) for n in g.inputs],
        "outputs": [_tensor_spec(g, n) for n in g.outputs],
        "whole_model_file": f"model.{fmt}",
        "runtime": "tflite-micro" if fmt == TFLITE else "onnxruntime",
        "tiers": tiers,
        "links": links,
        "fidelity": fidelity,
    }


def write_plan(result: PartitionResult, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for tier, model in zip(result.plan["tiers"], result.models, strict=True):
        if model is not None:
            path = out / tier["model_file"]
            path.write_bytes(model)
            written.append(path)
    for entry, parts in zip(result.plan.get("candidates", []), result.candidate_models,
                            strict=True):  # fmt: skip
        for tier, model in zip(entry["tiers"], parts, strict=True):
            if model is not None:
                path = out / tier["model_file"]
                path.write_bytes(model)
                written.append(path)
    whole = out / result.plan["whole_model_file"]
    whole.write_bytes(result.whole)
    (out / "plan.json").write_text(json.dumps(result.plan, indent=2))
    return [*written, whole, out / "plan.json"]


def _sha256(model: bytes | None) -> str | None:
    return None if model is None else hashlib.sha256(model).hexdigest()


# ----------------------------------------------------------------------------- loading
def _fail(where: str, why: str) -> InvalidModelError:
    return InvalidModelError(f"partition plan: {where}: {why}")


def _check_spec(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise _fail(where, "must be an object")
    name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("dtype")
    if not isinstance(name, str) or not name or len(name) > 512:
        raise _fail(where, "name must be a non-empty string")
    if not isinstance(shape, list) or len(shape) > 8:
        raise _fail(where, "shape must be a list of at most 8 sizes")
    ok = (isinstance(d, int) and not isinstance(d, bool) and 0 < d for d in shape)
    if not all(ok):
        raise _fail(where, f"shape {shape!r} must hold positive integers")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:  # Python ints: no int64 overflow
        raise _fail(where, f"shape {shape!r} is larger than {MAX_TENSOR_ELEMENTS} elements")
    if dtype not in DTYPE_BYTES:
        raise _fail(where, f"unknown dtype {dtype!r}")
    return {"name": name, "shape": shape, "dtype": dtype}


def _safe_file(folder: Path, name: Any, where: str) -> Path:
    try:
        return file_inside(folder, name)
    except ValueError as exc:
        raise _fail(where, str(exc)) from None


def load_plan(path: Path) -> dict[str, Any]:
    """Read and validate a ``crosslevel.partition/1`` file (path to plan.json or its folder)."""
    path = path / "plan.json" if path.is_dir() else path
    if not path.is_file():
        raise UsageError(f"plan {path} does not exist")
    try:
        doc = read_json_document(path, FORMAT, MAX_PLAN_BYTES)
    except ValueError as exc:
        raise _fail(str(path), str(exc)) from None
    _drop_private(doc)
    for key in ("inputs", "outputs", "tiers", "links"):
        if not isinstance(doc.get(key), list):
            raise _fail(key, "must be a list")
    for i, spec in enumerate([*doc["inputs"], *doc["outputs"]]):
        _check_spec(spec, f"inputs/outputs[{i}]")
    tiers = doc["tiers"]
    if not 2 <= len(tiers) <= 3 or len(doc["links"]) != len(tiers) - 1:
        raise _fail("tiers", "need 2 or 3 tiers and one link fewer")
    folder = path.parent
    for k, tier in enumerate(tiers):
        _check_tier(tier, k, folder)
    for k, link in enumerate(doc["links"]):
        if not isinstance(link, dict):
            raise _fail(f"links[{k}]", "must be an object")
        for key in ("tensors", "returned"):
            if not isinstance(link.get(key), list):
                raise _fail(f"links[{k}].{key}", "must be a list")
            for j, spec in enumerate(link[key]):
                _check_spec(spec, f"links[{k}].{key}[{j}]")
    _check_flow(doc)
    if "candidates" in doc:
        _check_candidates(doc, folder)
    doc["_folder"] = str(folder)
    doc["_whole"] = str(_safe_file(folder, doc.get("whole_model_file"), "whole_model_file"))
    if not isinstance(doc.get("compress_int8"), bool):
        raise _fail("compress_int8", "must be true or false")
    return doc


def _check_candidates(doc: dict[str, Any], folder: Path) -> None:
    """Run-time split candidates: each a two-tier mini plan with its predicted figures."""
    from crosslevel.distributed.adaptive import MAX_CANDIDATES

    cands = doc["candidates"]
    if not isinstance(cands, list) or not 1 <= len(cands) <= MAX_CANDIDATES:
        raise _fail("candidates", f"must be a list of 1..{MAX_CANDIDATES} splits")
    for i, cand in enumerate(cands):
        where = f"candidates[{i}]"
        if not isinstance(cand, dict) or not isinstance(cand.get("local"), bool):
            raise _fail(where, "must be an object with a boolean 'local'")
        for key in ("device_nodes", "device_ms", "edge_ms", "up_bytes", "down_bytes"):
            value = cand.get(key)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
                raise _fail(f"{where}.{key}", "must be a finite number >= 0")
        tiers, links = cand.get("tiers"), cand.get("links")
        if not isinstance(tiers, list) or len(tiers) != 2 or not isinstance(links, list):
            raise _fail(where, "needs two tiers and one link")
        mini = {"inputs": doc["inputs"], "outputs": doc["outputs"], "tiers": tiers,
                "links": links}  # fmt: skip
        _drop_private(mini)
        files = [t.get("model_file") if isinstance(t, dict) else None for t in tiers]
        if cand["local"] and any(f is not None for f in files):
            raise _fail(where, "a local candidate has no part files")
        for k, tier in enumerate(tiers):
            _check_tier(tier, k, folder)
        if cand["local"]:  # all on the device: it runs the whole model, nothing is sent
            continue
        if len(links) != 1 or not isinstance(links[0], dict):
            raise _fail(f"{where}.links", "must hold one object")
        for key in ("tensors", "returned"):
            if not isinstance(links[0].get(key), list):
                raise _fail(f"{where}.links[0].{key}", "must be a list")
            for j, spec in enumerate(links[0][key]):
                _check_spec(spec, f"{where}.links[0].{key}[{j}]")
        _check_flow(mini)


def _names(specs: list[dict[str, Any]]) -> set[str]:
    return {s["name"] for s in specs}


def _need(have: set[str], specs: list[dict[str, Any]], where: str) -> None:
    missing = sorted(_names(specs) - have)
    if missing:
        raise _fail(where, f"tensors {missing} are produced by no earlier tier or link")


def _check_flow(doc: dict[str, Any]) -> None:
    """Every tensor a side reads is one it holds: the device has the inputs and its own
    outputs; the edge (and cloud) has what link 0 brings and what its tiers produce."""
    tiers, link = doc["tiers"], doc["links"][0]
    device = _names(doc["inputs"])
    _need(device, tiers[0]["inputs"], "tiers[0].inputs")
    device |= _names(tiers[0]["outputs"])
    _need(device, link["tensors"], "links[0].tensors")
    edge = _names(link["tensors"])
    for k in range(1, len(tiers)):
        _need(edge, tiers[k]["inputs"], f"tiers[{k}].inputs")
        edge |= _names(tiers[k]["outputs"])
    _need(edge, link["returned"], "links[0].returned")
    _need(device | _names(link["returned"]), doc["outputs"], "outputs")


def _drop_private(doc: dict[str, Any]) -> None:
    """Remove ``_``-prefixed keys from the file: only ``load_plan`` may set them (``_path``
    names a model to load, so a hostile plan must not smuggle one in)."""
    tiers = doc.get("tiers")
    objs = [doc, *(t for t in tiers if isinstance(t, dict))] if isinstance(tiers, list) else [doc]
    for obj in objs:
        for key in [k for k in obj if isinstance(k, str) and k.startswith("_")]:
            del obj[key]


def _check_tier(tier: Any, k: int, folder: Path) -> None:
    where = f"tiers[{k}]"
    if not isinstance(tier, dict) or tier.get("role") != ROLES[k]:
        raise _fail(where, f"role must be {ROLES[k]!r}")
    for key in ("inputs", "outputs"):
        if not isinstance(tier.get(key), list):
            raise _fail(f"{where}.{key}", "must be a list")
        for j, spec in enumerate(tier[key]):
            _check_spec(spec, f"{where}.{key}[{j}]")
    if tier.get("model_file") is not None:
        tier["_path"] = str(_safe_file(folder, tier["model_file"], where))
        digest = hashlib.sha256(Path(tier["_path"]).read_bytes()).hexdigest()
        if digest != tier.get("sha256"):
            raise _fail(where, "model file does not match the plan's sha256")


def measure_chain(problem: Problem, max_splits: int = 64) -> list[dict[str, Any]]:
    """Neurosurgeon's table measured here: for each split of the node order (up to
    ``max_splits``, evenly spaced), the head and tail parts timed with ONNX Runtime on this
    host (labelled measured, host), with the link model's transfer of the cut tensors.

    This is what a device that *is* this host would see; the per-device predictions of the
    same splits are in ``solve_chain``'s table.
    """
    g = problem.graph
    names = [n.name for n in g.nodes]
    points = sorted(set(np.linspace(0, len(names), min(max_splits, len(names) + 1)).astype(int)))
    rows = []
    for cut in points:
        tier_of = {n: int(i >= cut) for i, n in enumerate(names)}
        split = split_graph(g, tier_of, 2)
        fmt = part_format(g)
        models = export_parts(split, fmt)
        host = measure_parts(split, models, g, fmt)
        b = problem.breakdown(tier_of)
        transfer = b["transfer_ms"][0] + b["rtt_ms"][0]
        rows.append(
            {
                "device_nodes": int(cut),
                "head_ms": host[0] or 0.0,
                "tail_ms": host[1] or 0.0,
                "transfer_ms": transfer,
                "total_ms": (host[0] or 0.0) + (host[1] or 0.0) + transfer,
                "predicted_total_ms": problem.cost(tier_of),
                "label": "head/tail measured on this host (ONNX Runtime, 1 thread); "
                "transfer predicted from the link model",
            }
        )
    return rows
