"""`crosslevel generate`: C written to -o, built on the host, checked, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crosslevel.cli import app

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (host C compiler)")
runner = CliRunner()


def test_generate_int8_model_is_bit_exact_and_writes_sources(tmp_path: Path) -> None:
    args = ["generate", "mlperf:ad01_int8.tflite", "-o", str(tmp_path), "--json"]
    result = runner.invoke(app, [*args, "--time-limit-s", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verification"]["reference"] == "tflite-micro"
    assert data["verification"]["ok"] and data["verification"]["max_abs_diff"] == 0
    assert data["arena_bytes"]["plan"] == data["arena_bytes"]["compiled"] == 768
    assert data["object"]["warnings"] == []
    assert data["object"]["bss_bytes"] >= 768 and data["object"]["flash_bytes"] > 260_000
    # vectorizer remarks of this (explicit-SIMD) build; the portable loops' vectorization
    # is checked in test_codegen.py
    assert isinstance(data["vectorized_loops"], dict)
    for name in ("model.c", "model.h", "cl_kernels.h", "main.c", "result.json"):
        assert (tmp_path / name).is_file(), name
    assert (
        "int ad01_int8_invoke(const int8_t *in0, int8_t *out0);"
        in (tmp_path / "model.h").read_text()
    )


def test_generate_follows_a_plan_folder(tmp_path: Path) -> None:
    """`crosslevel plan -o DIR` then `crosslevel generate DIR`: the plan's arena is used."""
    planned = runner.invoke(app, ["plan", "mlperf:ad01_int8.tflite", "-o", str(tmp_path / "p")])
    assert planned.exit_code == 0, planned.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    result = runner.invoke(app, ["generate", str(tmp_path / "p"), "-o", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert "bit-exact" in result.stdout
    data = json.loads((tmp_path / "g" / "result.json").read_text())
    assert data["arena_bytes"]["compiled"] == plan["arena_bytes"]
    assert data["plan_strategy"] == plan["strategy"]


def test_generate_float_model_checked_against_onnxruntime(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["generate", "mlperf:ad01_fp32.tflite", "-o", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verification"]["reference"] == "onnxruntime" and data["verification"]["ok"]


def test_generate_unsupported_model_exits_4_naming_the_operator(tmp_path: Path) -> None:
    args = ["generate", "mlperf:kws_ref_model_float32.tflite", "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 4
    assert "CONV_2D" in result.output and "conv_2d_0" in result.output
    assert "Traceback" not in result.output


def test_generate_corrupt_file_exits_4(tmp_path: Path, models_dir: Path) -> None:
    bad = tmp_path / "bad.tflite"
    bad.write_bytes((models_dir / "ad01_int8.tflite").read_bytes()[:5000])
    result = runner.invoke(app, ["generate", str(bad), "-o", str(tmp_path / "out")])
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output


def test_generate_unknown_target_is_a_usage_error(tmp_path: Path) -> None:
    args = ["generate", "mlperf:ad01_int8.tflite", "--target", "riscv", "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "riscv" in result.output
