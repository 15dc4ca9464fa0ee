"""Layer-by-layer agreement of ONNX Runtime's QDQ model with our TFLite-semantics int8 IR.

Both int8 forms of one float model (``model.qdq``) are calibrated min-max on the same
real samples, so they hold the same per-tensor activation quantization and the same
per-channel int8 weights; what differs is the arithmetic: ONNX Runtime fuses each
DequantizeLinear -> op -> QuantizeLinear into an integer kernel (QLinearConv, u8 x s8,
float rescaling, round half to even), our IR follows TFLite Micro (int32 accumulators,
fixed-point multiplier and shift, round half away from zero). Each may land one step
apart on a value that sits near a rounding boundary, so the contract is "within 1 LSB".

How a layer is compared: every activation tensor the two graphs share by name (the
importers keep ONNX tensor names) is a checkpoint. For each checkpoint the segment of
the QDQ model from the previous checkpoints' quantized tensors to its own is extracted
as a small ONNX model and run by ONNX Runtime with all optimizations (the fused kernels
deployment runs), fed our int8 IR's own values of its inputs: uint8 activations with
zero point z + 128 hold the same real values as int8 with z, so the feed is exact, and
NHWC tensors are transposed to ONNX's NCHW. The output, back in real values, is compared
with the IR's in units of the IR's output scale. End to end the full QDQ model runs on
the float inputs and its outputs are compared the same way, plus top-1 agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from crosslevel.errors import InvalidModelError
from crosslevel.ir.graph import Graph
from crosslevel.model.quantize import dequantize_output, quantize_input

NCHW_FROM_NHWC = (0, 3, 1, 2)
# Scales are float32 in both files; two calibrations of the same data differ by an ulp.
SCALE_RTOL = 1e-5
# ORT's end-to-end output is dequantized in float32: ~1e-5 LSB of rounding on large values.
LSB_SLACK = 1e-3


@dataclass
class OrtQuant:
    """How ONNX Runtime's QDQ model quantizes one real tensor."""

    tensor: str  # the name of the quantized (uint8/int8) tensor
    scale: float
    zero_point: int
    dtype: np.dtype[Any]


@dataclass
class LayerAgreement:
    """One checkpoint: ORT's segment fed our IR's inputs, against our IR's output."""

    output: str
    inputs: list[str]
    ir_ops: list[str]
    ort_ops: list[str]
    elements: int
    max_lsb: float  # max |ORT - IR| in LSBs of the IR's output scale
    within_1_lsb: float  # fraction of elements with |ORT - IR| <= 1 LSB

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class QdqAgreement:
    """The whole comparison: per layer and end to end over the samples."""

    layers: list[LayerAgreement]
    samples: int
    end_to_end_within_1_lsb: float
    end_to_end_max_lsb: float
    top1_agreement: float
    scale_mismatches: dict[str, float] = field(default_factory=dict)  # tensor -> rel. diff
    fused: bool = True  # ORT ran its fused integer kernels (else the QDQ reference semantics)

    @property
    def worst_layer_lsb(self) -> float:
        return max((layer.max_lsb for layer in self.layers), default=0.0)


def ort_quantization(model: onnx.ModelProto) -> dict[str, OrtQuant]:
    """Real tensor name -> its quantized tensor and parameters in a QDQ model."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found: dict[str, OrtQuant] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue
        scale, zero = consts.get(node.input[1]), consts.get(node.input[2])
        if scale is None or zero is None or scale.size != 1:
            continue  # not a per-tensor activation quantization with constant parameters
        found[node.input[0]] = OrtQuant(
            node.output[0], float(scale.reshape(())), int(zero.reshape(())), zero.dtype
        )
    for node in model.graph.node:  # graph outputs: DQ(Q(x)) is named after the output
        if node.op_type == "DequantizeLinear" and node.output[0] in _output_names(model):
            source = next((q for q in found.values() if q.tensor == node.input[0]), None)
            if source is not None:
                found[node.output[0]] = source
    return found


def _output_names(model: onnx.ModelProto) -> set[str]:
    return {o.name for o in model.graph.output}


def _segment_inputs(model: onnx.ModelProto, target: str, stops: set[str]) -> list[str]:
    """Quantized checkpoint tensors the segment ending at ``target`` reads."""
    producers = {o: n for n in model.graph.node for o in n.output}
    consts = {t.name for t in model.graph.initializer}
    inputs, seen, stack = [], {target}, [target]
    while stack:
        name = stack.pop()
        if name != target and name in stops:
            inputs.append(name)
            continue
        node = producers.get(name)
        for arg in node.input if node is not None else []:
            if arg and arg not in consts and arg not in seen:
                seen.add(arg)
                stack.append(arg)
    return sorted(inputs)


def _to_onnx_layout(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, NCHW_FROM_NHWC)) if x.ndim == 4 else x


def _from_onnx_layout(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, np.argsort(NCHW_FROM_NHWC)) if x.ndim == 4 else x


def _ir_real(graph: Graph, name: str, q: np.ndarray) -> np.ndarray:
    return dequantize_output(q, graph.tensor(name)).astype(np.float64)


def _to_ort(real: np.ndarray, quant: OrtQuant) -> np.ndarray:
    """Real values into ORT's quantization (exact when the scales are equal)."""
    info = np.iinfo(quant.dtype)
    q = np.rint(real / quant.scale) + quant.zero_point
    return np.clip(q, info.min, info.max).astype(quant.dtype)


def _ort_real(q: np.ndarray, quant: OrtQuant) -> np.ndarray:
    return (q.astype(np.float64) - quant.zero_point) * quant.scale


@dataclass
class _Segment:
    output: str
    inputs: list[str]  # real tensor names (checkpoints)
    session: Any
    feeds: list[str]  # the session's input names, in ``inputs`` order
    ort_ops: list[str]


def _segments(
    model: onnx.ModelProto, graph: Graph, quant: dict[str, OrtQuant], fused: bool
) -> list[_Segment]:
    """One extracted ONNX Runtime session per checkpoint the graphs share."""
    from crosslevel.runtime.ort import make_session

    shared = [t.name for t in graph.activations() if t.name in quant]
    by_q = {quant[name].tensor: name for name in shared}
    extractor = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(model))
    segments = []
    for name in shared:
        if name in graph.inputs:
            continue
        target = quant[name].tensor
        feeds = _segment_inputs(model, target, set(by_q) - {target})
        sub = extractor.extract_model(feeds, [target])
        ops = [n.op_type for n in sub.graph.node if "QuantizeLinear" not in n.op_type]
        session = make_session(sub.SerializeToString(), optimize=fused)
        segments.append(_Segment(name, [by_q[f] for f in feeds], session, feeds, ops))
    return segments


def _lsb_errors(graph: Graph, name: str, ours: np.ndarray, theirs_real: np.ndarray) -> np.ndarray:
    assert graph.tensor(name).quant is not None
    scale = float(graph.tensor(name).quant.scale[0])  # type: ignore[union-attr]
    return np.abs(theirs_real - _ir_real(graph, name, ours)) / scale


def compare_qdq_layers(
    qdq_onnx: bytes,
    int8_graph: Graph,
    samples: np.ndarray,
    to_ir_input: Callable[[np.ndarray], np.ndarray],
    fused: bool = True,
) -> QdqAgreement:
    """Compare ``qdq_onnx`` (ORT) with ``int8_graph`` (ours) layer by layer and end to end.

    ``samples``: float inputs (N, ...) in the ONNX model's layout, each run at batch 1;
    ``to_ir_input`` lays one out for the IR (e.g. ``Int8Model.to_model_input``);
    ``fused`` False runs ORT unoptimized: DequantizeLinear -> float op -> QuantizeLinear,
    the QDQ model's reference semantics.
    """
    from crosslevel.runtime.ort import make_session, run_session

    model = onnx.load_from_string(qdq_onnx)
    quant = ort_quantization(model)
    if len(int8_graph.inputs) != 1 or int8_graph.inputs[0] not in quant:
        raise InvalidModelError("the QDQ model and the int8 IR do not share a quantized input")
    segments = _segments(model, int8_graph, quant, fused)
    full = make_session(qdq_onnx, optimize=fused)
    errors: dict[str, list[np.ndarray]] = {s.output: [] for s in segments}
    end_errors, agree = [], []
    out_name = int8_graph.outputs[0]
    for x in samples:
        x_ir = quantize_input(to_ir_input(x[None]), int8_graph.tensor(int8_graph.inputs[0]))
        values = _run_ir(int8_graph, x_ir)
        for seg in segments:
            feed = [_to_onnx_layout(_to_ort(_ir_real(int8_graph, n, values[n]), quant[n]))
                    for n in seg.inputs]  # fmt: skip
            got = _from_onnx_layout(run_session(seg.session, feed)[0])
            real = _ort_real(got, quant[seg.output])
            errors[seg.output].append(_lsb_errors(int8_graph, seg.output, values[seg.output], real))
        theirs = run_session(full, [np.ascontiguousarray(x[None], np.float32)])[0]
        end_errors.append(_lsb_errors(int8_graph, out_name, values[out_name], theirs))
        ours = _ir_real(int8_graph, out_name, values[out_name])
        agree.append(int(np.argmax(theirs)) == int(np.argmax(ours)))
    layers = [_agreement(int8_graph, seg, np.concatenate(
        [e.ravel() for e in errors[seg.output]])) for seg in segments]  # fmt: skip
    flat = np.concatenate([e.ravel() for e in end_errors])
    return QdqAgreement(
        layers, len(agree), float(np.mean(flat <= 1.0 + LSB_SLACK)), float(flat.max()),
        float(np.mean(agree)), _scale_mismatches(int8_graph, quant), fused,
    )  # fmt: skip


def _run_ir(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    from crosslevel.runtime.int8_executor import run_int8_all

    return run_int8_all(graph, [x])


def _agreement(graph: Graph, seg: _Segment, errors: np.ndarray) -> LayerAgreement:
    return LayerAgreement(
        seg.output, seg.inputs, _ir_ops(graph, seg.output, set(seg.inputs)), seg.ort_ops,
        int(errors.size), float(errors.max()), float(np.mean(errors <= 1.0 + LSB_SLACK)),
    )  # fmt: skip


def _ir_ops(graph: Graph, output: str, inputs: set[str]) -> list[str]:
    """Operators of the IR between the segment's input checkpoints and its output."""
    producers = {o: n for n in graph.nodes for o in n.outputs}
    ops, stack, seen = [], [output], {output}
    while stack:
        node = producers.get(stack.pop())
        if node is None:
            continue
        ops.append(node.op)
        for name in node.inputs:
            if name and name not in inputs and name not in seen:
                seen.add(name)
                stack.append(name)
    return ops[::-1]


def _scale_mismatches(graph: Graph, quant: dict[str, OrtQuant]) -> dict[str, float]:
    """Shared tensors whose activation scale differs between the two files."""
    out = {}
    for name, q in quant.items():
        if name not in graph.tensors or graph.tensor(name).quant is None:
            continue
        ours = float(graph.tensor(name).quant.scale[0])  # type: ignore[union-attr]
        rel = abs(q.scale - ours) / ours
        if rel > SCALE_RTOL:
            out[name] = rel
    return out


def check_zoo_module(
    module: Any, name: str, calibration: np.ndarray, samples: np.ndarray, reduce_range: bool = False
) -> QdqAgreement:
    """Quantize trained zoo ``module`` both ways on ``calibration`` and compare them.

    ``reduce_range`` True compares ORT's 7-bit-weight fallback instead (``model.qdq``),
    whose weights are not the IR's: it shows how far that fallback moves each layer.
    ORT's fused kernels are compared where they are exact on this CPU; where its u8s8
    kernels saturate on 8-bit weights (x86 without VNNI, see ``model.qdq``) the fused
    arithmetic is not the QDQ model's and the reference semantics are compared instead
    (``QdqAgreement.fused`` says which).
    """
    from crosslevel.ir.torch_io import export_torch_onnx
    from crosslevel.model.qdq import (
        SATURATION_CHECK_SAMPLES,
        SATURATION_TOLERANCE,
        fused_error,
        quantize_static_qdq,
        quantize_tflite_int8,
    )

    int8 = quantize_tflite_int8(module, name, calibration)
    shape = (1, *calibration.shape[1:])
    float_onnx = export_torch_onnx(module, shape)
    qdq = quantize_static_qdq(float_onnx, calibration, "minmax", "uint8", reduce_range)
    fused = fused_error(qdq, calibration[:SATURATION_CHECK_SAMPLES]) <= SATURATION_TOLERANCE
    return compare_qdq_layers(qdq, int8.int8_graph, samples, int8.to_model_input, fused)
