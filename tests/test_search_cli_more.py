"""`crosslevel optimize`: resuming a study, infeasible demands (exit 3), usage errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from crosslevel.cli import app

runner = CliRunner()
TINY = ["--budget", "4", "--seeds", "1", "--epochs", "1", "--ablation-budget", "0",
        "--max-variants", "1"]  # fmt: skip


def test_resuming_the_study_adds_trials(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    # nrf52840: the unoptimized model fits, so even one evaluated point is a front.
    args = ["optimize", *TINY, "--device", "nrf52840", "--budget", "1", "-o", str(tmp_path / "a")]
    first = runner.invoke(app, [*args, "--study", str(db), "--json"])
    assert first.exit_code == 0, first.output
    before = json.loads(first.stdout)["search"]
    args = ["optimize", *TINY, "--device", "nrf52840", "--budget", "2"]
    args += ["-o", str(tmp_path / "b"), "--study",
            str(db), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)["search"]
    assert after["resumed_from"] == before["evaluated_total"] == 1
    assert after["evaluated_total"] == 2 and after["evaluated_this_run"] == 1
    assert after["trials_total"] > before["trials_total"]


def test_infeasible_demands_exit_3_naming_the_hardest(tmp_path: Path) -> None:
    result = runner.invoke(app, ["optimize", *TINY, "--max-ram-kb", "0.05", "-o", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "hardest demand: peak RAM" in result.output
    assert "nearest points" in result.output
    assert not (tmp_path / "report.html").exists()


def test_usage_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"not a database at all" * 50)
    result = runner.invoke(app, ["optimize", *TINY, "--study", str(bad), "-o", str(tmp_path)])
    assert result.exit_code == 2 and "cannot open study" in result.output
    result = runner.invoke(app, ["optimize", *TINY, "--sampler", "grid"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["optimize", "zoo:digits_cnn", "--data", "nosuch", *TINY])
    assert result.exit_code == 2 and "unknown data set" in result.output


def test_bad_inputs_end_in_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(bytes(range(256)) * 3)
    result = runner.invoke(app, ["optimize", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 4 and "ONNX" in result.output
    result = runner.invoke(app, ["optimize", "--device", "nosuch", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "stm32g031k8" in result.output
    result = runner.invoke(app, ["optimize", str(bad), "--data", "digits"])
    assert result.exit_code == 2 and "--data needs a zoo model" in result.output
    assert not (tmp_path / "o").exists()


def test_bad_demands_are_usage_errors(tmp_path: Path) -> None:
    for bad in (["--max-latency-ms", "nan"], ["--max-ram-kb", "-1"], ["--max-flash-kb", "inf"],
                ["--max-accuracy-drop", "-0.5"], ["--max-ram-kb", "0"],
                ["--time-budget", "nan"]):  # fmt: skip
        result = runner.invoke(app, ["optimize", *TINY, *bad, "-o", str(tmp_path / "o")])
        assert result.exit_code == 2, (bad, result.output)
        assert bad[0] in result.output
    assert not (tmp_path / "o").exists()


def test_a_time_budget_too_short_for_any_trial_is_not_called_infeasible(tmp_path: Path) -> None:
    result = runner.invoke(app, ["optimize", *TINY, "--time-budget", "1e-6", "-o", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "no candidate was evaluated" in result.output and "time budget" in result.output
