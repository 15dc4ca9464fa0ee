"""`crosslevel plan`: strategies beside TFLM, the plan written, proven in tflite-micro."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.plan import load_plan
from crosslevel.runtime.tflm import measure_tflm_arena

runner = CliRunner()


def test_plan_vww_beats_tflm_and_is_verified_in_tflm(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["plan", "mlperf:vww_96_int8.tflite", "-o", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["arena_bytes"]["tflm"] == 73_728
    assert data["arena_bytes"]["best"] == 55_296  # within TFLM's rules: the order's bound
    assert data["tflm_check"]["verified"] is True
    ready = (tmp_path / "model.tflite").read_bytes()
    assert measure_tflm_arena(ready).head_bytes == 55_296
    assert len(data["arena_bytes"]) == 6 and len(import_tflite(ready).nodes) == 31
    # The default is the smallest plan that ran: depth-first stage + in place.
    plan = load_plan(tmp_path / "plan.json")
    assert data["strategy"] == "patch" and plan.inplace and plan.patch_stages
    assert plan.arena_bytes == data["arena_bytes"]["patch"] <= 73_728 // 2.3
    assert data["arena_check"]["patch"]["verified"] is True
    assert (tmp_path / "arena.svg").read_text().startswith("<svg")


def test_plan_float_zoo_model_has_no_tflm_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", "zoo:inception_cells", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no TFLM-ready file" in result.stdout
    assert (tmp_path / "plan.json").is_file() and not (tmp_path / "model.tflite").exists()
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["arena_bytes"]["best"] <= data["arena_bytes"]["tflm"]


def test_plan_unknown_strategy_is_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plan", "mlperf:ad01_int8.tflite", "--strategy", "magic"])
    assert result.exit_code == 2 and "unknown strategy" in result.output
