"""TFLM's head arena (measured in tflite-micro) beside our restatement of its greedy planner
and the lower bound for the file's operator order, for every int8 MLPerf Tiny model and
the int8 zoo models crosslevel makes.

    python benchmarks/arena_tflm.py [--models DIR] [--no-zoo] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.lifetimes import buffers_for_order, no_reuse_bytes, peak_live_bytes
from crosslevel.memory.tflm_greedy import plan_tflm_greedy
from crosslevel.model.mlperf_tiny import INT8_FILES, models_dir
from crosslevel.runtime.tflm import measure_tflm_arena

ZOO_INT8 = [
    "digits_cnn",
    "ds_cnn",
    "resnet8",
    "mobilenet_v1_025",
    "fc_autoencoder",
    "mobilenet_v2",
    "mcunet_v2",
    "imu_cnn",
    "mnist1d_cnn",
    "inception_cells",
]


def measure(name: str, data: bytes) -> dict[str, object]:
    graph = import_tflite(data)
    buffers = buffers_for_order(graph)
    tflm = measure_tflm_arena(data)
    ours = plan_tflm_greedy(buffers).arena_bytes
    bound = peak_live_bytes(buffers)
    return {
        "model": name,
        "tflm_head_measured": tflm.head_bytes,
        "ours_tflm_greedy": ours,
        "equal": ours == tflm.head_bytes,
        "lower_bound_file_order": bound,
        "no_reuse": no_reuse_bytes(buffers),
        "tflm_over_bound_pct": 100.0 * (tflm.head_bytes - bound) / bound if bound else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None, help="default: the shared folder")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-zoo", action="store_true", help="only the MLPerf Tiny files")
    args = parser.parse_args()
    folder = args.models or models_dir()
    rows = [measure(name, (folder / name).read_bytes()) for name in INT8_FILES]
    if not args.no_zoo:
        from crosslevel.model.int8_zoo import zoo_int8_tflite

        rows += [measure(f"zoo:{name} (int8 PTQ)", zoo_int8_tflite(name)) for name in ZOO_INT8]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="head arena bytes: TFLM measured vs our restatement vs bound")
    for col in (
        "model",
        "TFLM head (measured)",
        "ours: TFLM greedy",
        "equal",
        "lower bound (file order)",
        "no reuse",
        "TFLM over bound",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        table.add_row(
            str(r["model"]),
            f"{r['tflm_head_measured']:,}",
            f"{r['ours_tflm_greedy']:,}",
            "yes" if r["equal"] else "NO",
            f"{r['lower_bound_file_order']:,}",
            f"{r['no_reuse']:,}",
            f"{r['tflm_over_bound_pct']:.1f}%",
        )
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
