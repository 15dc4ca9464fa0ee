"""The arena executor: real int8 models run inside their planned arena, bit-exact with TFLM,
and wrong plans (overlapping live tensors, too small an arena) are caught by the shadow tags.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np
import pytest

from crosslevel.errors import CrosslevelError
from crosslevel.ir.graph import Graph
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.inplace import InplacePair
from crosslevel.memory.offsets import PlanOverlapError, check_plan
from crosslevel.memory.plan import Plan, PlannedBuffer, make_plan
from crosslevel.model.mlperf_tiny import INT8_FILES, models_dir
from crosslevel.runtime.arena_executor import ArenaViolation, run_in_arena
from crosslevel.runtime.tflm import run_tflm

SEEDS = range(3)


@cache
def model(name: str) -> tuple[bytes, Graph]:
    buf = (models_dir() / name).read_bytes()
    return buf, import_tflite(buf)


@cache
def plan_for(name: str, tflm_offsets: bool) -> Plan:
    return make_plan(model(name)[1], time_limit_s=5.0, tflm_offsets=tflm_offsets)


def random_inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [graph.tensors[n].shape for n in graph.inputs]
    return [rng.integers(-128, 128, size=s, dtype=np.int8) for s in shapes]


def with_tensor(plan: Plan, name: str, **changes: Any) -> Plan:
    """``plan`` with one tensor's fields changed (the arena grown to still hold it)."""
    tensors = [replace(b, **changes) if b.id == name else b for b in plan.tensors]
    end = max(b.offset + b.size_bytes for b in tensors)
    return replace(plan, tensors=tensors, arena_bytes=max(plan.arena_bytes, end))


@pytest.mark.parametrize("tflm_offsets", [False, True], ids=["ours", "tflm"])
@pytest.mark.parametrize("name", INT8_FILES)
def test_outputs_bit_exact_with_tflm_inside_the_arena(name: str, tflm_offsets: bool) -> None:
    buf, graph = model(name)
    plan = plan_for(name, tflm_offsets)
    assert plan.arena_bytes <= plan.bounds.tflm_greedy_bytes
    for seed in SEEDS:
        inputs = random_inputs(graph, seed)
        ours = run_in_arena(graph, plan, inputs)
        theirs = run_tflm(buf, inputs, isolate=False)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), f"{name}: outputs differ from TFLM"


def overlapping_pairs(plan: Plan) -> list[tuple[PlannedBuffer, PlannedBuffer]]:
    """(a, b) tensors live at the same step, a produced no later than b."""
    return [
        (a, b)
        for a in plan.tensors
        for b in plan.tensors
        if a.id != b.id and (a.first, a.id) < (b.first, b.id) and b.first <= a.last
    ]


def partners(plan: Plan, name: str) -> set[str]:
    """Tensors that share a step and a byte with ``name`` under ``plan``."""
    me = next(b for b in plan.tensors if b.id == name)
    return {
        b.id
        for b in plan.tensors
        if b.id != name
        and b.first <= me.last
        and me.first <= b.last
        and b.offset < me.offset + me.size_bytes
        and me.offset < b.offset + b.size_bytes
    }


@pytest.mark.parametrize("name", INT8_FILES)
def test_a_tensor_moved_onto_a_live_one_is_caught(name: str) -> None:
    """Whatever pair is chosen and whatever the data (zeros too), it is caught: when b is
    produced while a still waits for a later reader, that read fails the tag check; when
    b is produced by a's last reader (or b is a graph input that a's producer reads), the
    write over the node's own input fails."""
    _, graph = model(name)
    plan = plan_for(name, False)
    pairs = overlapping_pairs(plan)
    reads = {n.outputs[0]: set(n.inputs) for n in graph.nodes}  # what b's producer reads
    later_read = [
        (a, b) for a, b in pairs if a.first < b.first < a.last and a.id not in reads[b.id]
    ]
    same_step = [(a, b) for a, b in pairs if (a, b) not in later_read]
    # Only the residual model has skip connections, hence tensors read after b is made.
    assert bool(later_read) == (name == "pretrainedResnet_quant.tflite")
    rng = random.Random(name)
    chosen = rng.sample(later_read, min(2, len(later_read)))
    chosen += rng.sample(same_step, min(2, len(same_step)))
    assert len(chosen) >= 2
    zeros = [np.zeros(graph.tensors[n].shape, np.int8) for n in graph.inputs]
    for a, b in chosen:
        bad = with_tensor(plan, b.id, offset=a.offset)
        with pytest.raises(PlanOverlapError):  # the pair really is live together
            check_plan(bad.buffers(), bad.offsets)
        for inputs in (random_inputs(graph, 0), zeros):
            with pytest.raises(ArenaViolation, match=r"step \d+|graph output") as info:
                run_in_arena(graph, bad, inputs)
            message = str(info.value)
            if (a, b) in later_read:
                assert "reading tensor" in message, message
            named = set(re.findall(r"'([^']*)'", message))
            assert len(named & ({b.id} | partners(bad, b.id))) >= 2, message


def test_output_over_its_own_input_needs_an_inplace_pair() -> None:
    """kws's RESHAPE output on its input's bytes is legal only as an in-place pair (a real
    kernel writes while it reads); declared, it runs piece by piece and stays exact."""
    name = "kws_ref_model.tflite"
    buf, graph = model(name)
    plan = plan_for(name, False)
    node = next(n for n in graph.nodes if n.op == "RESHAPE")
    src, dst = node.inputs[0], node.outputs[0]
    offset = next(b.offset for b in plan.tensors if b.id == src)
    moved = with_tensor(plan, dst, offset=offset)
    inputs = random_inputs(graph, 0)
    with pytest.raises(ArenaViolation, match=re.escape(f"{dst!r} is written over input {src!r}")):
        run_in_arena(graph, moved, inputs)
    pair = InplacePair(node.name, src, dst, 0, 0, 0, 0, "element")
    ours = run_in_arena(graph, replace(moved, inplace=[pair]), inputs)[0]
    assert np.array_equal(ours, run_tflm(buf, inputs, isolate=False)[0])


def test_scratch_on_a_live_input_is_caught() -> None:
    name = "vww_96_int8.tflite"
    _, graph = model(name)
    plan = plan_for(name, False)
    step = len(plan.order) // 2
    node = next(n for n in graph.nodes if n.name == plan.order[step])
    victim = next(b for b in plan.tensors if b.id == node.inputs[0])
    scratch = PlannedBuffer(f"scratch:{node.name}", 64, victim.offset, step, step, 16, node.name)
    bad = replace(plan, scratch=[scratch])
    with pytest.raises(
        ArenaViolation, match=f"step {step}.*{re.escape(repr(victim.id))}.*scratch:"
    ):
        run_in_arena(graph, bad, random_inputs(graph, 0))
    away = replace(scratch, offset=plan.arena_bytes)  # scratch in bytes of its own: fine
    ok = replace(plan, scratch=[away], arena_bytes=plan.arena_bytes + 64)
    run_in_arena(graph, ok, random_inputs(graph, 0))


def test_too_small_an_arena_and_inconsistent_plans_are_clear_errors() -> None:
    name = "str_ww_ref_model.tflite"
    _, graph = model(name)
    plan = plan_for(name, False)
    inputs = random_inputs(graph, 0)
    top = max(plan.tensors, key=lambda b: b.offset + b.size_bytes)
    small = replace(plan, arena_bytes=plan.arena_bytes // 2)
    with pytest.raises(ArenaViolation, match=f"needs bytes .*arena has only {small.arena_bytes} "):
        run_in_arena(graph, small, inputs)
    shrunk = with_tensor(plan, top.id, size_bytes=top.size_bytes - 16)
    with pytest.raises(
        ArenaViolation, match=re.escape(repr(top.id)) + r" needs \d+ bytes, the plan gives"
    ):
        run_in_arena(graph, shrunk, inputs)
    missing = replace(plan, tensors=[b for b in plan.tensors if b.id != top.id])
    with pytest.raises(ArenaViolation, match=re.escape(f"{top.id!r} has no planned offset")):
        run_in_arena(graph, missing, inputs)
    with pytest.raises(ArenaViolation, match="order"):
        run_in_arena(graph, replace(plan, order=plan.order[1:]), inputs)
    swapped = replace(plan, order=[plan.order[1], plan.order[0], *plan.order[2:]])
    with pytest.raises(ArenaViolation, match="never written"):  # not a topological order
        run_in_arena(graph, swapped, inputs)
    assert issubclass(ArenaViolation, CrosslevelError)
