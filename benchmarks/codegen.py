"""Generated C (host build, gcc -O3 -march=native) against the tflite-micro interpreter
and LiteRT with XNNPACK, for every int8 MLPerf Tiny model, in one run and one table.

    python benchmarks/codegen.py [--models DIR] [--repeats N] [--rounds R] [--tune] [--json]

Per model: the memory level's smallest plan (in-place pairs included) is generated as C,
compiled, loaded with ctypes and first checked bit-exact against TFLM on 3 random inputs,
every build below (the "bit-exact" column). Latency: all runtimes run the
same input in the same process, in
interleaved rounds; each number is the median over all rounds of ``repeats`` timed calls
(ours: the ctypes call of the model function, its copies of inputs and outputs
included; TFLM and LiteRT: ``invoke()`` after the input is set). "ours portable" is the same
code built with ``-DCL_NO_SIMD`` (no explicit SIMD, only gcc's auto-vectorization), so the
gain of the explicit SIMD kernels (AVX2 / AVX512-VNNI here) shows beside it; "whole-tensor
plan" is the same generator on the file-order plan without in-place pieces or depth-first
stages (larger arena, one kernel call per layer): the latency price of the small arena
shows beside it. LiteRT
(``ai-edge-litert``) runs its default XNNPACK delegate with one thread. Arena: the
compiled static arena vs TFLM's head arena (print_allocations).
Flash: text + data of model.o as ``size`` reports it (weights + code), beside the
.tflite file size; with gcc-arm-none-eabi installed, the Cortex-M7 build's flash
(text + data) and RAM (data + bss) of model.o, its outputs in QEMU (mps2-an500)
compared with the host build, and the guest instructions of one model call counted by
QEMU (``-icount``; instructions, not cycles) with the Arm DSP kernels and without them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from crosslevel.codegen.build import (
    HOST_FLAGS,
    GeneratedLibrary,
    build_library,
    inspect_object,
)
from crosslevel.codegen.c_files import KERNEL_HEADER
from crosslevel.codegen.command import generator_plan, random_inputs
from crosslevel.codegen.emit import generate_c
from crosslevel.codegen.tune import tune_conv_variants
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.plan import make_plan
from crosslevel.model.mlperf_tiny import INT8_FILES, models_dir
from crosslevel.runtime.tflm import TflmInterpreter, measure_tflm_arena


def _median_ms(fn: Any, repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return times


def _litert(data: bytes, xs: list[np.ndarray]) -> Any:
    """A LiteRT interpreter (default XNNPACK delegate, 1 thread) with ``xs`` set."""
    from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    for detail, x in zip(interp.get_input_details(), xs, strict=True):
        interp.set_tensor(detail["index"], x.reshape(detail["shape"]))
    return interp


def _timers(libs: dict[str, GeneratedLibrary], data: bytes, xs: list[np.ndarray]) -> dict[str, Any]:
    tflm = TflmInterpreter(data)
    tflm.run(xs)
    raw = tflm._interp  # invoke() alone: the Python-side input checks are not TFLM's cost
    timers = {name: lib.invoker(xs) for name, lib in libs.items()}
    return {**timers, "tflm": raw.invoke, "litert": _litert(data, xs).invoke}


def bench_model(
    path: Path, cache: Path, repeats: int, rounds: int, tune: bool = False
) -> dict[str, Any]:
    data = path.read_bytes()
    graph = import_tflite(data)
    plan = generator_plan(graph, time_limit_s=4.0)  # in-place plans included
    choice = tune_conv_variants(graph, plan, cache).choice if tune else None
    gen = generate_c(graph, plan, name=path.stem, variants=choice)
    lib = build_library(gen, cache)
    portable = build_library(gen, cache, (*HOST_FLAGS, "-DCL_NO_SIMD"))
    # the same model on a plan without in-place pieces or stages: whole-tensor kernel calls
    whole = build_library(generate_c(graph, make_plan(graph), name=path.stem), cache)
    builds = {"ours": lib, "portable": portable, "whole_plan": whole}
    obj = inspect_object(gen, cache)
    tflm = TflmInterpreter(data)
    exact = all(
        np.array_equal(a, r.reshape(a.shape))
        for xs in (random_inputs(gen, s) for s in range(3))
        for b in builds.values()
        for a, r in zip(b.run(xs), tflm.run(xs), strict=True)
    )
    xs = random_inputs(gen, 0)
    timers = _timers(builds, data, xs)
    samples: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(rounds):
        for name, fn in timers.items():
            samples[name] += _median_ms(fn, repeats)
    lat = {k: float(np.median(v)) for k, v in samples.items()}
    return {
        "model": path.name,
        "bit_exact": exact,
        "latency_ms": lat,
        "speedup_vs_tflm": lat["tflm"] / lat["ours"],
        "ours_over_litert": lat["ours"] / lat["litert"],
        "whole_plan_over_litert": lat["whole_plan"] / lat["litert"],
        "simd_speedup": lat["portable"] / lat["ours"],
        "arena_bytes": {
            "ours": lib.arena_bytes,
            "plan": plan.arena_bytes,
            "tflm_head": measure_tflm_arena(data).head_bytes,
        },  # fmt: skip
        "flash_bytes": {"ours_text_data": obj.flash_bytes, "tflite_file": len(data)},
        "stack_scratch_bytes": gen.stack_scratch_bytes,
        "cortex_m7": _cortex_m7(gen, lib, cache),
        "vectorized_loops": portable.log.vectorized,
        "variants": sorted(set(gen.variants.values())),
    }


def _cortex_m7(gen: Any, lib: GeneratedLibrary, cache: Path) -> dict[str, Any] | None:
    """Footprint of the Cortex-M7 build, its outputs in QEMU against the host build, and
    the guest instructions of one model call with the Arm DSP kernels and without them
    (the same sources with ``CL_NO_SIMD`` defined first in the kernel header)."""
    from crosslevel.codegen.cross import cross_build, missing_tools, run_qemu_counted

    if missing_tools():
        return None
    header = gen.files[KERNEL_HEADER]
    portable = dataclasses.replace(
        gen, files={**gen.files, KERNEL_HEADER: "#define CL_NO_SIMD 1\n" + header}
    )
    xs = random_inputs(gen, 1)
    host = lib.run(xs)
    result: dict[str, Any] = {"qemu_same": True}
    for label, variant in (("dsp", gen), ("portable", portable)):
        build = cross_build(variant, "cortex-m7", cache)
        run = run_qemu_counted(build, xs, variant)
        same = all(np.array_equal(a, b) for a, b in zip(run.outputs, host, strict=True))
        result["qemu_same"] &= same
        result[f"instructions_{label}"] = run.instructions
        if label == "dsp":
            result.update(flash_bytes=build.flash_bytes, ram_bytes=build.ram_bytes)
    return result


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="generated C (host, gcc -O3 -march=native) vs tflite-micro and LiteRT "
              "(XNNPACK, 1 thread), int8 MLPerf Tiny; latency: medians of all timed runs",
              box=box.MARKDOWN)  # fmt: skip
    cols = ["model", "bit-exact", "ours ms", "ours portable ms", "SIMD gain", "TFLM ms",
            "TFLM / ours", "LiteRT ms", "ours / LiteRT", "whole-tensor plan ms", "whole / LiteRT",
            "arena ours", "arena TFLM", "flash host", ".tflite", "M7 flash", "M7 RAM",
            "M7 kinstr DSP", "M7 kinstr portable", "QEMU=host"]  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        lat, arena, flash = r["latency_ms"], r["arena_bytes"], r["flash_bytes"]
        cells = [r["model"], "yes" if r["bit_exact"] else "NO", f"{lat['ours']:.3f}",
                 f"{lat['portable']:.3f}", f"{r['simd_speedup']:.2f}x", f"{lat['tflm']:.3f}",
                 f"{r['speedup_vs_tflm']:.1f}x", f"{lat['litert']:.3f}",
                 f"{r['ours_over_litert']:.2f}x", f"{lat['whole_plan']:.3f}",
                 f"{r['whole_plan_over_litert']:.2f}x"]  # fmt: skip
        cells += [f"{arena['ours']:,}", f"{arena['tflm_head']:,}",
                  f"{flash['ours_text_data']:,}", f"{flash['tflite_file']:,}"]  # fmt: skip
        m7 = r["cortex_m7"]
        cells += [f"{m7['flash_bytes']:,}", f"{m7['ram_bytes']:,}",
                  f"{m7['instructions_dsp'] / 1e3:,.0f}",
                  f"{m7['instructions_portable'] / 1e3:,.0f}",
                  "yes" if m7["qemu_same"] else "NO"] if m7 else ["-"] * 5  # fmt: skip
        t.add_row(*cells)
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tune", action="store_true", help="per-layer measured conv kernels")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = args.models or models_dir()
    console = Console(width=400)
    rows = []
    with tempfile.TemporaryDirectory(prefix="crosslevel-bench-codegen-") as tmp:
        for name in INT8_FILES:
            with console.status(f"{name}: plan, generate, compile, verify, time"):
                rows.append(
                    bench_model(folder / name, Path(tmp), args.repeats, args.rounds, args.tune)
                )
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    console.print(table(rows))
    vec: dict[str, int] = {}
    for r in rows:
        for k, v in r["vectorized_loops"].items():
            vec[k] = vec.get(k, 0) + v
    console.print("kernels with loops gcc vectorized in the portable builds (-fopt-info-vec, "
                  "summed over models): "
                  + ", ".join(f"{k} ({v})" for k, v in sorted(vec.items())))  # fmt: skip


if __name__ == "__main__":
    main()
