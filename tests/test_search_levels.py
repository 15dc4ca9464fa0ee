"""The graph and operator levels of the joint space on real graphs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from crosslevel.graph.optimize import optimize_graph
from crosslevel.ir.graph import Graph
from crosslevel.search.graph_operator import GraphPassLevel, KernelLevel, int8_convs
from crosslevel.search.objectives import fill_costs
from crosslevel.search.optimize import Request, build_space
from crosslevel.search.space import Candidate


@pytest.fixture(scope="module")
def float_graph() -> Graph:
    import torch

    from crosslevel.ir.torch_io import import_torch
    from crosslevel.model.zoo import build

    torch.manual_seed(0)
    module = build("digits_cnn").eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding has work to do
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return import_torch(module, (1, 1, 8, 8), keep_batchnorm=True)


def _apply(level: GraphPassLevel, graph: Graph, fold: bool, fuse: bool) -> Graph:
    cand = level.apply(Candidate(values={}, graph=graph), {"fold": fold, "fuse": fuse}, False)
    return cand.graph


def test_graph_knobs_select_the_pipeline_passes(float_graph: Graph) -> None:
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.runtime.ort import run_onnx

    level = GraphPassLevel()
    ops = {k: [n.op for n in _apply(level, float_graph, *k).nodes]
           for k in ((False, False), (True, False), (False, True), (True, True))}  # fmt: skip
    assert "BATCH_NORM" in ops[(False, False)] and "RELU" in ops[(False, False)]
    assert "BATCH_NORM" not in ops[(True, False)] and "RELU" in ops[(True, False)]
    assert "RELU" not in ops[(True, True)]
    assert ops[(True, True)] == [n.op for n in optimize_graph(float_graph).nodes]
    assert _apply(level, float_graph, False, False) is float_graph  # off: untouched
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    want = run_onnx(export_onnx(float_graph), [x])[0]
    for key in ((True, False), (True, True)):
        got = run_onnx(export_onnx(_apply(level, float_graph, *key)), [x])[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1, np.abs(want).max()))


def test_graph_passes_lower_the_arena_through_the_space(float_graph: Graph) -> None:
    from crosslevel.search.levels import MemoryLevel
    from crosslevel.search.optimize import GraphLevel
    from crosslevel.search.space import Space

    space = Space([GraphLevel(float_graph, "test"), GraphPassLevel(), MemoryLevel(0.5)])
    plain = space.build({}, exact=False)
    fused = space.build({"graph.fold": True, "graph.fuse": True}, exact=False)
    fill_costs(plain, None)
    fill_costs(fused, None)
    assert fused.figures["peak_ram_bytes"] < plain.figures["peak_ram_bytes"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc for the generated C")
def test_kernel_level_scales_int8_conv_times_by_measured_ratios(tmp_path: Path) -> None:
    from crosslevel.hardware.devices import get_device
    from crosslevel.ir.load import load_model

    graph = load_model("zoo:digits_cnn", int8=True).graph
    assert int8_convs(graph)
    level = KernelLevel(cache_dir=tmp_path, runs=5)
    device = get_device("stm32g031k8")
    figures = {}
    for choice in ("default", "direct", "gemm", "tuned"):
        cand = level.apply(Candidate(values={}, graph=graph), {"conv_kernel": choice}, False)
        fill_costs(cand, device)
        figures[choice] = cand.figures
    assert level.measurements == 1  # one timing per shape signature
    times = level.times(graph)
    for choice in ("direct", "gemm", "tuned"):
        scale = figures[choice]["node_latency_scale"]
        assert list(scale.values()) == pytest.approx(times.scale(choice))
        assert "host-measured" in figures[choice]["latency_label"]
    assert all(s <= 1.0 for s in figures["tuned"]["node_latency_scale"].values())
    assert figures["tuned"]["latency_ms"] <= figures["default"]["latency_ms"] + 1e-9


def test_the_space_registers_graph_and_operator_levels() -> None:
    space, _ = build_space(Request(model="mlperf:ad01_int8.tflite"))
    assert [lv.name for lv in space.levels] == ["input", "graph", "memory", "operator"]
    assert not space.accuracy_levels()
    space, _ = build_space(Request(seeds=1, epochs=1))
    assert [lv.name for lv in space.levels] == ["model", "graph", "memory", "operator"]
