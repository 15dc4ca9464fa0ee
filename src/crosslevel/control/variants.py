"""Load variants.json (``crosslevel.variants/1``, written by `crosslevel optimize`).

Every field is checked on load with one clear error; model files must stay inside the
folder of variants.json (a hostile file cannot make the controller read elsewhere).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosslevel.errors import InvalidModelError
from crosslevel.files import file_inside

FORMAT = "crosslevel.variants/1"


@dataclass(frozen=True)
class Split:
    """A variant whose model is cut between the device and a remote (edge/cloud) part:
    per request the device computes ``device_ms`` (on the device alone), sends
    ``up_bytes``, the remote computes ``remote_ms`` and sends back ``down_bytes``."""

    device_ms: float
    remote_ms: float
    up_bytes: int
    down_bytes: int


@dataclass(frozen=True)
class Variant:
    name: str
    onnx_path: Path
    accuracy: float | None  # None: fidelity (outputs unchanged), not an accuracy
    latency_ms: float  # on the target: predicted by the cost model (or measured, if so labelled)
    latency_kind: str
    peak_ram_bytes: int
    file_bytes: int
    split: Split | None = None  # None: runs wholly on the device

    @property
    def served_accuracy(self) -> float:
        """What serving it is worth: its accuracy, or 1.0 for a fidelity variant (outputs
        unchanged from the original model, so nothing is lost)."""
        return self.accuracy if self.accuracy is not None else 1.0

    @property
    def memory_bytes(self) -> int:
        """What a resident session holds: its weights (the file) and its arena."""
        return self.file_bytes + self.peak_ram_bytes


def _fail(path: Path, what: str) -> InvalidModelError:
    return InvalidModelError(f"{path}: invalid variants file: {what}")


def _number(value: Any, path: Path, where: str) -> float:
    # json.loads accepts NaN and Infinity: refuse them here (int(inf) would overflow and a
    # NaN latency would make every comparison of the policy false).
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise _fail(path, f"{where} must be a finite non-negative number, got {value!r}")
    return float(value)


def _model_path(files: dict[str, Any], path: Path, where: str) -> Path:
    """The ONNX file, resolved (symlinks too) and required to stay inside the folder."""
    try:
        return file_inside(path.parent, files["onnx"], subfolders=True)
    except ValueError as exc:
        raise _fail(path, f"{where}: {exc}") from None


def _variant(entry: Any, path: Path, i: int) -> Variant:
    where = f"variants[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _fail(path, f"{where} must be an object with a name")
    files = entry.get("model_files")
    if not isinstance(files, dict) or not isinstance(files.get("onnx"), str):
        raise _fail(path, f"{where} has no ONNX model file")
    onnx_path = _model_path(files, path, where)
    acc = entry.get("accuracy")
    if acc is not None and not isinstance(acc, dict):
        raise _fail(path, f"{where}.accuracy must be an object, got {acc!r}")
    acc = acc or {}
    accuracy = _number(acc["mean"], path, f"{where}.accuracy") if "mean" in acc else None
    if accuracy is not None and accuracy > 1.0:
        raise _fail(path, f"{where}.accuracy.mean is a fraction (0..1), got {accuracy!r}")
    split = _split(entry.get("split"), path, where)
    lat = entry.get("latency_ms")
    if not isinstance(lat, dict):
        raise _fail(path, f"{where} has no latency")
    return Variant(
        name=entry["name"], onnx_path=onnx_path, accuracy=accuracy,
        latency_ms=_number(lat.get("value"), path, f"{where}.latency_ms"),
        latency_kind=str(lat.get("kind", "")),
        peak_ram_bytes=int(_number(entry.get("peak_ram_bytes"), path, f"{where}.peak_ram_bytes")),
        file_bytes=onnx_path.stat().st_size, split=split,
    )  # fmt: skip


def _split(value: Any, path: Path, where: str) -> Split | None:
    """``split`` is null (device only) or {device_ms, remote_ms, up_bytes, down_bytes}."""
    if value is None:
        return None
    keys = ("device_ms", "remote_ms", "up_bytes", "down_bytes")
    if not isinstance(value, dict) or not all(k in value for k in keys):
        raise _fail(path, f"{where}.split must be null or an object with {', '.join(keys)}")
    n = {k: _number(value[k], path, f"{where}.split.{k}") for k in keys}
    return Split(n["device_ms"], n["remote_ms"], int(n["up_bytes"]), int(n["down_bytes"]))


def load_variants(path: str | Path) -> list[Variant]:
    """The variants of a variants.json file (InvalidModelError when malformed)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    # ValueError covers bad JSON, bad UTF-8 and a 5,000-digit number; RecursionError a
    # hostile nesting depth.
    except (OSError, ValueError, RecursionError) as exc:
        raise _fail(path, str(exc)) from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _fail(path, f"format must be {FORMAT!r}")
    entries = doc.get("variants")
    if not isinstance(entries, list) or not entries:
        raise _fail(path, "no variants")
    variants = [_variant(e, path, i) for i, e in enumerate(entries)]
    if len({v.name for v in variants}) != len(variants):
        raise _fail(path, "variant names repeat")
    return variants
