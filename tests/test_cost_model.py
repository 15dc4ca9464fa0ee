"""The roofline cost model, its calibration file, and the host calibration pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from crosslevel.errors import UsageError
from crosslevel.hardware.calibrate import (
    ModelSpec,
    calibrate_host,
    fit_factors,
    quick_models,
    summarize,
)
from crosslevel.hardware.cost_model import (
    Calibration,
    CostFactors,
    GraphFeatures,
    default_factors,
    node_costs,
    predict_features_s,
    predict_latency,
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
    factors.efficiency["conv/float32"] = 0.9
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
    fitted = [cal.factors.eff(k) for k in cal.fitted_keys if "/" in k]
    fitted += [cal.factors.mem_efficiency, *cal.factors.dispatch_s.values()]
    assert fitted and all(math.isfinite(v) and v > 0 for v in fitted)
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
