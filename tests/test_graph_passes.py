"""Computation-graph passes: each changes the graph as intended and keeps its outputs.

Outputs are checked by execution: the ONNX export of the graph before and after a pass
run in ONNX Runtime on the same input (and, for the real TFLite model, against TFLite
Micro's float kernels).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from crosslevel.graph import (
    eliminate_identity,
    fold_batchnorm,
    fold_bias_add,
    fold_constants,
    fuse_activations,
    optimize_graph,
    remove_dead_code,
)
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.onnx import export_onnx, import_onnx
from crosslevel.ir.tflite_io import import_tflite
from crosslevel.ir.torch_io import export_torch_onnx, import_torch
from crosslevel.model import zoo
from crosslevel.runtime.ort import run_onnx
from crosslevel.runtime.tflm import run_tflm

Pass = Callable[[Graph], Graph]
PASSES: list[Pass] = [
    fold_constants,
    fold_batchnorm,
    fold_bias_add,
    fuse_activations,
    eliminate_identity,
    remove_dead_code,
    optimize_graph,
]


def assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


def ops(graph: Graph) -> Counter[str]:
    return Counter(n.op for n in graph.nodes)


def run_graph(graph: Graph, x: np.ndarray) -> np.ndarray:
    return run_onnx(export_onnx(graph), [x])[0]


def assert_same_outputs(before: Graph, after: Graph, seed: int = 0) -> None:
    assert after.inputs == before.inputs and after.outputs == before.outputs
    x = np.random.default_rng(seed).standard_normal(before.tensor(before.inputs[0]).shape)
    x = x.astype(np.float32)
    assert_close(run_graph(before, x), run_graph(after, x))


def fingerprint(graph: Graph) -> str:
    """Everything a pass could mutate: nodes, attributes, tensors, weights, I/O."""
    digest = hashlib.sha256()
    digest.update(repr((graph.inputs, graph.outputs, graph.layout)).encode())
    for node in graph.nodes:
        digest.update(repr((node.name, node.op, node.inputs, node.outputs, node.attrs)).encode())
    for name, tensor in sorted(graph.tensors.items()):
        digest.update(repr((name, tensor.shape, tensor.dtype)).encode())
        if tensor.data is not None:
            digest.update(np.ascontiguousarray(tensor.data).tobytes())
        if tensor.quant is not None:
            digest.update(tensor.quant.scale.tobytes() + tensor.quant.zero_point.tobytes())
    return digest.hexdigest()


def randomize_bn(module: nn.Module, seed: int = 7) -> nn.Module:
    """Non-trivial BN statistics, so folding changes the weights measurably."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.3)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.3)
    return module


def torch_graph(module: nn.Module, shape: tuple[int, ...]) -> Graph:
    torch.manual_seed(0)
    return import_torch(randomize_bn(module), shape, keep_batchnorm=True)


# --------------------------------------------------------------------------- BN folding


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn2(self.dw(F.relu(self.bn(self.conv(x))))))


def test_conv_bn_relu_folds_and_fuses() -> None:
    graph = torch_graph(ConvBnRelu(), (1, 3, 8, 8))
    assert ops(graph) == Counter({"CONV_2D": 2, "BATCH_NORM": 2, "RELU": 1, "RELU6": 1})
    folded = fold_batchnorm(graph)
    assert ops(folded) == Counter({"CONV_2D": 2, "RELU": 1, "RELU6": 1})
    assert all(len(n.inputs) == 3 for n in folded.nodes if n.op == "CONV_2D")  # bias added
    assert_same_outputs(graph, folded)
    fused = fuse_activations(folded)
    assert ops(fused) == Counter({"CONV_2D": 2})
    assert [n.attrs["activation"] for n in fused.nodes] == ["RELU", "RELU6"]
    assert_same_outputs(graph, fused)
    # fused activations go back to separate ONNX nodes on export
    exported_ops = [n.op_type for n in export_onnx(fused).graph.node]
    assert exported_ops == ["Conv", "Relu", "Conv", "Clip"]


def test_linear_bn1d_folds_but_not_over_a_non_feature_axis() -> None:
    module = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    graph = torch_graph(module, (2, 6))
    folded = fold_batchnorm(graph)
    assert ops(folded)["BATCH_NORM"] == 0 and ops(folded)["FULLY_CONNECTED"] == 2
    assert_same_outputs(graph, folded)

    # rank-3: Linear acts on the last axis, BatchNorm1d normalizes axis 1: not foldable
    seq = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(3))
    graph3 = torch_graph(seq, (2, 3, 4))
    assert ops(fold_batchnorm(graph3))["BATCH_NORM"] == 1


class SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_bn_not_folded_when_the_conv_output_has_another_reader() -> None:
    graph = torch_graph(SharedConv(), (1, 2, 4, 4))
    folded = fold_batchnorm(graph)
    assert ops(folded)["BATCH_NORM"] == 1
    assert fingerprint(folded) == fingerprint(graph)


# --------------------------------------------------------------------------- bias ADD folding


class Projections(nn.Module):
    """Rank-3 Linear layers (MatMul + Add in ONNX), a conv plus a channel constant."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(6, 8)
        self.ffn = nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.conv = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        self.shift = nn.Parameter(torch.randn(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.q(x) + self.pos  # pos varies over tokens: stays an ADD
        h = F.relu(self.ffn(h))  # MatMul + Add + Relu -> one FC with RELU
        img = self.conv(h.unsqueeze(1)) + self.shift  # per-channel constant -> conv bias
        return img + img  # two activations: stays an ADD


def test_bias_adds_fold_into_fc_and_conv() -> None:
    graph = torch_graph(Projections(), (2, 5, 6))
    assert ops(graph)["ADD"] == 5
    folded = fold_bias_add(graph)
    assert ops(folded)["ADD"] == 2
    assert all(len(n.inputs) == 3 for n in folded.nodes if n.op in ("FULLY_CONNECTED", "CONV_2D"))
    assert_same_outputs(graph, folded)
    optimized = optimize_graph(graph)
    assert ops(optimized)["RELU"] == 0 and ops(optimized)["ADD"] == 2
    assert_same_outputs(graph, optimized)


# --------------------------------------------------------------------------- activation fusion


class Branchy(nn.Module):
    """Residual add + ReLU, concat + ReLU, pool + ReLU, FC + tanh, a shared conv output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.c = nn.Conv2d(8, 4, 1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        r = F.relu(a + x)  # ADD + RELU
        shared = self.b(r)  # read by the relu and by the concat: not fusable
        cat = F.relu(torch.cat([F.relu(shared), shared], dim=1))  # CONCATENATION + RELU
        y = F.relu(F.max_pool2d(self.c(cat), 2))  # MAX_POOL_2D + RELU
        return torch.tanh(self.fc(y.flatten(1)))  # FULLY_CONNECTED + TANH


def test_activations_fuse_into_adds_concats_pools_and_fc() -> None:
    graph = torch_graph(Branchy(), (1, 4, 4, 4))
    assert ops(graph)["RELU"] == 4 and ops(graph)["TANH"] == 1
    fused = fuse_activations(graph)
    assert ops(fused)["RELU"] == 1 and ops(fused)["TANH"] == 0  # the shared conv's ReLU stays
    activations = {n.op: n.attrs.get("activation") for n in fused.nodes if n.op != "CONV_2D"}
    assert activations["ADD"] == "RELU" and activations["CONCATENATION"] == "RELU"
    assert activations["MAX_POOL_2D"] == "RELU" and activations["FULLY_CONNECTED"] == "TANH"
    assert fused.outputs == graph.outputs  # the TANH wrote the output: its name is kept
    assert_same_outputs(graph, fused)


def _chain(producer_attrs: dict[str, object], act: Node) -> Graph:
    rng = np.random.default_rng(2)
    k = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    tensors = {
        "x": Tensor("x", (1, 2, 3, 3), "float32"),
        "k": Tensor("k", k.shape, "float32", k),
        "c": Tensor("c", (1, 3, 3, 3), "float32"),
        "y": Tensor("y", (1, 3, 3, 3), "float32"),
    }
    conv = Node("conv", "CONV_2D", ["x", "k"], ["c"], dict(producer_attrs))
    return Graph("chain", tensors, [conv, act], ["x"], ["y"])


@pytest.mark.parametrize(
    ("lo", "hi", "fused_as"), [(0.0, 6.0, "RELU6"), (-1.0, 1.0, "RELU_N1_TO_1"), (-2.0, 3.0, None)]
)
def test_clip_fuses_only_with_fused_activation_bounds(
    lo: float, hi: float, fused_as: str | None
) -> None:
    graph = _chain({}, Node("clip", "CLIP", ["c"], ["y"], {"min": lo, "max": hi}))
    fused = fuse_activations(graph)
    if fused_as is None:
        assert ops(fused) == ops(graph)
    else:
        assert [(n.op, n.attrs["activation"]) for n in fused.nodes] == [("CONV_2D", fused_as)]
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32) * 4
    assert_close(run_graph(graph, x), run_graph(fused, x))


def test_no_fusion_into_a_producer_that_already_has_an_activation() -> None:
    graph = _chain({"activation": "RELU"}, Node("tanh", "TANH", ["c"], ["y"]))
    assert ops(fuse_activations(graph)) == Counter({"CONV_2D": 1, "TANH": 1})


def test_quantized_tensors_fuse_only_with_identical_quantization() -> None:
    def graph_with(out_scale: float) -> Graph:
        q = QuantParams(np.array([0.1]), np.array([-5]))
        tensors = {
            "a": Tensor("a", (1, 4), "int8", quant=q),
            "b": Tensor("b", (1, 4), "int8", quant=q),
            "s": Tensor("s", (1, 4), "int8", quant=q),
            "y": Tensor(
                "y", (1, 4), "int8", quant=QuantParams(np.array([out_scale]), np.array([-5]))
            ),
        }
        nodes = [Node("add", "ADD", ["a", "b"], ["s"]), Node("relu", "RELU", ["s"], ["y"])]
        return Graph("q", tensors, nodes, ["a", "b"], ["y"], layout="NHWC")

    assert ops(fuse_activations(graph_with(0.1))) == Counter({"ADD": 1})
    assert ops(fuse_activations(graph_with(0.2))) == Counter({"ADD": 1, "RELU": 1})


# --------------------------------------------------------------------------- identity elimination


def _identity_model() -> bytes:
    """Dropout, Identity, a flatten chain, a cancelling and a composing transpose pair."""
    rng = np.random.default_rng(4)
    inits: dict[str, np.ndarray] = {
        "w": rng.standard_normal((5, 24)).astype(np.float32),
        "s1": np.array([1, 24], dtype=np.int64),
        "s2": np.array([1, 2, 12], dtype=np.int64),
        "s3": np.array([1, 24], dtype=np.int64),
        "same": np.array([1, 5], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Dropout", ["X"], ["d"], name="drop"),
        helper.make_node("Transpose", ["d"], ["t1"], name="t1", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], name="t2", perm=[0, 3, 1, 2]),  # cancels
        helper.make_node("Relu", ["t2"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["u1"], name="u1", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["u1"], ["u2"], name="u2", perm=[0, 1, 3, 2]),  # composes
        helper.make_node("Flatten", ["u2"], ["f"], name="flatten"),
        helper.make_node("Reshape", ["f", "s2"], ["g"], name="reshape1"),
        helper.make_node("Reshape", ["g", "s1"], ["h"], name="reshape2"),
        helper.make_node("Identity", ["h"], ["i"], name="identity"),
        helper.make_node("Gemm", ["i", "w"], ["o"], name="fc", transB=1),
        helper.make_node("Reshape", ["o", "same"], ["o2"], name="reshape_same"),
        helper.make_node("Identity", ["o2"], ["Y"], name="last"),
    ]
    graph = helper.make_graph(
        nodes,
        "identities",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2, 3, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_eliminate_identity_removes_noops_and_collapses_chains() -> None:
    data = _identity_model()
    graph = import_onnx(data)
    assert ops(graph) == Counter(
        {"TRANSPOSE": 4, "RESHAPE": 4, "DROPOUT": 1, "IDENTITY": 2, "RELU": 1, "FULLY_CONNECTED": 1}
    )
    clean = eliminate_identity(graph)
    assert ops(clean) == Counter({"RELU": 1, "TRANSPOSE": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1})
    (transpose,) = [n for n in clean.nodes if n.op == "TRANSPOSE"]
    assert tuple(transpose.attrs["perm"]) == (0, 2, 3, 1)  # [0,2,1,3] then [0,1,3,2]
    assert clean.outputs == ["Y"] and clean.nodes[-1].outputs == ["Y"]
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 4)).astype(np.float32)
    assert_close(run_onnx(data, [x])[0], run_graph(clean, x))


def test_identity_between_graph_input_and_output_is_kept() -> None:
    tensors = {"x": Tensor("x", (2, 3), "float32"), "y": Tensor("y", (2, 3), "float32")}
    graph = Graph("io", tensors, [Node("id", "IDENTITY", ["x"], ["y"])], ["x"], ["y"])
    assert ops(eliminate_identity(graph)) == Counter({"IDENTITY": 1})


def test_dropout_writing_an_output_renames_its_input_for_every_reader() -> None:
    """x -> relu -> r; r read by tanh (before) and dropout -> y (output), exp after."""
    names = ("x", "r", "t", "y", "e")
    tensors = {n: Tensor(n, (2, 3), "float32") for n in names}
    nodes = [
        Node("relu", "RELU", ["x"], ["r"]),
        Node("tanh", "TANH", ["r"], ["t"]),
        Node("drop", "DROPOUT", ["r"], ["y"]),
        Node("exp", "EXP", ["r"], ["e"]),
    ]
    graph = Graph("rename", tensors, nodes, ["x"], ["t", "y", "e"])
    clean = eliminate_identity(graph)
    assert [(n.op, n.inputs, n.outputs) for n in clean.nodes] == [
        ("RELU", ["x"], ["y"]),
        ("TANH", ["y"], ["t"]),
        ("EXP", ["y"], ["e"]),
    ]
    assert "r" not in clean.tensors and clean.outputs == ["t", "y", "e"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    before = run_onnx(export_onnx(graph), [x])
    after = run_onnx(export_onnx(clean), [x])
    for b, a in zip(before, after, strict=True):
        assert_close(b, a)


# --------------------------------------------------------------------------- dead code


def test_remove_dead_code_drops_unreached_nodes_and_tensors() -> None:
    rng = np.random.default_rng(5)
    k = rng.standard_normal((2, 2, 1, 1)).astype(np.float32)
    tensors = {
        "x": Tensor("x", (1, 2, 3, 3), "float32"),
        "unused_in": Tensor("unused_in", (4,), "float32"),
        "k": Tensor("k", k.shape, "float32", k),
        "orphan": Tensor("orphan", (100,), "float32", np.zeros(100, np.float32)),
        "c": Tensor("c", (1, 2, 3, 3), "float32"),
        "dead1": Tensor("dead1", (1, 2, 3, 3), "float32"),
        "dead2": Tensor("dead2", (1, 2, 3, 3), "float32"),
        "y": Tensor("y", (1, 2, 3, 3), "float32"),
    }
    nodes = [
        Node("conv", "CONV_2D", ["x", "k"], ["c"]),
        Node("dead_conv", "CONV_2D", ["c", "k"], ["dead1"]),
        Node("dead_relu", "RELU", ["dead1"], ["dead2"]),
        Node("relu", "RELU", ["c"], ["y"]),
    ]
    graph = Graph("dead", tensors, nodes, ["x", "unused_in"], ["y"])
    clean = remove_dead_code(graph)
    assert [n.name for n in clean.nodes] == ["conv", "relu"]
    assert set(clean.tensors) == {"x", "unused_in", "k", "c", "y"}
    assert clean.inputs == ["x", "unused_in"]  # the interface is kept
    assert ops(graph)["CONV_2D"] == 2  # input untouched


# --------------------------------------------------------------------------- constant folding


def test_fold_constants_evaluates_constant_subgraphs() -> None:
    rng = np.random.default_rng(6)
    w_io = rng.standard_normal((6, 4)).astype(np.float32)  # [K, O]: transposed at run time
    b1, b2 = rng.standard_normal(2).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    scale = rng.standard_normal(4).astype(np.float32)
    wq = rng.integers(-127, 127, (4, 4)).astype(np.int8)
    tensors = {
        "x": Tensor("x", (3, 6), "float32"),
        "w_io": Tensor("w_io", (6, 4), "float32", w_io),
        "w": Tensor("w", (4, 6), "float32"),
        "b1": Tensor("b1", (2,), "float32", b1),
        "b2": Tensor("b2", (2,), "float32", b2),
        "b": Tensor("b", (4,), "float32"),
        "scale": Tensor("scale", (4,), "float32", scale),
        "scale2": Tensor("scale2", (1, 4), "float32"),
        "scale3": Tensor("scale3", (1, 4), "float32"),
        "fc": Tensor("fc", (3, 4), "float32"),
        "y0": Tensor("y0", (3, 4), "float32"),
        "wq": Tensor("wq", (4, 4), "int8", wq, quant=QuantParams(np.array([0.05]), np.array([0]))),
        "wf": Tensor("wf", (4, 4), "float32"),
        "y": Tensor("y", (3, 4), "float32"),
    }
    nodes = [
        Node("t", "TRANSPOSE", ["w_io"], ["w"], {"perm": (1, 0)}),
        Node("cat", "CONCATENATION", ["b1", "b2"], ["b"], {"axis": 0}),
        Node("rs", "RESHAPE", ["scale"], ["scale2"], {"shape": (1, 4)}),
        Node("sq", "MUL", ["scale2", "scale2"], ["scale3"], {"activation": "RELU6"}),
        Node("fc", "FULLY_CONNECTED", ["x", "w", "b"], ["fc"]),
        Node("mul", "MUL", ["fc", "scale3"], ["y0"]),
        Node("dq", "DEQUANTIZE", ["wq"], ["wf"]),  # a QDQ weight stays quantized
        Node("mm", "BATCH_MATMUL", ["y0", "wf"], ["y"]),
    ]
    graph = Graph("consts", tensors, nodes, ["x"], ["y"])
    folded = fold_constants(graph)
    assert ops(folded) == Counter(
        {"FULLY_CONNECTED": 1, "MUL": 1, "DEQUANTIZE": 1, "BATCH_MATMUL": 1}
    )
    np.testing.assert_allclose(np.asarray(folded.tensor("w").data), w_io.T)
    np.testing.assert_allclose(
        np.asarray(folded.tensor("scale3").data), np.clip(scale**2, 0, 6)[None]
    )
    assert_same_outputs(graph, folded)


def test_fold_constants_keeps_a_node_that_writes_a_graph_output() -> None:
    c = np.arange(4, dtype=np.float32)
    tensors = {
        "x": Tensor("x", (4,), "float32"),
        "c": Tensor("c", (4,), "float32", c),
        "y": Tensor("y", (4,), "float32"),
        "z": Tensor("z", (4,), "float32"),
    }
    nodes = [Node("neg", "NEG", ["c"], ["y"]), Node("add", "ADD", ["x", "y"], ["z"])]
    graph = Graph("out", tensors, nodes, ["x"], ["y", "z"])
    assert ops(fold_constants(graph)) == Counter({"NEG": 1, "ADD": 1})


# --------------------------------------------------------------------------- whole pipeline


@pytest.mark.parametrize("name", ["mobilenet_v2", "inception_cells", "tiny_transformer", "ds_cnn"])
def test_optimize_graph_on_zoo_models(name: str) -> None:
    entry = zoo.ZOO[name]
    shape = (1, *entry.input_shape)
    torch.manual_seed(0)
    module = randomize_bn(zoo.build(name))
    original = export_torch_onnx(module, shape, keep_batchnorm=True)
    graph = import_onnx(original)
    optimized = optimize_graph(graph)
    before, after = ops(graph), ops(optimized)
    for op in ("BATCH_NORM", "DROPOUT", "IDENTITY", "RELU", "RELU6"):
        assert after[op] == 0 or name == "tiny_transformer", (op, after)
    assert len(optimized.nodes) < len(graph.nodes)
    assert after["CONV_2D"] == before["CONV_2D"]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert_close(run_onnx(original, [x])[0], run_graph(optimized, x))


def _unfuse(graph: Graph) -> Graph:
    """Split fused activations into separate nodes and add an IDENTITY: undone by the passes."""
    result = graph.copy()
    nodes: list[Node] = []
    for node in result.nodes:
        nodes.append(node)
        activation = node.attrs.get("activation", "NONE")
        if activation == "NONE":
            continue
        out = node.outputs[0]
        raw = f"{out}_raw"
        result.tensors[raw] = Tensor(raw, result.tensor(out).shape, "float32")
        node.outputs = [raw]
        node.attrs["activation"] = "NONE"
        nodes.append(Node(f"{node.name}_act", activation, [raw], [out]))
    first = nodes[0].outputs[0]
    copy_name = f"{first}_copy"
    result.tensors[copy_name] = Tensor(copy_name, result.tensor(first).shape, "float32")
    for node in nodes[1:]:
        node.inputs = [copy_name if i == first else i for i in node.inputs]
    nodes.insert(1, Node("identity", "IDENTITY", [first], [copy_name]))
    result.nodes = nodes
    result.validate()
    return result


def _insert_batchnorm(graph: Graph, after: str, seed: int) -> Graph:
    """Put a BATCH_NORM with random statistics behind node ``after`` (NHWC channels last)."""
    result = graph.copy()
    node = next(n for n in result.nodes if n.name == after)
    out = node.outputs[0]
    channels = result.tensor(out).shape[-1]
    rng = np.random.default_rng(seed)
    params = [
        rng.uniform(0.5, 1.5, channels),
        rng.normal(0, 0.2, channels),
        rng.normal(0, 0.3, channels),
        rng.uniform(0.5, 1.5, channels),
    ]
    names = []
    for i, value in enumerate(params):
        name = f"{after}_bn{i}"
        result.tensors[name] = Tensor(name, (channels,), "float32", value.astype(np.float32))
        names.append(name)
    pre = f"{out}_prebn"
    result.tensors[pre] = Tensor(pre, result.tensor(out).shape, "float32")
    node.outputs = [pre]
    index = result.nodes.index(node)
    result.nodes.insert(
        index + 1, Node(f"{after}_bn", "BATCH_NORM", [pre, *names], [out], {"epsilon": 1e-3})
    )
    result.validate()
    return result


def test_passes_on_a_real_float_tflite_model(models_dir: Path) -> None:
    """vww_96_float (MobileNetV1, NHWC): unfused + BN-inserted, then optimized back."""
    path = models_dir / "vww_96_float.tflite"
    graph = import_tflite(path)
    unfused = _unfuse(graph)
    assert len(unfused.nodes) == len(graph.nodes) + 27 + 1
    restored = optimize_graph(unfused)
    assert ops(restored) == ops(graph) and len(restored.nodes) == len(graph.nodes)
    assert [n.attrs.get("activation") for n in restored.nodes] == [
        n.attrs.get("activation") for n in graph.nodes
    ]
    x = np.random.default_rng(3).standard_normal((1, 96, 96, 3)).astype(np.float32)
    expected = run_tflm(path, [x])[0]
    assert_close(expected, run_graph(unfused, x))
    assert_close(expected, run_graph(restored, x))

    conv = graph.nodes[0].name  # CONV_2D (OHWI)
    depthwise = next(n.name for n in graph.nodes if n.op == "DEPTHWISE_CONV_2D")
    with_bn = _insert_batchnorm(_insert_batchnorm(unfused, conv, 1), depthwise, 2)
    folded = optimize_graph(with_bn)
    assert ops(folded) == ops(graph)
    assert_close(run_graph(with_bn, x), run_graph(folded, x))


# --------------------------------------------------------------------------- purity


@pytest.mark.parametrize("graph_pass", PASSES, ids=lambda p: p.__name__)
def test_passes_never_mutate_their_input(graph_pass: Pass) -> None:
    graph = torch_graph(Branchy(), (1, 4, 4, 4))
    conv_bn = torch_graph(ConvBnRelu(), (1, 3, 8, 8))
    for g in (graph, conv_bn, import_onnx(_identity_model())):
        before = fingerprint(g)
        result = graph_pass(g)
        assert fingerprint(g) == before
        assert result is not g
        result.validate()
