"""Where the real MLPerf Tiny reference models are, and which of them are which.

The files are third-party and are not shipped in the package: they are read from
``$CROSSLEVEL_MODELS`` or from ``shared/models/mlperf-tiny`` beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from crosslevel.errors import UsageError

INT8_FILES = (
    "kws_ref_model.tflite",
    "pretrainedResnet_quant.tflite",
    "vww_96_int8.tflite",
    "ad01_int8.tflite",
    "str_ww_ref_model.tflite",
)
FLOAT_FILES = (
    "kws_ref_model_float32.tflite",
    "pretrainedResnet.tflite",
    "vww_96_float.tflite",
    "ad01_fp32.tflite",
)
# Lower bounds for each int8 file's own operator order, from the models' README.
FILE_ORDER_BOUNDS = {
    "kws_ref_model.tflite": 16_000,
    "pretrainedResnet_quant.tflite": 49_152,
    "vww_96_int8.tflite": 55_296,
    "ad01_int8.tflite": 768,
    "str_ww_ref_model.tflite": 6_656,
}


def _candidates() -> list[Path]:
    repo = Path(__file__).resolve().parents[3]  # src/crosslevel/model -> checkout root
    return [
        Path.cwd().parent / "shared" / "models" / "mlperf-tiny",
        repo.parent / "shared" / "models" / "mlperf-tiny",
        Path("/work/shared/models/mlperf-tiny"),
    ]


def models_dir() -> Path:
    """The folder of the real models; a clear error when it cannot be found."""
    if "CROSSLEVEL_MODELS" in os.environ:
        path = Path(os.environ["CROSSLEVEL_MODELS"])
        if not path.is_dir():
            raise UsageError(f"CROSSLEVEL_MODELS={path} is not a folder")
        return path
    for path in _candidates():
        if path.is_dir():
            return path
    raise UsageError(
        "MLPerf Tiny models not found beside the checkout (shared/models/mlperf-tiny); "
        "set CROSSLEVEL_MODELS to their folder"
    )
