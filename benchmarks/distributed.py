"""Split inference on emulated links: measured end-to-end latency beside the prediction.

Device and edge run in their own network namespaces joined by a veth pair shaped with tbf
(rate) and a user-space proxy (RTT); the rate and RTT in the table are measured. The
device process is slowed to Raspberry-Pi-4 class by a CPU quota (fraction = the
catalogue's rpi4 / host fp32 peak ratio) that it joins after start-up; the edge runs at
host speed. Every placement runs as a real gRPC request stream (one warm-up request, then
the mean of N back-to-back requests: the quota slows a process in 1 ms slices, so a short
run is either untouched or stalled, and only the mean shows the slowdown).

Predictions (labelled predicted): per-node edge times are the cost model's host
predictions scaled so that the whole model matches its measured host time (ONNX Runtime,
mean of 40); per-node device times are those times multiplied by the slowdown measured
by timing a few layers (the first third of the nodes, a part of its own) back to back
under the same quota against free (mean of 40 each); the link is the measured rate and
RTT. Candidate
splits: every prefix of the node order plus the exact solver's (min-cut) split. "Ours"
is the split with the least predicted latency, exactly what `crosslevel partition`
picks from the same figures. Every split is measured at two rates (5 and 50 Mbit/s);
elsewhere only the splits predicted within 3x of the best (and all-device, all-edge).
Regret compares ours with the best measured split. Needs root (namespaces, cgroup v1).

    nice python benchmarks/distributed.py [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crosslevel.distributed.adaptive import candidate_entries
from crosslevel.distributed.emulation import CpuQuota, EmulatedLink, available
from crosslevel.distributed.partition import export_parts, plan_partition, write_plan
from crosslevel.distributed.problem import Problem
from crosslevel.distributed.split import split_graph
from crosslevel.hardware.cost_model import predict_latency
from crosslevel.hardware.devices import Link, get_device, get_link
from crosslevel.ir.graph import Graph

CLI = str(Path(sys.executable).parent / "crosslevel")
PORT = 47200
LINKS = [(0.25, 100.0), (1.0, 50.0), (5.0, 20.0), (20.0, 10.0), (50.0, 5.0)]  # set: Mbit/s, ms
EVERY_SPLIT_AT = (5.0, 50.0)
# (label, zoo name, builder kwargs): untrained weights (latency does not depend on them),
# inputs at 96x96 so that a device run spans several quota periods and slows evenly.
MODELS = [
    ("MobileNetV2 1.0 (96x96)", "mobilenet_v2", {"width_mult": 1.0}),
    ("ResNet-8 (96x96)", "resnet8", {}),
    ("inception_cells (96x96)", "inception_cells", {}),
]
RESOLUTION = 96
NEUROSURGEON_SPEEDUP = 3.1  # average latency speed-up over mobile-only (ASPLOS 2017)


def model_graph(zoo_name: str, kwargs: dict[str, Any]) -> Graph:
    from crosslevel.model.compress import float_graph
    from crosslevel.model.zoo import build

    module = build(zoo_name, **kwargs).eval()
    return float_graph(module, (3, RESOLUTION, RESOLUTION))


# ------------------------------------------------------------------------- calibration
def _time_part(model_path: Path, quota: CpuQuota | None, runs: int = 40) -> float:
    """Mean ms of ``runs`` back-to-back runs of an ONNX part in a fresh process (joined
    to ``quota`` after loading, as the device process is)."""
    argv = [sys.executable, __file__, "--time-part", str(model_path), str(runs)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("timing helper failed to start")
        if quota is not None:
            quota.add(proc.pid)
        out, _ = proc.communicate("go\n", timeout=300)
    finally:
        proc.kill()
        proc.wait()
    return float(out)


def calibrate(graph: Graph, quota: CpuQuota, folder: Path) -> dict[str, Any]:
    """Host scale (measured / cost model) and the device slowdown of a few layers."""
    from crosslevel.ir.onnx import export_onnx

    whole = folder / "whole.onnx"
    whole.write_bytes(export_onnx(graph).SerializeToString())
    host_ms = _time_part(whole, None)
    cut = max(1, len(graph.nodes) // 3)
    head = export_parts(split_graph(graph, {n.name: int(i >= cut) for i, n in
                                            enumerate(graph.nodes)}, 2))[0]  # fmt: skip
    assert head is not None
    part = folder / "first_third.onnx"
    part.write_bytes(head)
    free, slowed = _time_part(part, None), _time_part(part, quota)
    predicted = predict_latency(graph, get_device("host")).total_ms
    return {"host_ms": host_ms, "host_scale": host_ms / predicted, "slowdown": slowed / free,
            "part_nodes": cut, "part_free_ms": free, "part_quota_ms": slowed}  # fmt: skip


def node_times(graph: Graph, cal: dict[str, Any]) -> list[dict[str, float]]:
    pred = predict_latency(graph, get_device("host")).per_node_ms
    edge = {n.name: pred.get(n.name, 0.0) * cal["host_scale"] for n in graph.nodes}
    return [{k: v * cal["slowdown"] for k, v in edge.items()}, edge]


# ---------------------------------------------------------------------------- planning
def candidate_plan(graph: Graph, folder: Path) -> list[dict[str, int]]:
    """A plan whose run-time candidates are every prefix cut and the min-cut split."""
    devices, link = [get_device("rpi4"), get_device("host")], [get_link("wifi")]
    result = plan_partition(graph, ["device", "edge"], devices, link)
    n = len(graph.nodes)
    cuts = [{v.name: int(i >= c) for i, v in enumerate(graph.nodes)} for c in range(n + 1)]
    if result.tier_of not in cuts:
        cuts.insert(-1, result.tier_of)
    entries, models = candidate_entries(result.problem, cuts)
    result.plan["candidates"], result.candidate_models = entries, models
    write_plan(result, folder)
    return cuts


def measured_link(link: EmulatedLink) -> Link:
    got = link.measure(nbytes=int(min(link.rate_mbit * 1e6 / 8 * 0.5, 2e6)), pings=10)
    return Link("emulated", got["rate_mbit"] * 1e6, got["rate_mbit"] * 1e6, got["rtt_ms"],
                "measured")  # fmt: skip


# ---------------------------------------------------------------------------- measuring
def run_device(link: EmulatedLink, quota: CpuQuota, plan: Path, work: dict[int, int]) -> Any:
    """Run the device worker in its namespace under the quota; {candidate: [ms...]}."""
    address = link.edge_address(PORT)
    argv = [sys.executable, __file__, "--device", str(plan), address, json.dumps(work)]
    proc = link.start(link.device_ns, argv)
    assert proc.stdout is not None and proc.stdin is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "worker failed")
    quota.add(proc.pid)  # `ip netns exec` execs the worker: the same pid
    out, err = proc.communicate(b"go\n", timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(err.decode())
    return {int(k): v for k, v in json.loads(out).items()}


def measure_config(
    graph: Graph, cuts: list[dict[str, int]], node_ms: list[dict[str, float]], plan: Path,
    quota: CpuQuota, rate: float, rtt: float, requests: int,
) -> dict[str, Any]:  # fmt: skip
    with EmulatedLink(rate_mbit=rate, rtt_ms=rtt) as link:
        model_link = measured_link(link)
        host = get_device("host")
        problem = Problem(graph, [host, host], [model_link], node_ms, "latency")
        predicted = [problem.cost(c) for c in cuts]
        best = min(predicted)
        every = rate in EVERY_SPLIT_AT
        ends = {0, len(cuts) - 1}
        chosen = [k for k, p in enumerate(predicted) if every or p <= 3 * best or k in ends]
        work = {k: requests if predicted[k] < 300 else 3 for k in chosen}
        link.start(link.edge_ns, [CLI, "serve", str(plan), "--host", "0.0.0.0", "--port",
                                  str(PORT), "--token", "bench"])  # fmt: skip
        measured = run_device(link, quota, plan, work)
    return {"link": model_link, "predicted": predicted, "measured": measured}


def worker_device(plan_dir: str, address: str, work_json: str) -> None:
    """Inside the device namespace: every requested candidate, warm-up then timed."""
    import numpy as np

    from crosslevel.distributed.client import DeviceClient
    from crosslevel.distributed.partition import load_plan

    plan = load_plan(Path(plan_dir))
    client = DeviceClient(plan, address, "bench", timeout_s=60, adaptive=True)
    x = [np.random.default_rng(0).standard_normal(s["shape"]).astype(s["dtype"])
         for s in plan["inputs"]]  # fmt: skip
    print("ready", flush=True)
    sys.stdin.readline()  # the parent puts this process under the quota first
    out: dict[int, list[float]] = {}
    for k, n in json.loads(work_json).items():
        client.infer_on(f"w{k}", x, int(k))
        answers = [client.infer_on(f"r{k}-{i}", x, int(k)) for i in range(n)]
        remote = not plan["candidates"][int(k)]["local"]
        if remote and any(a.where != "split" for a in answers):
            raise SystemExit(f"candidate {k} fell back to local: {client.stats.summary()}")
        out[int(k)] = [a.latency_ms for a in answers]
    client.close()
    print(json.dumps(out))


def worker_time_part(path: str, runs: int) -> None:
    import numpy as np

    from crosslevel.runtime.ort import make_session, run_session

    session = make_session(Path(path))
    x = [np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in
                                                   i.shape]).astype(np.float32)
         for i in session.get_inputs()]  # fmt: skip
    for _ in range(3):
        run_session(session, x)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for _ in range(runs):
        run_session(session, x)
    print((time.perf_counter() - start) * 1e3 / runs)


# ------------------------------------------------------------------------------- report
def row(name: str, cuts: list[dict[str, int]], res: dict[str, Any]) -> tuple[list[str], Any]:
    meas = {k: statistics.fmean(v) for k, v in res["measured"].items()}
    pred = res["predicted"]
    ours = min(range(len(pred)), key=pred.__getitem__)
    best = min(meas, key=meas.__getitem__)
    dev, edge = meas[len(cuts) - 1], meas[0]
    noise = statistics.median(
        abs(a - b) for v in res["measured"].values() for a, b in zip(v, v[1:], strict=False)
    )
    errors = [(pred[k] - m) / m for k, m in meas.items()]
    link = res["link"]
    better = min(dev, edge)
    cells = [
        name,
        f"{link.bandwidth_up_bps / 1e6:.2f} Mbit/s, {link.rtt_ms:.0f} ms",
        str(len(meas)),
        str(sum(1 for t in cuts[ours].values() if t == 0)),
        f"{meas[ours]:.1f}", f"{pred[ours]:.1f}", f"{(pred[ours] - meas[ours]) / meas[ours]:+.0%}",
        f"{dev:.1f}", f"{edge:.1f}",
        f"{meas[best]:.1f} ({sum(1 for t in cuts[best].values() if t == 0)})",
        f"{meas[ours] / meas[best] - 1:.1%}",
        f"{meas[ours] - better:+.1f} (noise {noise:.1f})",
        f"{dev / meas[ours]:.2f}x",
    ]  # fmt: skip
    return cells, {"errors": errors, "regret": meas[ours] / meas[best] - 1,
                   "ok": meas[ours] - better <= max(noise, 0.05 * better)}  # fmt: skip


def calibration_note(name: str, cal: dict[str, Any]) -> str:
    return (
        f"{name}: host {cal['host_ms']:.2f} ms (cost model x {cal['host_scale']:.2f}); first "
        f"{cal['part_nodes']} nodes {cal['part_free_ms']:.3f} ms free, "
        f"{cal['part_quota_ms']:.3f} ms under the quota: device slowdown {cal['slowdown']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-8 at two rates only")
    parser.add_argument("--requests", type=int, default=7, help="timed requests per split")
    args = parser.parse_args()
    missing = available()
    if missing:
        raise SystemExit(f"needs {missing}")
    start = time.monotonic()
    fraction = get_device("rpi4").peak_fp32_macs_per_s / get_device("host").peak_fp32_macs_per_s
    models = MODELS[1:2] if args.quick else MODELS
    links = [LINKS[1], LINKS[4]] if args.quick else LINKS
    table = Table(title=f"split inference on emulated links: device = host under a CPU quota "
                  f"of {fraction:.2f} (rpi4/host peak), edge = host; ms are means of "
                  f"{args.requests} requests over gRPC")  # fmt: skip
    for col in ("model", "link (measured)", "splits measured", "ours: device nodes",
                "ours ms (measured)", "ours ms (predicted)", "error", "all-device ms",
                "all-edge ms", "best measured ms (nodes)", "regret", "ours - better single",
                f"speed-up vs all-device (Neurosurgeon avg {NEUROSURGEON_SPEEDUP}x)"):  # fmt: skip
        table.add_column(col)
    summary: list[dict[str, Any]] = []
    notes = []
    with CpuQuota(fraction, f"bench{time.time_ns() % 10**8}") as quota:
        for name, zoo_name, kwargs in models:
            graph = model_graph(zoo_name, kwargs)
            with tempfile.TemporaryDirectory() as tmp:
                cal = calibrate(graph, quota, Path(tmp))
                notes.append(calibration_note(name, cal))
                cuts = candidate_plan(graph, Path(tmp) / "plan")
                node_ms = node_times(graph, cal)
                for rate, rtt in links:
                    res = measure_config(graph, cuts, node_ms, Path(tmp) / "plan", quota, rate,
                                         rtt, args.requests)  # fmt: skip
                    cells, figures = row(name, cuts, res)
                    table.add_row(*cells)
                    summary.append(figures)
    console = Console(width=260)
    console.print(table)
    errors = [abs(e) for s in summary for e in s["errors"]]
    console.print(
        f"prediction error over every measured placement: median |error| "
        f"{statistics.median(errors):.0%} (target 20%), n = {len(errors)}; regret median "
        f"{statistics.median(s['regret'] for s in summary):.1%}, max "
        f"{max(s['regret'] for s in summary):.1%} (target < 10%); ours no slower than the "
        f"better single placement beyond noise in {sum(s['ok'] for s in summary)}/"
        f"{len(summary)} configurations; {time.monotonic() - start:.0f} s"
    )
    for note in notes:
        console.print(note)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--device"]:
        worker_device(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--time-part"]:
        worker_time_part(sys.argv[2], int(sys.argv[3]))
    else:
        main()
