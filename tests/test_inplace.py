"""In-place plans: real models run piece by piece inside arenas far below TFLM's, bit-exact
with TFLM (int8) and within tolerance of ONNX Runtime (float); wrong deltas are caught."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crosslevel.ir.graph import Graph
from crosslevel.ir.onnx import export_onnx
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.inplace import max_reverse_delta, min_delta, pieces, window_span
from crosslevel.memory.ordering import best_order
from crosslevel.memory.plan import (
    InvalidPlanError,
    Plan,
    check_against_graph,
    make_plan,
    plan_from_json,
    plan_to_json,
)
from crosslevel.model.int8_zoo import zoo_int8
from crosslevel.model.mlperf_tiny import INT8_FILES, models_dir
from crosslevel.runtime.arena_executor import ArenaViolation, run_in_arena
from crosslevel.runtime.ort import run_onnx
from crosslevel.runtime.tflm import run_tflm


@cache
def model(name: str) -> tuple[bytes, Graph]:
    buf = (models_dir() / name).read_bytes()
    return buf, import_tflite(buf)


def inplace_plan(graph: Graph) -> Plan:
    by_name = {n.name: n for n in graph.nodes}
    order = [by_name[n] for n in best_order(graph, time_limit_s=2.0).order]
    return make_plan(graph, order, time_limit_s=2.0, inplace=True)


@cache
def plan_for(name: str) -> Plan:
    return inplace_plan(model(name)[1])


def int8_inputs(graph: Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, graph.tensors[n].shape, np.int8) for n in graph.inputs]


@pytest.mark.parametrize("name", INT8_FILES)
def test_inplace_plan_is_bit_exact_with_tflm_and_never_above_it(name: str) -> None:
    buf, graph = model(name)
    plan = plan_for(name)
    assert plan.arena_bytes <= plan.bounds.tflm_greedy_bytes
    assert plan.bounds.peak_live_bytes <= plan.arena_bytes
    for seed in range(2):
        inputs = int8_inputs(graph, seed)
        ours = run_in_arena(graph, plan, inputs)
        for a, b in zip(ours, run_tflm(buf, inputs, isolate=False), strict=True):
            assert np.array_equal(a, b)


def test_inplace_beats_tflm_where_the_layers_allow_it() -> None:
    """Pointwise and depthwise layers overwrite their inputs: vww needs half of TFLM's."""
    plan = plan_for("vww_96_int8.tflite")
    assert plan.bounds.tflm_greedy_bytes / plan.arena_bytes >= 1.8
    assert {"row", "pixel"} <= {p.granularity for p in plan.inplace}
    assert any(p.reverse for p in plan.inplace) and not all(p.reverse for p in plan.inplace)


@pytest.mark.parametrize("granularity", ["row", "pixel"])
def test_a_delta_past_the_safe_one_is_caught(granularity: str) -> None:
    """Move one output 16 bytes further onto its input than its walk allows: a later piece
    reads input bytes that already hold output, and the shadow tags say so."""
    name = "vww_96_int8.tflite"
    _, graph = model(name)
    plan = plan_for(name)
    pair = next(p for p in plan.inplace if p.granularity == granularity)
    if pair.reverse:  # safe up to max_reverse: one step past it, walked backward still
        delta = pair.max_reverse_delta_bytes + 16
        unsafe = replace(pair, delta_bytes=delta, max_reverse_delta_bytes=delta)
    else:
        delta = pair.min_delta_bytes - 16
        unsafe = replace(pair, delta_bytes=delta, min_delta_bytes=delta)
    shift = pair.delta_bytes - delta  # offset(out) = offset(in) - delta
    tensors = [replace(b, offset=b.offset + shift) if b.id == pair.output else b
               for b in plan.tensors]  # fmt: skip
    bad = replace(
        plan,
        tensors=tensors,
        inplace=[unsafe if p is pair else p for p in plan.inplace],
        arena_bytes=plan.arena_bytes + abs(shift),
    )
    with pytest.raises(ArenaViolation, match="reading tensor"):
        run_in_arena(graph, bad, int8_inputs(graph, 0))


def test_walks_match_their_geometry() -> None:
    """A growing 1x1 layer walked forward must end where its input ends; backward it
    starts where its input starts; a stride-2 layer may start above its input."""
    _, graph = model("vww_96_int8.tflite")
    grow = next(n for n in graph.nodes if n.op == "CONV_2D" and n.name == "conv_2d_2")
    walk = pieces(graph, grow, 0)
    assert walk is not None and walk.granularity == "pixel"
    pixels = 48 * 48
    assert min_delta(walk) == (pixels - 1) * (16 - 8)
    assert max_reverse_delta(walk) == 16 - 8
    shrink = next(n for n in graph.nodes if n.name == "depthwise_conv_2d_3")
    walk = pieces(graph, shrink, 0)
    assert walk is not None and walk.granularity == "row" and min_delta(walk) < 0


def test_plan_json_round_trip_keeps_pairs_and_rejects_unsafe_ones() -> None:
    plan = plan_for("str_ww_ref_model.tflite")
    assert plan.inplace
    data = json.loads(json.dumps(plan_to_json(plan)))
    assert plan_from_json(data).inplace == plan.inplace
    pair = data["inplace"][0]
    pair["min_delta_bytes"] = pair["delta_bytes"] + 16
    pair["max_reverse_delta_bytes"] = pair["delta_bytes"] - 16
    with pytest.raises(InvalidPlanError, match="safe are"):
        plan_from_json(data)
    data["inplace"][0] = {**pair, "input": "nope"}
    with pytest.raises(InvalidPlanError, match="two different planned tensors"):
        plan_from_json(data)


@pytest.mark.parametrize("name", ["mnist1d_cnn", "digits_cnn", "ds_cnn"])
def test_float_zoo_model_in_its_inplace_arena_matches_onnx_runtime(name: str) -> None:
    graph = zoo_int8(name, num_calibration=4).float_graph
    plan = inplace_plan(graph)
    assert plan.inplace and plan.arena_bytes < plan.bounds.tflm_greedy_bytes
    rng = np.random.default_rng(0)
    x = rng.standard_normal(graph.tensors[graph.inputs[0]].shape).astype(np.float32)
    ours = run_in_arena(graph, plan, [x])[0]
    ref = run_onnx(export_onnx(graph), [x])[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(ref).max()))


@given(st.integers(-12, 40), st.integers(1, 12), st.integers(1, 30))
@settings(max_examples=300, derandomize=True, database=None)
def test_window_span_splits_a_window_into_image_and_padding(
    first: int, reach: int, length: int
) -> None:
    lo, hi, before, after = window_span(first, reach, length)
    cells = range(first, first + reach)
    inside = [i for i in cells if 0 <= i < length]
    assert before == sum(i < 0 for i in cells) and after == sum(i >= length for i in cells)
    assert hi - lo == len(inside) and 0 <= lo <= hi <= length
    if inside:
        assert lo == inside[0]


def test_pads_wider_than_a_row_run_in_place_bit_exact() -> None:
    """crosslevel's own int8 DS-CNN: PyTorch's symmetric padding of the first layer
    becomes a PAD of 5 rows, walked in place row by row through rows of padding only."""
    made = zoo_int8("ds_cnn", num_calibration=2)
    graph = import_tflite(made.tflite)
    assert graph.nodes[0].op == "PAD"
    plan = inplace_plan(graph)
    assert plan.inplace[0].node == graph.nodes[0].name
    inputs = int8_inputs(graph, 0)
    for a, b in zip(run_in_arena(graph, plan, inputs), run_tflm(made.tflite, inputs), strict=True):
        assert np.array_equal(a, b)


def test_a_plan_claiming_a_walk_its_operator_cannot_do_is_refused() -> None:
    """Generated code follows a plan blindly: a 3x3 depthwise declared as walking pixels,
    an unsafe delta, or a lifetime cut short is refused against the graph."""
    _, graph = model("kws_ref_model.tflite")
    plan = plan_for("kws_ref_model.tflite")
    check_against_graph(graph, plan)
    dw = next(p for p in plan.inplace if p.node.startswith("depthwise"))
    lying = replace(plan, inplace=[replace(dw, granularity="pixel") if p is dw else p
                                   for p in plan.inplace])  # fmt: skip
    with pytest.raises(InvalidPlanError, match="cannot run in place by pixel"):
        check_against_graph(graph, lying)
    past = dw.max_reverse_delta_bytes + 16 if dw.reverse else dw.min_delta_bytes - 16
    unsafe = replace(dw, delta_bytes=past, min_delta_bytes=past, max_reverse_delta_bytes=past)
    with pytest.raises(InvalidPlanError, match="is unsafe"):
        check_against_graph(graph, replace(plan, inplace=[unsafe]))
    first = plan.tensors[1]
    short = replace(plan, tensors=[replace(first, last=first.first) if b is first else b
                                   for b in plan.tensors])  # fmt: skip
    with pytest.raises(InvalidPlanError, match="must be planned for steps"):
        check_against_graph(graph, short)
