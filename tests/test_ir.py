"""IR validation: every structural fault ends in one clear InvalidModelError."""

from __future__ import annotations

import numpy as np
import pytest

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.ops import infer_shapes, node_macs


def _conv_graph(layout: str = "NCHW") -> Graph:
    if layout == "NCHW":
        x, w, y = (1, 3, 8, 8), (4, 3, 3, 3), (1, 4, 4, 4)
    else:
        x, w, y = (1, 8, 8, 3), (4, 3, 3, 3), (1, 4, 4, 4)
    tensors = {
        "x": Tensor("x", x, "float32"),
        "w": Tensor("w", w, "float32", data=np.ones(w, np.float32)),
        "b": Tensor("b", (4,), "float32", data=np.zeros(4, np.float32)),
        "y": Tensor("y", y, "float32"),
        "z": Tensor("z", y, "float32"),
    }
    nodes = [
        Node("conv", "CONV_2D", ["x", "w", "b"], ["y"], {"strides": (2, 2), "pads": (1, 1, 1, 1)}),
        Node("relu", "RELU", ["y"], ["z"]),
    ]
    return Graph("g", tensors, nodes, ["x"], ["z"], layout=layout)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_valid_graph_and_macs(layout: str) -> None:
    graph = _conv_graph(layout)
    graph.validate()
    assert node_macs(graph, graph.nodes[0]) == 4 * 4 * 4 * 3 * 3 * 3
    assert node_macs(graph, graph.nodes[1]) == 0
    assert graph.tensors["y"].nbytes == 64 * 4


def test_shape_mismatch_is_named() -> None:
    graph = _conv_graph()
    graph.tensors["y"].shape = (1, 4, 8, 8)
    with pytest.raises(InvalidModelError, match="'conv'.*shape"):
        graph.validate()


def test_dangling_tensor() -> None:
    graph = _conv_graph()
    graph.tensors["q"] = Tensor("q", (1, 4, 4, 4), "float32")
    graph.nodes[1].inputs = ["q"]
    with pytest.raises(InvalidModelError, match="dangling tensor 'q'"):
        graph.validate()


def test_undefined_tensor() -> None:
    graph = _conv_graph()
    graph.nodes[1].inputs = ["nowhere"]
    with pytest.raises(InvalidModelError, match="undefined tensor"):
        graph.validate()


def test_cycle_is_detected() -> None:
    graph = _conv_graph()
    graph.tensors["z2"] = Tensor("z2", (1, 4, 4, 4), "float32")
    graph.nodes[1].inputs = ["z2"]
    graph.nodes.append(Node("back", "RELU", ["z"], ["z2"]))
    with pytest.raises(InvalidModelError, match="cycle"):
        graph.validate()


def test_out_of_order_nodes_are_reported_and_reorderable() -> None:
    graph = _conv_graph()
    graph.nodes.reverse()
    with pytest.raises(InvalidModelError, match="runs before its input"):
        graph.validate()
    graph.nodes = graph.topological_order()
    graph.validate()
    assert [n.name for n in graph.nodes] == ["conv", "relu"]


def test_two_writers() -> None:
    graph = _conv_graph()
    graph.nodes[1].outputs = ["y"]
    with pytest.raises(InvalidModelError, match="written by both"):
        graph.validate()


def test_unknown_operator_names_node() -> None:
    graph = _conv_graph()
    graph.nodes[1].op = "FANCY_OP"
    with pytest.raises(UnsupportedOperatorError, match="FANCY_OP at node 'relu'"):
        graph.validate()


def test_bad_dtype_and_quant() -> None:
    with pytest.raises(InvalidModelError):
        Tensor("t", (1,), "complex64")
    with pytest.raises(InvalidModelError):
        QuantParams(scale=np.array([0.0]), zero_point=np.array([0]))
    q = QuantParams(scale=[0.1, 0.2], zero_point=[0, 0], axis=0)
    assert q.per_channel


def test_broadcast_and_reshape_inference() -> None:
    tensors = {
        "a": Tensor("a", (1, 4, 2, 2), "float32"),
        "b": Tensor("b", (1, 4, 1, 1), "float32"),
        "c": Tensor("c", (1, 4, 2, 2), "float32"),
        "d": Tensor("d", (1, 16), "float32"),
    }
    add = Node("add", "ADD", ["a", "b"], ["c"])
    reshape = Node("r", "RESHAPE", ["c"], ["d"], {"shape": [1, -1]})
    graph = Graph("g", tensors, [add, reshape], ["a", "b"], ["d"])
    graph.validate()
    assert infer_shapes(graph, reshape) == [(1, 16)]
    reshape.attrs["shape"] = [3, -1]
    with pytest.raises(InvalidModelError, match="cannot reshape"):
        graph.validate()


def test_receptive_field_of_real_first_layers(models_dir) -> None:  # type: ignore[no-untyped-def]
    """vww (MobileNetV1): conv 3x3/2 then depthwise 3x3/1 then 1x1 conv, SAME padding."""
    from crosslevel.ir.ops import receptive_field
    from crosslevel.ir.tflite_io import import_tflite

    graph = import_tflite((models_dir / "vww_96_int8.tflite").read_bytes())
    rf = receptive_field(graph, graph.nodes[:3])
    assert rf.size == (7, 7)  # 3 + (3-1)*2 at stride 2, then the 1x1 adds nothing
    assert rf.jump == (2, 2)
    assert rf.start[0] <= 0
    with pytest.raises(InvalidModelError, match="does not map pixels"):
        receptive_field(graph, graph.nodes[-3:])
