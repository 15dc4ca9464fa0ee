"""Layout pass (NCHW -> NHWC) and the NumPy reference executor it is checked with.

The reference executor is itself checked against PyTorch (the NCHW source of truth for
the zoo) and ONNX Runtime; the NHWC graphs are checked against the NCHW ones on the
transposed input, through ONNX Runtime and through TFLite Micro (float32 export).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.graph.layout import (
    METADATA_KEY,
    NHWC_PERM,
    from_graph_layout,
    to_graph_layout,
    to_nhwc,
)
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.ops import infer_shapes
from crosslevel.ir.tflite_io import tflite_tensor_order
from crosslevel.runtime.reference import run_node, run_reference
from crosslevel.runtime.tflm import tflm_every_tensor

RTOL = 1e-5


def assert_close(actual: np.ndarray, ref: np.ndarray) -> None:
    """The project's float contract: rtol 1e-5, atol 1e-5 * max(1, max|ref|)."""
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(actual, ref, rtol=RTOL, atol=atol)


class GraphBuilder:
    """Builds small IR graphs by hand; output shapes come from ``ir.ops`` inference."""

    def __init__(self, layout: str = "NCHW", seed: int = 0) -> None:
        self.graph = Graph("hand", {}, [], [], [], layout=layout)
        self.rng = np.random.default_rng(seed)

    def input(self, name: str, shape: tuple[int, ...]) -> str:
        self.graph.tensors[name] = Tensor(name, shape, "float32")
        self.graph.inputs.append(name)
        return name

    def const(self, name: str, data: np.ndarray) -> str:
        data = np.asarray(data, dtype=np.float32)
        self.graph.tensors[name] = Tensor(name, data.shape, "float32", data=data)
        return name

    def weights(self, name: str, shape: tuple[int, ...], scale: float = 0.5) -> str:
        return self.const(name, self.rng.normal(0.0, scale, shape))

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = f"t{len(self.graph.nodes)}_{op.lower()}"
        node = Node(f"n{len(self.graph.nodes)}_{op.lower()}", op, inputs, [out], attrs)
        shape = infer_shapes(self.graph, node)[0]
        self.graph.tensors[out] = Tensor(out, shape, "float32")
        self.graph.nodes.append(node)
        return out

    def conv(self, x: str, out_ch: int, k: int, groups: int = 1, **attrs: Any) -> str:
        cin = self.graph.tensors[x].shape[1]
        n = len(self.graph.nodes)
        w = self.weights(f"w{n}", (out_ch, cin // groups, k, k))
        b = self.weights(f"b{n}", (out_ch,), 0.1)
        attrs.setdefault("pads", (k // 2,) * 4)
        return self.op("CONV_2D", [x, w, b], groups=groups, **attrs)

    def done(self, *outputs: str) -> Graph:
        self.graph.outputs = list(outputs)
        self.graph.validate()
        return self.graph


def random_inputs(graph: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=graph.tensors[n].shape).astype(np.float32) for n in graph.inputs}


def run_nhwc(nhwc: Graph, nchw_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an NHWC graph on NCHW data; return outputs transposed back to NCHW."""
    feeds = {n: to_graph_layout(nhwc, n, x) for n, x in nchw_inputs.items()}
    outs = run_reference(nhwc, feeds)
    return {n: from_graph_layout(nhwc, n, y) for n, y in outs.items()}


def assert_same_function(nchw: Graph, nhwc: Graph, seed: int = 1) -> None:
    inputs = random_inputs(nchw, seed)
    ref = run_reference(nchw, inputs)
    got = run_nhwc(nhwc, inputs)
    assert list(got) == list(ref)
    for name in ref:
        assert_close(got[name], ref[name])


def tflm_all_tensors(model: bytes, graph: Graph, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every activation TFLM computed, by IR tensor name (TFLM keeps all tensors)."""
    arrays = tflm_every_tensor(model, inputs)
    return {
        name: arrays[k]
        for k, name in enumerate(tflite_tensor_order(graph))
        if name in graph.tensors and not graph.tensors[name].is_constant
    }


def _nodes(graph: Graph, op: str) -> list[Node]:
    return [n for n in graph.nodes if n.op == op]


# --------------------------------------------------------------------- graphs under test


def branchy_cnn() -> Graph:
    """Conv, depthwise (multiplier 2), pools, concat, broadcast add, mean, flatten+FC."""
    b = GraphBuilder()
    x = b.input("x", (1, 3, 9, 8))
    c1 = b.conv(x, 4, 3, strides=(2, 1), activation="RELU")
    dw = b.conv(c1, 8, 3, groups=4, activation="RELU6")
    mp = b.op("MAX_POOL_2D", [dw], kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1))
    c2 = b.conv(c1, 5, 1)
    cat = b.op("CONCATENATION", [mp, c2], axis=1)
    shift = b.weights("shift", (1, 13, 1, 1))
    added = b.op("ADD", [cat, shift], activation="RELU")
    ap = b.op("AVERAGE_POOL_2D", [added], kernel=(2, 2), strides=(2, 2), pads=(0, 0, 1, 0))
    flat = b.op("RESHAPE", [ap], shape=[1, -1])
    k = b.graph.tensors[flat].shape[1]
    fc = b.op("FULLY_CONNECTED", [flat, b.weights("fcw", (6, k)), b.weights("fcb", (6,))])
    pooled = b.op("MEAN", [added], axes=[2, 3], keepdims=True)
    squeezed = b.op("RESHAPE", [pooled], shape=[1, 13])
    soft = b.op("SOFTMAX", [squeezed], axis=-1)
    return b.done(fc, soft, added)


# --------------------------------------------------------------------- reference executor


def test_reference_matches_torch_on_nchw_ops() -> None:
    """Conv (plain, strided, dilated, grouped, depthwise), pools and FC against PyTorch."""
    b = GraphBuilder()
    x = b.input("x", (2, 4, 10, 9))
    c1 = b.conv(x, 6, 3, strides=(2, 1), dilations=(1, 2), pads=(1, 2, 1, 2))
    g2 = b.conv(c1, 6, 3, groups=2)
    dw = b.conv(g2, 12, 3, groups=6, activation="RELU6")
    mp = b.op("MAX_POOL_2D", [dw], kernel=(3, 2), strides=(2, 2), pads=(1, 0, 1, 0))
    ap = b.op("AVERAGE_POOL_2D", [mp], kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1))
    fc = b.op("FULLY_CONNECTED", [ap, b.weights("fw", (5, 12 * 3 * 4)), b.weights("fb", (5,))])
    graph = b.done(fc)
    inputs = random_inputs(graph)
    got = run_reference(graph, inputs, keep_intermediates=True)

    t = {n: torch.from_numpy(v.data) for n, v in graph.tensors.items() if v.data is not None}
    y = torch.from_numpy(inputs["x"])
    y = F.conv2d(F.pad(y, (2, 2, 1, 1)), t["w0"], t["b0"], stride=(2, 1), dilation=(1, 2))
    assert_close(got[c1], y.numpy())
    y = F.conv2d(y, t["w1"], t["b1"], padding=1, groups=2)
    y = torch.clamp(F.conv2d(y, t["w2"], t["b2"], padding=1, groups=6), 0, 6)
    assert_close(got[dw], y.numpy())
    y = F.max_pool2d(F.pad(y, (0, 0, 1, 1), value=-np.inf), (3, 2), stride=2)
    assert_close(got[mp], y.numpy())
    y = F.avg_pool2d(y, 3, stride=1, padding=1, count_include_pad=False)
    assert_close(got[ap], y.numpy())
    y = F.linear(y.reshape(2, -1), t["fw"], t["fb"])
    assert_close(got[fc], y.numpy())


def test_reference_rejects_wrong_input_shape() -> None:
    graph = branchy_cnn()
    with pytest.raises(InvalidModelError, match="shape"):
        run_reference(graph, {"x": np.zeros((1, 9, 8, 3), np.float32)})


def elementwise_zoo(layout: str) -> Graph:
    """Every element-wise, normalization and matmul operator of ``ir.ops`` in one graph."""
    b = GraphBuilder(layout)
    x = b.input("x", (2, 3, 4, 5))
    y = b.input("y", (2, 3, 4, 5))
    pos = b.op("ADD", [b.op("ABS", [x]), b.const("one", np.ones((1,), np.float32))])
    chain = [
        b.op("SQRT", [pos]), b.op("RSQRT", [pos]), b.op("EXP", [b.op("NEG", [x])]),
        b.op("ERF", [x]), b.op("LOGISTIC", [x]), b.op("TANH", [y]), b.op("HARD_SWISH", [x]),
        b.op("LEAKY_RELU", [x], alpha=0.15), b.op("CLIP", [x], min=-0.5, max=0.7),
        b.op("RELU6", [x]), b.op("RELU_N1_TO_1", [y]), b.op("RELU", [y]),
        b.op("DIV", [x, pos]), b.op("POW", [pos, b.const("e", np.full((1,), 1.5, np.float32))]),
        b.op("MAXIMUM", [x, y]), b.op("MINIMUM", [x, y]), b.op("SUB", [x, y]),
        b.op("MUL", [x, y], activation="RELU6"), b.op("IDENTITY", [x]),
    ]  # fmt: skip
    total = chain[0]
    for t in chain[1:]:
        total = b.op("ADD", [total, t])
    c = 3 if layout == "NCHW" else 5
    stats = [b.weights(f"bn{k}", (c,), 0.3) for k in range(4)]
    stats[3] = b.const("var", np.abs(b.graph.tensors[stats[3]].data) + 0.5)
    bn = b.op("BATCH_NORM", [total, *stats], epsilon=1e-3)
    ln = b.op("LAYER_NORM", [bn, b.weights("g", (4, 5)), b.weights("be", (4, 5))], axis=2,
              epsilon=1e-5)  # fmt: skip
    mm = b.op("BATCH_MATMUL", [ln, b.op("TRANSPOSE", [y], perm=[0, 1, 3, 2])])
    soft = b.op("SOFTMAX", [mm], axis=-1, beta=0.7)
    return b.done(soft, b.op("MEAN", [mm], axes=[1, 3], keepdims=False))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reference_matches_onnx_runtime_on_every_op_family(layout: str) -> None:
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.runtime.ort import run_onnx

    graph = elementwise_zoo(layout)
    inputs = random_inputs(graph)
    got = run_reference(graph, inputs)
    ref = run_onnx(export_onnx(graph), [inputs[n] for n in graph.inputs])
    for name, expected in zip(graph.outputs, ref, strict=True):
        assert_close(got[name], expected)


def test_reference_and_layout_on_the_transformer() -> None:
    """tiny_transformer: LAYER_NORM, BATCH_MATMUL, SOFTMAX, TRANSPOSE and RESHAPE chains."""
    from crosslevel.graph.optimize import optimize_graph
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.ir.torch_io import import_torch
    from crosslevel.model import zoo
    from crosslevel.runtime.ort import run_onnx

    torch.manual_seed(0)
    module = zoo.build("tiny_transformer", layers=1)
    nchw = optimize_graph(import_torch(module, (1, 1, 49, 10)))
    inputs = random_inputs(nchw)
    (ref,) = run_onnx(export_onnx(nchw), [inputs[nchw.inputs[0]]])
    assert_close(run_reference(nchw, inputs)[nchw.outputs[0]], ref)
    nhwc = to_nhwc(nchw)
    assert nhwc.tensors[nhwc.inputs[0]].shape == (1, 49, 10, 1)
    assert_same_function(nchw, nhwc)
    feeds = [to_graph_layout(nhwc, n, inputs[n]) for n in nhwc.inputs]
    assert_close(run_onnx(export_onnx(nhwc), feeds)[0], ref)


# --------------------------------------------------------------------- layout pass


def test_branchy_cnn_nhwc_matches_nchw() -> None:
    nchw = branchy_cnn()
    nhwc = to_nhwc(nchw)
    assert nhwc.layout == "NHWC" and nchw.layout == "NCHW"  # the input graph is untouched
    assert nhwc.tensors["x"].shape == (1, 9, 8, 3)
    assert nhwc.metadata[METADATA_KEY]["inputs"] == {"x": list(NHWC_PERM)}
    assert [n.op for n in _nodes(nhwc, "DEPTHWISE_CONV_2D")] == ["DEPTHWISE_CONV_2D"]
    dw = _nodes(nhwc, "DEPTHWISE_CONV_2D")[0]
    assert dw.attrs["depth_multiplier"] == 2 and "groups" not in dw.attrs
    assert nhwc.tensors[dw.inputs[1]].shape == (1, 3, 3, 8)
    assert _nodes(nhwc, "CONCATENATION")[0].attrs["axis"] == 3
    assert sorted(_nodes(nhwc, "MEAN")[0].attrs["axes"]) == [1, 2]
    # the flatten feeds an FC (columns permuted) and the H=W=1 reshape needs nothing
    assert not _nodes(nhwc, "TRANSPOSE")
    assert_same_function(nchw, nhwc)
    assert_same_in_runtimes(nchw, nhwc)


def assert_same_in_runtimes(nchw: Graph, nhwc: Graph) -> None:
    """ONNX Runtime on the NCHW graph = ONNX Runtime and TFLM (float32) on the NHWC one."""
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.ir.tflite_io import export_tflite
    from crosslevel.runtime.ort import run_onnx
    from crosslevel.runtime.tflm import run_tflm

    inputs = random_inputs(nchw, seed=4)
    ref = run_onnx(export_onnx(nchw), [inputs[n] for n in nchw.inputs])
    feeds = [to_graph_layout(nhwc, n, inputs[n]) for n in nhwc.inputs]
    for outs in (run_onnx(export_onnx(nhwc), feeds), run_tflm(export_tflite(nhwc), feeds)):
        for name, got, expected in zip(nhwc.outputs, outs, ref, strict=True):
            assert_close(from_graph_layout(nhwc, name, got), expected)


def test_flatten_into_non_fc_transposes_back() -> None:
    b = GraphBuilder()
    x = b.input("x", (1, 2, 3, 4))
    c = b.conv(x, 3, 3)
    flat = b.op("RESHAPE", [c], shape=[1, 36])
    soft = b.op("SOFTMAX", [flat], axis=-1)
    nchw = b.done(soft)
    nhwc = to_nhwc(nchw)
    transposes = _nodes(nhwc, "TRANSPOSE")
    assert len(transposes) == 1 and transposes[0].attrs["perm"] == [0, 3, 1, 2]
    assert_same_function(nchw, nhwc)
    assert_same_in_runtimes(nchw, nhwc)


def test_axis_attributes_are_remapped() -> None:
    """PAD pairs, SOFTMAX axis, TRANSPOSE perm, MEAN without keepdims, rank-4 output."""
    b = GraphBuilder()
    x = b.input("x", (1, 3, 4, 5))
    padded = b.op("PAD", [x], pads=[(0, 0), (1, 2), (0, 1), (2, 0)], value=0.0)
    soft = b.op("SOFTMAX", [padded], axis=1)
    conv = b.conv(soft, 4, 3)
    swapped = b.op("TRANSPOSE", [conv], perm=[0, 1, 3, 2])
    conv2 = b.conv(swapped, 2, 1)
    mean_h = b.op("MEAN", [conv2], axes=[2], keepdims=False)  # [1, C, W] in NCHW order
    nchw = b.done(mean_h, conv2)
    nhwc = to_nhwc(nchw)
    pad = _nodes(nhwc, "PAD")[0]
    assert pad.attrs["pads"] == [[0, 0], [0, 1], [2, 0], [1, 2]]
    assert _nodes(nhwc, "SOFTMAX")[0].attrs["axis"] == 3
    assert nhwc.tensors[conv2].shape == (1, 7, 5, 2)
    assert nhwc.metadata[METADATA_KEY]["outputs"][conv2] == list(NHWC_PERM)
    assert nhwc.tensors[mean_h].shape == (1, 2, 5)  # rank-3 outputs keep their order
    assert_same_function(nchw, nhwc)
    assert_same_in_runtimes(nchw, nhwc)


def test_fc_flattening_rank4_input_itself_gets_permuted_columns() -> None:
    b = GraphBuilder()
    x = b.input("x", (1, 2, 3, 3))
    c = b.conv(x, 4, 3, activation="RELU")
    fc = b.op("FULLY_CONNECTED", [c, b.weights("fw", (7, 36)), b.weights("fb", (7,))])
    nchw = b.done(fc)
    nhwc = to_nhwc(nchw)
    assert not _nodes(nhwc, "TRANSPOSE")
    assert_same_function(nchw, nhwc)
    assert_same_in_runtimes(nchw, nhwc)


def test_qdq_graph_keeps_per_channel_axes() -> None:
    """QUANTIZE/DEQUANTIZE graphs: per-channel axes follow the permutation."""
    b = GraphBuilder()
    x = b.input("x", (1, 4, 6, 6))
    g = b.graph
    rng = np.random.default_rng(3)
    scales = np.array([0.02, 0.05, 0.03, 0.04], np.float32)
    g.tensors["xq"] = Tensor("xq", (1, 4, 6, 6), "int8", quant=QuantParams(scales, [0] * 4, 1))
    g.nodes.append(Node("q", "QUANTIZE", [x], ["xq"]))
    g.tensors["xd"] = Tensor("xd", (1, 4, 6, 6), "float32")
    g.nodes.append(Node("dq", "DEQUANTIZE", ["xq"], ["xd"]))
    for name, shape in (("wc", (5, 4, 3, 3)), ("wd", (8, 1, 3, 3))):
        data = rng.integers(-127, 128, shape).astype(np.int8)
        quant = QuantParams(np.full(shape[0], 0.01, np.float32), [0] * shape[0], 0)
        g.tensors[f"{name}_q"] = Tensor(f"{name}_q", shape, "int8", data=data, quant=quant)
        g.tensors[name] = Tensor(name, shape, "float32")
        g.nodes.append(Node(f"{name}_dq", "DEQUANTIZE", [f"{name}_q"], [name]))
    dw = b.op("CONV_2D", ["xd", "wd"], groups=4, pads=(1, 1, 1, 1))
    nchw = b.done(dw, b.op("CONV_2D", ["xd", "wc"], pads=(1, 1, 1, 1)))
    nhwc = to_nhwc(nchw)
    assert nhwc.tensors["xq"].quant.axis == 3
    assert_same_function(nchw, nhwc)
    assert [n.op for n in _nodes(nhwc, "DEPTHWISE_CONV_2D")] == ["DEPTHWISE_CONV_2D"]


def test_grouped_conv_is_unsupported() -> None:
    b = GraphBuilder()
    x = b.input("x", (1, 4, 5, 5))
    nchw = b.done(b.conv(x, 4, 3, groups=2))
    with pytest.raises(UnsupportedOperatorError, match="CONV_2D.*n0_conv_2d.*groups"):
        to_nhwc(nchw)


def test_nhwc_graph_is_returned_unchanged() -> None:
    nhwc = to_nhwc(branchy_cnn())
    again = to_nhwc(nhwc)
    assert again is not nhwc
    assert [n.op for n in again.nodes] == [n.op for n in nhwc.nodes]
    assert {k: t.shape for k, t in again.tensors.items()} == {
        k: t.shape for k, t in nhwc.tensors.items()
    }


def test_fallback_ops_run_in_original_order() -> None:
    """An op without a layout rule (LAYER_NORM over W) sees its input in NCHW order."""
    b = GraphBuilder()
    x = b.input("x", (1, 3, 4, 5))
    c = b.conv(x, 2, 3)
    ln = b.op("LAYER_NORM", [c, b.weights("g", (5,)), b.weights("be", (5,))], axis=-1, epsilon=1e-5)
    nchw = b.done(b.conv(ln, 3, 1))
    nhwc = to_nhwc(nchw)
    assert [n.attrs["perm"] for n in _nodes(nhwc, "TRANSPOSE")] == [[0, 3, 1, 2], [0, 2, 3, 1]]
    assert_same_function(nchw, nhwc)


# --------------------------------------------------------------------- zoo models


ZOO_KWARGS: dict[str, dict[str, Any]] = {
    "digits_cnn": {},
    "ds_cnn": {},
    "resnet8": {},
    "mobilenet_v1_025": {"resolution": 64},
    "fc_autoencoder": {},
    "mobilenet_v2": {"resolution": 48, "width_mult": 0.35},
    "mcunet_v2": {"resolution": 48},
    "imu_cnn": {},
    "mnist1d_cnn": {},
    "inception_cells": {},
}


# Random deep nets amplify any perturbation, float32 rounding included, by about 1.2x per
# layer: MobileNetV2's 52 layers turn TFLM's and ONNX Runtime's per-node differences of
# <= 4e-7 (checked node by node below) into 8e-5 of the output, and the float64
# reference executor differs from ONNX Runtime as much. MobileNetV1's 28 layers reach
# 4.5e-5 on an AVX-512 host, whose ONNX Runtime kernels sum in another order than AVX2's
# (the per-node check below still holds them to float32 rounding). Bound relative to
# max|output|:
CHAOTIC: dict[str, float] = {"mobilenet_v2": 1e-3, "mobilenet_v1_025": 2e-4}


def _f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


@pytest.mark.parametrize("name", list(ZOO_KWARGS))
def test_zoo_nhwc_float32_matches_ort_in_tflm_and_onnx(name: str) -> None:
    """NCHW graph in ONNX Runtime = NHWC graph in ONNX Runtime = NHWC .tflite in TFLM."""
    from crosslevel.graph.optimize import optimize_graph
    from crosslevel.ir.onnx import export_onnx
    from crosslevel.ir.tflite_io import export_tflite
    from crosslevel.ir.torch_io import import_torch
    from crosslevel.model import zoo
    from crosslevel.model.int8_zoo import calibration_inputs, settle_batchnorm
    from crosslevel.runtime.ort import run_onnx
    from crosslevel.runtime.tflm import run_tflm

    kwargs = ZOO_KWARGS[name]
    torch.manual_seed(0)
    module = zoo.build(name, **kwargs)
    data = calibration_inputs(name, 8, **kwargs)
    settle_batchnorm(module, data)  # O(1) activations, so the comparison means something
    nchw = optimize_graph(import_torch(module, (1, *data.shape[1:])))
    nhwc = to_nhwc(nchw)
    x = data[:1]
    ref = run_onnx(export_onnx(nchw), [x])[0]
    x_nhwc = to_graph_layout(nhwc, nhwc.inputs[0], x)
    out = nhwc.outputs[0]
    via_onnx = run_onnx(export_onnx(nhwc), [x_nhwc])[0]
    assert_close(from_graph_layout(nhwc, out, via_onnx), ref)  # same float32 kernels
    model = export_tflite(nhwc)
    via_tflm = from_graph_layout(nhwc, out, run_tflm(model, [x_nhwc])[0])
    via_reference = run_nhwc(nhwc, {nchw.inputs[0]: x})[out]
    for got in (via_tflm, via_reference):
        if name in CHAOTIC:
            np.testing.assert_allclose(got, ref, rtol=0, atol=CHAOTIC[name] * np.abs(ref).max())
        else:
            assert_close(got, ref)
    values = tflm_all_tensors(model, nhwc, [x_nhwc])
    for node in nhwc.nodes:  # every node on TFLM's own inputs: float32 rounding only
        args = [values.get(i, nhwc.tensors[i].data) if i else None for i in node.inputs]
        expected = run_node(nhwc, node, [_f64(a) for a in args])
        assert_close(values[node.outputs[0]], expected)
    depthwise = [n for n in nchw.nodes if n.op == "CONV_2D" and n.attrs.get("groups", 1) > 1]
    assert len([n for n in nhwc.nodes if n.op == "DEPTHWISE_CONV_2D"]) == len(depthwise)
    assert not [n for n in nhwc.nodes if n.op == "TRANSPOSE"]  # flattens need none here
