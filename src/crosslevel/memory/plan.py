"""The Plan JSON of DESIGN.md ("Contracts between levels"), written by the memory level.

A plan is an operator order, one arena offset per tensor and scratch buffer (with its
lifetime and alignment), in-place pairs (``inplace.py``: an output placed a fixed distance
below the input it overwrites, with the piece buffer its kernel fills first) and patch
stages, the arena size and the bounds it was measured against: the peak live sum for the
order and pairs (no arena can be smaller) and TFLM's greedy arena for the same order (ours
is never larger).

``load_plan`` reads an untrusted file: every field is type- and range-checked, the offsets
are checked for overlaps, and any failure is one ``InvalidPlanError`` naming the field.
``offline_offsets`` turns a plan into the ``OfflineMemoryAllocation`` vector that
``export_tflite`` writes, so the stock TFLM runtime runs our plan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosslevel.errors import UsageError
from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.depth_first import (
    build_stage,
    stage_buffers,
    stage_ends,
    stage_pair,
    stage_record,
)
from crosslevel.memory.inplace import (
    InplacePair,
    check_inplace_plan,
    chunk_buffers,
    find_pairs,
    max_reverse_delta,
    min_delta,
    pair_rectangles,
    pieces,
    place_pairs,
    spread_chains,
)
from crosslevel.memory.lifetimes import (
    TFLM_ALIGNMENT,
    Buffer,
    align_up,
    buffers_for_order,
    peak_live_bytes,
)
from crosslevel.memory.offsets import ExactPlan, PlanOverlapError, _gap_pct, plan_arena
from crosslevel.memory.tflm_greedy import plan_tflm_greedy

FORMAT = "crosslevel.plan/1"
MAX_PLAN_FILE_BYTES = 64 * 1024 * 1024
_STAGES_PLACED = 3  # depth-first stage ends placed in full (the lowest floors)
_MAX_INT = 2**31 - 1  # TFLM addresses its arena with 32-bit offsets


class InvalidPlanError(UsageError):
    """A plan file is malformed, inconsistent or places live tensors on top of each other."""


@dataclass(frozen=True)
class PlannedBuffer:
    """One arena buffer: a tensor (``node`` empty) or a kernel's scratch (``node`` set)."""

    id: str
    size_bytes: int
    offset: int
    first: int
    last: int
    alignment: int
    node: str = ""


@dataclass(frozen=True)
class PlanBounds:
    """What the arena was measured against; ``lower_bound_bytes`` >= ``peak_live_bytes``."""

    peak_live_bytes: int
    tflm_greedy_bytes: int
    lower_bound_bytes: int
    optimal: bool
    gap_pct: float


@dataclass(frozen=True)
class Plan:
    """An arena plan for one operator order (the ``crosslevel.plan/1`` file)."""

    model: str
    order: list[str]
    tensors: list[PlannedBuffer]
    scratch: list[PlannedBuffer]
    arena_bytes: int
    strategy: str
    bounds: PlanBounds
    inplace: list[InplacePair] = field(default_factory=list)
    patch_stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def offsets(self) -> dict[str, int]:
        return {b.id: b.offset for b in [*self.tensors, *self.scratch]}

    def buffers(self) -> list[Buffer]:
        """The plan's buffers in the memory model's terms (for checks and re-planning)."""
        return [
            Buffer(b.id, b.size_bytes, b.first, b.last, bool(b.node))
            for b in [*self.tensors, *self.scratch]
        ]


# ----------------------------------------------------------------------------------
# making a plan
# ----------------------------------------------------------------------------------
def make_plan(
    graph: Graph,
    order: Sequence[Node] | None = None,
    time_limit_s: float = 10.0,
    alignment: int = TFLM_ALIGNMENT,
    tflm_offsets: bool = False,
    inplace: bool = False,
    depth_first: bool = False,
) -> Plan:
    """Plan ``graph``'s arena for ``order`` (default: the graph's own) with ``plan_arena``,
    or with TFLM's own greedy planner when ``tflm_offsets`` (the baseline strategy), or
    with in-place pairs where they save bytes when ``inplace``, and a depth-first first
    stage when ``depth_first`` (each kept only if it makes the arena smaller)."""
    nodes = list(order) if order is not None else list(graph.nodes)
    buffers = buffers_for_order(graph, nodes, alignment)
    arena = _tflm_as_exact(buffers) if tflm_offsets else plan_arena(buffers, time_limit_s)
    tflm_bytes = plan_tflm_greedy(buffers).arena_bytes
    pairs: list[InplacePair] = []
    stages: list[dict[str, Any]] = []
    if inplace:
        with_pairs = _inplace_arena(graph, nodes, buffers, alignment)
        if with_pairs is not None and with_pairs[0].arena_bytes < arena.arena_bytes:
            arena, pairs, buffers = with_pairs
    if depth_first:
        staged = _depth_first_arena(
            graph, nodes, buffers_for_order(graph, nodes, alignment), alignment
        )
        if staged is not None and staged[0].arena_bytes < arena.arena_bytes:
            arena, pairs, buffers, stages = staged
    bounds = PlanBounds(
        peak_live_bytes=_floor(buffers, pairs),
        tflm_greedy_bytes=tflm_bytes,
        lower_bound_bytes=arena.lower_bound_bytes,
        optimal=arena.optimal,
        gap_pct=arena.gap_pct,
    )
    planned = [
        PlannedBuffer(
            b.name,
            b.size_bytes,
            arena.offsets[b.name],
            b.first,
            b.last,
            alignment,
            nodes[b.first].name if b.is_scratch else "",
        )
        for b in buffers
    ]
    return Plan(
        model=graph.name,
        order=[n.name for n in nodes],
        tensors=[b for b in planned if not b.node],
        scratch=[b for b in planned if b.node],
        arena_bytes=arena.arena_bytes,
        strategy=arena.solver,
        bounds=bounds,
        inplace=pairs,
        patch_stages=stages,
    )


def _depth_first_arena(
    graph: Graph, nodes: list[Node], buffers: list[Buffer], alignment: int
) -> tuple[ExactPlan, list[InplacePair], list[Buffer], list[dict[str, Any]]] | None:
    """The smallest arena over the valid depth-first first stages (in-place elsewhere):
    every stage end is bounded by its floor, the few lowest floors are placed."""
    candidates = []
    for end in stage_ends(graph, nodes):
        stage = build_stage(graph, nodes[:end])
        staged = stage_buffers(graph, stage, buffers, alignment)
        extra = [stage_pair(graph, stage, alignment)]
        pairs, staged = _pairs(graph, nodes, staged, alignment, set(stage.nodes), extra)
        candidates.append((_floor(staged, pairs), end, stage, pairs, staged))
    best = None
    for _, _, stage, pairs, staged in sorted(candidates, key=lambda c: c[:2])[:_STAGES_PLACED]:
        placed = _place(staged, pairs)
        if best is None or placed.arena_bytes < best[0].arena_bytes:
            best = (placed, pairs, staged, [stage_record(graph, stage)])
    return best


def _inplace_arena(
    graph: Graph, nodes: list[Node], buffers: list[Buffer], alignment: int
) -> tuple[ExactPlan, list[InplacePair], list[Buffer]] | None:
    """The arena with every saving in-place pair; None if no pair saves bytes."""
    pairs, buffers = _pairs(graph, nodes, buffers, alignment)
    if not pairs:
        return None
    return _place(buffers, pairs), pairs, buffers


def _pairs(
    graph: Graph,
    nodes: list[Node],
    buffers: list[Buffer],
    alignment: int,
    exclude: set[str] | None = None,
    extra: Sequence[InplacePair] = (),
) -> tuple[list[InplacePair], list[Buffer]]:
    """Every saving in-place pair (none on the ``exclude`` nodes) plus the ``extra`` ones,
    with deltas that keep chains compact, and the buffers with their piece buffers."""
    found = find_pairs(graph, nodes, buffers, alignment)
    pairs = [p for p in found if p.node not in (exclude or set())] + list(extra)
    pairs = spread_chains(pairs, buffers, alignment)
    return pairs, [*buffers, *chunk_buffers(pairs, nodes, alignment)]


def _floor(buffers: list[Buffer], pairs: list[InplacePair]) -> int:
    """No arena with these pairs can be smaller: the peak of the pairs' rectangles."""
    return peak_live_bytes(pair_rectangles(buffers, pairs)[0])


def _place(buffers: list[Buffer], pairs: list[InplacePair]) -> ExactPlan:
    """Place the pair groups and prove the placement."""
    placed = place_pairs(buffers, pairs)
    check_inplace_plan(buffers, pairs, placed.offsets)
    floor = _floor(buffers, pairs)
    gap = _gap_pct(placed.arena_bytes, floor)
    return ExactPlan(placed.offsets, placed.arena_bytes, floor, gap == 0.0, gap, "inplace")


def check_against_graph(graph: Graph, plan: Plan) -> None:
    """Check a plan (user input) against the graph it claims to run, for consumers that
    follow it blindly (generated code): every activation's planned lifetime covers its
    real one in the plan's order, and every in-place pair is one this graph's operator
    can really walk with that delta. Depth-first stages are not checked here."""
    by_name = {n.name: n for n in graph.nodes}
    if sorted(plan.order) != sorted(by_name):
        raise InvalidPlanError("plan: its operator order does not name the model's nodes")
    nodes = [by_name[n] for n in plan.order]
    alignment = max((b.alignment for b in plan.tensors), default=TFLM_ALIGNMENT)
    planned = {b.id: b for b in plan.tensors}
    for need in buffers_for_order(graph, nodes, alignment, with_scratch=False):
        got = planned.get(need.name)
        if got is None or got.first > need.first or got.last < need.last:
            raise InvalidPlanError(
                f"plan: tensor {need.name!r} must be planned for steps {need.first}..{need.last}"
            )
    for pair in plan.inplace:
        _check_pair(graph, by_name, pair, alignment)


def _check_pair(graph: Graph, by_name: dict[str, Node], pair: InplacePair, alignment: int) -> None:
    node = by_name.get(pair.node)
    if node is None or pair.input not in node.inputs or node.outputs[:1] != [pair.output]:
        raise InvalidPlanError(f"plan: in-place pair at {pair.node!r} names other tensors")
    walk = pieces(graph, node, node.inputs.index(pair.input))
    if walk is None or walk.granularity != pair.granularity:
        raise InvalidPlanError(
            f"plan: node {pair.node!r} ({node.op}) cannot run in place by {pair.granularity}"
        )
    low = align_up(min_delta(walk), alignment)
    high = -align_up(-max_reverse_delta(walk), alignment)
    if low > pair.delta_bytes > high:
        raise InvalidPlanError(
            f"plan: in-place pair at {pair.node!r}: delta {pair.delta_bytes} is unsafe "
            f"(safe: >= {low} forward or <= {high} backward)"
        )


def _tflm_as_exact(buffers: list[Buffer]) -> ExactPlan:
    greedy = plan_tflm_greedy(buffers)
    bound = peak_live_bytes(buffers)
    gap = 100.0 * (greedy.arena_bytes - bound) / bound if bound else 0.0
    return ExactPlan(greedy.offsets, greedy.arena_bytes, bound, gap == 0.0, gap, "tflm-greedy")


def offline_offsets(graph: Graph, plan: Plan) -> list[int]:
    """The plan as TFLM's ``OfflineMemoryAllocation`` vector for ``export_tflite(graph)``.

    Indexed by the exporter's tensor order; constants and variables get -1 (not in the
    head arena). Every arena tensor of the exported file must be planned: a tensor the
    exporter adds (a PAD output) but the plan lacks would silently be planned online by
    TFLM and could land on top of ours.
    """
    from crosslevel.ir.tflite_io import tflite_tensors

    placed = {b.id: b for b in plan.tensors}
    vector = []
    for tensor in tflite_tensors(graph):
        if not tensor.in_arena:
            vector.append(-1)
            continue
        planned = placed.get(tensor.name)
        if planned is None:
            raise InvalidPlanError(f"the plan has no offset for arena tensor {tensor.name!r}")
        if planned.size_bytes < tensor.nbytes:
            raise InvalidPlanError(
                f"the plan gives tensor {tensor.name!r} {planned.size_bytes} bytes, "
                f"it needs {tensor.nbytes}"
            )
        vector.append(planned.offset)
    return vector


# ----------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------
def plan_to_json(plan: Plan) -> dict[str, Any]:
    """The plan as the JSON object of the ``crosslevel.plan/1`` format."""

    def buffer(b: PlannedBuffer, scratch: bool) -> dict[str, Any]:
        d = asdict(b)
        if not scratch:
            del d["node"]
        return d

    return {
        "format": FORMAT,
        "model": plan.model,
        "strategy": plan.strategy,
        "order": list(plan.order),
        "arena_bytes": plan.arena_bytes,
        "bounds": asdict(plan.bounds),
        "tensors": [buffer(b, False) for b in plan.tensors],
        "scratch": [buffer(b, True) for b in plan.scratch],
        "inplace": [asdict(p) for p in plan.inplace],
        "patch_stages": list(plan.patch_stages),
    }


def write_plan(plan: Plan, path: str | Path) -> Path:
    """Write ``plan`` as JSON to ``path`` (a file name; ``-o`` folders hold ``plan.json``)."""
    out = Path(path)
    try:
        out.write_text(json.dumps(plan_to_json(plan), indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write plan {out}: {exc.strerror or exc}") from None
    return out


# ----------------------------------------------------------------------------------
# reading (untrusted)
# ----------------------------------------------------------------------------------
def _fail(where: str, what: str) -> InvalidPlanError:
    return InvalidPlanError(f"plan: {where} {what}")


def _obj(
    value: Any, where: str, keys: set[str], optional: set[str] | None = None
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"must be an object, got {type(value).__name__}")
    missing = keys - set(value)
    extra = set(value) - keys - (optional or set())
    if missing:
        raise _fail(where, f"lacks {', '.join(sorted(missing))}")
    if extra:
        raise _fail(where, f"has unknown fields {', '.join(sorted(map(str, extra)))}")
    return value


def _int(value: Any, where: str, low: int = 0, high: int = _MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise _fail(where, f"= {value} is outside {low}..{high}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f"must be a list, got {type(value).__name__}")
    return value


_BUFFER_KEYS = {"id", "size_bytes", "offset", "first", "last", "alignment"}


def _buffer(value: Any, where: str, steps: int, arena: int, scratch: bool) -> PlannedBuffer:
    keys = _BUFFER_KEYS | ({"node"} if scratch else set())
    d = _obj(value, where, keys)
    alignment = _int(d["alignment"], f"{where}.alignment", 1, 4096)
    size = _int(d["size_bytes"], f"{where}.size_bytes")
    offset = _int(d["offset"], f"{where}.offset")
    first = _int(d["first"], f"{where}.first", 0, max(steps - 1, 0))
    last = _int(d["last"], f"{where}.last", first, max(steps - 1, 0))
    if size % alignment or offset % alignment:
        raise _fail(where, f"size {size} or offset {offset} is not a multiple of {alignment}")
    if offset + size > arena:
        raise _fail(where, f"ends at {offset + size}, beyond the arena ({arena} bytes)")
    node = _str(d["node"], f"{where}.node") if scratch else ""
    return PlannedBuffer(_str(d["id"], f"{where}.id"), size, offset, first, last, alignment, node)


def _bounds(value: Any, arena: int) -> PlanBounds:
    keys = {"peak_live_bytes", "tflm_greedy_bytes", "lower_bound_bytes", "optimal", "gap_pct"}
    d = _obj(value, "bounds", keys)
    gap = d["gap_pct"]
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not 0 <= gap <= 100:
        raise _fail("bounds.gap_pct", "must be a number in 0..100")
    if not isinstance(d["optimal"], bool):
        raise _fail("bounds.optimal", "must be true or false")
    bounds = PlanBounds(
        _int(d["peak_live_bytes"], "bounds.peak_live_bytes"),
        _int(d["tflm_greedy_bytes"], "bounds.tflm_greedy_bytes"),
        _int(d["lower_bound_bytes"], "bounds.lower_bound_bytes"),
        d["optimal"],
        float(gap),
    )
    if not bounds.peak_live_bytes <= bounds.lower_bound_bytes <= arena:
        raise _fail("bounds", f"need peak_live <= lower_bound <= arena_bytes ({arena})")
    return bounds


def _inplace_pair(value: Any, where: str, tensor_ids: set[str], nodes: set[str]) -> InplacePair:
    keys = {"node", "input", "output", "delta_bytes", "min_delta_bytes", "chunk_bytes"}
    keys |= {"max_reverse_delta_bytes"}
    d = _obj(value, where, keys | {"granularity"})
    pair = InplacePair(
        _str(d["node"], f"{where}.node"),
        _str(d["input"], f"{where}.input"),
        _str(d["output"], f"{where}.output"),
        _int(d["delta_bytes"], f"{where}.delta_bytes", -_MAX_INT),
        _int(d["min_delta_bytes"], f"{where}.min_delta_bytes", -_MAX_INT),
        _int(d["max_reverse_delta_bytes"], f"{where}.max_reverse_delta_bytes", -_MAX_INT),
        _int(d["chunk_bytes"], f"{where}.chunk_bytes"),
        _str(d["granularity"], f"{where}.granularity"),
    )
    if pair.node not in nodes:
        raise _fail(f"{where}.node", f"{pair.node!r} is not in the order")
    if pair.input not in tensor_ids or pair.output not in tensor_ids or pair.input == pair.output:
        raise _fail(where, "must pair two different planned tensors")
    if pair.granularity not in ("element", "pixel", "row", "column", "stage"):
        raise _fail(f"{where}.granularity", "must be element, pixel, row, column or stage")
    return pair


def _patch_stage(value: Any, where: str, tensor_ids: set[str]) -> dict[str, Any]:
    keys = {"layers", "grid", "halos", "extra_macs", "mode", "source", "output", "rings"}
    d = _obj(value, where, keys)
    layers = [_str(x, f"{where}.layers[]") for x in _list(d["layers"], f"{where}.layers")]
    grid = [_int(x, f"{where}.grid[]", 1) for x in _list(d["grid"], f"{where}.grid")]
    halos = [_int(x, f"{where}.halos[]") for x in _list(d["halos"], f"{where}.halos")]
    extra = _int(d["extra_macs"], f"{where}.extra_macs", 0, 2**63 - 1)
    if d["mode"] != "line-buffer":
        raise _fail(f"{where}.mode", "must be line-buffer")
    rings = _obj(
        d["rings"],
        f"{where}.rings",
        set(),
        set(d["rings"]) if isinstance(d["rings"], dict) else set(),
    )
    for name, rows in rings.items():
        _int(rows, f"{where}.rings[{name!r}]", 1)
        if f"ring:{name}" not in tensor_ids:
            raise _fail(f"{where}.rings", f"has no planned line buffer for {name!r}")
    source, output = _str(d["source"], f"{where}.source"), _str(d["output"], f"{where}.output")
    if source not in tensor_ids or output not in tensor_ids or not layers:
        raise _fail(where, "must name planned source and output tensors and its layers")
    return {
        "layers": layers,
        "grid": grid,
        "halos": halos,
        "extra_macs": extra,
        "mode": "line-buffer",
        "source": source,
        "output": output,
        "rings": dict(rings),
    }


def plan_from_json(data: Any) -> Plan:
    """Validate a parsed ``crosslevel.plan/1`` object and build the Plan."""
    keys = {
        "format",
        "model",
        "strategy",
        "order",
        "arena_bytes",
        "bounds",
        "tensors",
        "scratch",
        "inplace",
        "patch_stages",
    }
    d = _obj(data, "the file", keys)
    if d["format"] != FORMAT:
        raise _fail("format", f"is {str(d['format'])[:60]!r}, expected {FORMAT!r}")
    order = [_str(x, "order[]") for x in _list(d["order"], "order")]
    if len(set(order)) != len(order):
        raise _fail("order", "names an operator twice")
    arena = _int(d["arena_bytes"], "arena_bytes")
    steps = len(order)
    tensors = [
        _buffer(x, f"tensors[{k}]", steps, arena, False)
        for k, x in enumerate(_list(d["tensors"], "tensors"))
    ]
    scratch = [
        _buffer(x, f"scratch[{k}]", steps, arena, True)
        for k, x in enumerate(_list(d["scratch"], "scratch"))
    ]
    ids = [b.id for b in [*tensors, *scratch]]
    if len(set(ids)) != len(ids):
        raise _fail("tensors", "name a buffer twice")
    tensor_ids = {b.id for b in tensors}
    inplace = [
        _inplace_pair(x, f"inplace[{k}]", tensor_ids, set(order))
        for k, x in enumerate(_list(d["inplace"], "inplace"))
    ]
    patches = [
        _patch_stage(x, f"patch_stages[{k}]", set(ids))
        for k, x in enumerate(_list(d["patch_stages"], "patch_stages"))
    ]
    plan = Plan(
        model=_str(d["model"], "model"),
        order=order,
        tensors=tensors,
        scratch=scratch,
        arena_bytes=arena,
        strategy=_str(d["strategy"], "strategy"),
        bounds=_bounds(d["bounds"], arena),
        inplace=inplace,
        patch_stages=patches,
    )
    try:
        check_inplace_plan(plan.buffers(), plan.inplace, plan.offsets)
    except PlanOverlapError as exc:
        raise InvalidPlanError(f"plan: {exc}") from None
    return plan


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; any defect is one InvalidPlanError."""
    src = Path(path)
    try:
        with src.open("rb") as fh:
            raw = fh.read(MAX_PLAN_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidPlanError(f"cannot read plan {src}: {exc.strerror or exc}") from None
    if len(raw) > MAX_PLAN_FILE_BYTES:
        raise InvalidPlanError(f"plan {src} is larger than {MAX_PLAN_FILE_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidPlanError(f"plan {src} is not valid JSON: {str(exc)[:200]}") from None
    try:
        return plan_from_json(data)
    except InvalidPlanError as exc:
        raise InvalidPlanError(f"{src}: {exc}") from None
