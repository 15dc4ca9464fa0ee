"""Issue 3's memory table: TFLM's arena beside every crosslevel memory strategy, one run.

For each int8 and float model in ../shared/models/mlperf-tiny/, int8 MobileNetV2 (width
1.0) at 224x224 and 144x144 and the irregularly wired zoo model (int8, seed 0, the
exporter's order as the file's order), all quantized by crosslevel's own PTQ:

* TFLM's head arena, measured in tflite-micro in this run;
* lower bounds: the file order's peak, the best order's peak (our exact search) and the
  largest single-operator footprint;
* our arena per strategy (reorder, optimal: within TFLM's rules; inplace, patch: our
  executor), the floor of the chosen one (what must be live together under its
  techniques), TFLM/ours, extra MACs, planning time;
* proof by execution: the chosen plan run inside its arena by our executor, compared with
  tflite-micro's outputs (int8: bit-exact; float: DESIGN.md's tolerance), and the
  TFLM-ready file (order + offline offsets) run by tflite-micro itself;
* whether rematerialization (``memory/remat.py``) lowers the whole-tensor peak.

    python benchmarks/memory.py [--json] [--skip-224]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from crosslevel.ir.graph import Graph
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.ordering import best_order, largest_operator_footprint
from crosslevel.memory.plan import Plan
from crosslevel.memory.remat import rematerialize
from crosslevel.memory.strategies import plan_strategies
from crosslevel.memory.verify import random_inputs, tflm_ready_file, verify_in_tflm
from crosslevel.model.int8_zoo import zoo_int8
from crosslevel.model.mlperf_tiny import FLOAT_FILES, INT8_FILES, models_dir
from crosslevel.runtime.arena_executor import run_in_arena
from crosslevel.runtime.tflm import measure_tflm_arena, run_tflm

OURS = ("reorder", "optimal", "inplace", "patch")
TARGETS = "gmean TFLM/ours >= 1.5 (goal 2.0) over the five int8 MLPerf files; vww >= 1.8"


def models(skip_224: bool) -> list[tuple[str, bytes]]:
    files = [(name, (models_dir() / name).read_bytes()) for name in (*INT8_FILES, *FLOAT_FILES)]
    resolutions = (144,) if skip_224 else (224, 144)
    for res in resolutions:
        made = zoo_int8("mobilenet_v2", num_calibration=4, resolution=res, width_mult=1.0)
        files.append((f"zoo:mobilenet_v2 1.0 @{res} (int8 PTQ)", made.tflite))
    files.append(("zoo:inception_cells (int8 PTQ, seed 0)", zoo_int8("inception_cells").tflite))
    return files


def chosen(plans: dict[str, Plan]) -> str:
    return min(OURS, key=lambda n: (plans[n].arena_bytes, OURS.index(n)))


def executor_check(data: bytes, graph: Graph, plan: Plan) -> str:
    """Our executor in the plan's arena against tflite-micro on one random input."""
    inputs = random_inputs(graph, np.random.default_rng(0))
    try:
        want = run_tflm(data, inputs)
    except Exception as exc:  # noqa: BLE001 - a model TFLM refuses is reported, not fatal
        return f"TFLM refuses: {str(exc)[:40]}"
    got = run_in_arena(graph, plan, inputs)
    if all(np.issubdtype(w.dtype, np.integer) for w in want):
        return "bit-exact" if all(map(np.array_equal, got, want)) else "DIFFERS"
    worst = max(
        float(np.abs(g - w).max() / max(1.0, np.abs(w).max()))
        for g, w in zip(got, want, strict=True)
    )
    return f"rel {worst:.1e}" + ("" if worst <= 1e-5 else " DIFFERS")


def measure(name: str, data: bytes) -> dict[str, Any]:
    graph = import_tflite(data)
    start = time.perf_counter()
    plans = plan_strategies(graph, time_limit_s=10.0)
    planning_s = time.perf_counter() - start
    best = chosen(plans)
    try:
        tflm: int | None = measure_tflm_arena(data).head_bytes
    except Exception:  # noqa: BLE001 - e.g. hybrid models: TFLM refuses them
        tflm = None
    ready = plans["best"]
    try:
        check = verify_in_tflm(data, tflm_ready_file(graph, ready), graph, ready, n_inputs=1)
        ready_ok = f"{check.tflm_head_bytes:,}" + ("" if check.verified else " FAILED")
    except Exception as exc:  # noqa: BLE001
        ready_ok = f"n/a ({str(exc)[:30]})"
    start = time.perf_counter()
    executed = executor_check(data, graph, plans[best])
    return {
        "model": name,
        "tflm_head": tflm,
        "bound_file_order": plans["tflm"].bounds.peak_live_bytes,
        "bound_best_order": best_order(graph, time_limit_s=5.0).lower_bound_bytes,
        "largest_op": largest_operator_footprint(graph),
        **{f"ours_{n}": plans[n].arena_bytes for n in OURS},
        "chosen": best,
        "floor": plans[best].bounds.peak_live_bytes,
        "arena": plans[best].arena_bytes,
        "ratio": (tflm / plans[best].arena_bytes) if tflm else None,
        "extra_macs": sum(s["extra_macs"] for s in plans[best].patch_stages),
        "planning_s": planning_s,
        "executor": executed,
        "executor_s": time.perf_counter() - start,
        "tflm_ready_head": ready_ok,
        "remat": _remat(graph),
    }


def _remat(graph: Graph) -> str:
    """What rematerialization buys on this model's whole-tensor peak (<= 20% extra MACs)."""
    found = rematerialize(graph)
    if found is None:
        return "no copy pays"
    return f"{found.peak_before_bytes:,} -> {found.peak_after_bytes:,} (+{found.extra_macs:,} MACs)"


def table(rows: list[dict[str, Any]]) -> Table:
    cols = ["model", "TFLM head", "bound file", "bound best order", "largest op"]
    cols += [f"ours {n}" for n in OURS]
    cols += ["chosen", "floor", "TFLM/ours", "extra MACs", "plan s", "our executor",
             "TFLM-ready head", "remat"]  # fmt: skip
    out = Table(title="activation arena (bytes): TFLM vs crosslevel, one run")
    for col in cols:
        out.add_column(col, justify="left" if col in ("model", "chosen") else "right")
    for r in rows:
        out.add_row(
            r["model"],
            f"{r['tflm_head']:,}" if r["tflm_head"] else "refused",
            f"{r['bound_file_order']:,}",
            f"{r['bound_best_order']:,}",
            f"{r['largest_op']:,}",
            *(f"{r[f'ours_{n}']:,}" for n in OURS),
            r["chosen"],
            f"{r['floor']:,}",
            f"{r['ratio']:.2f}x" if r["ratio"] else "-",
            f"{r['extra_macs']}",
            f"{r['planning_s']:.1f}",
            f"{r['executor']} ({r['executor_s']:.0f}s)",
            r["tflm_ready_head"],
            r["remat"],
        )
    return out


def summary(rows: list[dict[str, Any]]) -> str:
    mlperf = [r["ratio"] for r in rows if r["model"] in INT8_FILES]
    geo = math.exp(sum(math.log(x) for x in mlperf) / len(mlperf))
    within = all(r["arena"] <= 1.1 * r["floor"] for r in rows)
    return (
        f"geometric mean TFLM/ours over the five int8 MLPerf Tiny files: {geo:.2f}x; "
        f"every arena within 10% of its floor: {within}. Targets: {TARGETS}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-224", action="store_true", help="leave out MobileNetV2-224")
    args = parser.parse_args()
    rows = []
    for name, data in models(args.skip_224):
        rows.append(measure(name, data))
        if not args.json:
            print(f"measured {name}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    console = Console(width=260)
    console.print(table(rows))
    console.print(summary(rows))


if __name__ == "__main__":
    main()
