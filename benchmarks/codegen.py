"""Generated C (host build, gcc -O3 -march=native) against the tflite-micro interpreter,
for every int8 MLPerf Tiny model, in one run and one table.

    python benchmarks/codegen.py [--models DIR] [--repeats N] [--rounds R] [--tune] [--json]

Per model: the memory level's smallest plan (in-place pairs included) is generated as C,
compiled, loaded with ctypes and first checked bit-exact against TFLM on 3 random inputs
(the "bit-exact" column). Latency: both runtimes run the same input in the same process, in
interleaved rounds; each number is the median over all rounds of ``repeats`` timed calls
(ours: the ctypes call of the model function, its copies of inputs and outputs
included; TFLM: ``invoke()`` after the input is set). Arena: the compiled static arena
vs TFLM's head arena (print_allocations).
Flash: text + data of model.o as ``size`` reports it (weights + code), beside the
.tflite file size; with gcc-arm-none-eabi installed, the Cortex-M7 build's flash
(text + data) and RAM (data + bss) of model.o, and its outputs in QEMU (mps2-an500)
compared with the host build. LiteRT (``ai-edge-litert``) with XNNPACK is added when
installed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from crosslevel.codegen.build import GeneratedLibrary, build_library, inspect_object
from crosslevel.codegen.command import generator_plan, random_inputs
from crosslevel.codegen.emit import generate_c
from crosslevel.codegen.tune import tune_conv_variants
from crosslevel.ir.tflite_io import import_tflite
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


def _litert(data: bytes) -> Any | None:
    """A LiteRT interpreter with XNNPACK (1 thread), or None when not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]
    except ImportError:
        return None
    interp = Interpreter(model_content=data, num_threads=1)
    interp.allocate_tensors()
    return interp


def _timers(lib: GeneratedLibrary, data: bytes, xs: list[np.ndarray]) -> dict[str, Any]:
    tflm = TflmInterpreter(data)
    tflm.run(xs)
    raw = tflm._interp  # invoke() alone: the Python-side input checks are not TFLM's cost
    timers = {"ours": lib.invoker(xs), "tflm": raw.invoke}
    lite = _litert(data)
    if lite is not None:
        lite.set_tensor(lite.get_input_details()[0]["index"], xs[0])
        timers["litert"] = lite.invoke
    return timers


def bench_model(
    path: Path, cache: Path, repeats: int, rounds: int, tune: bool = False
) -> dict[str, Any]:
    data = path.read_bytes()
    graph = import_tflite(data)
    plan = generator_plan(graph, time_limit_s=4.0)  # in-place plans included
    choice = tune_conv_variants(graph, plan, cache).choice if tune else None
    gen = generate_c(graph, plan, name=path.stem, variants=choice)
    lib = build_library(gen, cache)
    obj = inspect_object(gen, cache)
    tflm = TflmInterpreter(data)
    exact = all(
        all(
            np.array_equal(a, r.reshape(a.shape))
            for a, r in zip(lib.run(xs), tflm.run(xs), strict=True)
        )
        for xs in (random_inputs(gen, s) for s in range(3))
    )
    xs = random_inputs(gen, 0)
    timers = _timers(lib, data, xs)
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
        "arena_bytes": {
            "ours": lib.arena_bytes,
            "plan": plan.arena_bytes,
            "tflm_head": measure_tflm_arena(data).head_bytes,
        },  # fmt: skip
        "flash_bytes": {"ours_text_data": obj.flash_bytes, "tflite_file": len(data)},
        "stack_scratch_bytes": gen.stack_scratch_bytes,
        "cortex_m7": _cortex_m7(gen, lib, cache),
        "vectorized_loops": lib.log.vectorized,
        "variants": sorted(set(gen.variants.values())),
    }


def _cortex_m7(gen: Any, lib: GeneratedLibrary, cache: Path) -> dict[str, Any] | None:
    from crosslevel.codegen.cross import cross_build, missing_tools, run_qemu

    if missing_tools():
        return None
    build = cross_build(gen, "cortex-m7", cache)
    xs = random_inputs(gen, 1)
    same = all(
        np.array_equal(a, b) for a, b in zip(run_qemu(build, xs, gen), lib.run(xs), strict=True)
    )
    return {"flash_bytes": build.flash_bytes, "ram_bytes": build.ram_bytes, "qemu_same": same}


def table(rows: list[dict[str, Any]]) -> Table:
    lite = any("litert" in r["latency_ms"] for r in rows)
    t = Table(title="generated C (host, gcc -O3 -march=native) vs tflite-micro, int8 MLPerf Tiny")
    cols = ["model", "bit-exact", "ours ms", "TFLM ms", "speed-up"]
    cols += ["LiteRT ms"] if lite else []
    cols += ["arena ours", "arena TFLM", "flash host", ".tflite", "M7 flash", "M7 RAM", "QEMU=host"]
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")
    for r in rows:
        lat, arena, flash = r["latency_ms"], r["arena_bytes"], r["flash_bytes"]
        cells = [r["model"], "yes" if r["bit_exact"] else "NO", f"{lat['ours']:.3f}",
                 f"{lat['tflm']:.3f}", f"{r['speedup_vs_tflm']:.1f}x"]  # fmt: skip
        cells += [f"{lat['litert']:.3f}" if "litert" in lat else "-"] if lite else []
        cells += [f"{arena['ours']:,}", f"{arena['tflm_head']:,}",
                  f"{flash['ours_text_data']:,}", f"{flash['tflite_file']:,}"]  # fmt: skip
        m7 = r["cortex_m7"]
        cells += [f"{m7['flash_bytes']:,}", f"{m7['ram_bytes']:,}",
                  "yes" if m7["qemu_same"] else "NO"] if m7 else ["-", "-", "-"]  # fmt: skip
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
    console = Console(width=160)
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
    console.print("kernels with loops gcc vectorized (-fopt-info-vec, summed over models): "
                  + ", ".join(f"{k} ({v})" for k, v in sorted(vec.items())))  # fmt: skip


if __name__ == "__main__":
    main()
