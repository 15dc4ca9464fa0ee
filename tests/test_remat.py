"""Rematerialization: a skip tensor recomputed late instead of kept live lowers the peak,
changes no output, and runs inside its (smaller) arena."""

from __future__ import annotations

import numpy as np

from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.ir.load import load_model
from crosslevel.memory.plan import make_plan
from crosslevel.memory.remat import rematerialize
from crosslevel.runtime.arena_executor import run_in_arena
from crosslevel.runtime.reference import run_reference

CONV = {"strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1), "activation": "RELU"}


def skip_graph() -> Graph:
    """x -> T (cheap 1x1 conv) -> wide middle (U, V: 64 channels) -> W; T + W; + conv(x).
    T waits through the wide middle; x is small and read again at the end."""
    rng = np.random.default_rng(0)
    tensors: dict[str, Tensor] = {"x": Tensor("x", (1, 8, 8, 4), "float32")}
    nodes = []

    def conv(name: str, src: str, cin: int, cout: int) -> None:
        w = rng.standard_normal((cout, 1, 1, cin)).astype(np.float32) / cin
        tensors[f"{name}.w"] = Tensor(f"{name}.w", w.shape, "float32", w)
        tensors[name] = Tensor(name, (1, 8, 8, cout), "float32")
        nodes.append(Node(f"n_{name}", "CONV_2D", [src, f"{name}.w"], [name], dict(CONV)))

    def add(name: str, a: str, b: str) -> None:
        tensors[name] = Tensor(name, (1, 8, 8, 32), "float32")
        nodes.append(Node(f"n_{name}", "ADD", [a, b], [name], {"activation": "NONE"}))

    conv("t", "x", 4, 32)
    conv("u", "t", 32, 64)
    conv("v", "u", 64, 64)
    conv("w", "v", 64, 32)
    add("y", "t", "w")
    conv("z", "x", 4, 32)
    add("out", "y", "z")
    graph = Graph("skip", tensors, nodes, ["x"], ["out"], layout="NHWC")
    graph.validate()
    return graph


def test_recomputing_the_skip_tensor_lowers_the_peak_and_keeps_outputs() -> None:
    graph = skip_graph()
    found = rematerialize(graph)
    assert found is not None
    assert found.copies == [("n_t", "n_t@remat")]
    assert found.peak_after_bytes == found.peak_before_bytes - 8 * 8 * 32 * 4
    assert found.extra_macs == 8 * 8 * 4 * 32
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 4)).astype(np.float32)
    want = run_reference(graph, [x])["out"]
    assert np.allclose(run_reference(found.graph, [x])["out"], want, rtol=1e-6, atol=1e-6)
    by_name = {n.name: n for n in found.graph.nodes}
    plan = make_plan(found.graph, [by_name[n] for n in found.order], time_limit_s=2.0)
    assert plan.arena_bytes < make_plan(graph, time_limit_s=2.0).arena_bytes
    got = run_in_arena(found.graph, plan, [x])[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


def test_no_copy_beyond_the_mac_budget_and_none_on_chains() -> None:
    assert rematerialize(skip_graph(), max_extra_macs_pct=0.0) is None
    assert rematerialize(load_model("mlperf:vww_96_int8.tflite").graph) is None
