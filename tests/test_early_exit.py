"""Early exits: multi-exit digits_cnn on real digits, its ONNX segments, runtime, manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.ir.torch_io import export_torch_onnx
from crosslevel.model import zoo
from crosslevel.model.baselines import Baseline, trained_baseline
from crosslevel.model.exits import (
    NEVER_EXIT,
    MultiExit,
    backbone_blocks,
    build_multi_exit,
    calibrate_thresholds,
    exit_logits,
    export_multi_exit,
    load_exit_heads,
    onnx_macs,
    parse_exits,
    save_exit_heads,
    train_exit_heads,
)
from crosslevel.model.train import TrainConfig
from crosslevel.runtime.early_exit import (
    MANIFEST_NAME,
    EarlyExitRunner,
    chosen_exits,
    load_manifest,
    max_softmax,
)
from crosslevel.runtime.ort import run_onnx

runner_cli = CliRunner()


def _close(got: np.ndarray, ref: np.ndarray) -> bool:
    """DESIGN.md's float tolerance."""
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    return bool(np.allclose(got, ref, rtol=1e-5, atol=atol))


class Built:
    def __init__(self, base: Baseline, multi: MultiExit, folder: Path) -> None:
        self.base, self.multi, self.folder = base, multi, folder
        self.full_onnx = export_torch_onnx(base.module, (1, *base.data.input_shape))
        self.x = base.data.x_test[:40]
        self.y = base.data.y_test[:40]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """digits_cnn trained 2 epochs, early heads after blocks 0 and 1 trained 2 epochs."""
    base = trained_baseline("digits_cnn", "digits", seed=0, epochs=2, use_cache=False)
    torch.manual_seed(0)
    multi = build_multi_exit(base.module, base.data.input_shape, 10, "0,1")
    train_exit_heads(multi, base.data, TrainConfig(epochs=2, seed=0))
    folder = tmp_path_factory.mktemp("exits")
    export_multi_exit(multi, "digits_cnn", base.data.input_shape, 10, folder)
    return Built(base, multi, folder)


def _full_logits(built: Built) -> np.ndarray:
    return np.concatenate([run_onnx(built.full_onnx, [s[None]])[0] for s in built.x])


def test_never_confident_gives_the_full_model(built: Built) -> None:
    runner = EarlyExitRunner(load_manifest(built.folder))
    assert runner.manifest.thresholds[:-1] == [NEVER_EXIT, NEVER_EXIT]  # as exported
    full = _full_logits(built)
    for thresholds in (None, [1.0 + 1e-9, 5.0, 0.7]):
        answers = [runner.run(s[None], thresholds) for s in built.x]
        assert all(a.exit_index == 2 for a in answers)
        got = np.concatenate([a.logits for a in answers])
        assert _close(got, full)
        assert np.array_equal(np.argmax(got, axis=1), np.argmax(full, axis=1))


def test_segment_chain_equals_full_model_and_macs_add_up(built: Built) -> None:
    manifest = load_manifest(built.folder)
    chain = exit_logits(EarlyExitRunner(manifest), built.x)
    assert chain.shape == (3, 40, 10)
    assert _close(chain[-1], _full_logits(built))
    with torch.no_grad():  # every exit's ONNX chain follows the PyTorch multi-exit model
        torch_exits = built.multi.forward_all(torch.from_numpy(built.x))
    for k in range(3):
        assert _close(chain[k], torch_exits[k].numpy()), k
    early_heads = sum(s.exit.macs for s in manifest.stages[:-1])
    assert manifest.macs_to_exit()[-1] - early_heads == onnx_macs(built.full_onnx)
    assert manifest.macs_to_exit()[0] < manifest.macs_to_exit()[1] < manifest.macs_to_exit()[2]


def test_zero_thresholds_answer_at_the_first_exit(built: Built) -> None:
    runner = EarlyExitRunner(load_manifest(built.folder))
    chain = exit_logits(runner, built.x)
    for i, sample in enumerate(built.x):
        answer = runner.run(sample[None], [0.0, 0.0, 0.0])
        assert answer.exit_index == 0
        assert np.array_equal(answer.logits[0], chain[0, i])
        assert answer.confidence == pytest.approx(float(max_softmax(chain[0, i])))


def test_calibration_keeps_accuracy_and_the_runtime_follows_it(built: Built) -> None:
    runner = EarlyExitRunner(load_manifest(built.folder))
    logits = exit_logits(runner, built.x)
    full_correct = int(np.sum(np.argmax(logits[-1], axis=1) == built.y))
    for max_drop in (0.0, 0.05):
        thresholds = calibrate_thresholds(logits, built.y, max_drop)
        chosen = chosen_exits(max_softmax(logits), thresholds)
        picked = np.argmax(logits[chosen, np.arange(40)], axis=1)
        assert int(np.sum(picked == built.y)) >= full_correct - int(max_drop * 40 + 1e-9)
        ran = [runner.run(s[None], thresholds).exit_index for s in built.x]
        assert ran == chosen.tolist()
    everything = calibrate_thresholds(logits, built.y, 1.0)  # any loss allowed: all leave
    assert np.all(chosen_exits(max_softmax(logits), everything) == 0)


def test_heads_checkpoint_round_trip(built: Built, tmp_path: Path) -> None:
    path = tmp_path / "heads.npz"
    save_exit_heads(built.multi, path, {"model": "digits_cnn"})
    fresh = build_multi_exit(built.base.module, (1, 8, 8), 10, "0,1")
    load_exit_heads(fresh, path)
    x = torch.from_numpy(built.x)
    with torch.no_grad():
        assert torch.equal(fresh.forward_all(x)[0], built.multi.forward_all(x)[0])
    other = build_multi_exit(built.base.module, (1, 8, 8), 10, "1")
    with pytest.raises(InvalidModelError, match="exits after blocks"):
        load_exit_heads(other, path)


def test_backbones_of_other_zoo_models() -> None:
    torch.manual_seed(0)
    for name, blocks in (("ds_cnn", 9), ("resnet8", 4), ("mnist1d_cnn", 3)):
        entry = zoo.ZOO[name]
        found, _ = backbone_blocks(zoo.build(name), entry.input_shape)
        assert len(found) == blocks, name
    assert parse_exits("auto", 9) == [2, 5] and parse_exits("0.5,0", 4) == [0, 1]
    for name in ("tiny_transformer", "fc_autoencoder"):
        with pytest.raises(UsageError, match="head"):
            backbone_blocks(zoo.build(name), zoo.ZOO[name].input_shape)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--exits", "2"], "block 2 of a 3-block backbone"),
        (["--exits", "-1"], "block -1"),
        (["--exits", "abc"], "neither a block index nor a fraction"),
        (["--exits", "1.5"], "neither a block index nor a fraction"),
        (["--exits", "nan"], "neither a block index nor a fraction"),
        (["--exits", "0,0.2"], "same block"),
        (["--exits", "0,"], "neither a block index nor a fraction"),
        (["--exits", "0", "--prune", "0.5"], "does not combine with --prune"),
        (["--max-drop", "2"], "--max-drop applies to --exits only"),
        (["--exits", "0", "--max-drop", "-1"], "--max-drop must be in"),
    ],
)
def test_bad_exits_arguments_exit_2_with_one_line(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    args = ["compress", "digits_cnn", "--data", "digits", *extra, "-o", str(tmp_path / "o")]
    result = runner_cli.invoke(app, [*args, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_compress_exits_cli_end_to_end(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["compress", "digits_cnn", "--data", "digits", "--exits", "auto", "--seeds", "1"]
    args += ["--baseline-epochs", "2", "--epochs", "2", "-o", str(out), "--cache-dir", str(cache)]
    result = runner_cli.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "result.json").read_text())
    assert doc == json.loads(result.stdout) and doc["format"] == "crosslevel.compress_exits/1"
    assert [e["after_block"] for e in doc["exits"]] == [0, 1, 2]
    assert sum(e["share"]["mean"] for e in doc["exits"]) == pytest.approx(1.0)
    assert doc["early_exit"]["avg_macs"]["mean"] <= doc["exits"][-1]["macs_to_exit"]
    assert doc["full"]["latency_ms"] > 0 and doc["early_exit"]["latency_ms"] > 0
    assert doc["chain_max_abs_diff"] <= 1e-4
    manifest = load_manifest(out)
    assert manifest.thresholds == [e["threshold"] for e in doc["exits"]]
    for name in doc["files"]:
        assert (out / name).is_file(), name


# --------------------------------------------------------------------------- hostile manifests


def _copy(built: Built, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "m"
    shutil.copytree(built.folder, folder)
    return folder, json.loads((folder / MANIFEST_NAME).read_text())


def _break(doc: dict[str, Any], how: str, tmp_path: Path) -> Any:
    stage = doc["stages"][0]
    if how == "parent path":
        stage["segment"]["file"] = "../segment_0.onnx"
    elif how == "absolute path":
        stage["exit"]["file"] = str(tmp_path / "m" / "exit_0.onnx")
    elif how == "symlink out":
        shutil.copy(tmp_path / "m" / "exit_0.onnx", tmp_path / "outside.onnx")
        os.symlink(tmp_path / "outside.onnx", tmp_path / "m" / "link.onnx")
        stage["exit"]["file"] = "link.onnx"
    elif how == "missing segment":
        del stage["segment"]
    elif how == "missing macs":
        del stage["exit"]["macs"]
    elif how == "nan threshold":
        return json.dumps(doc).replace('"threshold": 2.0', '"threshold": NaN', 1)
    elif how == "negative threshold":
        stage["threshold"] = -0.5
    elif how == "no stages":
        doc["stages"] = []
    elif how == "blocks out of order":
        doc["stages"][1]["after_block"] = 0
    elif how == "wrong format":
        doc["format"] = "crosslevel.early_exit/9"
    elif how == "not json":
        return "{not json"
    elif how == "batch 4":
        doc["input_shape"][0] = 4
    return doc


@pytest.mark.parametrize(
    "how",
    [
        "parent path", "absolute path", "symlink out", "missing segment", "missing macs",
        "nan threshold", "negative threshold", "no stages", "blocks out of order",
        "wrong format", "not json", "batch 4",
    ],
)  # fmt: skip
def test_hostile_or_malformed_manifest_is_refused(built: Built, tmp_path: Path, how: str) -> None:
    folder, doc = _copy(built, tmp_path)
    broken = _break(doc, how, tmp_path)
    text = broken if isinstance(broken, str) else json.dumps(broken)
    (folder / MANIFEST_NAME).write_text(text)
    with pytest.raises(InvalidModelError, match="early-exit manifest") as info:
        load_manifest(folder)
    assert "\n" not in str(info.value)


def test_manifest_naming_the_wrong_tensor_is_refused(built: Built, tmp_path: Path) -> None:
    folder, doc = _copy(built, tmp_path)
    doc["stages"][1]["exit"]["input"] = "not_there"
    (folder / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(InvalidModelError, match="exit_1.onnx has inputs"):
        EarlyExitRunner(load_manifest(folder))
