"""`crosslevel optimize`: search every level jointly for a device and demands."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crosslevel.search.defaults import DEFAULT_DEVICE
from crosslevel.search.objectives import LABELS, OBJECTIVES
from crosslevel.search.optimize import Outcome, Request, optimize, prepare
from crosslevel.search.study import Settings


def front_table(outcome: Outcome) -> Table:
    """The Pareto front (measured points) with the demands each point meets."""
    result = outcome.result
    limits = list(outcome.demands.limits())
    table = Table(title=f"Pareto front: {result['model']} on {result['device']['name']}")
    table.add_column("knobs", justify="left")
    for name in OBJECTIVES:
        table.add_column(LABELS[name], justify="right")
    table.add_column("host ms (measured)", justify="right")
    for name in limits:
        table.add_column(f"meets {LABELS[name].split(' (')[0]}", justify="center")
    for row in [result["baseline"], *result["front"]]:
        objs = row["objectives"]
        cells = [
            f"{objs['accuracy_drop_pp']:.2f}", f"{objs['latency_ms']:.3f}",
            f"{int(objs['peak_ram_bytes']):,}", f"{int(objs['flash_bytes']):,}",
        ]  # fmt: skip
        host = row["figures"].get("host_latency_ms")
        meets = row.get("meets") or result["baseline_meets"]
        marks = ["[green]yes[/green]" if meets[n] else "[red]no[/red]" for n in limits]
        chosen = row.get("trial") == result["chosen"]["trial"]
        knobs = " ".join(f"{k.split('.')[-1]}={v}" for k, v in row["params"].items())
        knobs = "unoptimized" if row is result["baseline"] else knobs
        table.add_row(
            ("* " if chosen else "") + knobs,
            *cells,
            f"{host:.4f}" if host else "-",
            *marks,
            style="bold green" if chosen else None,
        )
    return table


def optimize_command(
    model: Annotated[
        str | None,
        typer.Argument(
            help="zoo:NAME (with --data: all levels), a .tflite/.onnx file or "
            "mlperf:FILE (memory level only). Default: digits_cnn on digits."
        ),
    ] = None,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            "-d",
            help="Target from `crosslevel devices` or stm32g031k8 (8 KiB SRAM, 64 KiB flash).",
        ),
    ] = DEFAULT_DEVICE,
    max_latency_ms: Annotated[
        float | None, typer.Option(help="Latency limit on the device (predicted), ms.")
    ] = None,
    max_ram_kb: Annotated[float | None, typer.Option(help="Peak RAM limit, KiB.")] = None,
    max_flash_kb: Annotated[float | None, typer.Option(help="Flash limit, KiB.")] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="Accuracy drop limit, percentage points.")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="digits | mnist1d | basic_motions.")
    ] = None,
    budget: Annotated[
        int,
        typer.Option(
            help="Trials (study total): distinct combinations of the accuracy-changing knobs, "
            "one fine-tuning each; each trial picks the accuracy-preserving knobs by a cheap "
            "analytic inner search."
        ),
    ] = 24,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="Stop asking new trials after S s.")
    ] = None,
    study: Annotated[
        Path | None, typer.Option("--study", help="SQLite file: the search resumes from it.")
    ] = None,
    sampler: Annotated[str, typer.Option(help="nsga2 | tpe.")] = "nsga2",
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    seeds: Annotated[int, typer.Option(help="Seeds per accuracy (>= 3).")] = 3,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs per pass in the search.")] = 4,
    ablation_budget: Annotated[
        int | None,
        typer.Option(help="Trials per single-level search (default half the budget; 0: none)."),
    ] = None,
    max_variants: Annotated[
        int, typer.Option(help="Front points in variants.json (the chosen one first).")
    ] = 6,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/optimize"),
    cache_dir: Annotated[
        Path | None, typer.Option(help="Baseline cache (default ~/.cache/crosslevel).")
    ] = None,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="Evaluate trials on a local Ray cluster (2 CPUs) started here."),
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option("--ray-address", help="Evaluate trials on the Ray cluster at ADDR (joined)."),
    ] = None,
    edge: Annotated[
        str | None,
        typer.Option(
            help="Also search a device/edge split: the edge device (with --link); latency, "
            "RAM and flash become the split's (predicted; device part exact)."
        ),
    ] = None,
    link: Annotated[
        str | None, typer.Option(help="Link between device and edge (`crosslevel devices`).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print result.json.")] = False,
) -> None:
    """Search the model, graph, memory and operator levels jointly for a device and demands.

    The driver holds the study; with --ray or --ray-address, Ray workers evaluate trials.

    Prints the Pareto front and the demands each point meets; writes OUT/report.html,
    OUT/result.json, OUT/variants.json and the chosen point's OUT/model.onnx,
    OUT/plan.json and (int8, verified in tflite-micro) OUT/model.tflite. Exit code 3 when
    no point meets the demands (the hardest demand and the nearest points are named).
    """
    import torch

    # One intra-op thread: tiny models on a shared 2-core machine (see model/command.py).
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    settings = Settings(budget=budget, time_budget_s=time_budget, sampler=sampler, seed=seed,
                        study_path=study)  # fmt: skip
    settings.validate()
    req = Request(
        model=model, data=data, device=device, max_latency_ms=max_latency_ms,
        max_ram_kib=max_ram_kb, max_flash_kib=max_flash_kb,
        max_accuracy_drop_pp=max_accuracy_drop, settings=settings, seeds=seeds,
        epochs=epochs, ablation_budget=ablation_budget, cache_dir=cache_dir,
        max_variants=max_variants, ray=ray, ray_address=ray_address, edge=edge, link=link,
    )  # fmt: skip
    outcome = _run(req, out, show=not as_json)
    if as_json:
        typer.echo(json.dumps(outcome.result, indent=2, default=str))
        return
    _print(outcome, out)


def _run(req: Request, out: Path, show: bool) -> Outcome:
    prepared = prepare(req)  # usage errors before the progress bar appears
    if not show:
        return optimize(prepared, out)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("{task.fields[stage]}"))  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("search", total=req.settings.budget, stage="")

        def step(done: int, total: int, stage: str) -> None:
            bar.update(task, completed=done, total=total, stage=stage)

        return optimize(prepared, out, step)


def _print(outcome: Outcome, out: Path) -> None:
    console = Console(width=None if sys.stdout.isatty() else 160)
    result: dict[str, Any] = outcome.result
    console.print(front_table(outcome))
    s = result["search"]
    console.print(
        f"{s['evaluated_total']} trials of the accuracy-changing knobs evaluated "
        f"({s['evaluated_this_run']} this run, {s['measured_this_run']} measured, the rest "
        f"stopped by the analytic stage; {s['analytic_this_run']} analytic evaluations of the "
        f"preserving knobs in their inner searches; {s['points_total']} points) in "
        f"{s['trials_total']} Optuna trials, {s['elapsed_s']:.1f} s, stopped by "
        f"{s['stopped_by']}", highlight=False,
    )  # fmt: skip
    hv = result["hypervolume"]
    parts = [f"joint {hv['joint']:.4g}"] + [
        f"{name} only {value:.4g}" for name, value in hv["single_level"].items()
    ]
    console.print(f"hypervolume (latency, RAM, flash): {', '.join(parts)}", highlight=False)
    chosen = result["chosen"]
    tflm = chosen["tflm_check"]
    console.print(
        f"chosen: {chosen['figures'].get('model_label')} + "
        f"{chosen['figures'].get('memory_strategy')}"
        f" plan; arena run verified: {chosen['arena_check']['verified']}; model.tflite: "
        + ("verified in tflite-micro" if tflm and tflm["verified"] else "not written (float or "
           "not verified)"), highlight=False,
    )  # fmt: skip
    for note in result["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {', '.join(str(out / f) for f in outcome.written)}", highlight=False)


__all__ = ["optimize_command", "front_table"]
