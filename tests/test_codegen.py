"""Generated C (hardware-instruction level): bit-exact with TFLite Micro on every real int8
model and on quantized zoo models, within rtol 1e-5 of ONNX Runtime on float models, the
compiled arena equal to the plan's, warning-free C99, clear errors on bad models.

Each model is generated and compiled once per session (``-O3 -march=native``) into a
session tmp folder; the TFLM and ONNX Runtime references run on the same random inputs.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from crosslevel.codegen.build import (
    BASE_FLAGS,
    HOST_FLAGS,
    GeneratedLibrary,
    build_library,
    run_generated,
)
from crosslevel.codegen.command import prepare_graph, random_inputs
from crosslevel.codegen.emit import GeneratedModel, generate_c
from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.ir.load import LoadedModel, load_model
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.memory.plan import InvalidPlanError, Plan, make_plan
from crosslevel.model.mlperf_tiny import INT8_FILES

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (host C compiler)")

FLOAT_FILES = ("ad01_fp32.tflite", "pretrainedResnet.tflite")
INT8_ZOO = ("mnist1d_cnn", "imu_cnn")
FLOAT_ZOO = ("inception_cells", "ds_cnn")
RANDOM_INPUTS = 4


@dataclass
class Built:
    model: LoadedModel
    graph: Graph
    plan: Plan
    gen: GeneratedModel
    lib: GeneratedLibrary


def _build(model: LoadedModel, cache: Path) -> Built:
    """File order, in-place pairs where they save bytes (``memory.inplace``)."""
    graph = prepare_graph(model)
    plan = make_plan(graph, inplace=True)
    gen = generate_c(graph, plan)
    return Built(model, graph, plan, gen, build_library(gen, cache))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Every model of this file generated and compiled once (two gcc at a time)."""
    cache = tmp_path_factory.mktemp("codegen")
    specs: dict[str, tuple[str, bool]] = {f: (f"mlperf:{f}", False) for f in INT8_FILES}
    specs.update({f: (f"mlperf:{f}", False) for f in FLOAT_FILES})
    specs.update({f"zoo-int8:{z}": (f"zoo:{z}", True) for z in INT8_ZOO})
    specs.update({f"zoo:{z}": (f"zoo:{z}", False) for z in FLOAT_ZOO})
    # loading (torch, PTQ) stays in this thread; gcc runs in parallel subprocesses
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            key: pool.submit(_build, load_model(spec, int8=int8), cache)
            for key, (spec, int8) in specs.items()
        }
        return {key: fut.result() for key, fut in futures.items()}


# ----------------------------------------------------------------------------------
# int8: bit-exact with TFLite Micro
# ----------------------------------------------------------------------------------
def _assert_bit_exact(b: Built) -> None:
    from crosslevel.runtime.tflm import TflmInterpreter

    assert b.model.file_bytes is not None
    interp = TflmInterpreter(b.model.file_bytes)
    for seed in range(RANDOM_INPUTS):
        xs = random_inputs(b.gen, seed)
        ours, ref = b.lib.run(xs), interp.run(xs)
        assert len(ours) == len(ref)
        for a, r in zip(ours, ref, strict=True):
            assert a.dtype == np.int8
            np.testing.assert_array_equal(a, r.reshape(a.shape))


@pytest.mark.parametrize("name", INT8_FILES)
def test_mlperf_int8_bit_exact_with_tflm(built: dict[str, Built], name: str) -> None:
    _assert_bit_exact(built[name])


@pytest.mark.parametrize("name", INT8_ZOO)
def test_zoo_int8_bit_exact_with_tflm(built: dict[str, Built], name: str) -> None:
    _assert_bit_exact(built[f"zoo-int8:{name}"])


def test_outputs_depend_on_inputs(built: dict[str, Built]) -> None:
    """A generated model that ignored its input would pass equality with a constant."""
    b = built["pretrainedResnet_quant.tflite"]
    outs = {b.lib.run(random_inputs(b.gen, s))[0].tobytes() for s in range(RANDOM_INPUTS)}
    assert len(outs) > 1


# ----------------------------------------------------------------------------------
# float: within rtol 1e-5 of ONNX Runtime
# ----------------------------------------------------------------------------------
def _assert_close(actual: np.ndarray, ref: np.ndarray) -> None:
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(actual, ref, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("name", FLOAT_FILES)
def test_mlperf_float_matches_onnxruntime(built: dict[str, Built], name: str) -> None:
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.runtime.ort import run_onnx

    b = built[name]
    onnx_model = export_onnx(b.graph)
    for seed in range(RANDOM_INPUTS):
        xs = random_inputs(b.gen, seed)
        _assert_close(b.lib.run(xs)[0], run_onnx(onnx_model, xs)[0])


@pytest.mark.parametrize("name", FLOAT_ZOO)
def test_zoo_float_matches_onnxruntime_on_the_nchw_original(
    built: dict[str, Built], name: str
) -> None:
    """The NCHW zoo graph (BN unfused) in ONNX Runtime vs our NHWC generated C."""
    from crosslevel.graph.layout import to_graph_layout
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.runtime.ort import run_onnx

    b = built[f"zoo:{name}"]
    original = b.model.graph
    assert original.layout == "NCHW"
    onnx_model = export_onnx(original)
    rng = np.random.default_rng(7)
    for _ in range(2):
        x = rng.standard_normal(original.tensor(original.inputs[0]).shape).astype(np.float32)
        ours = b.lib.run([to_graph_layout(b.graph, b.graph.inputs[0], x)])[0]
        _assert_close(ours, run_onnx(onnx_model, [x])[0])


def test_float_depth_first_stages_match_onnxruntime(
    built: dict[str, Built], tmp_path: Path
) -> None:
    """Float stages run row by row too: inception cells (convolutions, max pools, a
    channel concatenation per row) and ResNet-8 (residual ADDs, a global pool summed in
    float64 row by row), within DESIGN.md's tolerance of ONNX Runtime."""
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.runtime.ort import run_onnx

    for key in ("zoo:inception_cells", "pretrainedResnet.tflite"):
        b = built[key]
        plan = make_plan(b.graph, time_limit_s=2.0, inplace=True, depth_first=True)
        assert plan.patch_stages and plan.arena_bytes < b.plan.arena_bytes, key
        gen = generate_c(b.graph, plan)
        lib = build_library(gen, tmp_path)
        assert lib.arena_bytes == plan.arena_bytes
        onnx_model = export_onnx(b.graph)
        for seed in range(2):
            xs = random_inputs(gen, seed)
            _assert_close(lib.run(xs)[0], run_onnx(onnx_model, xs)[0])


# ----------------------------------------------------------------------------------
# memory and build properties
# ----------------------------------------------------------------------------------
def test_compiled_arena_equals_the_plan(built: dict[str, Built]) -> None:
    for key, b in built.items():
        assert b.lib.arena_bytes == b.plan.arena_bytes == b.gen.arena_bytes, key


# TFLM's head arena for these files (measured in tflite-micro, the models' README)
TFLM_HEAD = {
    "kws_ref_model.tflite": 16_000,
    "pretrainedResnet_quant.tflite": 49_152,
    "vww_96_int8.tflite": 73_728,
    "str_ww_ref_model.tflite": 6_656,
}


def test_in_place_code_runs_below_tflm_arena(built: dict[str, Built]) -> None:
    """The bit-exact runs above used in-place plans: outputs overwrite consumed inputs
    (row and pixel pieces, forward and reverse), so the arena is far below TFLM's."""
    for name, tflm_head in TFLM_HEAD.items():
        b = built[name]
        assert b.plan.inplace, name
        assert any("in-place" in v for v in b.gen.variants.values()), name
        assert b.lib.arena_bytes < 0.75 * tflm_head, (name, b.lib.arena_bytes)
    kinds = {v for b in built.values() for v in b.gen.variants.values() if "in-place" in v}
    assert any("reverse" in v for v in kinds) and any("row" in v for v in kinds)
    assert any("pixel" in v for v in kinds) and any("element" in v for v in kinds)


def test_generated_code_follows_another_plan(built: dict[str, Built], tmp_path: Path) -> None:
    """str_ww with a plan that places every tensor apart in reverse order: other offsets and
    another arena size, the same bits (the code addresses what the plan says)."""
    b = built["str_ww_ref_model.tflite"]
    placed, offset = [], 0
    for buf in reversed(b.plan.tensors):
        placed.append(dataclasses.replace(buf, offset=offset))
        offset += buf.size_bytes
    plan = dataclasses.replace(b.plan, tensors=placed, arena_bytes=offset, inplace=[], scratch=[])
    assert plan.offsets != b.plan.offsets
    gen = generate_c(b.graph, plan)
    lib = build_library(gen, tmp_path)
    assert lib.arena_bytes == offset > b.plan.arena_bytes
    for seed in range(2):
        xs = random_inputs(b.gen, seed)
        np.testing.assert_array_equal(lib.run(xs)[0], b.lib.run(xs)[0])
    assert "cl_arena + 0)" in gen.files["model.c"]


def test_run_generated_executor(built: dict[str, Built]) -> None:
    b = built["ad01_int8.tflite"]
    cache = b.lib.path.parent.parent  # the session's build cache: no second compile
    xs = random_inputs(b.gen, 5)
    ours = run_generated(b.graph, xs, b.plan, cache_dir=cache)
    np.testing.assert_array_equal(ours[0], b.lib.run(xs)[0])


# kernel -> a small model whose code calls it
VECTORIZED_KERNELS = {
    "cl_gemv_s8": "zoo-int8:mnist1d_cnn",
    "cl_conv_s8_direct": "zoo-int8:mnist1d_cnn",
    "cl_requant_row": "zoo-int8:mnist1d_cnn",
    "cl_dwconv_s8": "kws_ref_model.tflite",
    "cl_avgpool_s8": "kws_ref_model.tflite",
    "cl_add_s8": "pretrainedResnet_quant.tflite",
    "cl_conv_f32": "zoo:ds_cnn",
    "cl_dwconv_f32": "zoo:ds_cnn",
    "cl_fc_f32": "ad01_fp32.tflite",
    "cl_maxpool_f32": "zoo:inception_cells",
}


def test_warning_free_and_vectorized(built: dict[str, Built], tmp_path: Path) -> None:
    """Every host build (``gcc -std=c99 -O3 -Wall -Wextra -march=native``) is warning-free
    and gcc's ``-fopt-info-vec`` reports the kernels' inner loops vectorized: in these
    builds, or (a kernel an explicit SIMD path replaces here) in the portable code
    (``-DCL_NO_SIMD``) of a small model calling it."""
    vectorized: dict[str, int] = {}
    for key, b in built.items():
        assert b.lib.log.warnings == [], (key, b.lib.log.warnings)
        for kernel, loops in b.lib.log.vectorized.items():
            vectorized[kernel] = vectorized.get(kernel, 0) + loops
    keys = {key for kernel, key in VECTORIZED_KERNELS.items() if kernel not in vectorized}
    flags = (*HOST_FLAGS, "-DCL_NO_SIMD")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for log in pool.map(lambda k: build_library(built[k].gen, tmp_path, flags).log, keys):
            assert log.warnings == []
            for kernel, loops in log.vectorized.items():
                vectorized[kernel] = vectorized.get(kernel, 0) + loops
    for kernel in VECTORIZED_KERNELS:
        assert vectorized.get(kernel, 0) >= 1, (kernel, vectorized)
    variants = {v for b in built.values() for v in b.gen.variants.values()}
    assert {"1x1-gemm", "im2col-gemm", "direct", "depthwise"} <= variants


def test_no_malloc_and_const_weights(built: dict[str, Built]) -> None:
    source = built["kws_ref_model.tflite"].gen.files["model.c"]
    assert "malloc" not in source and "static const int8_t" in source
    assert f"static uint8_t cl_arena[{built['kws_ref_model.tflite'].plan.arena_bytes}]" in source


def test_plain_c99_object_and_test_main(built: dict[str, Built], tmp_path: Path) -> None:
    """Plain ``gcc -std=c99 -O3 -Wall -Wextra -Werror -c`` (no target flags) compiles the
    library; the generated main reads raw inputs from a file and writes raw outputs; the
    object's sizes put the weights in text (flash) and the arena in bss."""
    from crosslevel.codegen.build import object_sizes, write_sources

    b = built["ad01_int8.tflite"]
    src = write_sources(b.gen, tmp_path / "src")
    flags = [*BASE_FLAGS, "-Werror"]
    for unit in ("model.c", "main.c"):
        subprocess.run(["gcc", *flags, "-c", unit], cwd=src, check=True)
    text, data, bss = object_sizes(src / "model.o")
    weights = sum(t.nbytes for t in b.graph.constants())
    assert text > weights and bss >= b.plan.arena_bytes and data == 0
    exe = src / "model_main"
    subprocess.run(["gcc", "-o", str(exe), "main.o", "model.o", "-lm"], cwd=src, check=True)
    xs = random_inputs(b.gen, 3)
    (tmp_path / "in.bin").write_bytes(b"".join(x.tobytes() for x in xs))
    subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True)
    got = np.frombuffer((tmp_path / "out.bin").read_bytes(), dtype=np.int8)
    np.testing.assert_array_equal(got, b.lib.run(xs)[0].reshape(-1))
    bad = subprocess.run([str(exe), str(tmp_path / "missing.bin"), "x"], check=False)
    assert bad.returncode == 3


# ----------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------
def test_hybrid_model_is_refused_naming_the_operator() -> None:
    """kws float32 has int8 weights on float activations (dynamic-range quantization)."""
    model = load_model("mlperf:kws_ref_model_float32.tflite")
    with pytest.raises(UnsupportedOperatorError) as info:
        generate_c(model.graph, make_plan(model.graph))
    assert info.value.op == "CONV_2D" and info.value.node == model.graph.nodes[0].name


def test_unsupported_operator_is_named(built: dict[str, Built]) -> None:
    graph = built["ad01_fp32.tflite"].graph.copy()
    first = graph.nodes[0]
    old = first.outputs[0]
    src = graph.tensors[old]
    graph.tensors["sig"] = Tensor("sig", src.shape, src.dtype)
    graph.nodes.insert(1, Node("my_logistic", "LOGISTIC", [old], ["sig"]))
    graph.nodes[2].inputs[0] = "sig"
    with pytest.raises(UnsupportedOperatorError) as info:
        generate_c(graph, make_plan(graph))
    assert info.value.op == "LOGISTIC" and info.value.node == "my_logistic"
    assert "LOGISTIC" in str(info.value) and "my_logistic" in str(info.value)


def test_corrupt_model_file_is_an_invalid_model(models_dir: Path) -> None:
    data = (models_dir / "ad01_int8.tflite").read_bytes()
    for broken in (data[: len(data) // 3], data[:8] + bytes(200), b"TFL3" * 10):
        with pytest.raises(InvalidModelError):
            import_tflite(broken)


def test_plan_of_another_model_is_refused(built: dict[str, Built]) -> None:
    with pytest.raises(InvalidPlanError):
        generate_c(built["kws_ref_model.tflite"].graph, built["ad01_int8.tflite"].plan)


def test_wrong_input_shape_is_refused(built: dict[str, Built]) -> None:
    with pytest.raises(InvalidModelError):
        built["ad01_int8.tflite"].lib.run([np.zeros(10, dtype=np.int8)])


def test_asan_poisoned_arena_catches_out_of_plan_access(
    built: dict[str, Built], tmp_path: Path
) -> None:
    """Debug build: before each operator every arena byte outside its planned inputs,
    outputs and chunk buffer is poisoned. The in-place str_ww code runs clean (and equal);
    the same code with one operator's input region unpoisoned 16 bytes short aborts."""
    from crosslevel.codegen.build import build_asan_checker, run_process

    for key in ("zoo-int8:mnist1d_cnn", "zoo-int8:imu_cnn", "str_ww_ref_model.tflite"):
        b = built[key]  # in-place PAD/conv/pool columns, depthwise rows, 1x1 pixels
        assert b.plan.inplace, key
        xs = random_inputs(b.gen, 0)
        code, outs, err = run_process(build_asan_checker(b.gen, tmp_path), b.gen, xs)
        assert code == 0, (key, err[-2000:])
        np.testing.assert_array_equal(outs[0], b.lib.run(xs)[0])
    source = b.gen.files["model.c"]
    first = source.index("CL_POISON_ALL(); CL_UNPOISON(")
    start = source.index("CL_UNPOISON(", first) + len("CL_UNPOISON(")
    off, length = source[start : source.index(")", start)].split(", ")
    shrunk = source[:start] + f"{off}, {int(length) - 16}" + source[source.index(")", start) :]
    broken = dataclasses.replace(b.gen, files={**b.gen.files, "model.c": shrunk})
    code, _, err = run_process(build_asan_checker(broken, tmp_path), broken, xs)
    assert code != 0 and "use-after-poison" in err


def test_measured_kernel_tuning_keeps_bits(built: dict[str, Built], tmp_path: Path) -> None:
    """Per-layer tuning times both int8 convolution kernels of every layer (-DCL_PROFILE)
    and keeps the faster; whatever it picks stays bit-exact with TFLite Micro."""
    from crosslevel.codegen.tune import tune_conv_variants
    from crosslevel.runtime.tflm import TflmInterpreter

    b = built["zoo-int8:mnist1d_cnn"]
    tuning = tune_conv_variants(b.graph, b.plan, tmp_path, runs=5)
    convs = {n.name for n in b.graph.nodes if n.op == "CONV_2D"}
    assert set(tuning.choice) == convs
    for name, times in tuning.time_us.items():
        assert set(times) == {"direct", "gemm"} and all(t >= 0 for t in times.values())
        assert tuning.choice[name] == min(times, key=lambda k: times[k])
    gen = generate_c(b.graph, b.plan, variants=tuning.choice)
    lib = build_library(gen, tmp_path)
    assert b.model.file_bytes is not None
    interp = TflmInterpreter(b.model.file_bytes)
    for seed in range(2):
        xs = random_inputs(gen, seed)
        np.testing.assert_array_equal(lib.run(xs)[0], interp.run(xs)[0])
    forced = generate_c(b.graph, b.plan, variants={n: "direct" for n in convs})
    assert all(forced.variants[n].startswith("direct") for n in convs)
