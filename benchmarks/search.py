"""Cross-level vs single-level search at the same trial budget, one run, one table.

On the built-in default of `crosslevel optimize` (digits_cnn on scikit-learn digits,
target stm32g031k8: 8 KiB SRAM, 64 KiB flash, where the unoptimized float model fits
neither), five searches per sampler seed, each with the same trial budget: the joint
space (model, graph, memory and operator levels) and each level alone (the others at
their unoptimized setting: the float model as exported, no graph pass, TFLM's planner,
the C generator's default kernels).

How budgets are counted: a trial is one distinct combination of the accuracy-changing
knobs (the model level's), i.e. at most one exact evaluation (fine-tuning over the data
seeds); every search gets the same number of trials. Within a trial the accuracy-preserving
knobs (graph, memory, operator) are chosen by an inner search that builds each of their
combinations analytically (no fine-tuning; they cannot change accuracy) and keeps the
non-dominated points; those analytic evaluations are counted separately ("analytic") and
so are the points kept ("points"). A preserving level searched alone has a single trial
(nothing to fine-tune), whose inner search is its whole search. Per search:

* hypervolume of (predicted latency, peak RAM, flash) over the measured points that meet
  the device's limits and lose at most 1 pp of accuracy (accuracy over 3 data seeds), with
  the fixed reference point "unoptimized model's objectives x 1.1";
* the share of the single-level search's feasible points that a point of the joint search
  dominates or equals (all four objectives).

Fine-tuned results are deterministic per knob combination, so the three searches and the
seeds share one evaluation cache (what differs is which combinations each search visits).

    python benchmarks/search.py [--budget 16] [--seeds 0,1,2] [--data-seeds 3] [--epochs 4]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from crosslevel.hardware.devices import get_device
from crosslevel.search.defaults import DEFAULT_DATA, DEFAULT_DEVICE, DEFAULT_MODEL
from crosslevel.search.levels import ModelLevel
from crosslevel.search.objectives import device_demands
from crosslevel.search.optimize import preserving_levels
from crosslevel.search.space import Space
from crosslevel.search.study import (
    Evaluator,
    Record,
    Settings,
    accuracy_tolerance,
    front_hypervolume,
    run_search,
)


def share_dominated(single: list[Record], joint: list[Record]) -> float | None:
    """Share of the single-level feasible points some joint feasible point dominates or
    equals (None when the single-level search found no feasible point)."""
    pts = [r.values for r in single if r.measured and r.feasible]
    best = [r.values for r in joint if r.measured and r.feasible]
    if not pts:
        return None
    hit = sum(any(all(b <= p for b, p in zip(q, v, strict=True)) for q in best) for v in pts)
    return hit / len(pts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data-seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sampler", default="nsga2")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    device = get_device(DEFAULT_DEVICE)
    demands = device_demands(device)
    model = ModelLevel(DEFAULT_MODEL, DEFAULT_DATA, seeds=args.data_seeds, epochs=args.epochs)
    joint = Space(preserving_levels(model, None))
    spaces = {"joint": joint, **{f"{lv.name} only": joint.restricted([lv.name])
                                 for lv in joint.levels}}  # fmt: skip
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    for seed in (int(s) for s in args.seeds.split(",")):
        found: dict[str, Any] = {}
        for name, space in spaces.items():
            settings = Settings(budget=args.budget, sampler=args.sampler, seed=seed)
            res = run_search(space, Evaluator(space, demands, device), settings, {"b": name})
            found[name] = res
        base = found["joint"].baseline
        for name, res in found.items():
            rows.append({
                "seed": seed, "search": name, "trials": res.evaluated_total,
                "measured": res.measured_this_run, "analytic": res.analytic_this_run,
                "points": len(res.records),
                "feasible": sum(r.feasible for r in res.records),
                "hypervolume": front_hypervolume(res.records, base, demands),
                "dominated_by_joint": None if name == "joint"
                else share_dominated(res.records, found["joint"].records),
            })  # fmt: skip
    elapsed = time.monotonic() - start
    if args.json:
        print(json.dumps({"rows": rows, "elapsed_s": elapsed}, indent=2))
        return
    print_table(rows, args, accuracy_tolerance(demands), elapsed)


def print_table(rows: list[dict[str, Any]], args: Any, tol: float, elapsed: float) -> None:
    table = Table(
        title=f"{DEFAULT_MODEL} on {DEFAULT_DATA}, {DEFAULT_DEVICE}: hypervolume at "
        f"a budget of {args.budget} trials (exact evaluations) per search ({args.sampler})"
    )
    for col in ("seed", "search", "trials", "measured", "analytic", "points", "feasible",
                "hypervolume", "vs joint",
                "single-level points dominated by joint"):  # fmt: skip
        table.add_column(col, justify="left" if col == "search" else "right")
    joint = {r["seed"]: r["hypervolume"] for r in rows if r["search"] == "joint"}
    wins = True
    for r in rows:
        ratio = r["hypervolume"] / joint[r["seed"]] if joint[r["seed"]] else float("nan")
        if r["search"] != "joint":
            wins &= r["hypervolume"] < joint[r["seed"]]
        share = r["dominated_by_joint"]
        table.add_row(
            str(r["seed"]), r["search"], str(r["trials"]), str(r["measured"]),
            str(r["analytic"]), str(r["points"]), str(r["feasible"]),
            f"{r['hypervolume']:.4g}", f"{ratio:.3f}",
            "-" if share is None else f"{share:.0%}",
        )  # fmt: skip
    console = Console(width=140)
    console.print(table)
    console.print(
        f"feasible: meets 8 KiB RAM and 64 KiB flash, accuracy drop <= {tol} pp (mean of "
        f"{args.data_seeds} data seeds, {args.epochs} fine-tuning epochs); reference point: "
        "unoptimized (latency, RAM, flash) x 1.1; joint hypervolume larger than every "
        f"single-level one on every seed: {'yes' if wins else 'NO'}; {elapsed:.0f} s"
    )


if __name__ == "__main__":
    main()
