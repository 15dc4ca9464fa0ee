"""The `crosslevel` command line.

Every command turns a CrosslevelError into one readable line on stderr and the exit code
of DESIGN.md's contract (3 infeasible, 4 invalid model); anything unexpected is exit 1
with a one-line message (set CROSSLEVEL_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from crosslevel.codegen.command import generate as generate_command
from crosslevel.control.command import adapt_command
from crosslevel.distributed.command import partition_command, run_command, serve_command
from crosslevel.distributed.federated_command import federate_command
from crosslevel.errors import EXIT_INTERNAL, CrosslevelError, UsageError
from crosslevel.model.command import compress_command
from crosslevel.search.command import optimize_command

app = typer.Typer(
    help="Cross-level optimization of deep-learning models for AIoT devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (make demo, CI logs) gets room for the per-layer table instead of 80 columns.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, soft_wrap=True)

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """Map exceptions to one message and an exit code instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CrosslevelError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if os.environ.get("CROSSLEVEL_DEBUG"):
                raise
            err_console.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {exc} "
                "(set CROSSLEVEL_DEBUG=1 for the traceback)",
                highlight=False,
            )
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@app.command()
@clean_errors
def analyze(
    model: Annotated[
        str, typer.Argument(help="A .tflite or .onnx file, or zoo:NAME (see `crosslevel zoo`).")
    ],
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Device from `crosslevel devices`: fit and cost."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    measure: Annotated[
        bool,
        typer.Option(help="Run the real tflite-micro interpreter to measure its arena."),
    ] = True,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Zoo models: analyze the int8 .tflite our PTQ makes."),
    ] = False,
    graph_passes: Annotated[
        bool,
        typer.Option(help="Apply the graph passes to ONNX/zoo models before reporting."),
    ] = True,
    calibration: Annotated[
        Path | None,
        typer.Option(help="calibration.json from `crosslevel calibrate` (device host)."),
    ] = None,
) -> None:
    """Per-layer table, params, flash, MACs and peak activation RAM of a model.

    Peak RAM is shown without reuse, under TensorFlow Lite Micro's greedy planner (restated
    exactly; for .tflite files also measured in tflite-micro) and as the lower bound for the
    file's operator order. With --device: whether it fits, and predicted latency and energy.
    """
    from crosslevel.ir.load import load_model
    from crosslevel.report.analyze import analyze as build_report
    from crosslevel.report.analyze import render

    cal = None
    if calibration is not None:
        from crosslevel.hardware.cost_model import Calibration

        cal = Calibration.load(calibration)
    loaded = load_model(model, int8=int8)
    report = build_report(
        loaded, device=device, measure=measure, graph_passes=graph_passes, calibration=cal
    )
    if as_json:
        print_json(report.to_json())
    else:
        render(report, console)


@app.command()
@clean_errors
def zoo(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the built-in zoo models (use them as zoo:NAME)."""
    from rich.table import Table

    from crosslevel.model.zoo import ZOO

    entries = list(ZOO.values())
    if as_json:
        print_json(
            [
                {
                    "name": e.name,
                    "input_shape": list(e.input_shape),
                    "dataset": e.dataset,
                    "description": e.description,
                }
                for e in entries
            ]
        )
        return
    table = Table(title="zoo models")
    for col in ("name", "input", "data set", "description"):
        table.add_column(col)
    for e in entries:
        shape = "x".join(map(str, e.input_shape))
        table.add_row(e.name, shape, e.dataset or "-", e.description)
    console.print(table)


@app.command()
@clean_errors
def devices(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Your own devices JSON to add.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the device and network-link catalogue (add your own with --file)."""
    from crosslevel.hardware.devices import catalogue_dict, devices_table, links_table, load_devices

    catalogue = load_devices(file)
    if as_json:
        print_json(catalogue_dict(catalogue))
        return
    console.print(devices_table(catalogue))
    console.print(links_table())


@app.command()
@clean_errors
def calibrate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for calibration.json.")] = Path(
        "out/calibrate"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="Four tiny models, seconds (a smoke run).")
    ] = False,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Folder caching the ONNX exports between runs.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Measure this host with ONNX Runtime on zoo variants and fit the cost model.

    Reports the leave-one-out error (each variant predicted by a fit without it) and
    writes OUT/calibration.json, which `analyze --device host --calibration` uses.
    """
    from crosslevel.hardware.calibrate import calibrate_host
    from crosslevel.report.calibration import factors_table, loo_summary, loo_table

    cal = calibrate_host(quick=quick, progress=not as_json, cache_dir=cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    cal.save(out / "calibration.json")
    if as_json:
        print_json(cal.to_dict())
        return
    console.print(loo_table(cal))
    console.print(factors_table(cal))
    console.print(loo_summary(cal))
    console.print(f"wrote {out / 'calibration.json'}")


@app.command()
@clean_errors
def plan(
    model: Annotated[str, typer.Argument(help="A .tflite/.onnx file, zoo:NAME or mlperf:FILE.")],
    strategy: Annotated[
        str,
        typer.Option(
            help="tflm | reorder | optimal | inplace | patch | best (smallest arena proven "
            "by execution)."
        ),
    ] = "best",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/plan"),
    int8: Annotated[bool, typer.Option("--int8", help="Zoo models: plan the int8 PTQ.")] = False,
    time_limit_s: Annotated[float, typer.Option(help="Search time limit in seconds.")] = 10.0,
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Device from `crosslevel devices`: does it fit?"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Plan the activation arena: operator order, offsets and in-place execution, beside
    TFLM's own planner, every chosen plan proven by running the model inside it.

    Writes OUT/plan.json (crosslevel.plan/1), OUT/arena.svg, OUT/result.json and, for a
    .tflite model, OUT/model.tflite: the smallest plan within TFLM's rules (no in-place)
    inside the stock TFLM runtime (metadata OfflineMemoryAllocation), verified by running
    it in tflite-micro.
    """
    from crosslevel.ir.load import load_model
    from crosslevel.memory.strategies import STRATEGIES
    from crosslevel.report.plan_report import plan_report

    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; use {', '.join(STRATEGIES)}")
    result, table = plan_report(load_model(model, int8=int8), strategy, out, time_limit_s, device)
    if as_json:
        print_json(result)
        return
    console.print(table)
    bounds = result["lower_bounds"]
    exact = "exact" if bounds["best_order_exact"] else "bound"
    console.print(
        f"lower bounds for whole tensors: file order {bounds['file_order_peak_bytes']:,} B, "
        f"best order {bounds['best_order_peak_bytes']:,} B ({exact}), largest operator "
        f"{bounds['largest_operator_bytes']:,} B; in-place and depth-first plans go below "
        f"them (floor column); chosen plan: {result['extra_macs']:,} extra MACs"
    )
    fit = result["device_fit"]
    if fit:
        verdict = "[green]fits[/green]" if fit["fits"] else "[red]does not fit[/red]"
        console.print(
            f"{verdict} {fit['device']}: arena {fit['arena_bytes']:,} B of "
            f"{fit['memory_bytes']:,} B working memory"
        )
    check = result["tflm_check"]
    if check is None:
        console.print("not a .tflite model: no TFLM-ready file (the plan is still written)")
    elif check["verified"]:
        console.print(
            f"[green]model.tflite verified in tflite-micro:[/green] head arena "
            f"{check['tflm_head_bytes']:,} B = planned (TFLM's rules), outputs identical on "
            f"{check['inputs_tried']} random inputs"
        )
    else:
        console.print(f"[red]TFLM check failed[/red] ({check}); model.tflite not written")
    console.print(f"wrote {out}/plan.json, arena.svg, result.json")


# ----------------------------------------------------------------------------------
# the commands of the other levels, each defined beside its level (imports stay light:
# heavy libraries load when a command runs, so `crosslevel --help` is quick)
# ----------------------------------------------------------------------------------
LEVEL_COMMANDS: dict[str, Callable[..., Any]] = {
    "compress": compress_command,  # model level
    "generate": generate_command,  # hardware-instruction level
    "partition": partition_command,  # distributed level
    "serve": serve_command,
    "run": run_command,
    "optimize": optimize_command,  # the cross-level search
    "adapt": adapt_command,  # the run-time controller
    "federate": federate_command,  # federated fine-tuning (Flower)
}
for _name, _command in LEVEL_COMMANDS.items():
    app.command(name=_name)(clean_errors(_command))


def main() -> None:  # pragma: no cover - console entry point
    app()
