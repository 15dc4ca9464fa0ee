"""`crosslevel compress` and the compress API end to end on digits_cnn and real digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.errors import UsageError
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.model.compress import CompressConfig, compress
from crosslevel.model.datasets import load_dataset
from crosslevel.model.evaluate import accuracy_onnx

runner = CliRunner()
FAST = ["--baseline-epochs", "3", "--epochs", "2"]


def test_compress_cli_end_to_end(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["compress", "digits_cnn", "--data", "digits", "--prune", "0.5", "--quant", "int8"]
    args += ["--distill", "--seeds", "1", "--device", "host", "-o", str(out)]
    args += ["--cache-dir", str(cache), "--json", *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "result.json").read_text())
    assert doc == json.loads(result.stdout)
    assert doc["format"] == "crosslevel.compress/1" and doc["model"] == "digits_cnn"
    before, after = doc["before"], doc["after"]
    for key in ("params", "flash_bytes", "macs", "peak_ram_bytes", "latency_ms"):
        assert before[key] > 0 and after[key] > 0, key
    assert after["dtype"] == "int8" and before["dtype"] == "float32"
    assert after["macs"] < 0.35 * before["macs"]  # half the channels: ~1/4 of the MACs
    assert after["flash_bytes"] < before["flash_bytes"] / 8  # 1/4 params, 1/4 bytes each
    assert after["peak_ram_bytes"] < before["peak_ram_bytes"]
    assert after["predicted_label"].startswith("predicted")
    assert after["accuracy"]["seeds"] == 1 and after["accuracy"]["mean"] > 0.85
    assert doc["passes"]["prune"]["channels"]["features.0.0"] == [16, 8]
    assert doc["passes"]["int8"]["calibration"] == "minmax"
    # the written files are the deployed models
    data = load_dataset("digits", seed=0)
    onnx_bytes = (out / "model.onnx").read_bytes()
    acc = accuracy_onnx(onnx_bytes, data.x_test, data.y_test)
    assert acc == pytest.approx(after["accuracy"]["mean"])
    graph = import_tflite((out / "model.tflite").read_bytes())
    assert "int8" in {t.dtype for t in graph.activations()}
    assert len(list((cache / "baselines").glob("digits_cnn-digits-s0-*.npz"))) == 1


def test_compress_api_lowrank_over_seeds(tmp_path: Path) -> None:
    cfg = CompressConfig(
        "digits_cnn", "digits", rank=8, seeds=3, epochs=2, baseline_epochs=3, latency_repeats=20
    )
    result = compress(cfg, cache_dir=tmp_path)
    assert result.after.accuracy.values and len(result.after.accuracy.values) == 3
    assert len(set(result.before.accuracy.values)) >= 1
    assert result.after.params < result.before.params
    assert result.after.macs < result.before.macs
    assert result.after.dtype == "float32" and result.model_tflite is None
    assert result.passes["lowrank"]["ranks"]["features.3.0"] == (64, 8)
    assert result.after.accuracy.mean > 0.85
    assert np.isfinite(result.after.accuracy.std)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data", "cifar"], "unknown data set"),
        (["--data", "digits", "--prune", "1.5"], "--prune must be in (0, 1)"),
        (["--data", "digits", "--prune", "0"], "--prune must be in (0, 1)"),
        (["--data", "digits", "--quant", "int4"], "int8 only"),
        (["--data", "digits", "--calibration", "kl"], "--calibration"),
        (["--data", "digits", "--quant", "int8", "--qat", "sometimes"], "--qat must be one of"),
        (["--data", "digits", "--rank", "4", "--energy", "0.9"], "not both"),
        (["--data", "digits", "--device", "nosuchboard"], "unknown device"),
        (["--data", "basic_motions"], "takes inputs"),
    ],
)
def test_compress_bad_arguments_exit_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["compress", "digits_cnn", *extra, "-o", str(tmp_path), "--cache-dir", str(tmp_path)]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "result.json").exists()


def test_unknown_model_is_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown zoo model"):
        CompressConfig("nosuch", "digits").validate()
    result = runner.invoke(app, ["compress", "nosuch", "--data", "digits"])
    assert result.exit_code == 2
