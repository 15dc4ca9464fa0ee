"""`crosslevel generate`: C for a model and its memory plan, built on the host and proven.

The command plans the arena (or reads a plan), generates the C library into ``-o OUT``
(``model.c``, ``model.h``, ``cl_kernels.h``, ``main.c``, ``result.json``), compiles it
with the host gcc and runs it beside the reference: TensorFlow Lite Micro for int8
``.tflite`` models (bit-exact), ONNX Runtime for float models (rtol 1e-5). A model the
generator cannot compile exits 4 with the operator and node named.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from crosslevel.codegen.build import (
    GeneratedLibrary,
    ObjectReport,
    build_library,
    inspect_object,
    random_inputs,
    write_sources,
)
from crosslevel.codegen.emit import GeneratedModel, generate_c
from crosslevel.errors import UsageError
from crosslevel.ir.graph import Graph
from crosslevel.ir.load import LoadedModel, load_model
from crosslevel.memory.plan import Plan, load_plan

RESULT_FORMAT = "crosslevel.generate-result/1"
TARGETS = ("host", "cortex-m4", "cortex-m7")
console = Console(width=None if sys.stdout.isatty() else 140)


def prepare_graph(model: LoadedModel) -> Graph:
    """The NHWC graph the generator takes: TFLite graphs as they are; NCHW (ONNX, zoo)
    graphs with BatchNorm folded and activations fused, then converted to NHWC."""
    graph = model.graph
    if graph.layout == "NHWC":
        return graph
    from crosslevel.graph.layout import to_nhwc
    from crosslevel.graph.optimize import optimize_graph

    nhwc = to_nhwc(optimize_graph(graph))
    nhwc.name = graph.name
    return nhwc


def _plan_for(graph: Graph, plan_file: Path | None, time_limit_s: float) -> Plan:
    if plan_file is not None:
        return load_plan(plan_file)
    return generator_plan(graph, time_limit_s)


def generator_plan(graph: Graph, time_limit_s: float = 10.0) -> Plan:
    """The smallest arena of the memory level's strategies that the generator follows
    (in-place pairs, and depth-first stages of the layers ``codegen.stages`` emits row by
    row); `generate` verifies the code it makes from it against the reference runtime."""
    from crosslevel.codegen.stages import stages_supported
    from crosslevel.memory.strategies import plan_strategies

    plans = [p for p in plan_strategies(graph, time_limit_s).values() if stages_supported(graph, p)]
    return min(plans, key=lambda p: p.arena_bytes)


def _resolve(model: str, plan_file: Path | None, int8: bool) -> tuple[str, Path | None, bool]:
    """MODEL may be the folder ``crosslevel plan -o`` wrote: its result.json names the
    model and its plan.json is the plan."""
    folder = Path(model)
    if not folder.is_dir():
        return model, plan_file, int8
    result, plan = folder / "result.json", folder / "plan.json"
    if not (result.is_file() and plan.is_file()):
        raise UsageError(f"{model!r} is a folder without plan.json and result.json")
    try:
        spec = str(json.loads(result.read_text(encoding="utf-8"))["model"])
    except (ValueError, KeyError, TypeError, OSError):
        raise UsageError(f"{result} does not name the planned model") from None
    if spec.endswith(" (int8 PTQ)"):
        spec, int8 = spec.removesuffix(" (int8 PTQ)"), True
    return spec, plan_file or plan, int8


# ----------------------------------------------------------------------------------
# verification against the reference runtime
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    """How many random inputs gave the reference runtime's outputs."""

    reference: str  # "tflite-micro" | "onnxruntime"
    inputs_tried: int
    matched: int
    max_abs_diff: float

    @property
    def ok(self) -> bool:
        return self.matched == self.inputs_tried


def verify(model: LoadedModel, graph: Graph, lib: GeneratedLibrary, count: int = 3) -> Verification:
    """Run ``count`` random inputs through the library and the reference runtime."""
    if (
        model.kind == "tflite"
        and model.file_bytes is not None
        and lib.gen.inputs[0].dtype == "int8"
    ):
        from crosslevel.runtime.tflm import TflmInterpreter

        interp = TflmInterpreter(model.file_bytes)
        return _compare("tflite-micro", lib, interp.run, count, exact=True)
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.runtime.ort import make_session, run_session

    session = make_session(export_onnx(graph))
    return _compare("onnxruntime", lib, lambda xs: run_session(session, xs), count, exact=False)


Reference = Callable[[list[np.ndarray]], Sequence[Any]]  # inputs -> reference outputs


def _compare(
    name: str, lib: GeneratedLibrary, reference: Reference, count: int, exact: bool
) -> Verification:
    """Inputs of seeds 0..count-1 through both; an input matches when every output does
    (bit for bit when ``exact``, else within rtol 1e-5 and the scaled atol)."""
    matched, worst = 0, 0.0
    for seed in range(count):
        xs = random_inputs(lib.gen, seed)
        ok = True
        for ours, ref in zip(lib.run(xs), reference(xs), strict=True):
            ref = np.asarray(ref).reshape(ours.shape)
            worst = max(worst, _max_abs_diff(ours, ref))
            ok &= bool(np.array_equal(ours, ref)) if exact else _close(ours, ref)
        matched += ok
    return Verification(name, count, matched, worst)


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0))


def _close(actual: np.ndarray, ref: np.ndarray) -> bool:
    """The project's float tolerance: rtol 1e-5, atol 1e-5 * max(1, max|ref|)."""
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref), initial=0)))
    return bool(np.allclose(actual, ref, rtol=1e-5, atol=atol))


# ----------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------
def generate_model(
    spec: str,
    out: Path,
    plan_file: Path | None = None,
    int8: bool = False,
    time_limit_s: float = 10.0,
    verify_inputs: int = 3,
    target: str = "host",
    tune: bool = False,
) -> dict[str, Any]:
    """Everything `crosslevel generate` does, returning the result.json object."""
    spec, plan_file, int8 = _resolve(spec, plan_file, int8)
    model = load_model(spec, int8=int8)
    graph = prepare_graph(model)
    plan = _plan_for(graph, plan_file, time_limit_s)
    stem = Path(spec.split(":", 1)[-1]).stem if model.kind == "tflite" else graph.name
    build_dir = out / "build"
    tuning = None
    if tune:
        from crosslevel.codegen.tune import tune_conv_variants

        tuning = tune_conv_variants(graph, plan, build_dir)
    gen = generate_c(graph, plan, name=stem, variants=tuning.choice if tuning else None)
    out.mkdir(parents=True, exist_ok=True)
    write_sources(gen, out)
    lib = build_library(gen, build_dir)
    report = inspect_object(gen, build_dir)
    check = verify(model, graph, lib, verify_inputs)
    result = _result(model, gen, plan, lib, report, check)
    if tuning is not None:
        result["tuning_us_per_run"] = tuning.time_us
    if target != "host":
        result["cross"] = _cross(model, graph, gen, target, build_dir, verify_inputs)
        result["target"] = target
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _cross(
    model: LoadedModel, graph: Graph, gen: GeneratedModel, target: str, build_dir: Path, count: int
) -> dict[str, Any]:
    """Cross-compile for a Cortex-M, run it in QEMU, compare with the host library."""
    from crosslevel.codegen.cross import QEMU_INSTRUCTIONS_PER_TICK, cross_build, run_qemu_counted

    build = cross_build(gen, target, build_dir)
    host = build_library(gen, build_dir)  # cached: verified against the reference above
    same = 0
    instructions = []
    for seed in range(count):
        xs = random_inputs(gen, seed)
        run = run_qemu_counted(build, xs, gen)
        instructions.append(run.instructions)
        same += all(np.array_equal(a, b) for a, b in zip(run.outputs, host.run(xs), strict=True))
    return {
        "target": target,
        "elf": str(build.elf),
        "flash_bytes": build.flash_bytes,
        "ram_bytes": build.ram_bytes,
        "warnings": build.warnings,
        "qemu_inputs_tried": count,
        "qemu_identical_to_host": same,
        "qemu_instructions_per_inference": instructions,  # one per input tried
        "qemu_instructions_how": (
            "guest instructions of one model call counted by QEMU (-icount shift=0, read "
            f"from the MPS2 timer, {QEMU_INSTRUCTIONS_PER_TICK}-instruction resolution); "
            "not cycles of a real core"
        ),
    }


def _result(
    model: LoadedModel,
    gen: GeneratedModel,
    plan: Plan,
    lib: GeneratedLibrary,
    report: ObjectReport,
    check: Verification,
) -> dict[str, Any]:
    return {
        "format": RESULT_FORMAT,
        "model": model.source,
        "target": "host",
        "symbol": gen.symbol,
        "files": [*sorted(gen.files), "result.json"],
        "plan_strategy": plan.strategy,
        "arena_bytes": {"plan": plan.arena_bytes, "compiled": lib.arena_bytes},
        "stack_scratch_bytes": gen.stack_scratch_bytes,
        "object": {
            "text_bytes": report.text_bytes,
            "data_bytes": report.data_bytes,
            "bss_bytes": report.bss_bytes,
            "flash_bytes": report.flash_bytes,
            "warnings": report.warnings,
        },
        "vectorized_loops": report.vectorized,
        "variants": gen.variants,
        "verification": {**check.__dict__, "ok": check.ok},
    }


def _table(result: dict[str, Any]) -> Table:
    table = Table(title=f"generated C for {result['model']} ({result['target']})")
    table.add_column("item")
    table.add_column("value", justify="right")
    arena = result["arena_bytes"]
    obj = result["object"]
    ver = result["verification"]
    table.add_row("arena (plan / compiled)", f"{arena['plan']:,} / {arena['compiled']:,} B")
    table.add_row("host flash (text + data of model.o)", f"{obj['flash_bytes']:,} B")
    table.add_row("gcc warnings", str(len(obj["warnings"])))
    table.add_row("kernels with vectorized loops", ", ".join(sorted(result["vectorized_loops"])))
    word = "bit-exact" if ver["reference"] == "tflite-micro" else "within rtol 1e-5"
    table.add_row(
        f"{ver['reference']} ({word})",
        f"{ver['matched']}/{ver['inputs_tried']} inputs, max |diff| {ver['max_abs_diff']:.3g}",
    )
    return table


def generate(
    model: Annotated[
        str,
        typer.Argument(
            help="A .tflite/.onnx file, zoo:NAME, mlperf:FILE, or a `crosslevel plan -o` folder."
        ),
    ],
    target: Annotated[
        str, typer.Option(help="host | cortex-m4 | cortex-m7 (cross build run in QEMU).")
    ] = "host",
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/generate"),
    plan: Annotated[
        Path | None, typer.Option("--plan", help="A plan.json to follow (default: plan now).")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Zoo models: the int8 PTQ.")] = False,
    time_limit_s: Annotated[float, typer.Option(help="Planning time limit (s).")] = 10.0,
    tune: Annotated[
        bool, typer.Option("--tune", help="Time each int8 conv kernel per layer; keep the best.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Generate a self-contained C99 library for the model and its arena plan, build it
    with gcc and check it against TFLite Micro (int8, bit-exact) or ONNX Runtime (float).

    Writes OUT/model.c, model.h, cl_kernels.h, main.c and result.json (and cl_stages.h,
    the row kernels, when the plan runs its first layers as a depth-first stage).
    """
    if target not in TARGETS:
        raise UsageError(f"target {target!r} is not built yet; available: {', '.join(TARGETS)}")
    with console.status("planning, generating, compiling and verifying..."):
        result = generate_model(model, out, plan, int8, time_limit_s, target=target, tune=tune)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        console.print(_table(result))
        console.print(f"wrote {out}/: {', '.join(result['files'])}")
    cross = result.get("cross")
    if cross is not None and not as_json:
        console.print(
            f"{cross['target']}: flash {cross['flash_bytes']:,} B, RAM {cross['ram_bytes']:,} B; "
            f"QEMU outputs identical to the host build on {cross['qemu_identical_to_host']}/"
            f"{cross['qemu_inputs_tried']} inputs; "
            f"{statistics.median(cross['qemu_instructions_per_inference']):,.0f} instructions "
            "per inference counted by QEMU (median; not real cycles)"
        )
    if not result["verification"]["ok"] or (
        cross is not None and cross["qemu_identical_to_host"] != cross["qemu_inputs_tried"]
    ):
        raise typer.Exit(1)
