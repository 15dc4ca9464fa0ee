"""`crosslevel optimize` end to end on a tiny budget: files, page == result.json, exit 3."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.memory.plan import load_plan
from crosslevel.search.report import lookup

runner = CliRunner()
TINY = ["--budget", "4", "--seeds", "1", "--epochs", "1", "--ablation-budget", "2"]
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr", "source"}


class PageParser(HTMLParser):
    """Checks that tags nest and close (void elements aside) and collects data-value cells."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.cells: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        found = dict(attrs)
        if "data-key" in found:
            self.cells.append((str(found["data-key"]), str(found["data-value"])))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1  # <rect .../> inside SVG

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("optimize")
    result = runner.invoke(app, ["optimize", *TINY, "-o", str(out), "--study",
                                 str(out / "study.db")])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out, result


def test_writes_every_file(run: tuple[Path, Any]) -> None:
    out, result = run
    for name in ("report.html", "result.json", "variants.json", "plan.json", "model.onnx"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "result.json").read_text())
    assert doc["format"] == "crosslevel.optimize/1"
    assert doc["device"]["name"] == "stm32g031k8"
    # The default device: the unoptimized model does not fit, the chosen point does.
    assert not all(doc["baseline_meets"].values())
    assert all(doc["chosen"]["meets"].values())
    assert doc["chosen"]["arena_check"]["verified"]
    plan = load_plan(out / "plan.json")
    assert plan.arena_bytes == doc["chosen"]["objectives"]["peak_ram_bytes"]
    tflm = doc["chosen"]["tflm_check"]
    assert (out / "model.tflite").is_file() == bool(tflm and tflm["verified"])
    assert "Pareto front" in result.output


def test_no_reported_feasible_point_violates_a_demand(run: tuple[Path, Any]) -> None:
    doc = json.loads((run[0] / "result.json").read_text())
    limits = {k: doc["demands"][v] for k, v in {
        "accuracy_drop_pp": "max_accuracy_drop_pp", "latency_ms": "max_latency_ms",
        "peak_ram_bytes": "max_ram_bytes", "flash_bytes": "max_flash_bytes"}.items()}  # fmt: skip
    for trial in doc["trials"]:
        if trial["feasible"]:
            for name, limit in limits.items():
                assert limit is None or trial["objectives"][name] <= limit, (name, trial)


def test_chosen_model_runs_in_onnx_runtime(run: tuple[Path, Any]) -> None:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(run[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 8, 8), dtype=np.float32)
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert logits.shape == (1, 10)


def test_variants_json_follows_the_contract(run: tuple[Path, Any]) -> None:
    out = run[0]
    doc = json.loads((out / "variants.json").read_text())
    assert doc["format"] == "crosslevel.variants/1" and doc["variants"]
    assert doc["variants"][0]["chosen"]
    for v in doc["variants"]:
        for key in ("name", "model_files", "accuracy", "latency_ms", "peak_ram_bytes",
                    "flash_bytes", "split"):  # fmt: skip
            assert key in v
        assert v["latency_ms"]["kind"] == "predicted"
        assert (out / v["model_files"]["onnx"]).is_file()


def test_report_is_valid_html_and_its_numbers_equal_result_json(run: tuple[Path, Any]) -> None:
    out = run[0]
    doc = json.loads((out / "result.json").read_text())
    parser = PageParser()
    parser.feed((out / "report.html").read_text())
    parser.close()
    assert not parser.errors and not parser.stack
    assert parser.counts["html"] == parser.counts["head"] == parser.counts["body"] == 1
    assert "<title>crosslevel optimize" in (out / "report.html").read_text()
    assert parser.counts["svg"] >= 3  # Pareto scatter, ablation, arena picture
    assert parser.counts["table"] >= 5
    assert len(parser.cells) > 50
    for key, value in parser.cells:
        assert json.loads(value) == lookup(doc, key), key
    keys = {k for k, _ in parser.cells}
    assert "hypervolume.joint" in keys and "chosen.objectives.latency_ms" in keys
    assert "hypervolume.points.joint" in keys  # the count beside each hypervolume
    assert all(f"layers.{i}.macs" in keys for i in range(len(doc["layers"])))


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (headless browser)")
def test_report_renders_in_headless_chromium(run: tuple[Path, Any], tmp_path: Path) -> None:
    """A real browser loads the page: the DOM holds the plots and tables, and the
    screenshot shows them (the Pareto front's blue markers are on screen)."""
    from matplotlib.image import imread

    page = (run[0] / "report.html").resolve().as_uri()
    flags = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--window-size=1200,3000"]  # fmt: skip
    dom = subprocess.run(
        [*flags, "--dump-dom", page], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for table in ("demands", "chosen", "front", "hypervolume", "layers", "trials"):
        assert f'<table id="{table}">' in dom
    assert dom.count("<svg") >= 3
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, timeout=60,
                   check=True)  # fmt: skip
    pixels = imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    ink = np.any(pixels < 0.9, axis=-1).mean()
    assert ink > 0.02  # text, tables and plots, not a blank page
    blue = np.all(np.abs(pixels - np.array([0x1F, 0x5F, 0xBF]) / 255) < 0.08, axis=-1)
    assert blue.sum() > 20  # the Pareto front markers were drawn
