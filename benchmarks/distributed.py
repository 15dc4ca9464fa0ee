"""Split inference on emulated links: measured end-to-end latency beside the prediction.

Device and edge run in their own network namespaces joined by a veth pair shaped with
tbf (rate) and a user-space proxy (RTT); the device process is slowed to Raspberry-Pi-4
class with a CPU quota (fraction = the catalogue's rpi4 / host fp32 peak ratio, its
real slowdown measured by timing); the edge runs at host speed. For each model and link:
all-device, all-edge and our split (chosen by the exact solver from the *measured* link
rate and RTT and the cost model's per-node predictions, the device's scaled by the
measured slowdown), each measured over a real gRPC connection (median of N requests),
with the predicted latency and its error. Needs root (namespaces, cgroup v1).

    python benchmarks/distributed.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crosslevel.distributed.emulation import CpuQuota, EmulatedLink, available, measured_slowdown
from crosslevel.distributed.partition import plan_partition, solve, write_plan
from crosslevel.distributed.problem import Problem
from crosslevel.hardware.cost_model import predict_latency
from crosslevel.hardware.devices import Link, get_device
from crosslevel.ir.graph import Graph
from crosslevel.ir.load import load_model

CLI = str(Path(sys.executable).parent / "crosslevel")
REQUESTS = 15
PORT = 47200


def problem_for(graph: Graph, link: Link, slowdown: float) -> Problem:
    host = get_device("host")
    edge_ms = predict_latency(graph, host).per_node_ms
    node_ms = [
        {n.name: edge_ms.get(n.name, 0.0) * slowdown for n in graph.nodes},
        {n.name: edge_ms.get(n.name, 0.0) for n in graph.nodes},
    ]
    return Problem(graph, [host, host], [link], node_ms, "latency")


def run_placement(link: EmulatedLink, plan_dir: Path, quota: CpuQuota) -> dict[str, float]:
    server = link.start(link.edge_ns, [CLI, "serve", str(plan_dir), "--host", "127.0.0.1",
                                       "--port", str(PORT), "--token", "bench"])  # fmt: skip
    try:
        address = link.edge_address(PORT)
        time.sleep(0.5)
        run = link.start(link.device_ns, [CLI, "run", str(plan_dir), "--edge", address,
                                          "--token", "bench", "--requests", str(REQUESTS),
                                          "--timeout-s", "10", "--json"])  # fmt: skip
        quota.add(run.pid)
        out, err = run.communicate(timeout=300)
    finally:  # the next placement binds the same port
        server.kill()
        server.wait()
    if run.returncode != 0:
        raise RuntimeError(err.decode())
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    quick = "--quick" in sys.argv
    missing = available()
    if missing:
        raise SystemExit(f"needs {missing}")
    fraction = get_device("rpi4").peak_fp32_macs_per_s / get_device("host").peak_fp32_macs_per_s
    slowdown = measured_slowdown(fraction)
    models = (
        ["zoo:resnet8"] if quick else ["zoo:resnet8", "zoo:mobilenet_v2", "zoo:inception_cells"]
    )
    rates = [5.0] if quick else [1.0, 5.0, 20.0]
    table = Table(title=f"split inference on emulated links (device CPU quota {fraction:.2f}, "
                  f"measured slowdown {slowdown:.2f}x; edge = host)")  # fmt: skip
    for col in ("model", "link (measured)", "placement", "device nodes", "measured ms",
                "predicted ms", "error", "split/local"):  # fmt: skip
        table.add_column(col)
    for spec in models:
        graph = load_model(spec).graph
        for rate in rates:
            with EmulatedLink(rate_mbit=rate, rtt_ms=20) as link, CpuQuota(fraction) as quota:
                got = link.measure(nbytes=int(rate * 1e6 / 8 * 0.5))
                model_link = Link("emulated", got["rate_mbit"] * 1e6, got["rate_mbit"] * 1e6,
                                  got["rtt_ms"], "measured")  # fmt: skip
                problem = problem_for(graph, model_link, slowdown)
                ours, _, _ = solve(problem)
                placements = {
                    "all-device": {n.name: 0 for n in graph.nodes},
                    "all-edge": {n.name: 1 for n in graph.nodes},
                    "ours": ours,
                }
                for name, tier_of in placements.items():
                    with tempfile.TemporaryDirectory() as tmp:
                        result = plan_partition(graph, ["device", "edge"], problem.devices,
                                                [model_link], assignment=tier_of)  # fmt: skip
                        write_plan(result, Path(tmp))
                        report = run_placement(link, Path(tmp), quota)
                    predicted = problem.cost(tier_of)
                    measured = report["latency_ms_median"]
                    table.add_row(
                        spec,
                        f"{got['rate_mbit']:.2f} Mbit/s, {got['rtt_ms']:.1f} ms",
                        name,
                        f"{sum(t == 0 for t in tier_of.values())}/{len(tier_of)}",
                        f"{measured:.2f}",
                        f"{predicted:.2f}",
                        f"{(predicted - measured) / measured:+.0%}",
                        f"{report['split']}/{report['local']}",
                    )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
