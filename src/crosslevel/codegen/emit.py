"""Model-specific C from an NHWC IR graph and a memory plan (``crosslevel.plan/1``).

Why generated code: TFLite Micro interprets the flatbuffer with generic kernels and
plans its arena at run time; the generated library instead calls kernels with constant
shapes (so the compiler specializes and vectorizes them), keeps weights as ``const``
arrays (flash) already re-laid out for the chosen kernel variant, folds the input zero
point into the bias where it can, and addresses every activation at the offset the memory
level planned inside one static arena of exactly the planned size (no malloc).

This module is the model level: it checks the graph and the plan, walks the plan's
operator order calling one emitter per operator (``op_window``, ``op_math``, ``op_copy``;
in-place pieces in ``pieces``; a depth-first stage's layers as one row-by-row loop in
``stages``), and assembles the files (``c_files``). A graph the
generator cannot compile fails with UnsupportedOperatorError naming the operator and the
node, before any C is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from crosslevel.codegen.c_files import (
    KERNEL_HEADER,
    STAGES_HEADER,
    IOSpec,
    host_main,
    kernel_source,
    model_header,
    model_source,
)
from crosslevel.codegen.context import CTYPES, EmitContext
from crosslevel.codegen.op_copy import emit_concat, emit_pad, emit_reshape
from crosslevel.codegen.op_math import emit_add, emit_fully_connected, emit_mean, emit_softmax
from crosslevel.codegen.op_window import CONV_CHOICES, emit_conv, emit_depthwise, emit_pool
from crosslevel.codegen.stages import (
    StagePlan,
    checked_stages,
    plan_without_stages,
    stage_statements,
)
from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.plan import InvalidPlanError, Plan, check_against_graph

__all__ = [
    "CONV_CHOICES",
    "CTYPES",
    "KERNEL_HEADER",
    "GeneratedModel",
    "IOSpec",
    "c_symbol",
    "check_supported",
    "generate_c",
    "kernel_source",
]

EMITTERS: dict[str, Callable[[EmitContext, Node], list[str]]] = {
    "CONV_2D": emit_conv,
    "DEPTHWISE_CONV_2D": emit_depthwise,
    "FULLY_CONNECTED": emit_fully_connected,
    "AVERAGE_POOL_2D": emit_pool,
    "MAX_POOL_2D": emit_pool,
    "MEAN": emit_mean,
    "ADD": emit_add,
    "SOFTMAX": emit_softmax,
    "RESHAPE": emit_reshape,
    "PAD": emit_pad,
    "CONCATENATION": emit_concat,
}
# operators whose emitters follow an in-place pair of the plan (RESHAPE copies with memmove)
INPLACE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "ADD", "RESHAPE", "PAD"}
)
ARENA_ALIGNMENT = 16  # the kernels' and TFLM's alignment of every planned tensor


@dataclass
class GeneratedModel:
    """The generated sources (file name -> text) and what callers need to drive them."""

    symbol: str  # C prefix: ``<symbol>_invoke``, ``<symbol>_arena_bytes``
    files: dict[str, str]
    arena_bytes: int
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    variants: dict[str, str] = field(default_factory=dict)  # node -> kernel variant
    profile_nodes: list[str] = field(default_factory=list)  # -DCL_PROFILE slot -> node
    stack_scratch_bytes: int = 0  # accumulator row + im2col patch on the stack (not in the arena)


def generate_c(
    graph: Graph, plan: Plan, name: str | None = None, variants: dict[str, str] | None = None
) -> GeneratedModel:
    """The C library of ``graph`` (NHWC, int8 or float32) laid out as ``plan`` says;
    ``name`` (default: the graph's) gives the C prefix of the model's functions;
    ``variants`` forces int8 convolution kernels per node ("direct" | "gemm")."""
    if graph.layout != "NHWC":
        raise UnsupportedOperatorError(
            "graph", graph.name, f"the C generator takes NHWC graphs, not {graph.layout}"
        )
    graph.validate()
    check_supported(graph)
    nodes, stages = _checked_order(graph, plan)
    ctx = EmitContext(graph, plan, variants)
    body = _body(ctx, nodes, stages)
    sym = c_symbol(name or graph.name)
    ins = [_io_spec(graph, n) for n in graph.inputs]
    outs = [_io_spec(graph, n) for n in graph.outputs]
    headers = [KERNEL_HEADER, STAGES_HEADER] if stages else [KERNEL_HEADER]
    files = {
        "model.h": model_header(sym, ins, outs, plan.arena_bytes),
        "model.c": model_source(sym, ctx, body, ins, outs, plan, headers),
        "main.c": host_main(sym, ins, outs),
        **{header: kernel_source(header) for header in headers},
    }
    return GeneratedModel(
        sym,
        files,
        plan.arena_bytes,
        ins,
        outs,
        dict(ctx.variants),
        list(ctx.profile_nodes),
        4 * ctx.acc_len + ctx.col_len,
    )


def _body(ctx: EmitContext, nodes: list[Node], stages: list[StagePlan]) -> list[str]:
    """The statements of the nodes in order; a stage's layers as one row-by-row loop
    (which guards and profiles each step itself)."""
    first = {sp.stage.nodes[0]: (i, sp) for i, sp in enumerate(stages)}
    staged = {name for sp in stages for name in sp.stage.nodes}
    body = []
    for node in nodes:
        if node.name in first:
            index, stage = first[node.name]
            emit = partial(stage_statements, ctx, stage, EMITTERS, index)
            lines = _emitted(f"the stage at {node.name!r}", emit)
            body += [*("  " + line for line in lines), "  CL_UNPOISON(0, sizeof(cl_arena));"]
        elif node.name not in staged:
            body += _node_statements(ctx, node)
    return body


def _node_statements(ctx: EmitContext, node: Node) -> list[str]:
    """The node's kernel call, framed by its ASan region check and its profile slot."""
    lines = _emitted(f"node {node.name!r} ({node.op})", partial(EMITTERS[node.op], ctx, node))
    slot = len(ctx.profile_nodes)
    ctx.profile_nodes.append(node.name)
    return [
        f"  /* {node.op} {node.name} [{ctx.variants.get(node.name, '')}] */",
        "  " + _arena_guard(ctx, node) + " CL_PROF_BEGIN();",
        *("  " + line for line in lines),
        f"  CL_PROF_END({slot}); CL_UNPOISON(0, sizeof(cl_arena));",
    ]


def _emitted(what: str, emit: Callable[[], list[str]]) -> list[str]:
    """The statements ``emit`` makes; a malformed operand is one InvalidModelError."""
    try:
        return emit()
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidModelError(f"{what}: {exc}") from None


def c_symbol(name: str) -> str:
    """A C identifier prefix from a model name (``vww_96_int8`` -> ``vww_96_int8``)."""
    ident = re.sub(r"[^0-9a-zA-Z_]", "_", name).strip("_").lower() or "model"
    if ident == "main":  # TFLite's subgraph name; keep the C namespace unambiguous
        ident = "model"
    return f"m_{ident}" if ident[0].isdigit() else ident


def check_supported(graph: Graph) -> None:
    """Raise UnsupportedOperatorError for the first node no emitter handles."""
    for node in graph.nodes:
        if node.op not in EMITTERS:
            raise UnsupportedOperatorError(node.op, node.name, "the C generator lacks it")
        if len([o for o in node.outputs if o]) != 1:
            raise UnsupportedOperatorError(node.op, node.name, "only single-output nodes")


def _io_spec(graph: Graph, name: str) -> IOSpec:
    tensor = graph.tensor(name)
    if tensor.dtype not in CTYPES:
        raise UnsupportedOperatorError("graph", graph.name, f"I/O {name!r} is {tensor.dtype}")
    return IOSpec(name, tensor.shape, tensor.dtype)


# ----------------------------------------------------------------------------------
# the plan, checked against the graph (a plan file is user input)
# ----------------------------------------------------------------------------------
def _checked_order(graph: Graph, plan: Plan) -> tuple[list[Node], list[StagePlan]]:
    """The plan's operator order and its depth-first stages, checked against the graph
    (names, topology, sizes; a stage's schedule and line buffers)."""
    if sorted(plan.order) != sorted(n.name for n in graph.nodes):
        raise InvalidPlanError("plan: its operator order does not name the model's nodes")
    stages = checked_stages(graph, plan)
    # lifetimes and in-place walks, from the graph
    check_against_graph(graph, plan_without_stages(plan, stages))
    by_name = {n.name: n for n in graph.nodes}
    nodes = [by_name[n] for n in plan.order]
    produced = _check_topology(graph, nodes)
    in_rings = {name for sp in stages for name in sp.rings}
    _check_placements(graph, plan, produced - in_rings)
    _check_inplace_ops(plan, nodes)
    return nodes, stages


def _check_topology(graph: Graph, nodes: list[Node]) -> set[str]:
    """Every node runs after its inputs exist; returns every tensor available by the end."""
    ready = set(graph.inputs) | {t.name for t in graph.tensors.values() if t.is_constant}
    for node in nodes:
        late = [i for i in node.inputs if i and i not in ready]
        if late:
            raise InvalidPlanError(f"plan: node {node.name!r} runs before {late[0]!r} exists")
        ready.update(node.outputs)
    return ready


def _check_placements(graph: Graph, plan: Plan, produced: set[str]) -> None:
    """Every activation in use has an aligned region inside the arena, large enough."""
    placed = {b.id: b for b in plan.tensors}
    for tensor in graph.activations():
        if tensor.name not in produced:
            continue
        buf = placed.get(tensor.name)
        if buf is None:
            raise InvalidPlanError(f"plan: no offset for tensor {tensor.name!r}")
        if buf.size_bytes < tensor.nbytes or buf.offset + buf.size_bytes > plan.arena_bytes:
            raise InvalidPlanError(f"plan: tensor {tensor.name!r} does not fit its planned region")
        if buf.offset % ARENA_ALIGNMENT:
            raise InvalidPlanError(f"plan: tensor {tensor.name!r} is not 16-byte aligned")


def _check_inplace_ops(plan: Plan, nodes: list[Node]) -> None:
    ops = {n.name: n.op for n in nodes}
    for pair in plan.inplace:
        if pair.granularity != "stage" and ops.get(pair.node) not in INPLACE_OPS:
            raise InvalidPlanError(
                f"plan: in-place pair at {pair.node!r} ({ops.get(pair.node)}) is not supported "
                "by the C generator"
            )


def _arena_guard(ctx: EmitContext, node: Node) -> str:
    """The ASan check of one node (``-DCL_ASAN_CHECK``): the whole arena poisoned, then
    only the bytes of its planned inputs, outputs and chunk buffer made addressable, so
    a kernel touching any other arena byte aborts the debug build. Overlapping regions
    (in-place pairs) are merged first: ASan's partial granules must not shrink a region."""
    spans = []
    for name in [*node.inputs, *node.outputs]:
        if name and name in ctx.offsets:
            spans.append((ctx.offsets[name], ctx.offsets[name] + ctx.graph.tensor(name).nbytes))
    chunk = ctx.chunk_buffers.get(node.name)
    if chunk is not None and node.name in ctx.inplace_pairs:
        spans.append((chunk.offset, chunk.offset + chunk.size_bytes))
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return " ".join(["CL_POISON_ALL();", *(f"CL_UNPOISON({lo}, {hi - lo});" for lo, hi in merged)])
