"""ONNX import/export and the ONNX Runtime wrapper.

Every mapping is checked by execution: a model goes ONNX -> IR -> ONNX and both files run
in ONNX Runtime on the same input; the outputs must agree within DESIGN.md's float
tolerance. TFLite float models are checked against TFLite Micro's float kernels.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from fuzz_helpers import corruptions, random_bytes, time_limit
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from crosslevel.errors import (
    InvalidModelError,
    UnsupportedOperatorError,
    UsageError,
)
from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.ir.onnx import export_onnx, import_onnx, load_onnx_model
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.ir.torch_io import export_torch_onnx
from crosslevel.runtime.ort import LatencyStats, make_session, run_onnx, time_onnx
from crosslevel.runtime.reference import run_reference
from crosslevel.runtime.tflm import run_tflm

RNG = np.random.default_rng(1234)


def assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    """DESIGN.md's float tolerance: rtol=1e-5, atol=1e-5 * max(1, max|ref|)."""
    assert ref.shape == got.shape
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


def random_input(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def round_trip(model: onnx.ModelProto | bytes | Path, *, optimize: bool = True) -> Graph:
    """Import, export, run both in ONNX Runtime on random inputs, compare; return the IR."""
    graph = import_onnx(model)
    exported = export_onnx(graph)
    inputs = [random_input(graph.tensor(n).shape) for n in graph.inputs]
    ref = run_onnx(model, inputs, optimize=optimize)
    got = run_onnx(exported, inputs, optimize=optimize)
    assert len(ref) == len(got)
    for r, g in zip(ref, got, strict=True):
        assert_close(r, g)
    return graph


def ops(graph: Graph) -> Counter[str]:
    return Counter(n.op for n in graph.nodes)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: dict[str, np.ndarray] | None = None,
    opset: int = 17,
) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "test", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vi(name: str, shape: list[Any], dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def any_shape(name: str, rank: int) -> onnx.ValueInfoProto:
    """An output of known rank whose dims shape inference fills in."""
    return vi(name, [f"{name}_{i}" for i in range(rank)])


def w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.5).astype(np.float32)


# --------------------------------------------------------------------------- PyTorch models


class ConvBlock(nn.Module):
    """Conv variants: strided, grouped, depthwise, dilated, explicit padding, both pools."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8)
        self.pad = nn.ZeroPad2d((1, 0, 2, 1))
        self.c3 = nn.Conv2d(8, 4, (3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.c1(x)))
        y = F.relu6(self.c2(y))
        y = F.max_pool2d(self.dw(y), 3, stride=1, padding=1)
        y = F.avg_pool2d(y, 2, padding=1, count_include_pad=False)
        return self.c3(self.pad(y))


class Branches(nn.Module):
    """Residual add, concatenation, elementwise math and every activation we map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = torch.cat([torch.sigmoid(a) + x, torch.tanh(b) - x, F.hardswish(a * b)], dim=1)
        y = F.leaky_relu(y, 0.1) / 1.5
        y = torch.clamp(y, -2.0, 3.0) + torch.sqrt(torch.abs(y) + 1.0) ** 2
        return F.pad(y, (1, 1, 0, 2), value=0.5).mean(dim=(2, 3), keepdim=True)


class Sequence(nn.Module):
    """Token model: rank-3 Linear, GELU (Erf), LayerNorm, attention, softmax, reshapes."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.proj(x)))  # B 5 8
        att = torch.softmax(torch.matmul(h, h.transpose(1, 2)) * 0.3, dim=-1)
        h = torch.matmul(att, h).unsqueeze(1).squeeze(1)
        h = self.bn(h)
        return torch.softmax(self.fc(h.flatten(1)), dim=1)


class FlattenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).view(1, -1).reshape(1, 3, 16).reshape(1, -1)
        return self.fc(y)


def _randomize_bn(module: nn.Module) -> nn.Module:
    """Non-trivial BN statistics, so that folding BN changes numbers we can check."""
    gen = torch.Generator().manual_seed(7)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)
    return module


TORCH_CASES = [
    ("conv", ConvBlock, (1, 3, 16, 16), {"CONV_2D", "RELU", "RELU6", "MAX_POOL_2D", "PAD"}),
    ("branches", Branches, (1, 4, 6, 6), {"CONCATENATION", "LOGISTIC", "HARD_SWISH", "CLIP"}),
    ("sequence", Sequence, (2, 5, 6), {"LAYER_NORM", "ERF", "BATCH_MATMUL", "SOFTMAX"}),
    ("flatten", FlattenHead, (1, 2, 6, 6), {"RESHAPE", "FULLY_CONNECTED"}),
]


@pytest.mark.parametrize("keep_bn", [False, True], ids=["bn-folded", "bn-kept"])
@pytest.mark.parametrize(("label", "cls", "shape", "expected"), TORCH_CASES, ids=lambda c: c)
def test_torch_models_round_trip_through_ort(
    label: str, cls: type[nn.Module], shape: tuple[int, ...], expected: set[str], keep_bn: bool
) -> None:
    torch.manual_seed(0)
    module = _randomize_bn(cls())
    data = export_torch_onnx(module, shape, keep_batchnorm=keep_bn)
    graph = round_trip(data)
    assert expected <= set(ops(graph)), ops(graph)
    assert graph.layout == "NCHW" and graph.tensor(graph.inputs[0]).shape == shape
    # the IR itself means what ONNX means: the NumPy reference agrees with ONNX Runtime
    x = random_input(shape)
    ref = run_onnx(data, [x])[0]
    assert_close(ref, run_reference(graph, [x])[graph.outputs[0]])


def test_torch_output_matches_onnxruntime_of_exported_ir() -> None:
    torch.manual_seed(1)
    module = _randomize_bn(ConvBlock()).eval()
    x = random_input((1, 3, 16, 16))
    graph = import_onnx(export_torch_onnx(module, (1, 3, 16, 16)))
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert_close(expected, run_onnx(export_onnx(graph), [x])[0])


# --------------------------------------------------------------------------- hand-made ONNX


@pytest.mark.parametrize(
    ("attrs", "c_shape"),
    [
        ({"transB": 1}, (4,)),
        ({"transB": 0, "alpha": 0.5, "beta": 2.0}, (1, 4)),
        ({"transB": 1, "beta": 0.5}, (3, 4)),  # full matrix C: an ADD after the FC
        ({"transB": 0}, None),
        ({"transB": 1, "alpha": 2.0}, ()),
    ],
)
def test_gemm_variants(attrs: dict[str, Any], c_shape: tuple[int, ...] | None) -> None:
    b = w(4, 5) if attrs.get("transB") else w(5, 4)
    inits = {"B": b}
    inputs = ["A", "B"]
    if c_shape is not None:
        inits["C"] = w(*c_shape) if c_shape else np.array(0.7, dtype=np.float32)
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["Y"], name="gemm", **attrs)
    model = make_model([node], [vi("A", [3, 5])], [vi("Y", [3, 4])], inits)
    graph = round_trip(model)
    assert ops(graph)["FULLY_CONNECTED"] == 1
    fc = next(n for n in graph.nodes if n.op == "FULLY_CONNECTED")
    assert graph.tensor(fc.inputs[1]).shape == (4, 5)  # w[O, K]


def test_gemm_with_computed_c_and_transposed_computed_b() -> None:
    nodes = [
        helper.make_node("Relu", ["Bin"], ["B"], name="relu_b"),
        helper.make_node("Gemm", ["A", "B", "C"], ["Y"], name="gemm", transB=0),
    ]
    model = make_model(
        nodes, [vi("A", [2, 3]), vi("Bin", [3, 4]), vi("C", [2, 4])], [vi("Y", [2, 4])]
    )
    graph = round_trip(model)
    assert ops(graph) == Counter({"RELU": 1, "TRANSPOSE": 1, "FULLY_CONNECTED": 1, "ADD": 1})


def test_gemm_trans_a_is_refused_naming_the_node() -> None:
    node = helper.make_node("Gemm", ["A", "B"], ["Y"], name="my_gemm", transA=1)
    model = make_model([node], [vi("A", [5, 3])], [vi("Y", [3, 4])], {"B": w(5, 4)})
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    assert info.value.op == "Gemm" and info.value.node == "my_gemm"
    assert "transA" in str(info.value)


def test_matmul_constant_weight_becomes_fc_with_keep_num_dims() -> None:
    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")
    model = make_model([node], [vi("X", [2, 3, 5])], [vi("Y", [2, 3, 4])], {"W": w(5, 4)})
    graph = round_trip(model)
    (fc,) = graph.nodes
    assert fc.op == "FULLY_CONNECTED" and fc.attrs["keep_num_dims"] is True


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_and_pool_auto_pad(auto_pad: str, stride: int) -> None:
    nodes = [
        helper.make_node(
            "Conv", ["X", "W", "B"], ["C"], name="conv", auto_pad=auto_pad, strides=[stride] * 2
        ),
        helper.make_node(
            "MaxPool", ["C"], ["Y"], name="pool", kernel_shape=[2, 3], auto_pad=auto_pad
        ),
    ]
    model = make_model(
        nodes, [vi("X", [1, 3, 9, 8])], [any_shape("Y", 4)], {"W": w(4, 3, 3, 2), "B": w(4)}
    )
    graph = round_trip(model)
    conv = graph.nodes[0]
    if auto_pad == "VALID":
        assert conv.attrs["pads"] == (0, 0, 0, 0)
    else:
        assert sum(conv.attrs["pads"]) > 0


def test_avgpool_ceil_mode_accepted_when_harmless_refused_when_not() -> None:
    def model(size: int) -> onnx.ModelProto:
        node = helper.make_node(
            "AveragePool",
            ["X"],
            ["Y"],
            name="avg",
            kernel_shape=[2, 2],
            strides=[2, 2],
            ceil_mode=1,
        )
        return make_model([node], [vi("X", [1, 2, size, size])], [any_shape("Y", 4)])

    round_trip(model(8))
    with pytest.raises(UnsupportedOperatorError, match="ceil_mode") as info:
        import_onnx(model(7))
    assert info.value.node == "avg"


def test_shape_subgraph_is_folded_to_a_static_reshape() -> None:
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape: what view(x.size(0), -1) emits."""
    nodes = [
        helper.make_node("Shape", ["X"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="cat", axis=0),
        helper.make_node("Reshape", ["X", "target"], ["flat"], name="reshape"),
        helper.make_node("Relu", ["flat"], ["Y"], name="relu"),
    ]
    inits = {
        "zero": np.array(0, dtype=np.int64),
        "axes0": np.array([0], dtype=np.int64),
        "minus1": np.array([-1], dtype=np.int64),
    }
    model = make_model(nodes, [vi("X", ["N", 2, 3, 4])], [vi("Y", ["N", 24])], inits)
    graph = round_trip(model)
    assert ops(graph) == Counter({"RESHAPE": 1, "RELU": 1})
    assert graph.nodes[0].attrs["shape"] == (1, 24)
    assert graph.metadata["fixed_batch_inputs"] == ["X"]


def test_reduce_mean_squeeze_unsqueeze_at_opset_18() -> None:
    nodes = [
        helper.make_node("ReduceMean", ["X", "axes"], ["m"], name="mean", keepdims=0),
        helper.make_node("Unsqueeze", ["m", "ax1"], ["u"], name="unsq"),
        helper.make_node("Squeeze", ["u", "ax1"], ["s"], name="sq"),
        helper.make_node("Pad", ["s", "pads", "val", "padaxes"], ["Y"], name="pad"),
    ]
    inits: dict[str, np.ndarray] = {
        "axes": np.array([-1, 1], dtype=np.int64),
        "ax1": np.array([1], dtype=np.int64),
        "pads": np.array([1, 2], dtype=np.int64),
        "val": np.array(-0.25, dtype=np.float32),
        "padaxes": np.array([-1], dtype=np.int64),
    }
    model = make_model(nodes, [vi("X", [2, 3, 4, 5])], [any_shape("Y", 2)], inits, opset=18)
    graph = round_trip(model)
    mean = graph.nodes[0]
    assert mean.op == "MEAN" and mean.attrs["axes"] == (1, 3) and mean.attrs["keepdims"] is False
    assert graph.nodes[-1].attrs["pads"] == [(0, 0), (1, 2)]


@pytest.mark.parametrize(
    ("lo", "hi", "op"),
    [(0.0, 6.0, "RELU6"), (0.0, None, "RELU"), (-1.0, 1.0, "RELU_N1_TO_1"), (-2.0, 3.0, "CLIP")],
)
def test_clip_maps_to_the_matching_activation(lo: float, hi: float | None, op: str) -> None:
    inits: dict[str, np.ndarray] = {"lo": np.array(lo, dtype=np.float32)}
    inputs = ["X", "lo"]
    if hi is not None:
        inits["hi"] = np.array(hi, dtype=np.float32)
        inputs.append("hi")
    node = helper.make_node("Clip", inputs, ["Y"], name="clip")
    model = make_model([node], [vi("X", [1, 4, 3, 3])], [vi("Y", [1, 4, 3, 3])], inits)
    graph = import_onnx(model)
    assert [n.op for n in graph.nodes] == [op]
    x = random_input((1, 4, 3, 3)) * 4
    assert_close(run_onnx(model, [x])[0], run_onnx(export_onnx(graph), [x])[0])


def test_dropout_identity_and_unused_mask() -> None:
    nodes = [
        helper.make_node("Dropout", ["X"], ["d", "mask"], name="drop"),
        helper.make_node("Identity", ["d"], ["Y"], name="id"),
    ]
    model = make_model(nodes, [vi("X", [2, 3])], [vi("Y", [2, 3])])
    graph = round_trip(model)
    assert [n.op for n in graph.nodes] == ["DROPOUT", "IDENTITY"]


def test_old_opset_is_converted_by_the_version_converter() -> None:
    """Opset 10: Clip with attributes, Unsqueeze axes as attribute, Softmax's 2-D coercion."""
    nodes = [
        helper.make_node("Clip", ["X"], ["c"], name="clip", min=0.0, max=6.0),
        helper.make_node("Softmax", ["c"], ["s"], name="softmax", axis=1),
        helper.make_node("Unsqueeze", ["s"], ["Y"], name="unsq", axes=[0]),
    ]
    model = make_model(nodes, [vi("X", [2, 3, 4])], [vi("Y", [1, 2, 3, 4])], opset=10)
    graph = round_trip(model)
    assert graph.metadata["opset"] == 10
    assert ops(graph)["RELU6"] == 1


# --------------------------------------------------------------------------- QDQ


def _qdq_model() -> onnx.ModelProto:
    """Float input -> Q (uint8) -> DQ -> Conv(DQ'd per-axis int8 weights, int32 bias) -> Q -> DQ."""
    wf = w(4, 3, 3, 3)
    w_scale = (np.abs(wf).reshape(4, -1).max(axis=1) / 127).astype(np.float32)
    wq = np.clip(np.round(wf / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
    x_scale = np.array(0.02, dtype=np.float32)
    b_scale = (x_scale * w_scale).astype(np.float32)
    inits = {
        "x_scale": x_scale,
        "x_zp": np.array(128, dtype=np.uint8),
        "w_q": wq,
        "w_scale": w_scale,
        "w_zp": np.zeros(4, dtype=np.int8),
        "b_q": np.array([10, -20, 30, 0], dtype=np.int32),
        "b_scale": b_scale,
        "y_scale": np.array(0.05, dtype=np.float32),
        "y_zp": np.array(-3, dtype=np.int8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "x_scale", "x_zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xf"], name="dq_in"),
        helper.make_node(
            "DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wf"], name="dq_w", axis=0
        ),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["bf"], name="dq_b", axis=0),
        helper.make_node("Conv", ["xf", "wf", "bf"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "y_scale", "y_zp"], ["yq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["Y"], name="dq_out"),
    ]
    return make_model(nodes, [vi("X", [1, 3, 6, 6])], [vi("Y", [1, 4, 6, 6])], inits)


def test_qdq_graph_imports_with_quant_params_and_exports_back_as_qdq() -> None:
    model = _qdq_model()
    graph = round_trip(model, optimize=False)  # ORT's reference QDQ semantics
    assert ops(graph) == Counter({"QUANTIZE": 2, "DEQUANTIZE": 4, "CONV_2D": 1, "RELU": 1})
    xq = graph.tensor("xq")
    assert xq.dtype == "uint8" and xq.quant is not None and xq.quant.zero_point[0] == 128
    wq = graph.tensor("w_q")
    assert wq.is_constant and wq.dtype == "int8"
    assert wq.quant is not None and wq.quant.axis == 0 and wq.quant.scale.size == 4
    exported = export_onnx(graph)
    exported_ops = Counter(n.op_type for n in exported.graph.node)
    assert exported_ops["QuantizeLinear"] == 2 and exported_ops["DequantizeLinear"] == 4
    x = random_input((1, 3, 6, 6))  # and ORT's fused int8 kernels agree too
    assert_close(run_onnx(model, [x])[0], run_onnx(exported, [x])[0])


def test_qdq_model_from_onnxruntime_quantizer(tmp_path: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    torch.manual_seed(3)
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    float_path, q_path = tmp_path / "f.onnx", tmp_path / "q.onnx"
    float_path.write_bytes(export_torch_onnx(module, (1, 3, 8, 8)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.data = iter([{"input": random_input((1, 3, 8, 8))} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.data, None)

    quantize_static(
        str(float_path), str(q_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True
    )
    graph = round_trip(q_path, optimize=False)
    assert {"QUANTIZE", "DEQUANTIZE", "CONV_2D"} <= set(ops(graph))
    assert any(t.quant is not None and t.quant.axis == 0 for t in graph.constants())


def test_tflite_int8_semantics_are_refused_with_a_clear_message(models_dir: Path) -> None:
    graph = import_tflite(models_dir / "ad01_int8.tflite")
    with pytest.raises(UnsupportedOperatorError, match="TFLite integer semantics"):
        export_onnx(graph)
    hybrid = import_tflite(models_dir / "kws_ref_model_float32.tflite")
    with pytest.raises(UnsupportedOperatorError, match="hybrid"):
        export_onnx(hybrid)


# --------------------------------------------------------------------------- NHWC export


def test_nhwc_graph_exports_with_transposes_and_matches_torch() -> None:
    """A hand-built NHWC graph (TFLite conventions) against the same network in PyTorch."""
    x = random_input((1, 9, 9, 3))
    cw, cb = w(4, 3, 3, 3), w(4)  # OHWI
    dw, db = w(1, 3, 3, 8), w(8)  # [1, kh, kw, C*M], multiplier 2
    bn = [np.abs(w(8)) + 0.5, w(8), w(8), np.abs(w(8)) + 0.5]
    fw, fb = w(5, 8 * 2 * 2), w(5)
    tensors = {
        "x": Tensor("x", (1, 9, 9, 3), "float32"),
        "cw": Tensor("cw", cw.shape, "float32", cw),
        "cb": Tensor("cb", cb.shape, "float32", cb),
        "c": Tensor("c", (1, 5, 5, 4), "float32"),
        "dw": Tensor("dw", dw.shape, "float32", dw),
        "db": Tensor("db", db.shape, "float32", db),
        "d": Tensor("d", (1, 5, 5, 8), "float32"),
        "m": Tensor("m", (1, 4, 4, 8), "float32"),
        "a": Tensor("a", (1, 2, 2, 8), "float32"),
        **{f"bn{i}": Tensor(f"bn{i}", (8,), "float32", bn[i]) for i in range(4)},
        "b": Tensor("b", (1, 2, 2, 8), "float32"),
        "fw": Tensor("fw", fw.shape, "float32", fw),
        "fb": Tensor("fb", fb.shape, "float32", fb),
        "f": Tensor("f", (1, 5), "float32"),
        "y": Tensor("y", (1, 5), "float32"),
    }
    window = {"strides": (2, 2), "dilations": (1, 1), "pads": (1, 1, 1, 1)}
    dw_attrs = {"strides": (1, 1), "pads": (1, 1, 1, 1), "depth_multiplier": 2}
    avg_attrs = {"kernel": (3, 3), "strides": (2, 2), "pads": (1, 1, 1, 1)}
    nodes = [
        Node("conv", "CONV_2D", ["x", "cw", "cb"], ["c"], {**window, "activation": "RELU6"}),
        Node(
            "dw", "DEPTHWISE_CONV_2D", ["c", "dw", "db"], ["d"], {**dw_attrs, "activation": "RELU"}
        ),
        Node("max", "MAX_POOL_2D", ["d"], ["m"], {"kernel": (2, 2), "strides": (1, 1)}),
        Node("avg", "AVERAGE_POOL_2D", ["m"], ["a"], {**avg_attrs, "activation": "TANH"}),
        Node("bn", "BATCH_NORM", ["a", "bn0", "bn1", "bn2", "bn3"], ["b"], {"epsilon": 1e-3}),
        Node("fc", "FULLY_CONNECTED", ["b", "fw", "fb"], ["f"], {"activation": "RELU_N1_TO_1"}),
        Node("softmax", "SOFTMAX", ["f"], ["y"], {"axis": -1, "beta": 2.0}),
    ]
    graph = Graph("nhwc", tensors, nodes, ["x"], ["y"], layout="NHWC")
    graph.validate()
    got = run_onnx(export_onnx(graph), [x])[0]

    t = torch.from_numpy
    with torch.no_grad():
        h = t(x).permute(0, 3, 1, 2)
        h = F.conv2d(h, t(cw).permute(0, 3, 1, 2), t(cb), stride=2, padding=1).clamp(0, 6)
        h = F.relu(F.conv2d(h, t(dw).permute(3, 0, 1, 2), t(db), padding=1, groups=4))
        h = F.max_pool2d(h, 2, stride=1)
        h = torch.tanh(F.avg_pool2d(h, 3, stride=2, padding=1, count_include_pad=False))
        h = F.batch_norm(h, t(bn[2]), t(bn[3]), t(bn[0]), t(bn[1]), eps=1e-3)
        h = h.permute(0, 2, 3, 1).reshape(1, -1)  # TFLite flattens in NHWC order
        h = F.linear(h, t(fw), t(fb)).clamp(-1, 1)
        expected = torch.softmax(2.0 * h, dim=-1).numpy()
    assert_close(expected, got)
    assert_close(run_reference(graph, [x])["y"], got)


@pytest.mark.parametrize(
    "name", ["vww_96_float.tflite", "pretrainedResnet.tflite", "ad01_fp32.tflite"]
)
def test_float_tflite_models_export_and_match_tflm(models_dir: Path, name: str) -> None:
    path = models_dir / name
    graph = import_tflite(path)
    exported = export_onnx(graph)
    # the ONNX model is self-contained and valid on its own
    onnx.checker.check_model(exported, full_check=True)
    rng = np.random.default_rng(5)
    for _ in range(2):
        x = rng.standard_normal(graph.tensor(graph.inputs[0]).shape).astype(np.float32)
        expected = run_tflm(path, [x])[0]
        assert_close(expected, run_onnx(exported, [x])[0])


def test_fused_activations_are_exported_as_separate_nodes() -> None:
    tensors = {
        "x": Tensor("x", (1, 2, 4, 4), "float32"),
        "k": Tensor("k", (3, 2, 1, 1), "float32", w(3, 2, 1, 1)),
        "c": Tensor("c", (1, 3, 4, 4), "float32"),
        "y": Tensor("y", (1, 3, 4, 4), "float32"),
    }
    nodes = [
        Node("conv", "CONV_2D", ["x", "k"], ["c"], {"activation": "RELU6"}),
        Node("add", "ADD", ["c", "c"], ["y"], {"activation": "TANH"}),
    ]
    graph = Graph("fused", tensors, nodes, ["x"], ["y"])
    exported = export_onnx(graph)
    assert [n.op_type for n in exported.graph.node] == ["Conv", "Clip", "Add", "Tanh"]
    x = random_input((1, 2, 4, 4)) * 5
    assert_close(run_reference(graph, [x])["y"], run_onnx(exported, [x])[0])


# --------------------------------------------------------------------------- refusals


def test_unsupported_operators_name_op_and_node() -> None:
    conv3d = helper.make_node("Conv", ["X", "W"], ["Y"], name="conv3d_node")
    model = make_model(
        [conv3d], [vi("X", [1, 2, 4, 4, 4])], [any_shape("Y", 5)], {"W": w(3, 2, 1, 1, 1)}
    )
    with pytest.raises(UnsupportedOperatorError, match="3-D") as info:
        import_onnx(model)
    assert (info.value.op, info.value.node) == ("Conv", "conv3d_node")

    topk = helper.make_node("LRN", ["X"], ["Y"], name="lrn_node", size=3)
    model = make_model([topk], [vi("X", [1, 2, 4, 4])], [any_shape("Y", 4)])
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    assert (info.value.op, info.value.node) == ("LRN", "lrn_node")

    custom = helper.make_node("FusedConv", ["X"], ["Y"], name="ms_node", domain="com.microsoft")
    model = make_model([custom], [vi("X", [1, 2])], [vi("Y", [1, 2])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOperatorError) as info:
        import_onnx(model)
    assert (info.value.op, info.value.node) == ("com.microsoft::FusedConv", "ms_node")


def test_dynamic_batch_is_fixed_and_other_dynamic_dims_refused() -> None:
    node = helper.make_node("Relu", ["X"], ["Y"], name="relu")
    graph = import_onnx(make_model([node], [vi("X", ["batch", 3])], [vi("Y", ["batch", 3])]))
    assert graph.tensor("X").shape == (1, 3) and graph.tensor("Y").shape == (1, 3)
    model = make_model([node], [vi("X", [1, "width"])], [vi("Y", [1, "width"])])
    with pytest.raises(InvalidModelError, match="dynamic dimension 'width' at axis 1"):
        import_onnx(model)


def test_hostile_constant_of_shape_is_refused_quickly() -> None:
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], name="cos"),
        helper.make_node("Add", ["X", "big"], ["Y"], name="add"),
    ]
    shape = np.array([1, 100000, 100000], dtype=np.int64)
    model = make_model(nodes, [vi("X", [1, 1, 1])], [any_shape("Y", 3)], {"shape": shape})
    with time_limit(10), pytest.raises(InvalidModelError, match="elements"):
        import_onnx(model)
    # small initializers, huge folded result: 5,000 indices into 5,000-wide rows
    gather = helper.make_node("Gather", ["data", "idx"], ["G"], name="gather", axis=0)
    inits: dict[str, np.ndarray] = {"data": np.ones((1, 5000), np.float32)}
    inits["idx"] = np.zeros(5000, np.int64)
    model = make_model([gather], [], [vi("G", [5000, 5000])], inits)
    with time_limit(10), pytest.raises(InvalidModelError, match="25000000 elements"):
        import_onnx(model)


def _small_model_bytes() -> bytes:
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )
    return export_torch_onnx(module, (1, 3, 4, 4))


def test_corrupt_files_raise_only_invalid_model_error() -> None:
    data = _small_model_bytes()
    outcomes: Counter[str] = Counter()
    with time_limit(60):
        for label, case in corruptions(data, seed=3, n_flips=120, head_bytes=512):
            try:
                graph = import_onnx(case)
            except InvalidModelError as exc:
                assert str(exc), label
                outcomes["refused"] += 1
            else:  # a flip inside the weights leaves a valid model: it must validate
                graph.validate()
                outcomes["accepted"] += 1
    assert outcomes["refused"] >= 30, outcomes
    for seed in range(20):
        with pytest.raises(InvalidModelError):
            import_onnx(random_bytes(seed, 2000))


def test_unreadable_sources_raise_invalid_model_error(tmp_path: Path, models_dir: Path) -> None:
    with pytest.raises(InvalidModelError, match="empty"):
        import_onnx(b"")
    with pytest.raises(InvalidModelError, match="cannot read"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(InvalidModelError, match="cannot read"):
        import_onnx(tmp_path)  # a directory
    with pytest.raises(InvalidModelError):
        import_onnx(models_dir / "ad01_fp32.tflite")  # a flatbuffer is no protobuf
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n" * 10)
    with pytest.raises(InvalidModelError):
        import_onnx(text)


# --------------------------------------------------------------------------- external data


def _save_external(tmp_path: Path) -> tuple[Path, onnx.ModelProto]:
    data = _small_model_bytes()
    model = onnx.load_from_string(data)  # save_model moves this one's data out
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "m.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    return path, onnx.load_from_string(data)


def _set_location(path: Path, location: str, length: int | None = None) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
            if entry.key == "length" and length is not None:
                entry.value = str(length)
    path.write_bytes(model.SerializeToString())


def test_external_data_inside_the_folder_loads(tmp_path: Path) -> None:
    path, inline = _save_external(tmp_path)
    assert (path.parent / "weights.bin").stat().st_size > 0
    graph = import_onnx(path)
    x = random_input((1, 3, 4, 4))
    assert_close(run_onnx(inline, [x])[0], run_onnx(path, [x])[0])
    assert_close(run_onnx(inline, [x])[0], run_onnx(export_onnx(graph), [x])[0])


def test_external_data_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    path, _ = _save_external(tmp_path)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((path.parent / "weights.bin").read_bytes())

    _set_location(path, "../outside.bin")
    with pytest.raises(InvalidModelError, match="relative path inside"):
        import_onnx(path)
    _set_location(path, str(outside))
    with pytest.raises(InvalidModelError, match="relative path inside"):
        import_onnx(path)
    (path.parent / "link.bin").symlink_to(outside)
    _set_location(path, "link.bin")
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        import_onnx(path)
    with pytest.raises(InvalidModelError, match="outside the model's folder"):
        run_onnx(path, [random_input((1, 3, 4, 4))])
    _set_location(path, "sub/../weights.bin")
    with pytest.raises(InvalidModelError, match="relative path inside"):
        import_onnx(path)
    _set_location(path, "absent.bin")
    with pytest.raises(InvalidModelError, match="does not exist"):
        import_onnx(path)
    _set_location(path, "weights.bin", length=3)
    with pytest.raises(InvalidModelError, match="needs"):
        import_onnx(path)
    _set_location(path, "weights.bin")
    with pytest.raises(InvalidModelError, match="load the model from its path"):
        import_onnx(path.read_bytes())


# --------------------------------------------------------------------------- ONNX Runtime


def test_run_onnx_accepts_every_source_and_checks_inputs(tmp_path: Path) -> None:
    data = _small_model_bytes()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    x = random_input((1, 3, 4, 4))
    ref = run_onnx(data, [x])[0]
    for source in (path, str(path), onnx.load_from_string(data)):
        np.testing.assert_array_equal(ref, run_onnx(source, [x])[0])
    assert_close(ref, run_onnx(data, [x], threads=2, optimize=False)[0])
    session = make_session(data)
    assert session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(UsageError, match="1 inputs, got 2"):
        run_onnx(data, [x, x])
    with pytest.raises(UsageError, match="shape"):
        run_onnx(data, [random_input((1, 3, 4, 5))])
    with pytest.raises(UsageError, match="float32"):
        run_onnx(data, [x.astype(np.float64)])
    with pytest.raises(InvalidModelError):
        run_onnx(b"garbage", [x])


def test_time_onnx_reports_sane_latency_stats() -> None:
    data = _small_model_bytes()
    stats = time_onnx(data, [random_input((1, 3, 4, 4))], repeats=20, warmup=2)
    assert isinstance(stats, LatencyStats)
    assert stats.repeats == 20 and stats.threads == 1
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert math.isfinite(stats.mean_ms) and stats.median_ms < 1000
    with pytest.raises(UsageError):
        time_onnx(data, [random_input((1, 3, 4, 4))], repeats=0)


def test_load_onnx_model_returns_a_copy_with_inline_data(tmp_path: Path) -> None:
    path, inline = _save_external(tmp_path)
    loaded = load_onnx_model(path)
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    loaded.graph.name = "changed"
    assert inline.graph.name != "changed"
