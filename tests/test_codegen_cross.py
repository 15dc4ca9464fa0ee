"""Cortex-M builds of the generated C: warning-free, footprint from the ELF, and the two
smallest real int8 models run in QEMU (MPS2 AN386 / AN500) bit-exact with TFLite Micro."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosslevel.codegen.command import random_inputs
from crosslevel.codegen.cross import cross_build, missing_tools, run_qemu, run_qemu_counted
from crosslevel.codegen.emit import generate_c
from crosslevel.ir.load import load_model
from crosslevel.ir.ops import node_macs
from crosslevel.memory.plan import make_plan
from crosslevel.runtime.tflm import TflmInterpreter

pytestmark = pytest.mark.skipif(
    bool(missing_tools()),
    reason=f"needs {', '.join(missing_tools())} (apt-get install gcc-arm-none-eabi "
    "libnewlib-arm-none-eabi qemu-system-arm)",
)
CODE_ALLOWANCE_BYTES = 30 * 1024  # the flash target: .tflite size + 30 KB of code


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("ad01_int8.tflite", "cortex-m7"),
        ("str_ww_ref_model.tflite", "cortex-m7"),
        ("str_ww_ref_model.tflite", "cortex-m4"),
    ],  # fmt: skip
)
def test_qemu_run_is_bit_exact_with_tflm(name: str, target: str, tmp_path: Path) -> None:
    model = load_model(f"mlperf:{name}")
    assert model.file_bytes is not None
    plan = make_plan(model.graph, inplace=True)  # in-place pairs for str_ww
    gen = generate_c(model.graph, plan)
    build = cross_build(gen, target, tmp_path)
    assert build.warnings == []
    assert build.ram_bytes >= plan.arena_bytes  # the arena is in bss
    assert build.flash_bytes <= len(model.file_bytes) + CODE_ALLOWANCE_BYTES
    interp = TflmInterpreter(model.file_bytes)
    for seed in range(2):
        xs = random_inputs(gen, seed)
        ours, ref = run_qemu(build, xs, gen), interp.run(xs)
        np.testing.assert_array_equal(ours[0], ref[0].reshape(ours[0].shape))


def test_cli_generate_for_cortex_m7_runs_in_qemu(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from crosslevel.cli import app

    args = ["generate", "mlperf:ad01_int8.tflite", "--target", "cortex-m7", "-o", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--json", "--time-limit-s", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    cross = data["cross"]
    assert data["target"] == "cortex-m7" and data["verification"]["ok"]
    assert cross["qemu_identical_to_host"] == cross["qemu_inputs_tried"] == 3
    assert cross["ram_bytes"] >= data["arena_bytes"]["plan"] and cross["warnings"] == []
    counts = cross["qemu_instructions_per_inference"]
    assert len(counts) == 3 and min(counts) > 0 and "QEMU" in cross["qemu_instructions_how"]


def test_qemu_instruction_count_is_deterministic_and_grows_with_the_model(
    tmp_path: Path,
) -> None:
    counts, macs = {}, {}
    for name in ("ad01_int8.tflite", "str_ww_ref_model.tflite"):
        graph = load_model(f"mlperf:{name}").graph
        gen = generate_c(graph, make_plan(graph, inplace=True))
        build = cross_build(gen, "cortex-m7", tmp_path / name)
        xs = random_inputs(gen, 0)
        first, second = run_qemu_counted(build, xs, gen), run_qemu_counted(build, xs, gen)
        assert first.instructions == second.instructions > 0
        counts[name] = first.instructions
        macs[name] = sum(node_macs(graph, node) for node in graph.nodes)
    small, big = sorted(counts, key=macs.__getitem__)
    assert macs[big] > macs[small] and counts[big] > counts[small]
    # an int8 MAC takes at least half an instruction (SMLAD does two); 40 per MAC is far
    # above what the kernels need: outside these bounds the count is not of the model call
    assert macs[big] / 2 <= counts[big] < 40 * macs[big]
