"""Our memory strategies beside TFLM's own arena, every TFLM-ready plan run in tflite-micro.

For each int8 MLPerf Tiny model and the int8 zoo models crosslevel makes: TFLM's head
arena (measured in the same run), the lower bound for the file's order, our arena per
strategy (tflm restated, reorder, optimal), the TFLM/ours ratio, whether tflite-micro ran
our plan with identical outputs and reported our arena as its head, and planning time.

    python benchmarks/memory_plan.py [--no-zoo] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

from rich.console import Console
from rich.table import Table

from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.strategies import plan_strategies
from crosslevel.memory.verify import tflm_ready_file, verify_in_tflm
from crosslevel.model.mlperf_tiny import INT8_FILES, models_dir
from crosslevel.runtime.tflm import measure_tflm_arena

ZOO_INT8 = ["inception_cells", "mobilenet_v2", "mcunet_v2", "resnet8", "ds_cnn"]


def measure(name: str, data: bytes) -> dict[str, object]:
    graph = import_tflite(data)
    start = time.perf_counter()
    plans = plan_strategies(graph, time_limit_s=10.0)
    planning_s = time.perf_counter() - start
    best = plans["best"]
    check = verify_in_tflm(data, tflm_ready_file(graph, best), graph, best)
    tflm = measure_tflm_arena(data).head_bytes
    return {
        "model": name,
        "tflm_head_measured": tflm,
        "bound_file_order": plans["tflm"].bounds.peak_live_bytes,
        "ours_tflm_restated": plans["tflm"].arena_bytes,
        "ours_reorder": plans["reorder"].arena_bytes,
        "ours_optimal": plans["optimal"].arena_bytes,
        "ratio_tflm_over_best": tflm / best.arena_bytes,
        "tflm_runs_our_plan": check.verified,
        "tflm_head_with_our_plan": check.tflm_head_bytes,
        "planning_s": planning_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-zoo", action="store_true", help="only the MLPerf Tiny files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(n, (models_dir() / n).read_bytes()) for n in INT8_FILES]
    if not args.no_zoo:
        from crosslevel.model.int8_zoo import zoo_int8_tflite

        rows += [measure(f"zoo:{n} (int8 PTQ)", zoo_int8_tflite(n)) for n in ZOO_INT8]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = [
        "model",
        "TFLM head (measured)",
        "bound (file order)",
        "ours: reorder",
        "ours: optimal",
        "TFLM / ours",
        "TFLM runs our plan",
        "TFLM head w/ our plan",
        "planning s",
    ]
    table = Table(title="activation arena (bytes): TFLM vs crosslevel plan, one run")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            str(r["model"]),
            f"{r['tflm_head_measured']:,}",
            f"{r['bound_file_order']:,}",
            f"{r['ours_reorder']:,}",
            f"{r['ours_optimal']:,}",
            f"{r['ratio_tflm_over_best']:.2f}x",
            "yes" if r["tflm_runs_our_plan"] else "NO",
            f"{r['tflm_head_with_our_plan']:,}",
            f"{r['planning_s']:.2f}",
        )
    console = Console(width=170)
    console.print(table)
    mlperf = [float(r["ratio_tflm_over_best"]) for r in rows[: len(INT8_FILES)]]  # type: ignore[arg-type]
    geo = math.exp(sum(math.log(x) for x in mlperf) / len(mlperf))
    console.print(f"geometric mean TFLM/ours over the five MLPerf Tiny int8 models: {geo:.2f}x")


if __name__ == "__main__":
    main()
