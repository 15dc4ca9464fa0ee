"""The int8 NumPy executor against TensorFlow Lite Micro: bit-exact, tensor by tensor.

Real models nobody here wrote (the five int8 MLPerf Tiny files) and int8 zoo models from
the project's own quantizer run on seeded random int8 inputs plus the two saturating
constant inputs; outputs and every intermediate tensor must equal TFLM's exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor, unique_name
from crosslevel.ir.tflite_io import export_tflite, import_tflite, load_tflite_model
from crosslevel.model.int8_zoo import zoo_int8_tflite
from crosslevel.model.mlperf_tiny import INT8_FILES, models_dir
from crosslevel.runtime import int8_kernels as k
from crosslevel.runtime.int8_executor import run_int8, run_int8_all
from crosslevel.runtime.tflm import run_tflm, tflm_every_tensor

ZOO_MODELS = ("digits_cnn", "ds_cnn", "inception_cells")
SEEDS = range(5)


@pytest.fixture(scope="module")
def zoo_bytes() -> dict[str, bytes]:
    return {name: zoo_int8_tflite(name) for name in ZOO_MODELS}


def model_bytes(name: str, zoo: dict[str, bytes]) -> bytes:
    return zoo[name] if name in zoo else (models_dir() / name).read_bytes()


def int8_inputs(graph: Graph) -> Iterator[list[np.ndarray]]:
    """Seeded uniform int8 inputs, then all -128 and all 127 (saturating softmax rows)."""
    shapes = [graph.tensors[n].shape for n in graph.inputs]
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        yield [rng.integers(-128, 128, size=s, dtype=np.int8) for s in shapes]
    for value in (-128, 127):
        yield [np.full(s, value, dtype=np.int8) for s in shapes]


def file_order_names(buf: bytes) -> list[str]:
    """IR names of the file's tensors by index (the importer keeps file names, made unique)."""
    model, _ = load_tflite_model(buf)
    taken: set[str] = set()
    names = []
    for index, t in enumerate(model.subgraphs[0].tensors):
        raw = t.name.decode("utf-8", "replace") if isinstance(t.name, bytes) else ""
        name = unique_name(taken, raw or f"tensor_{index}")
        taken.add(name)
        names.append(name)
    return names


def tflm_every_tensor_by_name(buf: bytes, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every tensor TFLM holds after one invoke (kPreserveAllTensors), by IR name."""
    arrays = tflm_every_tensor(buf, inputs)
    return dict(zip(file_order_names(buf), arrays, strict=True))


def assert_every_tensor_equal(graph: Graph, buf: bytes, inputs: list[np.ndarray]) -> None:
    ours = run_int8_all(graph, inputs)
    theirs = tflm_every_tensor_by_name(buf, inputs)
    for node in graph.nodes:
        name = node.outputs[0]
        ref = theirs[name].reshape(ours[name].shape)
        diff = np.abs(ours[name].astype(np.float64) - ref)
        assert np.array_equal(ours[name], ref), (
            f"{node.op} {node.name!r}: {int(np.count_nonzero(diff))} elements differ "
            f"(max {float(diff.max())})"
        )


@pytest.mark.parametrize("name", [*INT8_FILES, *ZOO_MODELS])
def test_bit_exact_with_tflm(name: str, zoo_bytes: dict[str, bytes]) -> None:
    buf = model_bytes(name, zoo_bytes)
    graph = import_tflite(buf)
    for inputs in int8_inputs(graph):
        ours = run_int8(graph, inputs)
        theirs = run_tflm(buf, inputs, isolate=False)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), f"{name}: outputs differ from TFLM"
    assert_every_tensor_equal(graph, buf, next(int8_inputs(graph)))


def test_quantize_dequantize_and_mean_with_equal_scales(zoo_bytes: dict[str, bytes]) -> None:
    """ds_cnn rewired: float input -> QUANTIZE -> QUANTIZE (int8 requantize) -> ... ->
    MEAN whose output keeps its input's quantization -> ... -> DEQUANTIZE to float."""
    graph = import_tflite(zoo_bytes["ds_cnn"])
    x8 = graph.tensors[graph.inputs[0]]
    assert x8.quant is not None
    scale = float(x8.quant.scale[0])
    graph.tensors["x_float"] = Tensor("x_float", x8.shape, "float32")
    mid = QuantParams(np.array([scale * 1.7]), np.array([3]))
    graph.tensors["x_mid"] = Tensor("x_mid", x8.shape, "int8", quant=mid)
    graph.nodes[:0] = [
        Node("quantize_in", "QUANTIZE", ["x_float"], ["x_mid"]),
        Node("requantize_in", "QUANTIZE", ["x_mid"], [x8.name]),
    ]
    graph.inputs = ["x_float"]
    mean = next(n for n in graph.nodes if n.op == "MEAN")
    graph.tensors[mean.outputs[0]].quant = graph.tensors[mean.inputs[0]].quant
    y = graph.tensors[graph.outputs[0]]
    graph.tensors["y_float"] = Tensor("y_float", y.shape, "float32")
    graph.nodes.append(Node("dequantize_out", "DEQUANTIZE", [y.name], ["y_float"]))
    graph.outputs = ["y_float"]
    buf = export_tflite(graph)
    graph = import_tflite(buf)
    rng = np.random.default_rng(7)
    for _ in SEEDS:
        x = (2.0 * rng.normal(size=x8.shape)).astype(np.float32)
        ours, theirs = run_int8(graph, [x])[0], run_tflm(buf, [x], isolate=False)[0]
        assert ours.dtype == theirs.dtype == np.float32
        assert np.array_equal(ours, theirs)
    assert_every_tensor_equal(graph, buf, [x])


def test_single_rounding_is_not_what_tflm_does() -> None:
    """The rounding variant matters: TFLite's single-rounding multiply changes outputs."""
    x = np.arange(-(2**20), 2**20, 997, dtype=np.int64)
    m, s = k.quantize_multiplier(0.3 / 7.0)
    double = k.multiply_by_quantized_multiplier(x, m, s)
    single = k.multiply_by_quantized_multiplier(x, m, s, single_rounding=True)
    assert not np.array_equal(double, single)
    assert np.max(np.abs(double - x * (0.3 / 7.0))) <= 1.0


def test_fixed_point_helpers_on_known_values() -> None:
    assert [int(v) for v in k.quantize_multiplier(0.5)] == [1 << 30, 0]
    assert [int(v) for v in k.quantize_multiplier(1.0)] == [1 << 30, 1]
    assert [int(v) for v in k.quantize_multiplier(0.0)] == [0, 0]
    assert [int(v) for v in k.quantize_multiplier(2.0**-40)] == [0, 0]  # flushed to zero
    assert int(k.saturating_rounding_doubling_high_mul(-(2**31), -(2**31))) == 2**31 - 1
    assert int(k.saturating_rounding_doubling_high_mul(1 << 30, 1 << 30)) == 1 << 29
    halves = k.rounding_divide_by_pot(np.array([5, -5, 4, -4, 3, -3]), 1)
    assert halves.tolist() == [3, -3, 2, -2, 2, -2]  # ties away from zero
    assert k.tflite_round(np.array([2.5, -2.5, 0.49])).tolist() == [3.0, -3.0, 0.0]
    exp_zero = k.exp_on_negative_values(np.array([0, -(1 << 26)]), 5)
    assert int(exp_zero[0]) == 2**31 - 1
    assert abs(int(exp_zero[1]) / 2**31 - np.exp(-1.0)) < 1e-6  # gemmlowp's accuracy


def tiny_graph(op: str, layout: str = "NHWC") -> Graph:
    q = QuantParams(np.array([0.1]), np.array([0]))
    x = Tensor("x", (1, 4, 4, 2), "int8", quant=q)
    y = Tensor("y", (1, 4, 4, 2), "int8", quant=q)
    node = Node("the_node", op, ["x"], ["y"])
    return Graph("tiny", {"x": x, "y": y}, [node], ["x"], ["y"], layout=layout)


def test_unsupported_operator_names_the_node() -> None:
    x = np.zeros((1, 4, 4, 2), dtype=np.int8)
    with pytest.raises(UnsupportedOperatorError, match="LOGISTIC.*the_node"):
        run_int8(tiny_graph("LOGISTIC"), [x])
    fused = tiny_graph("MAX_POOL_2D")
    fused.nodes[0].attrs.update(kernel=(1, 1), activation="TANH")
    with pytest.raises(UnsupportedOperatorError, match="TANH.*the_node"):
        run_int8(fused, [x])


def test_bad_inputs_are_invalid_model_errors() -> None:
    graph = tiny_graph("RESHAPE")
    graph.nodes[0].attrs["shape"] = [1, 4, 4, 2]
    assert np.all(run_int8(graph, [np.ones((1, 4, 4, 2), np.int8)])[0] == 1)
    with pytest.raises(InvalidModelError, match="expects int8"):
        run_int8(graph, [np.zeros((1, 4, 4, 2), dtype=np.float32)])
    with pytest.raises(InvalidModelError, match="1 inputs"):
        run_int8(graph, [])
    nchw = tiny_graph("MAX_POOL_2D", layout="NCHW")
    nchw.nodes[0].attrs.update(kernel=(1, 1))
    with pytest.raises(UnsupportedOperatorError, match="NHWC"):
        run_int8(nchw, [np.zeros((1, 4, 4, 2), dtype=np.int8)])
