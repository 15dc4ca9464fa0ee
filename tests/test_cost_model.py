"""The roofline cost model, its calibration file, and the host calibration pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from crosslevel.errors import UsageError
from crosslevel.hardware.calibrate import (
    Measurement,
    ModelSpec,
    NodeMapper,
    calibrate_host,
    fit_factors,
    fit_measurements,
    fit_node_factors,
    fit_whole_model,
    leave_one_out,
    quick_models,
    summarize,
    without_profiler,
)
from crosslevel.hardware.cost_model import (
    Calibration,
    CostFactors,
    GraphFeatures,
    default_factors,
    node_costs,
    predict_features_s,
    predict_latency,
    predict_nodes_s,
)
from crosslevel.hardware.devices import get_device
from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.ir.ops import node_macs


# ----------------------------------------------------------------------------- graphs
def _conv_stack(
    layers: list[tuple[int, int, int]],
    hw: int,
    dtype: str = "float32",
    relu: bool = True,
    seed: int = 0,
) -> Graph:
    """NCHW chain of convolutions ``(out_channels, kernel, groups)``, each + RELU, then FC."""
    rng = np.random.default_rng(seed)
    wdtype = {"float32": np.float32, "int8": np.int8}[dtype]
    cin = 3 if layers[0][2] == 1 else layers[0][0]
    tensors = {"x": Tensor("x", (1, cin, hw, hw), dtype)}
    nodes: list[Node] = []
    prev = "x"
    for i, (cout, k, groups) in enumerate(layers):
        w = rng.standard_normal((cout, cin // groups, k, k)).astype(wdtype)
        tensors[f"w{i}"] = Tensor(f"w{i}", w.shape, dtype, data=w)
        tensors[f"c{i}"] = Tensor(f"c{i}", (1, cout, hw, hw), dtype)
        pad = k // 2
        attrs = {"strides": (1, 1), "pads": (pad, pad, pad, pad), "groups": groups}
        nodes.append(Node(f"conv{i}", "CONV_2D", [prev, f"w{i}"], [f"c{i}"], attrs))
        prev = f"c{i}"
        if relu:
            tensors[f"r{i}"] = Tensor(f"r{i}", (1, cout, hw, hw), dtype)
            nodes.append(Node(f"relu{i}", "RELU", [prev], [f"r{i}"]))
            prev = f"r{i}"
        cin = cout
    tensors["m"] = Tensor("m", (1, cin, 1, 1), dtype)
    nodes.append(Node("mean", "MEAN", [prev], ["m"], {"axes": (2, 3), "keepdims": True}))
    fw = rng.standard_normal((10, cin)).astype(wdtype)
    tensors["fw"] = Tensor("fw", fw.shape, dtype, data=fw)
    tensors["y"] = Tensor("y", (1, 10), dtype)
    nodes.append(Node("fc", "FULLY_CONNECTED", ["m", "fw"], ["y"]))
    graph = Graph("stack", tensors, nodes, ["x"], ["y"])
    graph.validate()
    return graph


def _fc_graph(features: int, hidden: int) -> Graph:
    """A two-layer MLP: big weights, few MACs per byte (memory-bound on a CPU)."""
    rng = np.random.default_rng(1)
    w1 = rng.standard_normal((hidden, features)).astype(np.float32)
    w2 = rng.standard_normal((features, hidden)).astype(np.float32)
    tensors = {
        "x": Tensor("x", (1, features), "float32"),
        "w1": Tensor("w1", w1.shape, "float32", data=w1),
        "h": Tensor("h", (1, hidden), "float32"),
        "w2": Tensor("w2", w2.shape, "float32", data=w2),
        "y": Tensor("y", (1, features), "float32"),
    }
    nodes = [
        Node("fc1", "FULLY_CONNECTED", ["x", "w1"], ["h"]),
        Node("fc2", "FULLY_CONNECTED", ["h", "w2"], ["y"]),
    ]
    return Graph("mlp", tensors, nodes, ["x"], ["y"])


MOBILE_BLOCK = [(16, 3, 1), (16, 3, 16), (32, 1, 1), (32, 3, 32), (64, 1, 1)]


# ----------------------------------------------------------------------------- features
def test_node_costs_classify_count_and_fuse() -> None:
    graph = _conv_stack(MOBILE_BLOCK, hw=16)
    costs = {c.name: c for c in node_costs(graph)}
    assert [costs[f"conv{i}"].op_class for i in range(5)] == [
        "conv", "depthwise", "pointwise", "depthwise", "pointwise"
    ]  # fmt: skip
    for node in graph.nodes:
        cost = costs[node.name]
        if node.op in ("CONV_2D", "FULLY_CONNECTED"):
            assert cost.work == node_macs(graph, node)
        names = {*node.inputs, *node.outputs}
        assert cost.bytes == sum(graph.tensor(n).nbytes for n in names)
    # A RELU right after a conv is fused (every runtime does); the MEAN is not.
    assert all(costs[f"relu{i}"].fused for i in range(5))
    assert not costs["mean"].fused and not costs["conv0"].fused
    assert costs["mean"].work == graph.tensor("r4").num_elements


def test_activation_is_not_fused_when_its_input_has_another_reader() -> None:
    graph = _conv_stack([(8, 3, 1)], hw=8)
    graph.nodes[-2].inputs = ["c0"]  # MEAN now reads the conv output too
    graph.tensors["m"] = Tensor("m", (1, 8, 1, 1), "float32")
    costs = {c.name: c for c in node_costs(graph)}
    assert not costs["relu0"].fused


# ----------------------------------------------------------------------------- prediction
def test_more_macs_take_longer_on_every_device() -> None:
    small = _conv_stack([(8, 3, 1), (16, 1, 1)], hw=16)
    big = _conv_stack([(32, 3, 1), (64, 1, 1)], hw=16)
    wide = _conv_stack([(8, 3, 1), (16, 1, 1)], hw=48)
    for name in ("stm32f746", "nrf52840", "rpi4", "host", "jetson_nano"):
        device = get_device(name)
        t_small = predict_latency(small, device).total_ms
        assert t_small < predict_latency(big, device).total_ms
        assert t_small < predict_latency(wide, device).total_ms


def test_mcu_is_slower_than_the_host_and_int8_helps_on_an_mcu() -> None:
    fp32 = _conv_stack(MOBILE_BLOCK, hw=32)
    int8 = _conv_stack(MOBILE_BLOCK, hw=32, dtype="int8")
    host, m7, m4 = get_device("host"), get_device("stm32f746"), get_device("nrf52840")
    t_host = predict_latency(fp32, host).total_ms
    t_m7 = predict_latency(fp32, m7).total_ms
    assert t_m7 > 20 * t_host
    assert predict_latency(fp32, m4).total_ms > t_m7  # 64 MHz M4 vs 216 MHz M7
    assert predict_latency(int8, m7).total_ms < t_m7


def test_prediction_parts_add_up_and_energy_is_power_times_time() -> None:
    graph = _conv_stack(MOBILE_BLOCK, hw=16)
    device = get_device("nrf52840")
    pred = predict_latency(graph, device)
    assert pred.label == "predicted (uncalibrated)"
    assert list(pred.per_node_ms) == [n.name for n in graph.nodes]
    assert math.isclose(sum(pred.per_node_ms.values()), pred.total_ms, rel_tol=1e-12)
    assert all(pred.per_node_ms[f"relu{i}"] == 0.0 for i in range(5))
    assert {pred.bound[f"relu{i}"] for i in range(5)} == {"fused"}
    assert set(pred.bound.values()) <= {"compute", "memory", "dispatch", "fused"}
    assert math.isclose(pred.energy_mj, device.active_power_w * pred.total_ms)
    assert "predicted" in pred.energy_note
    feats = GraphFeatures.of(graph, device)
    fast = predict_features_s(feats, device, default_factors(device)) * 1e3
    assert math.isclose(fast, pred.total_ms, rel_tol=1e-9)


def test_dispatch_dominates_a_tiny_model() -> None:
    tiny = _conv_stack([(4, 1, 1)], hw=2)
    host = get_device("host")
    pred = predict_latency(tiny, host)
    assert pred.bound["conv0"] == "dispatch" and pred.bound["fc"] == "dispatch"
    assert pred.total_ms < 0.1


# ----------------------------------------------------------------------------- calibration
def _calibration(device: str = "host") -> Calibration:
    factors = default_factors(get_device(device))
    # Far below any default, so the convolutions become compute-bound on every host (on a
    # fast AVX-512 host a mild change left them dispatch-bound and the total unchanged).
    factors.efficiency["conv/float32"] = 0.001
    return Calibration(
        device=device, factors=factors, fitted_keys=["conv/float32"], models=["a", "b"],
        runtime="test", error={"loo_within_10pct": 0.5, "loo_median_ape_pct": 12.0},
    )  # fmt: skip


def test_calibration_applies_only_to_its_device() -> None:
    graph = _conv_stack(MOBILE_BLOCK, hw=16)
    cal = _calibration()
    pred = predict_latency(graph, get_device("host"), cal)
    assert pred.label == "predicted (calibrated on host)"
    assert pred.total_ms != predict_latency(graph, get_device("host")).total_ms
    with pytest.raises(UsageError, match="fitted on 'host'"):
        predict_latency(graph, get_device("rpi4"), cal)


def test_calibration_file_round_trip_and_validation(tmp_path: Path) -> None:
    cal = _calibration()
    path = tmp_path / "calibration.json"
    cal.save(path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "crosslevel.calibration/2"
    loaded = Calibration.load(path)
    assert loaded == cal
    for bad in (
        "not json",
        json.dumps({**doc, "format": "crosslevel.calibration/9"}),
        json.dumps({k: v for k, v in doc.items() if k != "factors"}),
        json.dumps({**doc, "factors": {**doc["factors"], "mem_efficiency": -1}}),
        json.dumps({**doc, "factors": {**doc["factors"], "dispatch_s": {"conv": "x"}}}),
    ):
        path.write_text(bad)
        with pytest.raises(UsageError, match=str(path)):
            Calibration.load(path)


def _synthetic_set(device_name: str) -> list[Graph]:
    """Compute-, memory- and dispatch-bound graphs of every fitted class."""
    graphs = [_conv_stack(MOBILE_BLOCK, hw=hw, seed=hw) for hw in (4, 8, 16, 24, 32, 48)]
    graphs += [_conv_stack([(c, 3, 1), (c, 3, c), (2 * c, 1, 1)], hw=20) for c in (8, 16, 48)]
    graphs += [_conv_stack([(c, 1, 1), (c, 3, 1), (c, 3, 1)], hw=12) for c in (16, 32)]
    graphs += [_conv_stack([(8, 1, 1)], hw=hw, relu=False) for hw in (2, 6, 40)]
    graphs += [_fc_graph(f, h) for f, h in ((64, 16), (640, 128), (2048, 512), (4096, 1024))]
    return graphs


def test_fit_recovers_known_factors_from_synthetic_times() -> None:
    device = get_device("host")
    truth = default_factors(device)
    truth.efficiency.update({"conv/float32": 0.8, "pointwise/float32": 0.45,
                             "depthwise/float32": 0.12, "fc/float32": 0.3})  # fmt: skip
    truth.mem_efficiency = 1.5  # caches: every class but FC and MEAN stays compute-bound
    truth.dispatch_s.update({"conv": 4e-6, "depthwise": 1.5e-6, "pointwise": 3e-6,
                             "fc": 2e-6, "reduce": 1e-6})  # fmt: skip
    feats = [GraphFeatures.of(g, device) for g in _synthetic_set(device.name)]
    times = [predict_features_s(f, device, truth) for f in feats]
    fitted, names = fit_factors(feats, times, device, prior_weight=1e-6)
    assert {"conv/float32", "depthwise/float32", "fc/float32", "memory"} <= set(names)
    for key in ("conv/float32", "pointwise/float32", "depthwise/float32"):
        assert fitted.eff(key) == pytest.approx(truth.eff(key), rel=0.02), key
    assert fitted.mem_efficiency == pytest.approx(truth.mem_efficiency, rel=0.02)
    for cls in ("conv", "depthwise", "pointwise"):
        assert fitted.dispatch(cls) == pytest.approx(truth.dispatch(cls), rel=0.05), cls
    refit = [predict_features_s(f, device, fitted) for f in feats]
    np.testing.assert_allclose(refit, times, rtol=1e-3)
    # With the default (regularizing) prior the fit still reproduces the data closely.
    regular, _ = fit_factors(feats, times, device)
    np.testing.assert_allclose([predict_features_s(f, device, regular) for f in feats],
                               times, rtol=0.05)  # fmt: skip


def test_fit_rejects_bad_measurements() -> None:
    device = get_device("host")
    feats = [GraphFeatures.of(_fc_graph(64, 16), device)]
    with pytest.raises(ValueError, match="finite and positive"):
        fit_factors(feats, [float("nan")], device)
    with pytest.raises(ValueError, match="one measured time per graph"):
        fit_factors(feats, [1e-3, 2e-3], device)


def test_summary_counts_the_share_within_ten_percent() -> None:
    rows = [{"error_pct": e} for e in (-12.0, -9.0, 0.5, 10.0, 30.0)]
    summary = summarize(rows)
    assert summary["loo_within_10pct"] == pytest.approx(0.6)
    assert summary["loo_median_ape_pct"] == pytest.approx(10.0)
    assert summary["n_models"] == 5


def test_quick_host_calibration_end_to_end(tmp_path: Path) -> None:
    """Real ONNX Runtime timings of four tiny zoo models, a fit, and a LOO report."""
    cal = calibrate_host(quick=True, progress=False)
    assert cal.device == "host" and len(cal.models) == len(quick_models()) == 4
    fitted = [cal.factors.eff(k) for k in cal.fitted_keys if "/" in k and ":" not in k]
    fitted += [cal.factors.mem_efficiency, *cal.factors.dispatch_s.values()]
    assert fitted and all(math.isfinite(v) and v > 0 for v in fitted)
    # The fit used ORT's per-node kernel times, then the whole-model stage.
    assert {"node_scale", "overhead", "conv/float32"} <= set(cal.fitted_keys)
    assert cal.factors.node_scale > 0 and cal.factors.overhead_s >= 0
    assert len(cal.rows) == 4
    for row in cal.rows:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
        assert row["min_ms"] <= row["median_ms"]
        assert math.isclose(
            row["error_pct"], 100 * (row["predicted_ms"] / row["measured_ms"] - 1), rel_tol=1e-9
        )
    assert 0.0 <= cal.error["loo_within_10pct"] <= 1.0
    assert cal.error["loo_median_ape_pct"] >= 0 and cal.error["n_models"] == 4
    path = tmp_path / "host.json"
    cal.save(path)
    loaded = Calibration.load(path)
    # The saved calibration predicts a real zoo model on the host, labelled as such.
    from crosslevel.hardware.calibrate import compile_spec

    graph, _, _ = compile_spec(ModelSpec("digits_cnn", (("width", 8),)))
    pred = predict_latency(graph, get_device("host"), loaded)
    assert pred.label == "predicted (calibrated on host)"
    fit_ms = next(
        r["fit_predicted_ms"] for r in cal.rows if r["model"].startswith("digits_cnn(width=8")
    )
    assert pred.total_ms == pytest.approx(fit_ms, rel=1e-9)


def test_uncalibrated_factors_have_every_class() -> None:
    for name in ("stm32f746", "rpi4", "jetson_nano", "host"):
        factors = default_factors(get_device(name))
        assert isinstance(factors, CostFactors)
        assert all(v > 0 for v in factors.efficiency.values())
        assert factors.dispatch("conv") > factors.dispatch("view") > 0


# ----------------------------------------------------------------------------- per-node fit
def _residual_graph() -> Graph:
    """conv0 + RELU -> conv1 -> ADD(relu0, conv1) -> MEAN: a fused activation and a sum."""
    rng = np.random.default_rng(2)
    t = {
        "x": Tensor("x", (1, 8, 8, 8), "float32"),
        "w0": Tensor("w0", (8, 8, 3, 3), "float32", data=rng.standard_normal((8, 8, 3, 3))
                     .astype(np.float32)),
        "c0": Tensor("c0", (1, 8, 8, 8), "float32"),
        "r0": Tensor("r0", (1, 8, 8, 8), "float32"),
        "w1": Tensor("w1", (8, 8, 1, 1), "float32", data=rng.standard_normal((8, 8, 1, 1))
                     .astype(np.float32)),
        "c1": Tensor("c1", (1, 8, 8, 8), "float32"),
        "a": Tensor("a", (1, 8, 8, 8), "float32"),
        "m": Tensor("m", (1, 8, 1, 1), "float32"),
    }  # fmt: skip
    attrs = {"strides": (1, 1), "pads": (1, 1, 1, 1), "groups": 1}
    nodes = [
        Node("conv0", "CONV_2D", ["x", "w0"], ["c0"], attrs),
        Node("relu0", "RELU", ["c0"], ["r0"]),
        Node("conv1", "CONV_2D", ["r0", "w1"], ["c1"], {**attrs, "pads": (0, 0, 0, 0)}),
        Node("add", "ADD", ["r0", "c1"], ["a"]),
        Node("mean", "MEAN", ["a"], ["m"], {"axes": (2, 3), "keepdims": True}),
    ]
    graph = Graph("residual", t, nodes, ["x"], ["m"])
    graph.validate()
    return graph


def test_profiled_kernels_map_back_to_the_nodes_that_cost_them() -> None:
    graph = _residual_graph()
    costs = {c.name: c for c in node_costs(graph)}
    assert costs["relu0"].fused and costs["conv0"].activation == "RELU"
    assert costs["conv1"].activation == "ADD" and costs["mean"].activation == ""
    assert costs["conv1"].weight_bytes == 8 * 8 * 4 and costs["mean"].weight_bytes == 0
    assert (costs["conv0"].depth, costs["conv0"].channels, costs["conv0"].spatial) == (72, 8, 64)
    mapper = NodeMapper(graph)
    # ORT names a fused Conv+Relu after the Relu's output, NCHWc kernels with "_nchwc".
    assert mapper.ir_node("r0_nchwc_kernel_time", "Conv") == "conv0"
    assert mapper.ir_node("conv0_kernel_time", "Conv") == "conv0"
    # A Conv fused with the residual Add is named after the Add's output: charge the conv.
    assert mapper.ir_node("a_nchwc_kernel_time", "Conv") == "conv1"
    assert mapper.ir_node("mean_kernel_time", "GlobalAveragePool") == "mean"
    assert mapper.ir_node("ReorderOutput_kernel_time", "ReorderOutput") is None


def _truth_factors() -> CostFactors:
    """Known per-node factors with every calibrated term in use."""
    truth = default_factors(get_device("host"))
    truth.mem_efficiency = 100.0  # the per-node fit switches the memory roofline off
    truth.efficiency.update({"conv/float32": 0.6, "pointwise/float32": 0.45,
                             "depthwise/float32": 0.15, "fc/float32": 0.2})  # fmt: skip
    truth.dispatch_s.update({"conv": 4e-6, "depthwise": 2e-6, "pointwise": 3e-6, "fc": 2e-6,
                             "reduce": 1e-6})  # fmt: skip
    truth.shape_exponents = {"pointwise/float32": [0.15, 0.05, 0.1, -0.05]}
    truth.weight_cost = {"fc/float32": [2e-11, 64e3]}
    truth.activation_s = {"conv/float32+RELU": [0.0, 2e-10]}
    return truth


def _profiled_set() -> list[Graph]:
    """Like ``_synthetic_set``, with and without fused RELUs (so epilogues are separable)."""
    sizes = (4, 8, 12, 16, 20, 24, 32, 40, 48)
    graphs = [_conv_stack(MOBILE_BLOCK, hw=hw, relu=i % 2 == 0, seed=hw)
              for i, hw in enumerate(sizes)]  # fmt: skip
    graphs += [_conv_stack([(c, 3, 1), (c, 3, c), (2 * c, 1, 1)], hw=20, relu=c != 16)
               for c in (8, 16, 48)]  # fmt: skip
    graphs += [_conv_stack([(c, 1, 1), (c, 3, 1), (c, 3, 1)], hw=12, relu=c == 16)
               for c in (16, 32)]  # fmt: skip
    graphs += [_fc_graph(f, h) for f, h in ((64, 16), (640, 128), (2048, 512), (4096, 1024))]
    return graphs


def _synthetic_measurements(truth: CostFactors, profiler_s: float = 0.0) -> list[Measurement]:
    """Measurements whose per-node and whole-model times come from ``truth``.

    Per-node times carry ``profiler_s`` per kernel (as ORT's profiler adds); whole-model
    times are ``1.1 x nodes + 20 us``.
    """
    device = get_device("host")
    out: list[Measurement] = []
    for graph in _profiled_set():
        feat = GraphFeatures.of(graph, device)
        nodes = predict_nodes_s(feat, device, truth)
        node_ms = {n: (t + profiler_s) * 1e3 for n, t in zip(feat.nodes, nodes, strict=True)}
        whole_ms = (1.1 * float(np.sum(nodes)) + 20e-6) * 1e3
        out.append(Measurement(graph.name + str(len(out)), feat, whole_ms, 10, [whole_ms],
                               whole_ms, node_ms))  # fmt: skip
    return out


def test_node_fit_predicts_held_out_graphs_from_per_node_times() -> None:
    device = get_device("host")
    truth = _truth_factors()
    measured = _synthetic_measurements(truth)
    held, train = measured[5], measured[:5] + measured[6:]  # 24x24: inside the range
    fitted, names = fit_node_factors(
        [m.features for m in train], [m.node_ms for m in train], device
    )
    assert "shape:pointwise/float32" in names and "epilogue:conv/float32+RELU" in names
    got = predict_nodes_s(held.features, device, fitted)
    want = predict_nodes_s(held.features, device, truth)
    np.testing.assert_allclose(got, want, rtol=0.05)


def test_whole_model_stage_removes_profiler_cost_and_adds_overhead() -> None:
    device = get_device("host")
    truth = _truth_factors()
    measured = _synthetic_measurements(truth, profiler_s=3e-6)
    targets = [m.min_ms / 1e3 for m in measured]
    node_factors, _ = fit_node_factors(
        [m.features for m in measured], [m.node_ms for m in measured], device
    )
    whole = fit_whole_model([m.features for m in measured], targets, device, node_factors)
    assert whole.overhead_s == pytest.approx(20e-6, rel=0.25)
    assert whole.node_scale == pytest.approx(1.1, rel=0.05)
    got = [predict_features_s(m.features, device, whole) for m in measured]
    np.testing.assert_allclose(got, targets, rtol=0.05)
    # The profiler's share comes off every dispatch, never below zero.
    less = without_profiler(node_factors, 1.0)
    assert all(0 < v < 1e-7 for v in less.dispatch_s.values())


def test_leave_one_out_never_shows_the_held_out_variant_to_the_fit() -> None:
    device = get_device("host")
    measured = _synthetic_measurements(_truth_factors())[:5]
    seen: list[set[str]] = []

    def spy(train: list[Measurement], times: list[float], dev: object) -> tuple:
        seen.append({m.label for m in train})
        assert len(times) == len(train)
        return fit_measurements(train, times, device)

    rows = leave_one_out(measured, device, fit=spy)
    for m, row, labels in zip(measured, rows, seen, strict=True):
        assert row["model"] == m.label and m.label not in labels and len(labels) == 4


def test_calibrated_prediction_uses_every_term_and_round_trips(tmp_path: Path) -> None:
    device = get_device("host")
    factors = _truth_factors()
    factors.node_scale, factors.overhead_s = 1.2, 30e-6
    cal = Calibration("host", factors, ["memory"], ["x"], "test")
    graph = _conv_stack(MOBILE_BLOCK, hw=16)
    pred = predict_latency(graph, device, cal)
    assert pred.overhead_ms == pytest.approx(0.03)
    assert pred.total_ms == pytest.approx(sum(pred.per_node_ms.values()) + 0.03, rel=1e-12)
    feats = GraphFeatures.of(graph, device)
    assert predict_features_s(feats, device, factors) * 1e3 == pytest.approx(pred.total_ms)
    plain = predict_latency(graph, device, Calibration("host", default_factors(device), [], [],
                                                      "t"))  # fmt: skip
    assert plain.overhead_ms == 0 and plain.total_ms != pred.total_ms
    path = tmp_path / "cal.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    doc = json.loads(path.read_text())
    # A /1 file (no shape, weight, epilogue, scale or overhead terms) still loads.
    old = {
        **doc,
        "format": "crosslevel.calibration/1",
        "factors": {k: doc["factors"][k] for k in ("efficiency", "mem_efficiency", "dispatch_s")},
    }
    path.write_text(json.dumps(old))
    assert Calibration.load(path).factors.overhead_s == 0.0
    for bad in (
        {"shape_exponents": {"pointwise/float32": [1.0]}},
        {"weight_cost": {"fc/float32": [-1.0, 0.0]}},
        {"overhead_s": float("nan")},
        {"node_scale": 0.0},
    ):
        path.write_text(json.dumps({**doc, "factors": {**doc["factors"], **bad}}))
        with pytest.raises(UsageError, match=str(path)):
            Calibration.load(path)
