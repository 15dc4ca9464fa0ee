"""Generated C for depth-first (patch) stages: the first layers (convolutions, pools, ADD,
PAD, a final global pool) run row by row through the plan's line buffers, bit-exact with
TFLite Micro and the arena executor, in the plan's arena (smaller than the in-place
plan's), each step confined by ASan to the rows it reads and writes; bad stages are
refused; the Cortex-M7 build runs them in QEMU."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from crosslevel.codegen.build import GeneratedLibrary, build_library
from crosslevel.codegen.command import prepare_graph, random_inputs
from crosslevel.codegen.cross import missing_tools
from crosslevel.codegen.emit import GeneratedModel, generate_c
from crosslevel.ir.graph import Graph
from crosslevel.ir.load import LoadedModel, load_model
from crosslevel.memory.depth_first import build_stage, stage_pair
from crosslevel.memory.plan import InvalidPlanError, Plan, make_plan
from crosslevel.runtime.arena_executor import run_in_arena

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (host C compiler)")

# the models whose memory-level plan chooses a stage: convs and pools (digits), a residual
# ADD (resnet8), depthwise layers ending in a streamed global pool (kws), stride 2 (vww)
# and MobileNetV2 (the MCUNetV2 case, test-sized) whose stage walks through PAD operators
MODELS = {  # zoo models last: gcc builds the others while they are quantized
    "resnet8": ("mlperf:pretrainedResnet_quant.tflite", False),
    "kws": ("mlperf:kws_ref_model.tflite", False),
    "vww": ("mlperf:vww_96_int8.tflite", False),
    "digits": ("zoo:digits_cnn", True),
    "mobilenet_v2": ("zoo:mobilenet_v2", True),
}


def _load(spec: str, int8: bool) -> LoadedModel:
    if spec != "zoo:mobilenet_v2":
        return load_model(spec, int8=int8)
    from crosslevel.ir.tflite_io import import_tflite
    from crosslevel.model.int8_zoo import zoo_int8

    made = zoo_int8("mobilenet_v2", num_calibration=2, resolution=32, width_mult=0.35)
    return LoadedModel(import_tflite(made.tflite), spec, "tflite", made.tflite)


@dataclass
class Staged:
    model: LoadedModel
    graph: Graph
    plan: Plan
    inplace_arena_bytes: int
    gen: GeneratedModel
    lib: GeneratedLibrary


def _build(model: LoadedModel, cache: Path) -> Staged:
    graph = prepare_graph(model)
    plan = make_plan(graph, time_limit_s=2.0, inplace=True, depth_first=True)
    inplace = make_plan(graph, time_limit_s=2.0, inplace=True)
    gen = generate_c(graph, plan)
    return Staged(model, graph, plan, inplace.arena_bytes, gen, build_library(gen, cache))


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Staged]:
    cache = tmp_path_factory.mktemp("stages")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(_build, _load(spec, int8), cache)
            for key, (spec, int8) in MODELS.items()
        }
        return {key: fut.result() for key, fut in futures.items()}


@pytest.mark.parametrize("key", MODELS)
def test_stage_code_is_bit_exact_in_the_plans_smaller_arena(
    staged: dict[str, Staged], key: str
) -> None:
    from crosslevel.runtime.tflm import TflmInterpreter

    s = staged[key]
    assert len(s.plan.patch_stages) == 1
    assert s.lib.arena_bytes == s.plan.arena_bytes < s.inplace_arena_bytes
    layers = s.plan.patch_stages[0]["layers"]
    assert all(s.gen.variants[name].endswith("row-stage") for name in layers)
    assert s.model.file_bytes is not None
    interp = TflmInterpreter(s.model.file_bytes)
    for seed in range(2):
        xs = random_inputs(s.gen, seed)
        ours = s.lib.run(xs)
        for a, ref, arena in zip(ours, interp.run(xs), run_in_arena(s.graph, s.plan, xs),
                                 strict=True):  # fmt: skip
            np.testing.assert_array_equal(a, ref.reshape(a.shape))
            np.testing.assert_array_equal(a, arena.reshape(a.shape))


def test_stage_walks_through_pads(staged: dict[str, Staged]) -> None:
    """MobileNetV2 as crosslevel exports it: PyTorch's padding of stride-2 layers becomes
    PAD operators, which its stage walks row by row (bit-exact above)."""
    s = staged["mobilenet_v2"]
    layers = set(s.plan.patch_stages[0]["layers"])
    assert "PAD" in {n.op for n in s.graph.nodes if n.name in layers}


def test_row_kernels_are_warning_free_and_vectorized(staged: dict[str, Staged]) -> None:
    vectorized = set()
    for key, s in staged.items():
        assert s.lib.log.warnings == [], (key, s.lib.log.warnings)
        vectorized |= {k for k in s.lib.log.vectorized if k.startswith("cl_row_")}
    assert {"cl_row_maxpool_s8", "cl_row_sum_s8"} <= vectorized


# every row kernel's SIMD path beside the native build's: the row GEMMs (1x1: kws, im2col
# with windows read in place: resnet8), direct and depthwise (vww), short rows (kws: 5)
SIMD_PATHS = {"portable": ("-DCL_NO_SIMD",), "avx2": ("-mno-avx512f",)}


@pytest.mark.parametrize("key", ["resnet8", "kws", "vww"])
def test_row_kernels_agree_on_every_simd_path(
    staged: dict[str, Staged], key: str, tmp_path: Path
) -> None:
    """The portable (``-DCL_NO_SIMD``) and AVX2-only builds of a stage give the native
    build's outputs (bit-exact with TFLM above), warning-free; gcc vectorizes the portable
    depthwise row kernel, which explicit SIMD replaces on the host. The native SIMD code
    under the ASan step checker (every byte but a step's rows poisoned) runs clean."""
    from crosslevel.codegen.build import HOST_FLAGS, run_process, write_sources

    s = staged[key]
    xs = random_inputs(s.gen, 7)
    native = s.lib.run(xs)
    for name, extra in SIMD_PATHS.items():
        lib = build_library(s.gen, tmp_path, (*HOST_FLAGS, *extra))
        assert lib.log.warnings == [], (name, lib.log.warnings)
        for a, b in zip(lib.run(xs), native, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
        if name == "portable" and key == "kws":
            assert "cl_row_dwconv_s8" in lib.log.vectorized
    folder = write_sources(s.gen, tmp_path / "asan")
    asan = ("-O1", "-fsanitize=address", "-DCL_ASAN_CHECK", "-o", "checker", "main.c", "model.c")
    subprocess.run(["gcc", *HOST_FLAGS, *asan, "-lm"], cwd=folder, check=True, capture_output=True)
    code, outs, err = run_process(folder / "checker", s.gen, xs)
    assert code == 0, err[-2000:]
    for a, b in zip(outs, native, strict=True):
        np.testing.assert_array_equal(a, b)


def test_asan_confines_each_step_to_its_rows(staged: dict[str, Staged], tmp_path: Path) -> None:
    """Debug build: at every step of a stage, every arena byte but the rows it reads and
    the row (or accumulator) it writes is poisoned. The stage code runs clean; with the
    first step's output row left 16 bytes short, ASan aborts it."""
    from crosslevel.codegen.build import build_asan_checker, run_process

    for key in ("digits", "kws"):  # conv and pool rows; depthwise rows into a global pool
        s = staged[key]
        xs = random_inputs(s.gen, 0)
        code, outs, err = run_process(build_asan_checker(s.gen, tmp_path), s.gen, xs)
        assert code == 0, (key, err[-2000:])
        np.testing.assert_array_equal(outs[0], s.lib.run(xs)[0])
    source = staged["digits"].gen.files["model.c"]
    case = source.index("case 0: {")
    match = re.compile(r"CL_UNPOISON\((.+), (\d+)\);").search(source, case)
    assert match is not None
    shrunk = f"CL_UNPOISON({match.group(1)}, {int(match.group(2)) - 16});"
    broken_c = source[: match.start()] + shrunk + source[match.end() :]
    gen = staged["digits"].gen
    broken = dataclasses.replace(gen, files={**gen.files, "model.c": broken_c})
    code, _, err = run_process(build_asan_checker(broken, tmp_path), broken, xs)
    assert code != 0 and "use-after-poison" in err


def _with_stage(plan: Plan, **changes: object) -> Plan:
    return dataclasses.replace(plan, patch_stages=[{**plan.patch_stages[0], **changes}])


def _moved(plan: Plan, name: str, offset: int) -> Plan:
    def move(bufs: list) -> list:  # type: ignore[type-arg]
        return [dataclasses.replace(b, offset=offset) if b.id == name else b for b in bufs]

    return dataclasses.replace(plan, tensors=move(plan.tensors), scratch=move(plan.scratch))


def test_unsafe_stages_are_refused(staged: dict[str, Staged]) -> None:
    """Stage plans the C code would follow into wrong rows fail with one clear error."""
    s = staged["resnet8"]
    stage = s.plan.patch_stages[0]
    short = {t: rows - (rows >= 3) for t, rows in stage["rings"].items()}
    with pytest.raises(InvalidPlanError, match="line buffer .* keeps 2 rows; its stage needs 3"):
        generate_c(s.graph, _with_stage(s.plan, rings=short))
    with pytest.raises(InvalidPlanError, match="not a prefix"):
        generate_c(s.graph, _with_stage(s.plan, layers=stage["layers"][1:]))
    rings = [b for b in s.plan.scratch if b.id.startswith("ring:")]
    with pytest.raises(InvalidPlanError, match="overlap"):
        generate_c(s.graph, _moved(s.plan, rings[1].id, rings[0].offset))
    with pytest.raises(InvalidPlanError, match="names no stage"):
        generate_c(s.graph, dataclasses.replace(s.plan, patch_stages=[]))
    v = staged["vww"]
    vs = v.plan.patch_stages[0]
    by_name = {n.name: n for n in v.graph.nodes}
    stage = build_stage(v.graph, [by_name[name] for name in vs["layers"]])
    low = stage_pair(v.graph, stage, 16).min_delta_bytes  # output at least this far below
    source = next(b for b in v.plan.tensors if b.id == vs["source"])
    with pytest.raises(InvalidPlanError, match="overwrite source rows"):
        generate_c(v.graph, _moved(v.plan, vs["output"], source.offset - low + 16))


def test_cli_generates_a_patch_plan_folder(tmp_path: Path) -> None:
    """`crosslevel plan --strategy patch -o DIR` then `crosslevel generate DIR`."""
    from typer.testing import CliRunner

    from crosslevel.cli import app

    runner = CliRunner()
    args = ["plan", "mlperf:kws_ref_model.tflite", "--strategy", "patch", "--time-limit-s", "1"]
    planned = runner.invoke(app, [*args, "-o", str(tmp_path / "p")])
    assert planned.exit_code == 0, planned.output
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["patch_stages"]
    result = runner.invoke(app, ["generate", str(tmp_path / "p"), "-o", str(tmp_path / "g"),
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["verification"]["ok"] and data["verification"]["max_abs_diff"] == 0
    assert data["arena_bytes"]["compiled"] == plan["arena_bytes"]
    assert "cl_stages.h" in data["files"] and (tmp_path / "g" / "cl_stages.h").is_file()


@pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")
def test_patch_plan_runs_in_qemu_bit_exact(staged: dict[str, Staged], tmp_path: Path) -> None:
    """The kws stage on Cortex-M7 in QEMU equals TFLM and, counted in instructions by
    QEMU, costs no more than the in-place (tensor-level) plan's code."""
    from crosslevel.codegen.cross import cross_build, run_qemu_counted
    from crosslevel.runtime.tflm import TflmInterpreter

    s = staged["kws"]
    assert s.model.file_bytes is not None
    xs = random_inputs(s.gen, 1)
    run = run_qemu_counted(cross_build(s.gen, "cortex-m7", tmp_path), xs, s.gen)
    ref = TflmInterpreter(s.model.file_bytes).run(xs)
    np.testing.assert_array_equal(run.outputs[0], ref[0].reshape(run.outputs[0].shape))
    tensor_level = generate_c(s.graph, make_plan(s.graph, time_limit_s=2.0, inplace=True))
    baseline = run_qemu_counted(cross_build(tensor_level, "cortex-m7", tmp_path), xs, tensor_level)
    assert 0 < run.instructions <= baseline.instructions
