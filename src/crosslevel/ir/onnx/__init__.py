"""ONNX <-> IR: a checked importer (NCHW graphs) and an exporter (opset 17).

``loading`` reads and checks models safely (external data confined to the model's folder,
opset and strict shape inference checks), ``folding`` evaluates static constant and shape
subgraphs, ``importer`` maps ONNX nodes (QDQ included) onto the IR, ``exporter`` writes IR
graphs back as ONNX, and ``shapes``/``common`` hold what they share.
"""

from crosslevel.ir.onnx.common import (
    DTYPE_TO_ONNX,
    EXPORT_IR_VERSION,
    EXPORT_OPSET,
    MAX_FOLD_ELEMENTS,
    MAX_MODEL_BYTES,
    MIN_OPSET,
    ONNX_TO_DTYPE,
    ModelSource,
)
from crosslevel.ir.onnx.exporter import NCHW_TO_NHWC, NHWC_TO_NCHW, export_onnx
from crosslevel.ir.onnx.importer import import_onnx
from crosslevel.ir.onnx.loading import load_onnx_model
from crosslevel.ir.onnx.shapes import (
    flatten_shape,
    reshape_target,
    same_pads,
    squeeze_shape,
    unsqueeze_shape,
)

__all__ = [
    "DTYPE_TO_ONNX",
    "EXPORT_IR_VERSION",
    "EXPORT_OPSET",
    "MAX_FOLD_ELEMENTS",
    "MAX_MODEL_BYTES",
    "MIN_OPSET",
    "NCHW_TO_NHWC",
    "NHWC_TO_NCHW",
    "ONNX_TO_DTYPE",
    "ModelSource",
    "export_onnx",
    "flatten_shape",
    "import_onnx",
    "load_onnx_model",
    "reshape_target",
    "same_pads",
    "squeeze_shape",
    "unsqueeze_shape",
]
