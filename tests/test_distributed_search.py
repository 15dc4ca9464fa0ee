"""The split level in the cross-level search: its figures, and a search that must split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.distributed.search_level import SPLIT_CHOICES, SplitLevel, prefix_assignment
from crosslevel.hardware.devices import get_link
from crosslevel.ir.load import load_model
from crosslevel.search.levels import MemoryLevel
from crosslevel.search.objectives import Demands
from crosslevel.search.optimize import GraphLevel
from crosslevel.search.space import Space
from crosslevel.search.study import Evaluator, Settings, run_search


@pytest.fixture(scope="module")
def space() -> Space:
    graph = load_model("zoo:resnet8").graph
    split = SplitLevel(get_link("wifi"), device="rpi4", edge="host")
    return Space([GraphLevel(graph, "zoo:resnet8"), MemoryLevel(time_limit_s=0.5), split])


def test_split_figures_follow_the_placement(space: Space) -> None:
    level = space.levels[2]
    assert isinstance(level, SplitLevel)
    whole = space.build({}, exact=False).figures  # the default: everything on the device
    assert whole["split_device_nodes"] == len(space.levels[0].graph.nodes)  # type: ignore[attr-defined]
    assert whole["split_transfer_ms"] == 0.0
    assert whole["peak_ram_bytes"] <= whole["whole_peak_ram_bytes"]  # best plan vs tflm
    edge = space.build({"split.split": 0.0}, exact=False).figures
    assert edge["peak_ram_bytes"] == 0 and edge["flash_bytes"] == 0
    assert edge["split_transfer_ms"] > 0
    latencies = {}
    for choice in SPLIT_CHOICES:
        fig = space.build({"split.split": choice}, exact=False).figures
        latencies[choice] = fig["latency_ms"]
        if choice != "exact":
            problem = level.problem(space.levels[0].graph, False)  # type: ignore[attr-defined]
            tier_of = prefix_assignment(problem.graph, float(choice))  # type: ignore[arg-type]
            assert fig["latency_ms"] == pytest.approx(problem.cost(tier_of))
    # The exact cut is at least as good as every prefix cut.
    assert latencies["exact"] <= min(latencies.values()) + 1e-9
    half = space.build({"split.split": 0.5}, exact=False).figures
    packed = space.build({"split.split": 0.5, "split.compress": True}, exact=True).figures
    assert packed["split_transfer_ms"] < half["split_transfer_ms"]  # ~4x fewer bytes
    assert 0.5 <= packed["split_top1_agreement"] <= 1.0


def test_search_over_memory_and_split_meets_a_ram_limit(space: Space) -> None:
    whole = space.build({}, exact=False).figures
    limit = int(whole["peak_ram_bytes"] * 0.6)  # all-device does not fit: it must split
    demands = Demands(max_ram_bytes=limit)
    evaluator = Evaluator(space, demands, None)
    result = run_search(space, evaluator, Settings(budget=14, seed=1), {"test": "split"})
    feasible = [r for r in result.records if r.feasible]
    assert feasible, "no point of the search met the RAM limit"
    for rec in feasible:
        assert rec.params["split.split"] != 1.0
        assert rec.figures["peak_ram_bytes"] <= limit


def _optimize_split(out: Path, device: str, link: str) -> list[dict[str, Any]]:
    """``crosslevel optimize`` of ad01 with the split level; the variants it wrote."""
    args = ["optimize", "mlperf:ad01_int8.tflite", "--device", device, "--edge", "host",
            "--link", link, "-o", str(out), "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return list(json.loads((out / "variants.json").read_text())["variants"])


def test_optimize_searches_the_split_and_hands_it_to_the_controller(tmp_path: Path) -> None:
    """``optimize --edge --link``: split points on the front, their traffic in variants.json."""
    variants = _optimize_split(tmp_path / "opt", "rpi4", "wifi")
    splits = [v["split"] for v in variants if v.get("split")]
    assert splits and all(s["up_bytes"] > 0 and s["remote_ms"] > 0 for s in splits)
    assert any(v.get("split") is None for v in variants)  # an all-device variant too
    alone = CliRunner().invoke(app, ["optimize", "mlperf:ad01_int8.tflite", "--edge", "host",
                                     "-o", str(tmp_path / "x")])  # no --link  # fmt: skip
    assert alone.exit_code == 2 and "--edge and --link go together" in alone.output


def test_a_table_of_splits_gets_an_all_device_fallback(tmp_path: Path) -> None:
    """On a slow MCU with a fast link every front point is all-edge (it dominates on RAM and
    flash); the controller still needs a variant for when the link is gone."""
    variants = _optimize_split(tmp_path / "opt", "nrf52840", "ethernet")
    assert variants[0]["split"] is not None  # the chosen point splits
    local = [v for v in variants if v["split"] is None]
    assert len(local) == 1 and local[0]["knobs"]["split.split"] == 1.0
