"""Shared by the distributed tests: a two-tier plan with a fixed, simple split."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from crosslevel.distributed.partition import plan_partition
from crosslevel.hardware.devices import get_device, get_link
from crosslevel.ir.load import load_model


def half_split_plan(model: str) -> Any:
    """``model``'s first half of nodes on an rpi4 device, the rest on the host edge, over
    wifi: a split every solver would not pick, so the tests do not depend on costs."""
    graph = load_model(model).graph
    half = len(graph.nodes) // 2
    tier_of = {n.name: int(i >= half) for i, n in enumerate(graph.nodes)}
    return plan_partition(
        graph,
        ["device", "edge"],
        [get_device("rpi4"), get_device("host")],
        [get_link("wifi")],
        assignment=tier_of,
    )


def self_signed_cert(folder: Path) -> tuple[bytes, bytes]:
    """(key, certificate) PEM for ``localhost``, made by openssl for a TLS test."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return (folder / "key.pem").read_bytes(), (folder / "cert.pem").read_bytes()
