"""C for a depth-first stage of the plan (``patch_stages``, ``memory/depth_first.py``).

The stage's first layers run row by row: the C code replays the stage's pull schedule
(the (node, row) steps ``build_stage`` simulates, stored as two constant tables) in a
loop with one ``switch`` case per layer. Each inner tensor lives only in its line buffer
(row q in slot q mod the plan's ring rows), the source is read from its planned place
and the output's rows go to their place, which may lie over source rows no later step
reads (the plan's stage pair). A spatial layer's step calls the row twin of its kernel
(``cl_stages.h``) with pointers to the input rows its window reads; an elementwise,
concatenation or PAD step calls the ordinary emitter on one-row views of its tensors; a
final global average pool adds each row into its planned 64-bit accumulator and writes
the average after the last row. A ring is never read by address arithmetic across its
wrap-around, so any planned ring size at least the schedule's need is followed exactly.

The plan is user input: ``checked_stages`` recomputes the stage from the graph and
refuses rings smaller than its schedule needs, an output placed over source rows a later
step still reads, and overlapping stage buffers, since the C code would otherwise
compute silently wrong rows. The ASan build (``-DCL_ASAN_CHECK``) poisons, at every
step, every arena byte but the rows that step reads and the row (or accumulator) it
writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from crosslevel.codegen.context import CTYPES, EmitContext
from crosslevel.codegen.op_window import node_window
from crosslevel.codegen.pieces import Region
from crosslevel.errors import UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.depth_first import (
    ACCUMULATOR_BYTES,
    Stage,
    accumulator_name,
    build_stage,
    is_row_reduction,
    ring_name,
    row_bytes,
    stage_ends,
    stage_pair,
)
from crosslevel.memory.inplace import WINDOW_OPS
from crosslevel.memory.plan import InvalidPlanError, Plan, PlannedBuffer

ROW_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD",
                     "CONCATENATION", "PAD"})  # fmt: skip
Emitter = Callable[[EmitContext, Node], list[str]]


@dataclass(frozen=True)
class StagePlan:
    """A plan's stage checked against the graph: its schedule, the ring rows it follows
    and where each of its buffers starts in the arena."""

    stage: Stage
    rings: dict[str, int]  # inner tensor -> rows its line buffer keeps (the plan's)
    base: dict[str, int]  # source, output, inner tensor (its ring), accumulator -> offset

    def row_offset(self, graph: Graph, name: str, row: str) -> str:
        """The C byte offset in the arena of row ``row`` (a C expression) of ``name``."""
        size = row_bytes(graph, name)
        if name in self.rings:
            return f"{self.base[name]} + (size_t)(({row}) % {self.rings[name]}) * {size}"
        return f"{self.base[name]} + (size_t)({row}) * {size}"


def stages_supported(graph: Graph, plan: Plan) -> bool:
    """Whether the generator can emit the plan's stages (at most one, of ROW_OPS layers)."""
    ops = {n.name: n.op for n in graph.nodes}
    layers = [name for record in plan.patch_stages for name in record["layers"]]
    return len(plan.patch_stages) <= 1 and all(ops.get(name) in ROW_OPS for name in layers)


# ----------------------------------------------------------------------------------
# the plan's stage, checked
# ----------------------------------------------------------------------------------
def checked_stages(graph: Graph, plan: Plan) -> list[StagePlan]:
    """The plan's depth-first stages (at most one, a prefix of its order), each checked."""
    if len(plan.patch_stages) > 1:
        raise InvalidPlanError("plan: the C generator follows at most one depth-first stage")
    ends = {record["layers"][-1] for record in plan.patch_stages if record["layers"]}
    if any(p.granularity == "stage" and p.node not in ends for p in plan.inplace):
        raise InvalidPlanError("plan: a stage's in-place pair names no stage of the plan")
    return [_checked_stage(graph, plan, record) for record in plan.patch_stages]


def _checked_stage(graph: Graph, plan: Plan, record: dict[str, Any]) -> StagePlan:
    by_name = {n.name: n for n in graph.nodes}
    order = [by_name[n] for n in plan.order if n in by_name]
    count = len(record["layers"])
    if record["layers"] != plan.order[:count] or count not in stage_ends(graph, order):
        raise InvalidPlanError("plan: its stage is not a prefix of its order that runs row by row")
    stage = build_stage(graph, order[:count])
    if any(p.node in stage.nodes and p.granularity != "stage" for p in plan.inplace):
        raise InvalidPlanError("plan: a layer of its stage also has an in-place pair")
    if (record["source"], record["output"]) != (stage.source, stage.output):
        raise InvalidPlanError("plan: its stage names the wrong source or output")
    rings = dict(record["rings"])
    if set(rings) != set(stage.rings):
        raise InvalidPlanError("plan: its stage's line buffers are not its inner tensors")
    for name, rows in stage.rings.items():
        if rings[name] < rows:
            raise InvalidPlanError(
                f"plan: the line buffer of {name!r} keeps {rings[name]} rows; "
                f"its stage needs {rows}"
            )
    placed = {b.id: b for b in [*plan.tensors, *plan.scratch]}
    sizes = {t: rings[t] * row_bytes(graph, t) for t in rings}
    regions = {t: _region(placed, ring_name(t), sizes[t], plan) for t in rings}
    if is_row_reduction(graph, order[count - 1]):
        acc = accumulator_name(stage.output)
        channels = graph.tensor(stage.output).shape[-1]
        regions[acc] = _region(placed, acc, channels * ACCUMULATOR_BYTES, plan)
    for name in (stage.source, stage.output):
        regions[name] = _region(placed, name, graph.tensor(name).nbytes, plan)
    _check_disjoint(graph, stage, regions)
    return StagePlan(stage, rings, {name: lo for name, (lo, _) in regions.items()})


def _region(placed: dict[str, PlannedBuffer], name: str, size: int, plan: Plan) -> tuple[int, int]:
    buf = placed.get(name)
    if buf is None or buf.size_bytes < size or buf.offset + size > plan.arena_bytes:
        raise InvalidPlanError(f"plan: the stage's buffer {name!r} lacks {size} planned bytes")
    if buf.offset % 16:
        raise InvalidPlanError(f"plan: the stage's buffer {name!r} is not 16-byte aligned")
    return buf.offset, buf.offset + size


def _check_disjoint(graph: Graph, stage: Stage, regions: dict[str, tuple[int, int]]) -> None:
    """The stage's buffers must not overlap, except its output over source rows that no
    later step reads (starting at least ``stage_pair``'s delta below the source)."""
    names = sorted(regions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (a_lo, a_hi), (b_lo, b_hi) = regions[a], regions[b]
            if a_lo >= b_hi or b_lo >= a_hi:
                continue
            if {a, b} == {stage.source, stage.output}:
                delta = regions[stage.source][0] - regions[stage.output][0]
                low = stage_pair(graph, stage, 1).min_delta_bytes
                if delta >= low:
                    continue
                raise InvalidPlanError(
                    f"plan: the stage's output starts {delta} bytes below its source; "
                    f"its rows overwrite source rows still needed unless it starts {low} below"
                )
            raise InvalidPlanError(f"plan: the stage's buffers {a!r} and {b!r} overlap")


def plan_without_stages(plan: Plan, stages: list[StagePlan]) -> Plan:
    """The plan as ``check_against_graph`` reads plans without stages: each inner tensor
    planned over its line buffer for the whole order (its rows, ring and lifetime are
    checked by ``checked_stages``), without the stage's pair."""
    last = len(plan.order) - 1
    inner = [
        PlannedBuffer(name, 0, sp.base[name], 0, last, 16, "") for sp in stages for name in sp.rings
    ]
    pairs = [p for p in plan.inplace if p.granularity != "stage"]
    return replace(plan, tensors=[*plan.tensors, *inner], inplace=pairs)


# ----------------------------------------------------------------------------------
# the C of a stage
# ----------------------------------------------------------------------------------
def stage_statements(
    ctx: EmitContext, sp: StagePlan, emitters: dict[str, Emitter], index: int
) -> list[str]:
    """The stage's loop over its schedule, one ``switch`` case per layer."""
    graph = ctx.graph
    by_name = {n.name: n for n in graph.nodes}
    layers = sp.stage.nodes
    steps = sp.stage.schedule
    which = ctx.const_array(f"stage{index}:node", "uint8_t" if len(layers) < 256 else "uint16_t",
                            _ints([layers.index(name) for name, _ in steps]))  # fmt: skip
    rows = ctx.const_array(f"stage{index}:row", "uint16_t", _ints([r for _, r in steps]))
    cases = []
    for j, name in enumerate(layers):
        node = by_name[name]
        body = _step(ctx, sp, node, emitters)
        ctx.variants[name] = ctx.variants.get(name, "") + " row-stage"
        slot = len(ctx.profile_nodes)  # each layer's steps summed in its own slot
        ctx.profile_nodes.append(name)
        cases += [f"  case {j}: {{ /* {node.op} {name} [{ctx.variants[name]}] */",
                  "    CL_PROF_BEGIN();", *("    " + s for s in body),
                  f"    CL_PROF_END({slot});", "    break;", "  }"]  # fmt: skip
    return [
        f"/* depth-first stage: {len(layers)} layers, {len(steps)} row steps through line "
        "buffers (the plan's patch_stages); the ASan build poisons, at each step, every "
        "arena byte but the rows it reads and writes */",
        f"for (int s = 0; s < {len(steps)}; ++s) {{",
        f"  const int r = {rows}[s];",
        f"  switch ({which}[s]) {{",
        *cases,
        "  default: break;",
        "  }",
        "}",
    ]


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _step(ctx: EmitContext, sp: StagePlan, node: Node, emitters: dict[str, Emitter]) -> list[str]:
    """The statements computing step ``r`` of ``node``."""
    if node.op not in ROW_OPS or ctx.graph.tensor(node.outputs[0]).dtype not in CTYPES:
        raise UnsupportedOperatorError(node.op, node.name, "not in the C generator's stages")
    if is_row_reduction(ctx.graph, node):
        return _reduction_step(ctx, sp, node)
    out = node.outputs[0]
    y = f"cl_arena + {sp.row_offset(ctx.graph, out, 'r')}"
    guard = ["CL_POISON_ALL();", f"CL_UNPOISON({sp.row_offset(ctx.graph, out, 'r')}, "
             f"{row_bytes(ctx.graph, out)});"]  # fmt: skip
    if node.op == "PAD":
        return _pad_step(ctx, sp, node, emitters, y, guard)
    if node.op in WINDOW_OPS:
        return _window_step(ctx, sp, node, emitters, y, guard)
    acts = [i for i in node.inputs if i and ctx.graph.tensor(i).data is None]
    pointers = {name: f"cl_arena + {sp.row_offset(ctx.graph, name, 'r')}" for name in acts}
    guard += [f"CL_UNPOISON({sp.row_offset(ctx.graph, name, 'r')}, {row_bytes(ctx.graph, name)});"
              for name in acts]  # fmt: skip
    with _row_view(ctx, {**pointers, out: y}, _one_row_graph(ctx.graph, sp), None):
        return guard + emitters[node.op](ctx, node)


def _window_step(
    ctx: EmitContext, sp: StagePlan, node: Node, emitters: dict[str, Emitter], y: str,
    guard: list[str],
) -> list[str]:  # fmt: skip
    """Pointers to the input rows under each kernel tap (NULL outside the image), then
    the row twin of the node's kernel."""
    win = node_window(ctx, node)
    src = node.inputs[0]
    ctype = CTYPES[ctx.graph.tensor(src).dtype]
    fill = [
        f"const {ctype} *rows[{win.kh}];",
        f"for (int ky = 0; ky < {win.kh}; ++ky) {{",
        f"  const int iy = r * {win.sh} - {win.pads[0]} + ky * {win.dh};",
        f"  rows[ky] = (iy < 0 || iy >= {win.ih}) ? 0 : "
        f"(const {ctype} *)(cl_arena + {sp.row_offset(ctx.graph, src, 'iy')});",
        "}",
    ]
    guard = [*guard, f"for (int ky = 0; ky < {win.kh}; ++ky) {{",
             f"  if (rows[ky]) CL_UNPOISON((const uint8_t *)rows[ky] - cl_arena, "
             f"{row_bytes(ctx.graph, src)});", "}"]  # fmt: skip
    out_type = CTYPES[ctx.graph.tensor(node.outputs[0]).dtype]
    y_ptr = f"(({out_type} *)({y}))"
    region = Region("rows", win.ih, win.iw, win.pads[0], win.pads[1], y_ptr, 1, win.ow, "cl_row_")
    with _row_view(ctx, {src: "rows", node.outputs[0]: y}, None, region):
        return fill + guard + emitters[node.op](ctx, node)


def _pad_step(
    ctx: EmitContext, sp: StagePlan, node: Node, emitters: dict[str, Emitter], y: str,
    guard: list[str],
) -> list[str]:  # fmt: skip
    """Row ``r`` of a PAD: input row ``r - top`` padded along W and C, or (a row of the
    top or bottom padding) the fill value only; both by PAD's emitter on one-row views."""
    src, out = node.inputs[0], node.outputs[0]
    pads = [tuple(int(p) for p in pair) for pair in node.attrs.get("pads", ())]
    if len(pads) != 4:
        raise UnsupportedOperatorError(node.op, node.name, "PAD in a stage needs 4-D pads")
    top, height = pads[1][0], ctx.graph.tensor(src).shape[1]
    inside = replace(node, attrs={**node.attrs, "pads": [pads[0], (0, 0), *pads[2:]]})
    outside = replace(node, attrs={**node.attrs, "pads": [pads[0], (1, 0), *pads[2:]]})
    x = f"cl_arena + {sp.row_offset(ctx.graph, src, 'iy')}"
    with _row_view(ctx, {src: x, out: y}, _one_row_graph(ctx.graph, sp), None):
        copy = emitters["PAD"](ctx, inside)
    with _row_view(ctx, {src: x, out: y}, _one_row_graph(ctx.graph, sp, {src: 0}), None):
        fill = emitters["PAD"](ctx, outside)
    return [
        f"const int iy = r - {top};",
        *guard,
        f"if (iy >= 0 && iy < {height}) {{",
        f"  CL_UNPOISON({sp.row_offset(ctx.graph, src, 'iy')}, {row_bytes(ctx.graph, src)});",
        *("  " + line for line in copy),
        "} else {",
        *("  " + line for line in fill),
        "}",
    ]


def _reduction_step(ctx: EmitContext, sp: StagePlan, node: Node) -> list[str]:
    """Row ``r`` of a global average pool's input added into its accumulator; after the
    last row, the average (int8: TFLM's rounding; the pool has no activation)."""
    graph = ctx.graph
    src, out = node.inputs[0], node.outputs[0]
    _, height, width, channels = graph.tensor(src).shape
    dtype = graph.tensor(out).dtype
    ctype = CTYPES[dtype]
    acc = sp.base[accumulator_name(out)]
    sums = "int64_t" if dtype == "int8" else "double"
    kind = "s8" if dtype == "int8" else "f32"
    clamp = ", -128, 127" if dtype == "int8" else ""
    x = f"(const {ctype} *)(cl_arena + {sp.row_offset(graph, src, 'r')})"
    ctx.variants[node.name] = "row-sum"
    return [
        "CL_POISON_ALL();",
        f"CL_UNPOISON({sp.row_offset(graph, src, 'r')}, {row_bytes(graph, src)});",
        f"CL_UNPOISON({acc}, {channels * ACCUMULATOR_BYTES});",
        f"CL_UNPOISON({sp.base[out]}, {graph.tensor(out).nbytes});",
        f"cl_row_sum_{kind}({x}, {width}, {channels}, r == 0, ({sums} *)(cl_arena + {acc}));",
        f"if (r == {height - 1}) cl_mean_of_sums_{kind}((const {sums} *)(cl_arena + {acc}), "
        f"{channels}, {height * width}, ({ctype} *)(cl_arena + {sp.base[out]}){clamp});",
    ]


@contextmanager
def _row_view(
    ctx: EmitContext, pointers: dict[str, str], graph: Graph | None, region: Region | None
) -> Iterator[None]:
    """Let the ordinary emitters make one row: the given C pointers for the tensors, and
    either a graph whose stage tensors are one row high (elementwise operators) or the
    row region (spatial kernels, whose windows are checked on the whole tensors)."""
    whole = ctx.graph
    ctx.graph, ctx.row_pointers, ctx.row_step = graph or whole, pointers, region
    try:
        yield
    finally:
        ctx.graph, ctx.row_pointers, ctx.row_step = whole, {}, None


def _one_row_graph(graph: Graph, sp: StagePlan, rows: dict[str, int] | None = None) -> Graph:
    """``graph`` with every tensor of the stage one row high (or as high as ``rows``
    says; constants shared)."""
    tensors = dict(graph.tensors)
    for name in [sp.stage.source, sp.stage.output, *sp.rings]:
        high = (rows or {}).get(name, 1)
        tensors[name] = replace(tensors[name], shape=(1, high, *tensors[name].shape[2:]))
    return replace(graph, tensors=tensors)
