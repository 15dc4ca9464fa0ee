"""Split inference between two network namespaces over a shaped veth link (root only)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from distributed_helpers import half_split_plan

from crosslevel.distributed.emulation import EmulatedLink, available, loss_available
from crosslevel.distributed.partition import write_plan

MISSING = available()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING}")
CLI = str(Path(sys.executable).parent / "crosslevel")


def test_link_rate_and_delay_are_measured_as_set() -> None:
    with EmulatedLink(rate_mbit=5, rtt_ms=20) as link:
        got = link.measure(nbytes=300_000)
    assert 0.8 * 5 <= got["rate_mbit"] <= 1.1 * 5
    assert 20 <= got["rtt_ms"] <= 40


def test_jitter_spreads_the_measured_delay() -> None:
    with EmulatedLink(rate_mbit=20, rtt_ms=30, jitter_ms=20) as link:
        got = link.measure(nbytes=200_000, pings=40)
    # Two uniform draws of +-10 ms: RTT in 30 +- 20 ms (plus the host's own delay).
    assert 22 <= got["rtt_ms"] <= 45
    assert got["rtt_p90_ms"] - got["rtt_p10_ms"] >= 8
    assert 3 <= got["rtt_std_ms"] <= 15
    with EmulatedLink(rate_mbit=20, rtt_ms=30) as steady:
        flat = steady.measure(nbytes=200_000, pings=40)
    assert flat["rtt_std_ms"] < got["rtt_std_ms"]


def _serve(link: EmulatedLink, plan: Path, port: int) -> str:
    argv = [CLI, "serve", str(plan), "--host", "127.0.0.1", "--port", str(port), "--token", "tok"]
    link.start(link.edge_ns, argv)
    return link.edge_address(port)


def _run(link: EmulatedLink, plan: Path, address: str, *extra: str) -> Any:
    argv = [CLI, "run", str(plan), "--edge", address, "--token", "tok", "--json", *extra]
    return link.start(link.device_ns, argv)


@pytest.mark.skipif(loss_available() is not None, reason=f"needs {loss_available()}")
def test_split_under_packet_loss_answers_each_request_once(tmp_path: Path) -> None:
    write_plan(half_split_plan("zoo:resnet8"), tmp_path)  # 64 KiB cut: ~45 packets a request
    with EmulatedLink(rate_mbit=20, rtt_ms=10, loss=0.04) as link:
        address = _serve(link, tmp_path, 47110)
        run = _run(link, tmp_path, address, "--requests", "30", "--timeout-s", "2")
        out, err = run.communicate(timeout=120)
        counts = link.loss_counts()
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert link.device_ns not in namespaces and link.edge_ns not in namespaces  # cleaned up
    assert run.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["answered"] == 30 and report["split"] + report["local"] == 30
    assert report["split"] >= 15  # TCP retransmits the lost packets: most calls still split
    n = counts["sent"] + counts["dropped"]
    assert n > 1000
    # The achieved loss is near the setting: within 4 standard deviations of a binomial.
    assert abs(counts["loss"] - 0.04) <= 4 * (0.04 * 0.96 / n) ** 0.5 + 0.005


def test_split_across_namespaces_with_an_outage(tmp_path: Path) -> None:
    result = half_split_plan("zoo:digits_cnn")
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
    from crosslevel.distributed.emulation import CPU_CGROUP, measured_slowdown

    tag = f"test-{time.time_ns() % 10**6}"
    slowdown = measured_slowdown(0.25, iterations=1_500_000, tag=tag, timeout_s=60)
    assert slowdown > 0.6 / 0.25  # about 4x slower (other load only adds to the free run)
    assert not Path(f"{CPU_CGROUP}/clx-{tag}").exists()  # the cgroup is removed
