"""Split inference between two network namespaces over a shaped veth link (root only)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from crosslevel.distributed.emulation import EmulatedLink, available
from crosslevel.distributed.partition import plan_partition, write_plan
from crosslevel.hardware.devices import get_device, get_link
from crosslevel.ir.load import load_model

MISSING = available()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")
CLI = str(Path(sys.executable).parent / "crosslevel")


def test_link_rate_and_delay_are_measured_as_set() -> None:
    with EmulatedLink(rate_mbit=5, rtt_ms=20) as link:
        got = link.measure(nbytes=300_000)
    assert 0.8 * 5 <= got["rate_mbit"] <= 1.1 * 5
    assert 20 <= got["rtt_ms"] <= 40


def test_split_across_namespaces_with_an_outage(tmp_path: Path) -> None:
    graph = load_model("zoo:digits_cnn").graph
    half = len(graph.nodes) // 2
    tier_of = {n.name: int(i >= half) for i, n in enumerate(graph.nodes)}
    result = plan_partition(
        graph,
        ["device", "edge"],
        [get_device("rpi4"), get_device("host")],
        [get_link("wifi")],
        assignment=tier_of,
    )
    write_plan(result, tmp_path)
    with EmulatedLink(rate_mbit=5, rtt_ms=10) as link:
        link.start(
            link.edge_ns,
            [
                CLI,
                "serve",
                str(tmp_path),
                "--host",
                "127.0.0.1",
                "--port",
                "47100",
                "--token",
                "tok",
            ],
        )
        address = link.edge_address(47100)
        run = link.start(
            link.device_ns,
            [
                CLI,
                "run",
                str(tmp_path),
                "--edge",
                address,
                "--token",
                "tok",
                "--requests",
                "60",
                "--interval-s",
                "0.1",
                "--timeout-s",
                "0.5",
                "--json",
            ],
        )
        time.sleep(6.0)  # the device streams through the link (CLI start-up included)
        link.set_up(False)
        time.sleep(1.5)
        link.set_up(True)
        out, err = run.communicate(timeout=40)
    assert run.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["answered"] == 60 and report["split"] + report["local"] == 60
    where = report["where"]
    assert "S" in where and "L" in where  # split, then local during the outage
    assert where.rstrip("S").count("S") > 0 and where.endswith("S")  # resumed after it
    assert 0 < report["link"]["measured_mbps_median"] < 6


def test_cpu_quota_slows_a_process() -> None:
    import subprocess

    from crosslevel.distributed.emulation import CpuQuota

    code = "import time\nt=time.perf_counter();s=0\nfor i in range(1_500_000): s+=i\n"
    code += "print(time.perf_counter()-t)"
    base = min(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout) for _ in range(2)
    )  # fmt: skip
    with CpuQuota(0.25, f"test-{time.time_ns() % 10**6}") as quota:
        waiting = "import sys\nsys.stdin.readline()\n" + code
        proc = subprocess.Popen([sys.executable, "-c", waiting], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            quota.add(proc.pid)
            out, _ = proc.communicate("\n", timeout=60)
        finally:
            proc.kill()  # by its own pid; a no-op once it has exited
            proc.wait()
        path = quota.path
    assert float(out) / base > 0.6 / 0.25  # about 4x slower (other load only adds to base)
    assert not Path(path).exists()  # the cgroup is removed
