"""TFLM's head arena (measured in tflite-micro) beside our restatement of its greedy planner
and the lower bound for the file's operator order, for every int8 MLPerf Tiny model.

    python benchmarks/arena_tflm.py [--models DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.lifetimes import buffers_for_order, no_reuse_bytes, peak_live_bytes
from crosslevel.memory.tflm_greedy import plan_tflm_greedy
from crosslevel.runtime.tflm import measure_tflm_arena

DEFAULT_MODELS = Path(
    os.environ.get(
        "CROSSLEVEL_MODELS", Path(__file__).resolve().parents[2] / "shared/models/mlperf-tiny"
    )
)
INT8_MODELS = [
    "kws_ref_model.tflite",
    "pretrainedResnet_quant.tflite",
    "vww_96_int8.tflite",
    "ad01_int8.tflite",
    "str_ww_ref_model.tflite",
]


def measure(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    graph = import_tflite(data)
    buffers = buffers_for_order(graph)
    tflm = measure_tflm_arena(data)
    ours = plan_tflm_greedy(buffers).arena_bytes
    bound = peak_live_bytes(buffers, len(graph.nodes))
    return {
        "model": path.name,
        "tflm_head_measured": tflm.head_bytes,
        "ours_tflm_greedy": ours,
        "equal": ours == tflm.head_bytes,
        "lower_bound_file_order": bound,
        "no_reuse": no_reuse_bytes(buffers),
        "tflm_over_bound_pct": 100.0 * (tflm.head_bytes - bound) / bound if bound else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [measure(args.models / name) for name in INT8_MODELS]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="head arena bytes: TFLM measured vs our restatement vs bound")
    for col in ("model", "TFLM head (measured)", "ours: TFLM greedy", "equal",
                "lower bound (file order)", "no reuse", "TFLM over bound"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            str(r["model"]), f"{r['tflm_head_measured']:,}", f"{r['ours_tflm_greedy']:,}",
            "yes" if r["equal"] else "NO", f"{r['lower_bound_file_order']:,}",
            f"{r['no_reuse']:,}", f"{r['tflm_over_bound_pct']:.1f}%",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
