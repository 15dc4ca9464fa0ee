"""Partition benchmark: device-only, edge-only, our exact split and Neurosurgeon's chain search.

One table from one run. Every latency is predicted (cost model per device, uncalibrated,
plus the link catalogue's rates and round trips): the MCU and SBC targets are not here.
The last column checks our chosen split by execution: its parts run in ONNX Runtime on
this host and must reproduce the whole model (max |diff|).

    python benchmarks/partition.py
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table

from crosslevel.distributed.partition import build_problem, plan_partition, solve
from crosslevel.distributed.solvers import solve_chain
from crosslevel.hardware.devices import get_device, get_link
from crosslevel.ir.load import load_model

MODELS = ["zoo:resnet8", "zoo:inception_cells", "zoo:mobilenet_v2", "mlperf:vww_96_float.tflite"]
PAIRS = [("stm32h743", "host"), ("rpi_zero_2w", "host")]
LINKS = ["ble", "wifi", "lte"]


def main() -> None:
    table = Table(title="partition: predicted end-to-end latency (ms), edge = host")
    cols = [
        "model",
        "device",
        "link",
        "device-only",
        "edge-only",
        "ours",
        "method",
        "chain-only",
        "ours vs best single",
        "device nodes",
        "split check |diff|",
        "solve s",
    ]
    for col in cols:
        table.add_column(col)
    for spec in MODELS:
        graph = load_model(spec).graph
        for dev, edge in PAIRS:
            for link in LINKS:
                devices = [get_device(dev), get_device(edge)]
                problem = build_problem(graph, devices, [get_link(link)])
                start = time.perf_counter()
                tier_of, value, method = solve(problem)
                solve_s = time.perf_counter() - start
                _, chain_value, _ = solve_chain(problem)
                dev_only = problem.cost({n.name: 0 for n in graph.nodes})
                edge_only = problem.cost({n.name: 1 for n in graph.nodes})
                result = plan_partition(
                    graph, ["device", "edge"], devices, [get_link(link)], assignment=tier_of
                )
                diff = result.plan["fidelity"]["max_abs_diff"]
                table.add_row(
                    spec,
                    dev,
                    link,
                    f"{dev_only:.2f}",
                    f"{edge_only:.2f}",
                    f"{value:.2f}",
                    method.split(" ")[0],
                    f"{chain_value:.2f}",
                    f"{min(dev_only, edge_only) / value:.2f}x",
                    f"{sum(t == 0 for t in tier_of.values())}/{len(tier_of)}",
                    f"{diff:.1e}",
                    f"{solve_s:.3f}",
                )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
