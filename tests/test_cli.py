"""The command line: reports, JSON for scripts, one clear error and the contract's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from crosslevel.cli import app

runner = CliRunner()


def _run(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args))


def test_analyze_real_int8_model_json(models_dir: Path) -> None:
    result = _run("analyze", str(models_dir / "kws_ref_model.tflite"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "crosslevel.analyze/1"
    mem = report["memory"]
    assert mem["tflm_greedy_bytes"] == mem["tflm_measured_head_bytes"] == 16_000
    assert mem["lower_bound_bytes"] <= mem["tflm_greedy_bytes"] <= mem["no_reuse_bytes"]
    assert [row["op"] for row in report["layers"]].count("DEPTHWISE_CONV_2D") == 4
    assert report["macs"] == sum(row["macs"] for row in report["layers"]) > 2_000_000


def test_analyze_table_with_device(models_dir: Path) -> None:
    result = _run("analyze", str(models_dir / "vww_96_int8.tflite"), "--device", "stm32f746")
    assert result.exit_code == 0, result.output
    for text in ("TFLM greedy", "measured", "lower bound", "predicted", "fits"):
        assert text in result.stdout


def test_analyze_zoo_model() -> None:
    result = _run("analyze", "zoo:ds_cnn", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "zoo" and report["layout"] == "NCHW"
    assert report["memory"]["tflm_measured_head_bytes"] is None


def test_analyze_zoo_int8_is_measured_in_tflm() -> None:
    result = _run("analyze", "zoo:digits_cnn", "--int8", "--json", "--device", "nrf52840")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    mem = report["memory"]
    assert report["kind"] == "tflite" and report["dtypes"] == ["int8"]
    assert mem["tflm_greedy_bytes"] == mem["tflm_measured_head_bytes"]
    fit = report["device"]
    assert (
        fit["needs_ram_bytes"] == mem["tflm_measured_head_bytes"] + mem["tflm_measured_tail_bytes"]
    )
    assert fit["fits_ram"] and "predicted" in fit["latency_label"]


def test_graph_passes_shrink_zoo_models() -> None:
    raw = json.loads(_run("analyze", "zoo:mobilenet_v2", "--json", "--no-graph-passes").stdout)
    opt = json.loads(_run("analyze", "zoo:mobilenet_v2", "--json").stdout)
    assert len(opt["layers"]) < len(raw["layers"])
    assert opt["macs"] == raw["macs"]
    assert opt["memory"]["tflm_greedy_bytes"] < raw["memory"]["tflm_greedy_bytes"]


def test_mlperf_prefix_and_int8_on_files() -> None:
    result = _run("analyze", "mlperf:ad01_int8.tflite", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["memory"]["tflm_greedy_bytes"] == 768
    result = _run("analyze", "mlperf:ad01_int8.tflite", "--int8")
    assert result.exit_code == 2 and "zoo models" in result.output


def test_missing_file_is_usage_error(tmp_path: Path) -> None:
    result = _run("analyze", str(tmp_path / "nope.tflite"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_unknown_zoo_model_lists_known() -> None:
    result = _run("analyze", "zoo:resnet9000")
    assert result.exit_code == 2 and "ds_cnn" in result.output


def test_corrupt_tflite_exit_4_without_traceback(models_dir: Path, tmp_path: Path) -> None:
    data = bytearray((models_dir / "ad01_int8.tflite").read_bytes())
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data[: len(data) // 3]))
    result = _run("analyze", str(bad))
    assert result.exit_code == 4, result.output
    assert "Traceback" not in result.output


def test_unsupported_onnx_operator_named(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    node = helper.make_node("Det", ["x"], ["d"], name="the_det")
    node2 = helper.make_node("Expand", ["d", "shape"], ["y"], name="expand")
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [2, 2])
    graph = helper.make_graph([node, node2], "g", [x], [y], initializer=[shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "det.onnx"
    onnx.save(model, path)
    result = _run("analyze", str(path))
    assert result.exit_code == 4, result.output
    assert "Det" in result.output and "the_det" in result.output


def test_devices_json() -> None:
    result = _run("devices", "--json")
    assert result.exit_code == 0, result.output
    names = {d["name"] for d in json.loads(result.stdout)["devices"]}
    assert {"stm32f746", "host"} <= names


@pytest.mark.timeout(120)
def test_console_script_end_to_end(models_dir: Path) -> None:
    """The installed entry point, as a user runs it, with stderr kept apart."""
    exe = Path(sys.executable).with_name("crosslevel")
    proc = subprocess.run(
        [str(exe), "analyze", str(models_dir / "nope.onnx")],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.count("\n") == 1


def test_calibrate_quick_then_analyze_with_it(tmp_path: Path) -> None:
    result = _run("calibrate", "--quick", "-o", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    cal = json.loads(result.stdout)
    assert cal["device"] == "host" and (tmp_path / "calibration.json").is_file()
    args = ["analyze", "zoo:digits_cnn", "--device", "host", "--json"]
    result = _run(*args, "--calibration", str(tmp_path / "calibration.json"))
    assert result.exit_code == 0, result.output
    fit = json.loads(result.stdout)["device"]
    assert "uncalibrated" not in fit["latency_label"] and fit["latency_ms"] > 0
    result = _run(
        "analyze",
        "zoo:digits_cnn",
        "--device",
        "stm32f746",
        "--calibration",
        str(tmp_path / "calibration.json"),
    )
    assert result.exit_code == 2, result.output  # a host calibration says nothing of an MCU
