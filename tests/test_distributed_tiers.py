"""Three tiers as three servers on loopback: device -> edge -> cloud, outputs as the whole."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed_helpers import self_signed_cert

from crosslevel.distributed.client import DeviceClient
from crosslevel.distributed.partition import load_plan, plan_partition, write_plan
from crosslevel.distributed.server import CloudLink, TierRunner, start_server
from crosslevel.distributed.transport import MessageError
from crosslevel.errors import UsageError
from crosslevel.hardware.devices import get_device, get_link
from crosslevel.ir.load import load_model
from crosslevel.runtime.ort import make_session, run_session

TOKEN = "tiers-token"
CLI = str(Path(sys.executable).parent / "crosslevel")


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """resnet8 in thirds: a device tensor read by the cloud crosses both links (skip add)."""
    graph = load_model("zoo:resnet8").graph
    n = len(graph.nodes)
    tier_of = {node.name: min(2, 3 * i // n) for i, node in enumerate(graph.nodes)}
    devices = [get_device("rpi4"), get_device("host"), get_device("host")]
    links = [get_link("wifi"), get_link("ethernet")]
    roles = ["device", "edge", "cloud"]
    result = plan_partition(graph, roles, devices, links, assignment=tier_of)
    out = tmp_path_factory.mktemp("plan3")
    write_plan(result, out)
    return load_plan(out)


@pytest.fixture()
def servers(plan: dict[str, Any]) -> Iterator[tuple[int, Any, Any]]:
    cloud_server, cloud_port, cloud = start_server(plan, TOKEN, role="cloud")
    link = CloudLink(plan, f"127.0.0.1:{cloud_port}", TOKEN, timeout_s=2.0)
    edge_server, edge_port, edge = start_server(plan, TOKEN, role="edge", cloud=link)
    yield edge_port, edge, (cloud_server, cloud)
    edge_server.stop(0).wait(5)
    cloud_server.stop(0).wait(5)
    link.close()


def test_three_tiers_equal_the_whole_model(plan: dict[str, Any], servers: Any) -> None:
    edge_port, edge, (cloud_server, cloud) = servers
    assert all(t["model_file"] for t in plan["tiers"])  # every tier has work
    assert plan["links"][1]["tensors"]  # the edge forwards something to the cloud
    whole = make_session(Path(plan["_whole"]))
    client = DeviceClient(plan, f"127.0.0.1:{edge_port}", TOKEN)
    try:
        client.check_plan()
        rng = np.random.default_rng(3)
        for i in range(4):
            x = [rng.standard_normal(s["shape"]).astype(np.float32) for s in plan["inputs"]]
            answer = client.infer(f"r{i}", x)
            assert answer.where == "split"
            ref = run_session(whole, x)[0]
            np.testing.assert_allclose(answer.outputs[0], ref, rtol=1e-5, atol=1e-5)
        assert edge.served == 4 and cloud.served == 4
        cloud_server.stop(0).wait(5)  # the cloud goes away: answered locally, once
        answer = client.infer("r-after", x)
        assert answer.where == "local"
        np.testing.assert_allclose(answer.outputs[0], ref, rtol=1e-5, atol=1e-5)
    finally:
        client.close()
    assert edge.rejected == 1


def test_cloud_role_needs_three_tiers(tmp_path: Path) -> None:
    graph = load_model("zoo:digits_cnn").graph
    result = plan_partition(graph, ["device", "edge"], [get_device("rpi4"), get_device("host")],
                            [get_link("wifi")])  # fmt: skip
    write_plan(result, tmp_path)
    with pytest.raises(UsageError, match="three-tier"):
        start_server(load_plan(tmp_path), TOKEN, role="cloud")
    with pytest.raises(UsageError, match="three-tier"):
        CloudLink(load_plan(tmp_path), "127.0.0.1:1", TOKEN, 1.0)


def test_cli_serves_the_three_tiers(plan: dict[str, Any]) -> None:
    folder = plan["_folder"]
    cloud = subprocess.Popen([CLI, "serve", folder, "--role", "cloud", "--port", "47311",
                              "--token", TOKEN], stdout=subprocess.PIPE)  # fmt: skip
    edge = subprocess.Popen([CLI, "serve", folder, "--role", "edge", "--port", "47312",
                             "--cloud", "127.0.0.1:47311", "--token", TOKEN],
                            stdout=subprocess.PIPE)  # fmt: skip
    try:
        out = subprocess.run([CLI, "run", folder, "--edge", "127.0.0.1:47312", "--token", TOKEN,
                              "--requests", "40", "--interval-s", "0.1", "--json"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        for proc in (edge, cloud):
            proc.terminate()
            proc.wait(10)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["answered"] == 40
    assert report["where"].endswith("SSSSS")  # split once both servers were up


def test_the_edge_reaches_the_cloud_over_tls(plan: dict[str, Any], tmp_path: Path) -> None:
    """The edge -> cloud hop over TLS; an edge without the root certificate is refused."""
    key, cert = self_signed_cert(tmp_path)
    cloud_server, cloud_port, cloud = start_server(plan, TOKEN, role="cloud", tls=(key, cert))
    links = [CloudLink(plan, f"localhost:{cloud_port}", TOKEN, 2.0, tls_root=root)
             for root in (cert, None)]  # fmt: skip
    x = [np.random.default_rng(5).standard_normal(s["shape"]).astype(np.float32)
         for s in plan["inputs"]]  # fmt: skip
    values = {s["name"]: v for s, v in zip(plan["inputs"], x, strict=True)}
    edge_values = TierRunner(plan, 0, 1).run(values)  # device and edge parts, as served
    try:
        got = links[0].run("tls", edge_values)
        assert set(got) == {s.name for s in links[0].returned} and cloud.served == 1
        with pytest.raises(MessageError):
            links[1].run("plain", edge_values)  # plaintext to a TLS server
        assert cloud.served == 1
    finally:
        cloud_server.stop(0).wait(5)
        for link in links:
            link.close()
