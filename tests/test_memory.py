"""The memory model and the TFLM greedy restatement, on hand-built and real graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.memory.lifetimes import (
    Buffer,
    align_up,
    buffers_for_order,
    no_reuse_bytes,
    peak_live_bytes,
)
from crosslevel.memory.tflm_greedy import plan_tflm_greedy
from crosslevel.model.mlperf_tiny import FILE_ORDER_BOUNDS, INT8_FILES


def _chain_with_branch() -> Graph:
    """x -> a -> b; a -> c; (b, c) -> d: ``a`` lives until d's inputs are both made."""
    t = {
        "x": Tensor("x", (1, 10), "int8"),
        "w": Tensor("w", (10, 10), "int8", data=np.zeros((10, 10), np.int8)),
        "a": Tensor("a", (1, 10), "int8"),
        "b": Tensor("b", (1, 10), "int8"),
        "c": Tensor("c", (1, 10), "int8"),
        "d": Tensor("d", (1, 10), "int8"),
    }
    nodes = [
        Node("n0", "FULLY_CONNECTED", ["x", "w", ""], ["a"]),
        Node("n1", "RELU", ["a"], ["b"]),
        Node("n2", "RELU", ["a"], ["c"]),
        Node("n3", "ADD", ["b", "c"], ["d"]),
    ]
    return Graph("g", t, nodes, ["x"], ["d"], layout="NHWC")


def test_lifetimes_follow_the_memory_model() -> None:
    graph = _chain_with_branch()
    graph.validate()
    buffers = {b.name: b for b in buffers_for_order(graph)}
    assert "w" not in buffers  # constants live in flash
    assert (buffers["x"].first, buffers["x"].last) == (0, 0)
    assert (buffers["a"].first, buffers["a"].last) == (0, 2)
    assert (buffers["b"].first, buffers["b"].last) == (1, 3)
    assert (buffers["d"].first, buffers["d"].last) == (3, 3)  # output lives to the end
    assert all(b.size_bytes == 16 for b in buffers.values())  # 10 bytes rounded to 16
    assert peak_live_bytes(list(buffers.values())) == 48  # step 2: a, b, c
    assert no_reuse_bytes(list(buffers.values())) == 80


def test_unaligned_sizes_and_align_up() -> None:
    assert align_up(10, 16) == 16 and align_up(32, 16) == 32 and align_up(7, 1) == 7
    buffers = buffers_for_order(_chain_with_branch(), alignment=1)
    assert {b.size_bytes for b in buffers} == {10}


def test_greedy_places_largest_first_and_reuses_dead_space() -> None:
    buffers = [
        Buffer("big", 64, 0, 1),
        Buffer("small_early", 16, 0, 0),
        Buffer("small_late", 16, 2, 3),
        Buffer("mid", 32, 1, 2),
    ]
    plan = plan_tflm_greedy(buffers)
    assert plan.offsets["big"] == 0
    assert plan.offsets["mid"] == 64  # overlaps big at step 1
    assert plan.offsets["small_early"] == 64  # big holds 0..63 at step 0
    assert plan.offsets["small_late"] == 0  # big is dead by step 2
    assert plan.arena_bytes == 96
    for a in buffers:  # no two live buffers share bytes
        for b in buffers:
            if a is not b and a.overlaps(b):
                oa, ob = plan.offsets[a.name], plan.offsets[b.name]
                assert oa + a.size_bytes <= ob or ob + b.size_bytes <= oa


def test_greedy_ties_place_the_later_listed_buffer_first() -> None:
    buffers = [Buffer("first", 16, 0, 0), Buffer("second", 16, 0, 0)]
    plan = plan_tflm_greedy(buffers)
    assert plan.offsets == {"second": 0, "first": 16}


@pytest.mark.parametrize("name", INT8_FILES)
def test_greedy_restatement_equals_measured_tflm_head(models_dir: Path, name: str) -> None:
    from crosslevel.ir.tflite_io import import_tflite
    from crosslevel.runtime.tflm import measure_tflm_arena

    data = (models_dir / name).read_bytes()
    graph = import_tflite(data)
    buffers = buffers_for_order(graph)
    assert plan_tflm_greedy(buffers).arena_bytes == measure_tflm_arena(data).head_bytes
    assert peak_live_bytes(buffers) == FILE_ORDER_BOUNDS[name]


# Int8 models the project makes itself (minimal PTQ of zoo models), branching ones included;
# the three largest are left to benchmarks/arena_tflm.py to keep the suite fast.
ZOO_INT8 = [
    "digits_cnn",
    "ds_cnn",
    "fc_autoencoder",
    "imu_cnn",
    "mnist1d_cnn",
    "mcunet_v2",
    "inception_cells",
]


@pytest.mark.parametrize("name", ZOO_INT8)
def test_greedy_restatement_equals_tflm_on_zoo_int8(name: str) -> None:
    from crosslevel.ir.tflite_io import import_tflite
    from crosslevel.model.int8_zoo import zoo_int8_tflite
    from crosslevel.runtime.tflm import measure_tflm_arena

    data = zoo_int8_tflite(name)
    graph = import_tflite(data)
    buffers = buffers_for_order(graph)
    assert plan_tflm_greedy(buffers).arena_bytes == measure_tflm_arena(data).head_bytes
    assert peak_live_bytes(buffers) <= measure_tflm_arena(data).head_bytes


def test_greedy_restatement_equals_tflm_on_float_branching_export() -> None:
    """Float32 NHWC export of the irregularly wired zoo model (MEAN included)."""
    from crosslevel.graph import optimize_graph
    from crosslevel.graph.layout import to_nhwc
    from crosslevel.ir.tflite_io import export_tflite
    from crosslevel.ir.torch_io import import_torch
    from crosslevel.model import zoo
    from crosslevel.runtime.tflm import measure_tflm_arena

    entry = zoo.ZOO["inception_cells"]
    graph = to_nhwc(optimize_graph(import_torch(zoo.build(entry.name), (1, *entry.input_shape))))
    assert "MEAN" in {n.op for n in graph.nodes}
    data = export_tflite(graph)
    buffers = buffers_for_order(graph)
    assert plan_tflm_greedy(buffers).arena_bytes == measure_tflm_arena(data).head_bytes
