"""Run a multi-exit network in ONNX Runtime: segments in order, first confident exit answers.

A multi-exit model (written by ``model.exits``) is a folder of ONNX files and a manifest
``exits.json`` (``crosslevel.early_exit/1``): a list of stages, each one backbone segment
(input of the segment -> its output feature) and one exit head (that feature -> logits)
with a confidence threshold. ``EarlyExitRunner.run`` runs segment 0, its exit head, and
answers when the head's softmax confidence (the largest class probability) reaches the
stage's threshold; otherwise it feeds the segment's feature to segment 1, and so on. The
last stage's exit is the original classifier: it always answers, so its threshold is not
used, and with every other threshold above 1 (a probability never exceeds 1; such heads
are not even run) the runner computes exactly the full model.

The manifest is untrusted input: every field is checked on load, and model files must be
plain file names inside the manifest's folder (no paths, no symlinks leading out), so a
hostile manifest cannot make the runtime read elsewhere. Any failure is one
InvalidModelError naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.files import file_inside, read_json_document
from crosslevel.runtime.ort import make_session

FORMAT = "crosslevel.early_exit/1"
MANIFEST_NAME = "exits.json"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_STAGES = 64
MAX_NAME_CHARS = 256


@dataclass(frozen=True)
class OnnxPart:
    """One ONNX file of the multi-exit model, with the names of its input and output."""

    path: Path
    input_name: str
    output_name: str
    macs: int


@dataclass(frozen=True)
class Stage:
    """A backbone segment and the exit head reading its output feature."""

    segment: OnnxPart
    exit: OnnxPart
    threshold: float  # softmax confidence at which this exit answers (unused for the last)
    after_block: int  # index of the backbone block the exit follows


@dataclass(frozen=True)
class ExitManifest:
    folder: Path
    model: str
    num_classes: int
    input_shape: tuple[int, ...]  # with the batch dimension (1)
    stages: tuple[Stage, ...]

    @property
    def thresholds(self) -> list[float]:
        return [s.threshold for s in self.stages]

    def macs_to_exit(self) -> list[int]:
        """MACs spent by a sample that leaves at exit k (segments 0..k and heads 0..k)."""
        spent, total = [], 0
        for stage in self.stages:
            total += stage.segment.macs + stage.exit.macs
            spent.append(total)
        return spent


@dataclass(frozen=True)
class ExitAnswer:
    logits: np.ndarray  # (1, num_classes) of the exit that answered
    exit_index: int
    confidence: float


def confidence(logits: np.ndarray) -> float:
    """Largest softmax probability of one sample's logits: 1 / sum_j exp(l_j - max(l)).

    Plain Python on purpose: for a handful of classes it is several times faster than
    NumPy's per-call overhead, and it is on the runtime's hot path after every exit.
    Calibration uses the same function (``max_softmax``), so a calibrated threshold means
    exactly the same here.
    """
    row: list[float] = np.asarray(logits, dtype=np.float64).ravel().tolist()
    top = max(row)
    return 1.0 / math.fsum(math.exp(v - top) for v in row)


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """``confidence`` of every row along the last axis."""
    z = np.asarray(logits)
    flat = z.reshape(-1, z.shape[-1])
    return np.array([confidence(row) for row in flat], dtype=np.float64).reshape(z.shape[:-1])


def chosen_exits(confidences: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Exit index per sample given every exit's confidence (stages x samples).

    The same rule as ``EarlyExitRunner.run``: the first stage whose confidence reaches its
    threshold; the last stage always answers. For trying thresholds on stored logits
    without rerunning the models (analysis, tests).
    """
    conf = np.asarray(confidences, dtype=np.float64)
    limits = _check_thresholds(thresholds, conf.shape[0])
    confident = conf >= np.asarray(limits, dtype=np.float64)[:, None]
    confident[-1] = True
    return np.argmax(confident, axis=0)


def _check_thresholds(thresholds: Sequence[float], stages: int) -> list[float]:
    values = [float(t) for t in thresholds]
    if len(values) != stages:
        raise UsageError(f"need {stages} thresholds (one per exit), got {len(values)}")
    if not all(math.isfinite(t) and t >= 0 for t in values):
        raise UsageError(f"thresholds must be finite and >= 0, got {values}")
    return values


class EarlyExitRunner:
    """ONNX Runtime sessions of every segment and exit head of one manifest."""

    def __init__(self, manifest: ExitManifest, threads: int = 1) -> None:
        self.manifest = manifest
        self._thresholds = _check_thresholds(manifest.thresholds, len(manifest.stages))
        # (session, input name, [output name]) per segment and per exit, looked up once:
        # the runner's own overhead matters next to models that run in microseconds
        self._segments = [_bound(s.segment, threads) for s in manifest.stages]
        self._exits = [_bound(s.exit, threads) for s in manifest.stages]

    def _segment(self, k: int, x: np.ndarray) -> np.ndarray:
        session, name, output = self._segments[k]
        return session.run(output, {name: x})[0]

    def _exit(self, k: int, feature: np.ndarray) -> np.ndarray:
        session, name, output = self._exits[k]
        return session.run(output, {name: feature})[0]

    def _input(self, x: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(x, dtype=np.float32)
        if tuple(array.shape) != self.manifest.input_shape:
            raise UsageError(
                f"early-exit input must have shape {self.manifest.input_shape}, got {x.shape}"
            )
        return array

    def run(self, x: np.ndarray, thresholds: Sequence[float] | None = None) -> ExitAnswer:
        """The first confident exit's answer for one sample (the manifest's thresholds, or
        ``thresholds`` given here, one per stage)."""
        stages = len(self._segments)
        limits = self._thresholds if thresholds is None else _check_thresholds(thresholds, stages)
        feature = self._input(x)
        for k in range(stages - 1):
            feature = self._segment(k, feature)
            if limits[k] > 1.0:  # an exit that can never answer is not run at all
                continue
            logits = self._exit(k, feature)
            sure = confidence(logits)
            if sure >= limits[k]:
                return ExitAnswer(logits, k, sure)
        logits = self._exit(stages - 1, self._segment(stages - 1, feature))
        return ExitAnswer(logits, stages - 1, confidence(logits))

    def all_exit_logits(self, x: np.ndarray) -> list[np.ndarray]:
        """Logits of every exit for one sample (the whole backbone runs): calibration."""
        feature, outputs = self._input(x), []
        for k in range(len(self._segments)):
            feature = self._segment(k, feature)
            outputs.append(self._exit(k, feature))
        return outputs


def _bound(part: OnnxPart, threads: int) -> tuple[Any, str, list[str]]:
    """A session for ``part``, checked to have the input and output the manifest names."""
    session = make_session(part.path, threads)
    inputs = [a.name for a in session.get_inputs()]
    outputs = [a.name for a in session.get_outputs()]
    if inputs != [part.input_name] or part.output_name not in outputs:
        raise InvalidModelError(
            f"early-exit manifest: {part.path.name} has inputs {inputs} and outputs "
            f"{outputs}, the manifest names {part.input_name!r} -> {part.output_name!r}"
        )
    return session, part.input_name, [part.output_name]


# --------------------------------------------------------------------------- manifest


def _fail(where: str, why: str) -> InvalidModelError:
    return InvalidModelError(f"early-exit manifest: {where}: {why}")


def _count(value: Any, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(where, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise _fail(where, f"must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    return value


def _model_file(folder: Path, value: Any, where: str) -> Path:
    """A plain file name inside ``folder`` that is, after symlinks, still inside it."""
    try:
        return file_inside(folder, _name(value, where))
    except ValueError as exc:
        raise _fail(where, str(exc)) from None


def _part(doc: Any, folder: Path, where: str) -> OnnxPart:
    if not isinstance(doc, dict):
        raise _fail(where, "must be an object with file, input, output and macs")
    return OnnxPart(
        path=_model_file(folder, doc.get("file"), f"{where}.file"),
        input_name=_name(doc.get("input"), f"{where}.input"),
        output_name=_name(doc.get("output"), f"{where}.output"),
        macs=_count(doc.get("macs"), f"{where}.macs"),
    )


def _stage(doc: Any, folder: Path, k: int) -> Stage:
    where = f"stages[{k}]"
    if not isinstance(doc, dict):
        raise _fail(where, "must be an object")
    threshold = doc.get("threshold")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not math.isfinite(threshold)
        or threshold < 0
    ):
        raise _fail(f"{where}.threshold", f"must be a finite number >= 0, got {threshold!r}")
    return Stage(
        segment=_part(doc.get("segment"), folder, f"{where}.segment"),
        exit=_part(doc.get("exit"), folder, f"{where}.exit"),
        threshold=float(threshold),
        after_block=_count(doc.get("after_block"), f"{where}.after_block"),
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"early-exit manifest {path} does not exist")
    try:
        return read_json_document(path, FORMAT, MAX_MANIFEST_BYTES)
    except ValueError as exc:
        raise _fail(str(path), str(exc)) from None


def load_manifest(path: str | Path) -> ExitManifest:
    """Read and validate ``exits.json`` (a path to it or to its folder)."""
    path = Path(path)
    path = path / MANIFEST_NAME if path.is_dir() else path
    doc = _read_json(path)
    folder = path.parent
    shape = doc.get("input_shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= 8:
        raise _fail("input_shape", "must be a list of 1 to 8 sizes")
    dims = tuple(_count(d, "input_shape", minimum=1) for d in shape)
    if dims[0] != 1:
        raise _fail("input_shape", f"batch must be 1, got {dims[0]}")
    stages = doc.get("stages")
    if not isinstance(stages, list) or not 1 <= len(stages) <= MAX_STAGES:
        raise _fail("stages", f"must be a list of 1 to {MAX_STAGES} stages")
    parsed = tuple(_stage(s, folder, k) for k, s in enumerate(stages))
    blocks = [s.after_block for s in parsed]
    if blocks != sorted(set(blocks)):
        raise _fail("stages", f"after_block must increase strictly, got {blocks}")
    return ExitManifest(
        folder=folder,
        model=_name(doc.get("model"), "model"),
        num_classes=_count(doc.get("num_classes"), "num_classes", minimum=2),
        input_shape=dims,
        stages=parsed,
    )


def write_manifest(manifest: ExitManifest, path: Path) -> None:
    """Write ``manifest`` as JSON; file names are relative to the manifest's folder."""

    def part(p: OnnxPart) -> dict[str, Any]:
        return {"file": p.path.name, "input": p.input_name, "output": p.output_name,
                "macs": p.macs}  # fmt: skip

    doc = {
        "format": FORMAT,
        "model": manifest.model,
        "num_classes": manifest.num_classes,
        "input_shape": list(manifest.input_shape),
        "stages": [
            {
                "after_block": s.after_block,
                "threshold": s.threshold,
                "segment": part(s.segment),
                "exit": part(s.exit),
            }  # fmt: skip
            for s in manifest.stages
        ],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
