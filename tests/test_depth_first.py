"""Depth-first stages: the first layers run row by row through line buffers inside the
arena, bit-exact with TFLM, far below its arena; wrong rings or overlaps are caught."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache

import numpy as np
import pytest

from crosslevel.ir.graph import Graph
from crosslevel.ir.onnx import export_onnx
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.depth_first import build_stage, stage_ends, steps_of
from crosslevel.memory.plan import InvalidPlanError, Plan, make_plan, plan_from_json, plan_to_json
from crosslevel.model.int8_zoo import zoo_int8
from crosslevel.model.mlperf_tiny import models_dir
from crosslevel.runtime.arena_executor import ArenaViolation, run_in_arena
from crosslevel.runtime.ort import run_onnx
from crosslevel.runtime.tflm import run_tflm


@cache
def model(name: str) -> tuple[bytes, Graph]:
    buf = (models_dir() / name).read_bytes()
    return buf, import_tflite(buf)


@cache
def staged_plan(name: str) -> Plan:
    return make_plan(model(name)[1], time_limit_s=2.0, inplace=True, depth_first=True)


def int8_inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, graph.tensors[n].shape, np.int8) for n in graph.inputs]


@pytest.mark.parametrize("name", ["pretrainedResnet_quant.tflite", "vww_96_int8.tflite"])
def test_stage_runs_bit_exact_with_tflm_far_below_its_arena(name: str) -> None:
    buf, graph = model(name)
    plan = staged_plan(name)
    assert plan.patch_stages and plan.patch_stages[0]["extra_macs"] == 0
    assert plan.bounds.tflm_greedy_bytes / plan.arena_bytes >= 2.3
    for seed in range(2):
        inputs = int8_inputs(graph, seed)
        for a, b in zip(run_in_arena(graph, plan, inputs), run_tflm(buf, inputs), strict=True):
            assert np.array_equal(a, b)


def test_rings_hold_what_the_kernels_reach() -> None:
    """A 3x3 stride-1 convolution reads three rows of its input: every ring feeding one
    keeps at least three, including the residual block's input that the ADD reads last."""
    _, graph = model("pretrainedResnet_quant.tflite")
    nodes = graph.nodes
    end = max(stage_ends(graph, nodes))
    stage = build_stage(graph, nodes[:end])
    first_conv_out = nodes[0].outputs[0]
    assert nodes[1].op == "CONV_2D" and stage.rings[nodes[1].outputs[0]] >= 3
    assert stage.rings[first_conv_out] >= 3  # read by the next conv and the block's ADD
    assert len(stage.schedule) == sum(steps_of(graph, n) for n in nodes[:end])


def with_ring(plan: Plan, rows: int) -> Plan:
    """``plan`` with its first line buffer one row shorter (same offsets)."""
    stage = plan.patch_stages[0]
    tensor = next(t for t, r in stage["rings"].items() if r >= 3)
    rings = {**stage["rings"], tensor: stage["rings"][tensor] - rows}
    return replace(plan, patch_stages=[{**stage, "rings": rings}])


def test_a_ring_one_row_short_is_caught() -> None:
    name = "pretrainedResnet_quant.tflite"
    _, graph = model(name)
    with pytest.raises(ArenaViolation, match=r"reading row \d+ of"):
        run_in_arena(graph, with_ring(staged_plan(name), 1), int8_inputs(graph, 0))


def test_stage_output_too_close_to_its_source_is_caught() -> None:
    """Move the stage's output 64 rows' worth of bytes onto the source it overwrites."""
    name = "vww_96_int8.tflite"
    _, graph = model(name)
    plan = staged_plan(name)
    pair = next(p for p in plan.inplace if p.granularity == "stage")
    shift = 4096
    tensors = [replace(b, offset=b.offset + shift) if b.id == pair.output else b
               for b in plan.tensors]  # fmt: skip
    moved = replace(pair, delta_bytes=pair.delta_bytes - shift, min_delta_bytes=-(2**31 - 1))
    bad = replace(
        plan,
        tensors=tensors,
        inplace=[moved if p is pair else p for p in plan.inplace],
        arena_bytes=plan.arena_bytes + shift,
    )
    with pytest.raises(ArenaViolation, match="reading tensor"):
        run_in_arena(graph, bad, int8_inputs(graph, 0))


def test_plan_json_keeps_the_stage_and_rejects_a_bad_one() -> None:
    plan = staged_plan("pretrainedResnet_quant.tflite")
    data = json.loads(json.dumps(plan_to_json(plan)))
    assert plan_from_json(data).patch_stages == plan.patch_stages
    data["patch_stages"][0]["rings"] = {"not-a-tensor": 3}
    with pytest.raises(InvalidPlanError, match="no planned line buffer"):
        plan_from_json(data)


def test_a_stage_that_is_not_a_prefix_is_refused() -> None:
    name = "pretrainedResnet_quant.tflite"
    _, graph = model(name)
    plan = staged_plan(name)
    stage = plan.patch_stages[0]
    bad = replace(plan, patch_stages=[{**stage, "layers": stage["layers"][1:]}])
    with pytest.raises(ArenaViolation, match="not a prefix"):
        run_in_arena(graph, bad, int8_inputs(graph, 0))


def test_mobilenet_v2_stage_through_pads_is_bit_exact_with_tflm() -> None:
    """The MCUNetV2 case at a test-sized resolution, from the .tflite crosslevel exports
    (PyTorch's symmetric padding of stride-2 layers becomes PAD operators): the stage
    walks through the PADs too, and the arena drops more than 4x below TFLM's."""
    made = zoo_int8("mobilenet_v2", num_calibration=2, resolution=64, width_mult=1.0)
    graph = import_tflite(made.tflite)
    assert "PAD" in {n.op for n in graph.nodes}
    plan = make_plan(graph, time_limit_s=2.0, inplace=True, depth_first=True)
    stage = plan.patch_stages[0]
    assert "PAD" in {n.op for n in graph.nodes if n.name in stage["layers"]}
    assert plan.bounds.tflm_greedy_bytes / plan.arena_bytes >= 4.0
    inputs = int8_inputs(graph, 0)
    for a, b in zip(run_in_arena(graph, plan, inputs), run_tflm(made.tflite, inputs), strict=True):
        assert np.array_equal(a, b)


def test_a_global_pool_takes_its_rows_one_by_one() -> None:
    """kws ends its convolutions in a global average pool: the stage feeds it row by row
    into an accumulator, so no full activation of the network is ever held."""
    name = "kws_ref_model.tflite"
    buf, graph = model(name)
    plan = staged_plan(name)
    stage = plan.patch_stages[0]
    assert graph.tensor(stage["output"]).shape == (1, 1, 1, 64)
    assert plan.arena_bytes < 8_000  # one 25x5x64 activation
    assert any(b.id == f"acc:{stage['output']}" for b in plan.scratch)
    inputs = int8_inputs(graph, 1)
    for a, b in zip(run_in_arena(graph, plan, inputs), run_tflm(buf, inputs), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["resnet8", "inception_cells"])
def test_float_zoo_stage_matches_onnx_runtime(name: str) -> None:
    """Float models run their depth-first plans in float32 arenas: within DESIGN.md's
    tolerance of ONNX Runtime on the same NHWC graph."""
    graph = zoo_int8(name, num_calibration=2).float_graph
    plan = make_plan(graph, time_limit_s=2.0, inplace=True, depth_first=True)
    assert plan.patch_stages and plan.arena_bytes < plan.bounds.tflm_greedy_bytes / 1.5
    x = np.random.default_rng(0).standard_normal(graph.tensors[graph.inputs[0]].shape)
    x = x.astype(np.float32)
    ours = run_in_arena(graph, plan, [x])[0]
    ref = run_onnx(export_onnx(graph), [x])[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))
