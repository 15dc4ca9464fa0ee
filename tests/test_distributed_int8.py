"""Partitioning an int8 .tflite file: int8 .tflite parts in TFLite Micro, bit-exact."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crosslevel.distributed.client import DeviceClient
from crosslevel.distributed.partition import load_plan, plan_partition, write_plan
from crosslevel.distributed.server import start_server
from crosslevel.hardware.devices import get_device, get_link
from crosslevel.ir.load import load_model
from crosslevel.runtime.tflm import run_tflm

MODEL = "mlperf:kws_ref_model.tflite"
TOKEN = "int8-token"
CLI = str(Path(sys.executable).parent / "crosslevel")


@pytest.fixture(scope="module")
def kws() -> Any:
    return load_model(MODEL)


@pytest.fixture(scope="module")
def plan(kws: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    graph = kws.graph
    half = len(graph.nodes) // 2
    tier_of = {n.name: int(i >= half) for i, n in enumerate(graph.nodes)}
    devices = [get_device("stm32h743"), get_device("host")]
    result = plan_partition(graph, ["device", "edge"], devices, [get_link("wifi")],
                            source=MODEL, assignment=tier_of)  # fmt: skip
    out = tmp_path_factory.mktemp("kws")
    write_plan(result, out)
    return load_plan(out)


def test_int8_plan_has_tflite_parts_and_quantized_cut_tensors(plan: dict[str, Any]) -> None:
    assert plan["runtime"] == "tflite-micro"
    assert [t["model_file"] for t in plan["tiers"]] == ["tier0_device.tflite", "tier1_edge.tflite"]
    assert plan["whole_model_file"] == "model.tflite"
    cut = plan["links"][0]["tensors"]
    assert cut and all(s["dtype"] == "int8" and s["quant"]["scale"] > 0 for s in cut)
    assert plan["links"][0]["wire_bytes"] == sum(int(np.prod(s["shape"])) for s in cut)
    fidelity = plan["fidelity"]
    assert fidelity["max_abs_diff"] == 0 and fidelity["tolerance"] == 0
    assert "TFLite Micro" in fidelity["label"]


@pytest.fixture()
def edge(plan: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    server, port, service = start_server(plan, TOKEN)
    yield port, service
    server.stop(0).wait(5)


def test_int8_split_over_loopback_is_bit_exact_with_the_file_in_tflm(
    plan: dict[str, Any], kws: Any, edge: Any
) -> None:
    port, service = edge
    client = DeviceClient(plan, f"127.0.0.1:{port}", TOKEN)
    rng = np.random.default_rng(7)
    try:
        client.check_plan()
        for i in range(4):
            x = [rng.integers(-128, 128, size=s["shape"]).astype(np.int8) for s in plan["inputs"]]
            answer = client.infer(f"q{i}", x)
            assert answer.where == "split"
            reference = run_tflm(kws.file_bytes, x)  # the original file, not our export
            assert answer.outputs[0].dtype == np.int8
            np.testing.assert_array_equal(answer.outputs[0], reference[0])
    finally:
        client.close()
    assert service.served == 4


def test_cli_partitions_an_int8_tflite_file(tmp_path: Path) -> None:
    out = subprocess.run([CLI, "partition", MODEL, "--tiers", "device=stm32h743,edge=host",
                          "--link", "device-edge=ble", "-o", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert plan["runtime"] == "tflite-micro" and plan["fidelity"]["max_abs_diff"] == 0
    assert (tmp_path / "model.tflite").is_file()
    argv = [CLI, "partition", MODEL, "--tiers", "device=stm32h743,edge=host", "--link",
            "device-edge=ble", "-o", str(tmp_path / "c"), "--compress-int8"]  # fmt: skip
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "int8 already" in refused.stdout + refused.stderr
