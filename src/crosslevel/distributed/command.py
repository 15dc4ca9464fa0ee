"""CLI commands of the distributed level: `crosslevel partition`, `serve` and `run`."""

from __future__ import annotations

import json
import secrets
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from crosslevel.errors import UsageError

console = Console(width=None if sys.stdout.isatty() else 140)


def _pairs(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"{what}: expected KEY=VALUE[,KEY=VALUE], got {text!r}")
        out[key.strip()] = value.strip()
    return out


def _tiers_and_links(tiers: str, link: str) -> tuple[list[str], list[Any], list[Any]]:
    from crosslevel.hardware.devices import get_device, get_link

    t = _pairs(tiers, "--tiers")
    roles: list[str] = [r for r in ("device", "edge", "cloud") if r in t]
    if set(t) - set(roles) or roles[:2] != ["device", "edge"]:
        raise UsageError("--tiers takes device=D,edge=E[,cloud=C]")
    links = _pairs(link, "--link")
    want = ["device-edge"] + (["edge-cloud"] if "cloud" in t else [])
    if sorted(links) != sorted(want):
        raise UsageError(f"--link must name exactly {', '.join(want)}")
    return roles, [get_device(t[r]) for r in roles], [get_link(links[k]) for k in want]


def partition_command(
    model: Annotated[str, typer.Argument(help="A .tflite/.onnx file, zoo:NAME or mlperf:FILE.")],
    tiers: Annotated[
        str, typer.Option(help="device=D,edge=E[,cloud=C] from `crosslevel devices`.")
    ],
    link: Annotated[
        str, typer.Option(help="device-edge=L[,edge-cloud=L2] from `crosslevel devices`.")
    ],
    objective: Annotated[str, typer.Option(help="latency | energy | throughput.")] = "latency",
    max_ram_kb: Annotated[
        float | None, typer.Option(help="Device RAM limit in KiB (default: none).")
    ] = None,
    device_limits: Annotated[
        bool, typer.Option(help="Apply the device's own SRAM/RAM and flash from the catalogue.")
    ] = False,
    compress_int8: Annotated[
        bool, typer.Option("--compress-int8", help="Send cut tensors as int8 (fidelity reported).")
    ] = False,
    candidates: Annotated[
        int,
        typer.Option(
            min=0, max=16, help="Also write up to N chain splits for `run --adaptive` (two tiers)."
        ),
    ] = 0,
    measure_chain: Annotated[
        bool, typer.Option(help="Also time every chain split's parts on this host (ORT).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "out/partition"
    ),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Place a model's layers on device, edge and cloud: exact min-cut or HiGHS ILP, beside
    Neurosurgeon's chain search; the split is verified by running its parts in ONNX Runtime.

    Writes OUT/plan.json (crosslevel.partition/1), OUT/tierK_ROLE.onnx per non-empty tier
    and OUT/model.onnx (the device's fallback); for an int8 .tflite model the parts are
    int8 .tflite files run in TFLite Micro (bit-exact with the whole model).
    """
    from crosslevel.distributed.partition import plan_partition, write_plan
    from crosslevel.ir.load import load_model

    roles, devices, links = _tiers_and_links(tiers, link)
    ram = None if max_ram_kb is None else int(max_ram_kb * 1024)
    flash = None
    if device_limits:
        ram = ram if ram is not None else devices[0].memory_bytes or None
        flash = devices[0].flash_bytes
    loaded = load_model(model)
    with console.status("partitioning", spinner="dots") if not as_json else nullcontext():
        result = plan_partition(
            loaded.graph,
            roles,
            devices,
            links,
            objective,
            ram,
            flash,
            compress_int8,
            model,
            candidates=candidates,
        )
    if measure_chain:
        from crosslevel.distributed.partition import measure_chain as time_chain

        result.plan["chain_measured"] = time_chain(result.problem)
    write_plan(result, out)
    if as_json:
        sys.stdout.write(json.dumps(result.plan, indent=2) + "\n")
        return
    console.print(_plan_table(result.plan))
    chain = result.plan["chain_search"]
    console.print(
        f"{result.method}: {objective} {result.value:.4g} (predicted); Neurosurgeon chain-only "
        f"search {chain['value']:.4g}; split verified: max |diff| "
        f"{result.plan['fidelity']['max_abs_diff']:.3g}, top-1 agreement "
        f"{result.plan['fidelity']['top1_agreement']:.0%} (fidelity)"
    )
    console.print(f"wrote {out}/plan.json and the per-tier models ({result.fmt})")


def _plan_table(plan: dict[str, Any]) -> Table:
    table = Table(title=f"partition of {plan['model']} ({plan['objective']})")
    for col in ("tier", "device", "nodes", "compute ms (predicted)", "host ms (measured)"):
        table.add_column(col)
    for tier in plan["tiers"]:
        host = tier["host_measured_ms"]
        table.add_row(
            tier["role"],
            tier["device"],
            str(len(tier["nodes"])),
            f"{tier['compute_ms']:.3f}",
            "-" if host is None else f"{host:.3f}",
        )
    for link in plan["links"]:
        table.add_row(
            f"{link['from']}->{link['to']}",
            link["name"],
            f"{len(link['tensors'])} tensors",
            f"{link['transfer_ms'] + link['rtt_ms']:.3f} ({link['wire_bytes']} B)",
            "-",
        )
    return table


def _read_tls(cert: Path | None, key: Path | None) -> tuple[bytes, bytes] | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    return _read_file(key, "--tls-key"), _read_file(cert, "--tls-cert")


def _read_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path}: {exc.strerror or exc}") from None


def serve_command(
    plan: Annotated[Path, typer.Argument(help="plan.json (or its folder) from `partition`.")],
    role: Annotated[
        str, typer.Option(help="edge, or cloud (a three-tier plan's last part).")
    ] = "edge",
    cloud: Annotated[
        str | None,
        typer.Option(
            help="HOST:PORT of the cloud server (edge of a three-tier plan); "
            "without it the edge runs the cloud part itself."
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="TCP port (0 = any free port).")] = 50051,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    token: Annotated[
        str | None,
        typer.Option(
            help="Shared secret (default: generated); the edge uses it for the cloud too."
        ),
    ] = None,
    cloud_timeout_s: Annotated[float, typer.Option(help="Deadline of one cloud call.")] = 2.0,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate for TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key for TLS.")] = None,
    cloud_tls_root: Annotated[
        Path | None, typer.Option(help="PEM root certificate of a --cloud served over TLS.")
    ] = None,
) -> None:
    """Serve the edge part (and the cloud part, or forward to --cloud) or, with --role
    cloud, the cloud part of a plan over gRPC until interrupted."""
    from crosslevel.distributed.partition import load_plan
    from crosslevel.distributed.server import CloudLink, start_server

    if role not in ("edge", "cloud") or (role == "cloud" and cloud is not None):
        raise UsageError("serve runs --role edge [--cloud ADDR] or --role cloud; the device "
                         "uses `crosslevel run`")  # fmt: skip
    doc = load_plan(plan)
    secret = token or secrets.token_urlsafe(16)
    if cloud_tls_root is not None and cloud is None:
        raise UsageError("--cloud-tls-root goes with --cloud")
    cloud_root = None if cloud_tls_root is None else _read_file(cloud_tls_root, "--cloud-tls-root")
    link = None if cloud is None else CloudLink(doc, cloud, secret, cloud_timeout_s, cloud_root)
    tls = _read_tls(tls_cert, tls_key)
    server, bound, service = start_server(doc, secret, port, host, tls, role=role, cloud=link)
    console.print(f"serving {doc.get('model', plan)} {role} part on {host}:{bound}"
                  + ("" if cloud is None else f", cloud at {cloud}"), highlight=False)  # fmt: skip
    if token is None:
        console.print(f"token: {secret}", highlight=False)
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.stop(1).wait(5)
    if link is not None:
        link.close()
    console.print(f"served {service.served}, refused {service.rejected}")


def run_command(
    plan: Annotated[Path, typer.Argument(help="plan.json (or its folder) from `partition`.")],
    edge: Annotated[str, typer.Option(help="HOST:PORT of `crosslevel serve`.")],
    role: Annotated[str, typer.Option(help="device (the only client role).")] = "device",
    token: Annotated[str, typer.Option(help="The edge's token.")] = "",
    requests: Annotated[int, typer.Option(min=1, help="Requests to send.")] = 20,
    timeout_s: Annotated[float, typer.Option(help="Deadline of one edge call.")] = 2.0,
    tls_root: Annotated[Path | None, typer.Option(help="PEM root certificate for TLS.")] = None,
    interval_s: Annotated[float, typer.Option(help="Pause between requests (a stream).")] = 0.0,
    adaptive: Annotated[
        bool,
        typer.Option(
            "--adaptive",
            help="Re-pick the split among the plan's candidates from "
            "the measured link (plan made with `partition --candidates N`).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the device part, stream cut tensors to the edge, fall back to the whole model
    locally when the edge is unreachable; every request answered exactly once. With
    --adaptive the split point moves with the measured bandwidth and RTT (hysteresis)."""
    from crosslevel.distributed.client import DeviceClient
    from crosslevel.distributed.partition import load_plan, random_tensor

    if role != "device":
        raise UsageError("run takes --role device")
    doc = load_plan(plan)
    root = None if tls_root is None else _read_file(tls_root, "--tls-root")
    client = DeviceClient(doc, edge, token, timeout_s=timeout_s, tls_root=root, adaptive=adaptive)
    rng = np.random.default_rng(0)
    answers = []
    try:
        if adaptive:
            client.start_adaptive(*_link_figures(doc))
        for i in range(requests):
            x = [random_tensor(rng, s["shape"], s["dtype"]) for s in doc["inputs"]]
            answers.append(client.infer(f"req-{i}", x))
            if interval_s > 0:
                time.sleep(interval_s)
    finally:
        client.close()
    result = {
        "requests": requests,
        "answered": len({a.request_id for a in answers}),
        "split": sum(a.where == "split" for a in answers),
        "local": sum(a.where == "local" for a in answers),
        "latency_ms_median": float(np.median([a.latency_ms for a in answers])),
        "where": "".join("S" if a.where == "split" else "L" for a in answers),
        "link": client.stats.summary(),
        **({} if client.chooser is None else _adaptive_report(client, answers)),
        "label": "measured on this host over a real gRPC connection",
    }
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console.print(result)


def _link_figures(doc: dict[str, Any]) -> tuple[float, float]:
    """The plan's device-edge link model (Mbit/s up, RTT ms): the chooser's start until
    measured (untrusted file: anything but a positive finite number falls back to wifi's)."""
    link = doc["links"][0]
    figures = []
    for key, default in (("model_up_mbps", 30.0), ("model_rtt_ms", 5.0)):
        value = link.get(key)
        ok = isinstance(value, int | float) and 0 < value < 1e6
        figures.append(float(value) if ok else default)
    return figures[0], figures[1]


def _adaptive_report(client: Any, answers: list[Any]) -> dict[str, Any]:
    cands = client.plan["candidates"]
    return {
        "candidates_device_nodes": [c["device_nodes"] for c in cands],
        "device_nodes_per_request": [cands[a.candidate]["device_nodes"] for a in answers],
        "switches": client.chooser.switches,
        "device_scale": client.chooser.device_scale,
        "label_adaptive": "split chosen from measured bandwidth/RTT and measured/predicted "
        "compute ratios",
    }
