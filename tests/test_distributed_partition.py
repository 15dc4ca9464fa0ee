"""Partition planner: exact solvers against brute force, RAM limits, split execution, plans."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.distributed.partition import load_plan, plan_partition, write_plan
from crosslevel.distributed.problem import Problem
from crosslevel.distributed.solvers import solve_brute, solve_chain, solve_ilp, solve_mincut
from crosslevel.distributed.split import split_graph
from crosslevel.errors import InvalidModelError
from crosslevel.hardware.devices import Link, get_device, get_link
from crosslevel.ir.graph import Graph
from crosslevel.ir.load import load_model


@pytest.fixture(scope="module")
def resnet8() -> Graph:
    return load_model("zoo:resnet8").graph


@pytest.fixture(scope="module")
def digits() -> Graph:
    return load_model("zoo:digits_cnn").graph


def _link(rng: np.random.Generator, name: str) -> Link:
    rate = float(rng.uniform(0.5e6, 200e6))
    return Link(name, rate, rate * float(rng.uniform(0.5, 2)), float(rng.uniform(0, 20)), "test")


def _problem(graph: Graph, seed: int, tiers: int, objective: str, **kw: object) -> Problem:
    """Random per-node times (device slower than edge, not always) and random links."""
    rng = np.random.default_rng(seed)
    devices = [get_device(n) for n in ("stm32h743", "rpi4", "host")[:tiers]]
    node_ms = [
        {n.name: float(rng.uniform(0.01, 2.0)) / (1 + 3 * k) for n in graph.nodes}
        for k in range(tiers)
    ]
    links = [_link(rng, f"l{k}") for k in range(tiers - 1)]
    return Problem(graph, devices, links, node_ms, objective, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("objective", ["latency", "energy"])
def test_mincut_equals_brute_force_on_a_dag(resnet8: Graph, seed: int, objective: str) -> None:
    problem = _problem(resnet8, seed, 2, objective)
    best, value = solve_brute(problem)
    cut, cut_value = solve_mincut(problem)
    assert cut_value == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert problem.cost(cut) == pytest.approx(cut_value)
    split_graph(resnet8, cut, 2)  # the cut is closed under predecessors (raises otherwise)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_ilp_equals_brute_force_three_tiers(digits: Graph, seed: int, objective: str) -> None:
    problem = _problem(digits, seed, 3, objective)
    _, value = solve_brute(problem)
    tier_of, ilp_value, _ = solve_ilp(problem)
    assert ilp_value == pytest.approx(value, rel=1e-7, abs=1e-9)
    assert problem.cost(tier_of) == pytest.approx(ilp_value)


def test_ilp_on_dag_beats_or_equals_chain_search(resnet8: Graph) -> None:
    for seed in range(3):
        problem = _problem(resnet8, seed, 2, "latency")
        _, ilp_value, _ = solve_ilp(problem)
        _, chain_value, _ = solve_chain(problem)
        assert ilp_value <= chain_value + 1e-9
        assert ilp_value == pytest.approx(solve_brute(problem)[1], rel=1e-7)


def test_ilp_respects_a_ram_limit(digits: Graph) -> None:
    free = _problem(digits, 3, 2, "latency")
    # Make the device far faster so that everything would run there without a limit.
    free.node_ms[1] = {k: v * 50 for k, v in free.node_ms[1].items()}
    tier_of, _, _ = solve_ilp(free)
    full = free.device_ram(tier_of)
    assert all(t == 0 for t in tier_of.values()) and full > 0
    limit = full // 2
    limited = _problem(digits, 3, 2, "latency", ram_limit=limit)
    limited.node_ms[1] = free.node_ms[1]
    got, value, _ = solve_ilp(limited)
    assert limited.device_ram(got) <= limit
    assert value == pytest.approx(solve_brute(limited)[1], rel=1e-9)
    assert value > free.cost(tier_of)  # the limit cost something: it was binding


def test_flash_limit_in_ilp_matches_brute_force(digits: Graph) -> None:
    problem = _problem(digits, 1, 2, "latency")
    problem.node_ms[1] = {k: v * 50 for k, v in problem.node_ms[1].items()}
    total = problem.device_flash({n.name: 0 for n in digits.nodes})
    problem.flash_limit = total // 3
    got, value, _ = solve_ilp(problem)
    assert problem.device_flash(got) <= total // 3
    assert value == pytest.approx(solve_brute(problem)[1], rel=1e-9)


def _mid_split(graph: Graph) -> dict[str, int]:
    half = len(graph.nodes) // 2
    return {n.name: int(i >= half) for i, n in enumerate(graph.nodes)}


def test_split_outputs_equal_whole_model(resnet8: Graph, tmp_path: Path) -> None:
    devices = [get_device("rpi4"), get_device("host")]
    result = plan_partition(
        resnet8, ["device", "edge"], devices, [get_link("wifi")], assignment=_mid_split(resnet8)
    )
    fid = result.plan["fidelity"]
    assert fid["within_tolerance"] and fid["top1_agreement"] == 1.0
    # The residual crosses the cut: one tensor read by two edge nodes is sent (and counted) once.
    names = [t["name"] for t in result.plan["links"][0]["tensors"]]
    assert len(names) == len(set(names)) >= 1
    write_plan(result, tmp_path)
    plan = load_plan(tmp_path)
    assert plan["tiers"][0]["model_file"] == "tier0_device.onnx"
    assert plan["tiers"][0]["ram_bytes"] > 0


def test_nhwc_tflite_model_and_int8_cut_fidelity() -> None:
    graph = load_model("mlperf:vww_96_float.tflite").graph
    devices = [get_device("stm32h743"), get_device("host")]
    exact = plan_partition(
        graph, ["device", "edge"], devices, [get_link("ble")], assignment=_mid_split(graph)
    )
    assert exact.plan["fidelity"]["within_tolerance"]
    packed = plan_partition(
        graph,
        ["device", "edge"],
        devices,
        [get_link("ble")],
        compress_int8=True,
        assignment=_mid_split(graph),
    )
    fid = packed.plan["fidelity"]
    assert 0 < fid["max_abs_diff"] < 0.5  # int8 on the wire costs a little, measured
    assert packed.plan["links"][0]["wire_bytes"] < exact.plan["links"][0]["wire_bytes"] / 3


def _written_plan(digits: Graph, tmp_path: Path) -> Path:
    devices = [get_device("rpi4"), get_device("host")]
    result = plan_partition(
        digits, ["device", "edge"], devices, [get_link("wifi")], assignment=_mid_split(digits)
    )
    write_plan(result, tmp_path)
    return tmp_path / "plan.json"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="crosslevel.partition/9"),
        lambda d: d["tiers"][1].update(model_file="../../etc/passwd"),
        lambda d: d["tiers"][0].update(sha256="0" * 64),
        lambda d: d["links"][0]["tensors"][0].update(shape=[1, -3]),
        lambda d: d["links"][0]["tensors"][0].update(dtype="object"),
        lambda d: d["inputs"][0].update(shape=[2**20, 2**20]),
        lambda d: d.update(tiers="nope"),
        lambda d: d["tiers"][1].update(role="cloud"),
        lambda d: d["inputs"][0].update(shape=[2**70]),  # beyond int64: no OverflowError
        lambda d: d.update(tiers=5),
        lambda d: d["links"][0]["tensors"][0].update(name="ghost"),  # nobody produces it
    ],
)
def test_hostile_plans_get_one_clear_error(digits: Graph, tmp_path: Path, mutate: object) -> None:
    path = _written_plan(digits, tmp_path)
    doc = json.loads(path.read_text())
    mutate(doc)  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidModelError, match="partition plan"):
        load_plan(path)


@pytest.mark.parametrize("data", [b"\x00\xff{not json", b"[" * 100_000, b"9" * 5000])
def test_plan_that_is_not_json(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "plan.json").write_bytes(data)  # garbage, deep nesting, a huge integer
    with pytest.raises(InvalidModelError, match="not JSON"):
        load_plan(tmp_path)


def test_plan_cannot_point_at_models_outside_its_folder(digits: Graph, tmp_path: Path) -> None:
    folder = tmp_path / "plan"
    path = _written_plan(digits, folder)
    doc = json.loads(path.read_text())
    # A private key in the file must not name a model to load (load_plan sets it itself).
    doc["tiers"][1].update(model_file=None, _path=str(folder / "model.onnx"))
    path.write_text(json.dumps(doc))
    assert "_path" not in load_plan(path)["tiers"][1]
    # A symlink with the right digest but pointing out of the folder is refused.
    model = folder / "tier0_device.onnx"
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(model.read_bytes())
    model.unlink()
    model.symlink_to(outside)
    with pytest.raises(InvalidModelError, match="is not a file inside"):
        load_plan(path)


def test_partition_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "partition",
        "zoo:digits_cnn",
        "--tiers",
        "device=nrf52840,edge=host",
        "--link",
        "device-edge=wifi",
        "-o",
        str(tmp_path),
        "--json",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    plan = json.loads(res.output)
    assert plan["format"] == "crosslevel.partition/1"
    assert plan["method"].startswith("mincut")
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "model.onnx").is_file()
    bad = runner.invoke(
        app,
        [
            "partition",
            "zoo:digits_cnn",
            "--tiers",
            "edge=host",
            "--link",
            "device-edge=wifi",
            "-o",
            str(tmp_path),
        ],
    )
    assert bad.exit_code == 2


def test_chain_splits_measured_on_the_host(digits: Graph) -> None:
    from crosslevel.distributed.partition import build_problem, measure_chain

    problem = build_problem(digits, [get_device("host"), get_device("host")], [get_link("wifi")])
    rows = measure_chain(problem)
    assert [r["device_nodes"] for r in rows] == list(range(len(digits.nodes) + 1))
    assert rows[0]["head_ms"] == 0 and rows[0]["tail_ms"] > 0
    assert rows[-1]["tail_ms"] == 0 and rows[-1]["transfer_ms"] == 0 and rows[-1]["head_ms"] > 0
    assert all(r["total_ms"] >= r["transfer_ms"] for r in rows)


def test_three_tier_split_forwards_tensors_and_matches_whole(resnet8: Graph) -> None:
    n = len(resnet8.nodes)
    tier_of = {node.name: (3 * i) // n for i, node in enumerate(resnet8.nodes)}
    devices = [get_device("stm32h743"), get_device("rpi4"), get_device("host")]
    links = [get_link("wifi"), get_link("ethernet")]
    result = plan_partition(resnet8, ["device", "edge", "cloud"], devices, links,
                            assignment=tier_of)  # fmt: skip
    assert result.plan["fidelity"]["within_tolerance"]
    assert [t["role"] for t in result.plan["tiers"]] == ["device", "edge", "cloud"]
    assert all(t["model_file"] for t in result.plan["tiers"])
    # The cloud's output travels back over both links (cloud -> edge -> device).
    out = [resnet8.outputs[0]]
    assert [t["name"] for t in result.plan["links"][1]["returned"]] == out
    assert [t["name"] for t in result.plan["links"][0]["returned"]] == out
