"""TFLite import/export on the real MLPerf Tiny files, synthetic graphs and hostile input."""

from __future__ import annotations

import collections
import copy
from collections.abc import Callable
from typing import Any

import flatbuffers
import numpy as np
import pytest
from fuzz_helpers import corruptions, time_limit
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph, Node, QuantParams, Tensor
from crosslevel.ir.tflite_io import (
    OFFLINE_PLAN_NAME,
    export_tflite,
    import_tflite,
    tf_padding,
    tflite_tensor_order,
    tflite_tensors,
)
from crosslevel.model.mlperf_tiny import models_dir
from crosslevel.runtime.tflm import TflmError, TflmInterpreter, measure_tflm_arena, run_tflm

MODELS = models_dir()

ALL_FILES = sorted(p.name for p in MODELS.glob("*.tflite"))
TFLM_FAILS = {"kws_ref_model_float32.tflite"}  # hybrid CONV_2D: TFLM itself cannot prepare it
RUNNABLE = [f for f in ALL_FILES if f not in TFLM_FAILS]
OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _bytes(name: str) -> bytes:
    return (MODELS / name).read_bytes()


def _random_inputs(interp: TflmInterpreter, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for shape, dtype in interp.input_specs:
        if dtype.kind == "f":
            out.append(rng.standard_normal(shape).astype(dtype))
        else:
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max + 1, size=shape).astype(dtype))
    return out


def _mutated(data: bytes, change: Callable[[Any], None]) -> bytes:
    """Re-pack ``data`` after ``change`` edits its object tree (to craft bad models)."""
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    change(model)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


# ----------------------------------------------------------------------------------
# import of the real files
# ----------------------------------------------------------------------------------
def test_all_nine_files_are_present() -> None:
    assert len(ALL_FILES) == 9


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_file_imports_validates_and_keeps_io(name: str) -> None:
    graph = import_tflite(MODELS / name)
    graph.validate()
    assert graph.layout == "NHWC"
    model = schema.Model.GetRootAs(_bytes(name), 0)
    sub = model.Subgraphs(0)
    in_shape = tuple(int(d) for d in sub.Tensors(sub.Inputs(0)).ShapeAsNumpy())
    out_shape = tuple(int(d) for d in sub.Tensors(sub.Outputs(0)).ShapeAsNumpy())
    assert graph.tensor(graph.inputs[0]).shape == in_shape
    assert graph.tensor(graph.outputs[0]).shape == out_shape
    assert graph.inputs[0] == sub.Tensors(sub.Inputs(0)).Name().decode()


@pytest.mark.parametrize("name", ALL_FILES)
def test_op_census_matches_the_file(name: str) -> None:
    """Counted independently with the lazy flatbuffer API, not the object API."""
    model = schema.Model.GetRootAs(_bytes(name), 0)
    sub = model.Subgraphs(0)
    census: collections.Counter[str] = collections.Counter()
    for i in range(sub.OperatorsLength()):
        oc = model.OperatorCodes(sub.Operators(i).OpcodeIndex())
        census[OP_NAMES[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())]] += 1
    graph = import_tflite(MODELS / name)
    assert collections.Counter(n.op for n in graph.nodes) == census
    assert [n.op for n in graph.nodes] == [
        OP_NAMES[
            max(
                model.OperatorCodes(sub.Operators(i).OpcodeIndex()).BuiltinCode(),
                model.OperatorCodes(sub.Operators(i).OpcodeIndex()).DeprecatedBuiltinCode(),
            )
        ]
        for i in range(sub.OperatorsLength())
    ]


def test_constants_dtypes_and_shared_buffers_match_the_file() -> None:
    data = _bytes("str_ww_ref_model.tflite")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    sub = model.subgraphs[0]
    graph = import_tflite(data)
    for t in sub.tensors:
        name = t.name.decode()
        raw = model.buffers[t.buffer].data
        if raw is None or name not in graph.tensors:
            continue
        tensor = graph.tensors[name]
        assert tensor.data is not None and tensor.data.shape == tuple(t.shape)
        assert tensor.data.astype(tensor.data.dtype.newbyteorder("<")).tobytes() == bytes(raw)
    # three bias tensors share one buffer in this file but keep their own quantization
    shared = [t.name.decode() for t in sub.tensors if t.buffer == 13]
    assert len(shared) == 3
    scales = {graph.tensors[n].quant.scale[0] for n in shared}  # type: ignore[union-attr]
    assert len(scales) == 3
    assert graph.tensors[shared[0]].dtype == "int32"


def test_quantization_per_tensor_and_per_channel() -> None:
    graph = import_tflite(MODELS / "kws_ref_model.tflite")
    dw = next(n for n in graph.nodes if n.op == "DEPTHWISE_CONV_2D")
    conv = next(n for n in graph.nodes if n.op == "CONV_2D")
    w_dw, w_conv = graph.tensor(dw.inputs[1]), graph.tensor(conv.inputs[1])
    assert w_dw.quant is not None and w_dw.quant.axis == 3 and w_dw.quant.scale.size == 64
    assert w_conv.quant is not None and w_conv.quant.axis == 0 and w_conv.quant.scale.size == 64
    assert np.all(w_conv.quant.zero_point == 0)
    x = graph.tensor(graph.inputs[0])
    assert x.quant is not None and x.quant.axis is None
    assert x.quant.zero_point[0] == 83 and x.quant.scale[0] == np.float32(0.5847029)
    assert graph.tensor(conv.inputs[2]).dtype == "int32"


def test_same_and_valid_padding_become_tensorflow_pads() -> None:
    graph = import_tflite(MODELS / "vww_96_int8.tflite")
    first = graph.nodes[0]
    assert first.op == "CONV_2D" and first.attrs["padding"] == "SAME"
    assert first.attrs["strides"] == (2, 2)
    # 96 -> 48 with a 3x3 window at stride 2: TensorFlow pads one cell at the end only
    assert first.attrs["pads"] == (0, 0, 1, 1)
    kws = import_tflite(MODELS / "kws_ref_model.tflite")
    conv0 = kws.nodes[0]
    # 49x10 input, 10x4 window, stride 2, SAME: totals 9 and 2 -> (4, 1, 5, 1)
    assert conv0.attrs["pads"] == (4, 1, 5, 1)
    pool = next(n for n in kws.nodes if n.op == "AVERAGE_POOL_2D")
    assert pool.attrs["padding"] == "VALID" and pool.attrs["pads"] == (0, 0, 0, 0)
    assert tf_padding("SAME", (5, 5), (3, 3), (1, 1), (2, 2)) == (2, 2, 2, 2)


def test_fused_activations_versions_and_metadata_are_kept() -> None:
    graph = import_tflite(MODELS / "str_ww_ref_model.tflite")
    info = graph.metadata["tflite"]
    assert info["version"] == 3 and info["description"] == "MLIR Converted."
    names = [e["name"] for e in info["metadata"]]
    assert names == ["min_runtime_version", "CONVERSION_METADATA"]
    assert info["metadata"][0]["data"].startswith(b"1.14.0")
    assert info["signature_defs"][0]["key"] == "serving_default"
    assert info["signature_defs"][0]["inputs"] == [("input_1", graph.inputs[0])]
    conv = next(n for n in graph.nodes if n.op == "CONV_2D")
    assert conv.attrs["activation"] == "RELU" and conv.attrs["tflite_version"] == 3
    fc = next(n for n in graph.nodes if n.op == "FULLY_CONNECTED")
    assert fc.attrs["tflite_version"] == 4 and fc.attrs["keep_num_dims"] is False
    reshape = next(n for n in graph.nodes if n.op == "RESHAPE")
    assert reshape.inputs == [reshape.inputs[0]] and reshape.attrs["shape"] == [-1, 32]
    assert reshape.attrs["tflite_param_tensor"] == "model/flatten/Const"
    ops = [(o["op"], o["version"]) for o in info["opcodes"]]
    assert ops[:2] == [("DEPTHWISE_CONV_2D", 3), ("CONV_2D", 3)]


def test_hybrid_float_model_imports_with_int8_weights() -> None:
    graph = import_tflite(MODELS / "kws_ref_model_float32.tflite")
    conv = graph.nodes[0]
    assert graph.tensor(conv.inputs[0]).dtype == "float32"
    assert graph.tensor(conv.inputs[1]).dtype == "int8"


# ----------------------------------------------------------------------------------
# round trip
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", RUNNABLE)
def test_round_trip_is_bit_exact_in_tflm(name: str) -> None:
    original = TflmInterpreter(MODELS / name)
    exported = TflmInterpreter(export_tflite(import_tflite(MODELS / name)))
    rng = np.random.default_rng(7)
    for _ in range(3):
        inputs = _random_inputs(original, rng)
        expected, got = original.run(inputs), exported.run(inputs)
        assert len(expected) == len(got)
        for a, b in zip(expected, got, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b)  # int8 bit-exact, float32 exactly equal


@pytest.mark.parametrize("name", ALL_FILES)
def test_export_is_a_fixed_point(name: str) -> None:
    """import -> export -> import -> export writes the same bytes (kws float included)."""
    first = export_tflite(import_tflite(MODELS / name))
    graph = import_tflite(first)
    assert export_tflite(graph) == first
    original = import_tflite(MODELS / name)
    assert [n.op for n in graph.nodes] == [n.op for n in original.nodes]
    assert [n.attrs for n in graph.nodes] == [n.attrs for n in original.nodes]
    for key, t in original.tensors.items():
        u = graph.tensors[key]
        assert (u.shape, u.dtype, u.is_variable) == (t.shape, t.dtype, t.is_variable)
        assert (t.data is None) == (u.data is None)
        if t.data is not None:
            assert np.array_equal(t.data, u.data)  # type: ignore[arg-type]
        assert (t.quant is None) == (u.quant is None)
        if t.quant is not None and u.quant is not None:
            assert np.array_equal(t.quant.scale, u.quant.scale)
            assert np.array_equal(t.quant.zero_point, u.quant.zero_point)
            assert t.quant.axis == u.quant.axis


def test_hybrid_float_model_is_a_tflm_limitation_not_ours() -> None:
    for model in (
        MODELS / "kws_ref_model_float32.tflite",
        export_tflite(import_tflite(MODELS / "kws_ref_model_float32.tflite")),
    ):
        with pytest.raises(TflmError, match="Hybrid models are not supported") as info:
            TflmInterpreter(model)
        assert info.value.stage == "prepare"


def test_export_refuses_nchw_graphs() -> None:
    graph = import_tflite(MODELS / "ad01_int8.tflite")
    graph.layout = "NCHW"
    with pytest.raises(InvalidModelError, match="NHWC"):
        export_tflite(graph)


def test_export_fills_int8_bias_scale_and_checks_weight_axis() -> None:
    graph = import_tflite(MODELS / "kws_ref_model.tflite")
    conv = graph.nodes[0]
    bias = graph.tensor(conv.inputs[2])
    stored = bias.quant
    bias.quant = None
    data = export_tflite(graph)
    again = import_tflite(data)
    filled = again.tensor(conv.inputs[2]).quant
    assert filled is not None and stored is not None
    s_in = graph.tensor(conv.inputs[0]).quant.scale[0]  # type: ignore[union-attr]
    s_w = graph.tensor(conv.inputs[1]).quant.scale  # type: ignore[union-attr]
    assert np.allclose(filled.scale, s_in * s_w, rtol=1e-6)
    assert np.allclose(filled.scale, stored.scale, rtol=1e-5)
    x = [np.random.default_rng(0).integers(-128, 128, (1, 49, 10, 1)).astype(np.int8)]
    assert np.array_equal(run_tflm(data, x)[0], run_tflm(MODELS / "kws_ref_model.tflite", x)[0])
    w = graph.tensor(conv.inputs[1])
    w.quant = QuantParams(w.quant.scale, w.quant.zero_point, axis=3)  # type: ignore[union-attr]
    w.quant.axis = 3
    with pytest.raises(InvalidModelError, match="axis 0"):
        export_tflite(graph)


# ----------------------------------------------------------------------------------
# explicit pads and PAD
# ----------------------------------------------------------------------------------
def test_explicit_pads_insert_a_pad_operator_bit_exact() -> None:
    """vww's first conv with pads (1,1,1,1) (not SAME at stride 2): the exporter writes
    PAD + VALID conv; it must equal a graph where the IR itself holds that PAD node."""
    auto = import_tflite(MODELS / "vww_96_int8.tflite")
    auto.nodes[0].attrs["pads"] = (1, 1, 1, 1)
    data = export_tflite(auto)
    written = import_tflite(data)
    assert [n.op for n in written.nodes[:2]] == ["PAD", "CONV_2D"]
    assert written.nodes[1].attrs["padding"] == "VALID"
    manual = import_tflite(MODELS / "vww_96_int8.tflite")
    conv = manual.nodes[0]
    x = manual.tensor(conv.inputs[0])
    manual.tensors["padded"] = Tensor("padded", (1, 98, 98, 3), "int8", quant=x.quant)
    pad = Node("pad", "PAD", [x.name], ["padded"], {"pads": [(0, 0), (1, 1), (1, 1), (0, 0)]})
    conv.inputs[0] = "padded"
    conv.attrs.update(pads=(0, 0, 0, 0), padding="VALID")
    manual.nodes.insert(0, pad)
    reference = TflmInterpreter(export_tflite(manual))
    candidate = TflmInterpreter(data)
    rng = np.random.default_rng(3)
    for _ in range(3):
        inputs = _random_inputs(reference, rng)
        assert np.array_equal(reference.run(inputs)[0], candidate.run(inputs)[0])


def test_pool_with_explicit_pads_is_refused_clearly() -> None:
    graph = import_tflite(MODELS / "kws_ref_model.tflite")
    pool = next(n for n in graph.nodes if n.op == "AVERAGE_POOL_2D")
    pool.attrs["pads"] = (1, 1, 0, 0)
    pool.attrs["kernel"] = (26, 6)
    with pytest.raises(UnsupportedOperatorError, match="neither SAME nor VALID"):
        export_tflite(graph)


# ----------------------------------------------------------------------------------
# every operator of the vocabulary, float32, against NumPy
# ----------------------------------------------------------------------------------
def _conv_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    depthwise: bool = False,
) -> np.ndarray:
    top, left, bottom, right = pads
    xp = np.pad(x, [(0, 0), (top, bottom), (left, right), (0, 0)])
    kh, kw = w.shape[1], w.shape[2]
    oh = (xp.shape[1] - kh) // strides[0] + 1
    ow = (xp.shape[2] - kw) // strides[1] + 1
    out = np.zeros((1, oh, ow, w.shape[3] if depthwise else w.shape[0]), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = xp[
                0, i * strides[0] : i * strides[0] + kh, j * strides[1] : j * strides[1] + kw
            ]
            if depthwise:
                mult = w.shape[3] // x.shape[3]
                out[0, i, j] = (np.repeat(patch, mult, axis=-1) * w[0]).sum(axis=(0, 1))
            else:
                out[0, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2]))
    return out + b


def _pool_ref(x: np.ndarray, k: int, s: int, kind: str) -> np.ndarray:
    oh, ow = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    out = np.zeros((1, oh, ow, x.shape[3]))
    for i in range(oh):
        for j in range(ow):
            win = x[0, i * s : i * s + k, j * s : j * s + k]
            out[0, i, j] = win.max(axis=(0, 1)) if kind == "max" else win.mean(axis=(0, 1))
    return out


def _case(op: str, rng: np.random.Generator) -> tuple[Graph, list[np.ndarray], np.ndarray]:
    """A one- or two-node float graph for ``op``, its inputs and a NumPy reference."""
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    tensors = [Tensor("x", x.shape, "float32")]
    inputs = [x]
    attrs: dict[str, Any] = {}
    node_inputs = ["x"]

    def const(name: str, arr: np.ndarray) -> str:
        tensors.append(Tensor(name, arr.shape, str(arr.dtype), data=arr))
        node_inputs.append(name)
        return name

    unary: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "RELU": lambda v: np.maximum(v, 0),
        "RELU6": lambda v: np.clip(v, 0, 6),
        "LOGISTIC": lambda v: 1 / (1 + np.exp(-v)),
        "TANH": np.tanh,
        "HARD_SWISH": lambda v: v * np.clip(v + 3, 0, 6) / 6,
        "LEAKY_RELU": lambda v: np.where(v > 0, v, 0.1 * v),
    }
    if op in unary:
        attrs = {"alpha": 0.1} if op == "LEAKY_RELU" else {}
        ref = unary[op](x.astype(np.float64))
    elif op in ("ADD", "SUB", "MUL"):
        y = rng.standard_normal((1, 1, 1, 4)).astype(np.float32)
        const("y", y)
        fn = {"ADD": np.add, "SUB": np.subtract, "MUL": np.multiply}[op]
        ref, attrs = np.clip(fn(x, y), 0, 6), {"activation": "RELU6"}
    elif op == "CONCATENATION":
        y = rng.standard_normal((1, 6, 6, 2)).astype(np.float32)
        tensors.append(Tensor("y", y.shape, "float32"))
        node_inputs.append("y")
        inputs.append(y)
        ref, attrs = np.concatenate([x, y], axis=3), {"axis": 3}
    elif op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
        attrs = {"kernel": (2, 2), "strides": (2, 2), "pads": (0, 0, 0, 0), "padding": "VALID"}
        ref = _pool_ref(x, 2, 2, "max" if op == "MAX_POOL_2D" else "avg")
    elif op == "MEAN":
        ref, attrs = x.mean(axis=(1, 2), keepdims=True), {"axes": [1, 2], "keepdims": True}
    elif op == "PAD":
        pads = [(0, 0), (1, 2), (2, 1), (0, 0)]
        ref, attrs = np.pad(x, pads), {"pads": pads}
    elif op == "TRANSPOSE":
        ref, attrs = x.transpose(0, 3, 1, 2), {"perm": [0, 3, 1, 2]}
    elif op == "RESHAPE":
        ref, attrs = x.reshape(1, 144), {"shape": [1, -1]}
    elif op == "SOFTMAX":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        ref, attrs = e / e.sum(axis=-1, keepdims=True), {"axis": -1, "beta": 1.0}
    elif op == "BATCH_MATMUL":
        y = rng.standard_normal((1, 6, 4, 3)).astype(np.float32)
        tensors.append(Tensor("y", y.shape, "float32"))
        node_inputs.append("y")
        inputs.append(y)
        ref = np.matmul(x.astype(np.float64), y)
    elif op == "FULLY_CONNECTED":
        w = rng.standard_normal((5, 144)).astype(np.float32)
        b = rng.standard_normal(5).astype(np.float32)
        const("w", w)
        const("b", b)
        ref, attrs = np.maximum(x.reshape(1, 144) @ w.T + b, 0), {"activation": "RELU"}
    elif op in ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_PADS"):
        depthwise = op == "DEPTHWISE_CONV_2D"
        w = rng.standard_normal((1, 3, 3, 8) if depthwise else (5, 3, 3, 4)).astype(np.float32)
        b = rng.standard_normal(w.shape[3] if depthwise else 5).astype(np.float32)
        const("w", w)
        const("b", b)
        strides = (1, 1) if op == "CONV_2D_PADS" else (2, 2)
        same = tf_padding("SAME", (6, 6), (3, 3), (2, 2))
        conv_pads = (1, 0, 2, 1) if op == "CONV_2D_PADS" else same
        attrs = {"strides": strides, "pads": conv_pads, "activation": "NONE"}
        if depthwise:
            attrs["depth_multiplier"] = 2
        ref = _conv_ref(x, w, b, strides, conv_pads, depthwise)
        op = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
    elif op == "QUANTIZE":  # QUANTIZE then DEQUANTIZE: a float -> int8 -> float round trip
        q = QuantParams(np.array([0.02]), np.array([3]))
        tensors.append(Tensor("q", x.shape, "int8", quant=q))
        tensors.append(Tensor("out", x.shape, "float32"))
        nodes = [Node("quant", "QUANTIZE", ["x"], ["q"]), Node("deq", "DEQUANTIZE", ["q"], ["out"])]
        graph = Graph("t", {t.name: t for t in tensors}, nodes, ["x"], ["out"], layout="NHWC")
        levels = np.clip(np.floor(np.abs(x / 0.02) + 0.5) * np.sign(x) + 3, -128, 127)
        return graph, inputs, (levels - 3) * 0.02
    else:
        raise AssertionError(op)
    tensors.append(Tensor("out", ref.shape, "float32"))
    node = Node("n", op, node_inputs, ["out"], attrs)
    graph = Graph(
        "t",
        {t.name: t for t in tensors},
        [node],
        [n for n in node_inputs if not any(t.name == n and t.data is not None for t in tensors)],
        ["out"],
        layout="NHWC",
    )
    return graph, inputs, ref


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (attrs may hold either)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


FLOAT_CASES = [
    "RELU",
    "RELU6",
    "LOGISTIC",
    "TANH",
    "HARD_SWISH",
    "LEAKY_RELU",
    "ADD",
    "SUB",
    "MUL",
    "CONCATENATION",
    "MAX_POOL_2D",
    "AVERAGE_POOL_2D",
    "MEAN",
    "PAD",
    "TRANSPOSE",
    "RESHAPE",
    "SOFTMAX",
    "BATCH_MATMUL",
    "FULLY_CONNECTED",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "CONV_2D_PADS",
    "QUANTIZE",
]


@pytest.mark.parametrize("op", FLOAT_CASES)
def test_each_operator_exports_runs_in_tflm_and_reimports(op: str) -> None:
    graph, inputs, ref = _case(op, np.random.default_rng(11))
    graph.validate()
    data = export_tflite(graph)
    got = run_tflm(data, inputs)[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))
    again = import_tflite(data)
    expected_ops = [n.op for n in graph.nodes]
    if op == "CONV_2D_PADS":
        expected_ops = ["PAD", "CONV_2D"]
    assert [n.op for n in again.nodes] == expected_ops
    for before, after in zip(graph.nodes, again.nodes[-len(graph.nodes) :], strict=True):
        for key, value in before.attrs.items():
            if op == "CONV_2D_PADS" and key == "pads":
                continue
            if isinstance(value, float):  # options store float32
                assert after.attrs[key] == pytest.approx(value, rel=1e-6), key
            else:
                assert _plain(after.attrs[key]) == _plain(value), key


def test_unsupported_ir_operator_is_named_on_export() -> None:
    graph, _, _ = _case("RELU", np.random.default_rng(0))
    graph.nodes[0].op = "ERF"
    with pytest.raises(UnsupportedOperatorError, match="ERF"):
        export_tflite(graph)


# ----------------------------------------------------------------------------------
# offline memory plan
# ----------------------------------------------------------------------------------
def _disjoint_plan(graph: Graph) -> tuple[list[int], int]:
    offsets, end = [], 0
    for t in tflite_tensors(graph):
        if not t.in_arena:
            offsets.append(-1)
            continue
        offsets.append(end)
        end += -(-t.nbytes // 16) * 16
    return offsets, end


def test_offline_plan_with_disjoint_offsets_runs_identically() -> None:
    graph = import_tflite(MODELS / "vww_96_int8.tflite")
    assert [t.name for t in tflite_tensors(graph)] == tflite_tensor_order(graph)
    offsets, total = _disjoint_plan(graph)
    planned = export_tflite(graph, offline_offsets=offsets)
    arena = measure_tflm_arena(planned)
    # TFLM honoured our plan: its head is exactly the sum of the aligned activations
    assert arena.head_bytes == total == 259_744
    assert measure_tflm_arena(MODELS / "vww_96_int8.tflite").head_bytes == 73_728
    reference, candidate = TflmInterpreter(MODELS / "vww_96_int8.tflite"), TflmInterpreter(planned)
    rng = np.random.default_rng(5)
    for _ in range(3):
        inputs = _random_inputs(reference, rng)
        assert np.array_equal(reference.run(inputs)[0], candidate.run(inputs)[0])
    model = schema.ModelT.InitFromPackedBuf(planned, 0)
    entry = next(m for m in model.metadata if m.name.decode() == OFFLINE_PLAN_NAME)
    values = np.frombuffer(bytes(model.buffers[entry.buffer].data), dtype="<i4")
    assert list(values[:3]) == [1, 0, len(offsets)] and list(values[3:]) == offsets
    plan = import_tflite(planned).metadata["tflite"]["offline_plan"]
    assert plan[graph.inputs[0]] == offsets[tflite_tensor_order(graph).index(graph.inputs[0])]


def test_offline_plan_must_fit_the_tensor_order() -> None:
    graph = import_tflite(MODELS / "ad01_int8.tflite")
    offsets, _ = _disjoint_plan(graph)
    with pytest.raises(InvalidModelError, match="offsets for"):
        export_tflite(graph, offline_offsets=offsets[:-1])
    const_index = next(i for i, t in enumerate(tflite_tensors(graph)) if not t.in_arena)
    offsets[const_index] = 0
    with pytest.raises(InvalidModelError, match="constant or variable"):
        export_tflite(graph, offline_offsets=offsets)


# ----------------------------------------------------------------------------------
# hostile input
# ----------------------------------------------------------------------------------
FUZZ_FILES = ["kws_ref_model.tflite", "str_ww_ref_model.tflite", "ad01_int8.tflite"]


@pytest.mark.parametrize("name", FUZZ_FILES)
def test_corrupt_files_raise_invalid_model_error_only(name: str) -> None:
    data = _bytes(name)
    cases = corruptions(data, seed=FUZZ_FILES.index(name), n_flips=30)
    assert len(cases) >= 50
    outcomes: collections.Counter[str] = collections.Counter()
    for label, bad in cases:
        try:
            with time_limit(10.0):
                graph = import_tflite(bad)
        except InvalidModelError as exc:
            assert str(exc), label
            assert "\n" not in str(exc), label
            outcomes["refused"] += 1
        except Exception as exc:  # pragma: no cover - this is the failure being tested
            pytest.fail(f"{label}: {type(exc).__name__}: {exc}")
        else:
            graph.validate()
            outcomes["accepted"] += 1
    assert outcomes["refused"] >= 15, outcomes


def test_truncation_wrong_magic_and_empty_messages() -> None:
    data = _bytes("ad01_int8.tflite")
    with pytest.raises(InvalidModelError, match="too short"):
        import_tflite(b"")
    with pytest.raises(InvalidModelError, match="file identifier"):
        import_tflite(data[:4] + b"ONNX" + data[8:])
    with pytest.raises(InvalidModelError):
        import_tflite(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="cannot read"):
        import_tflite(MODELS / "no_such_model.tflite")


def _sub(model: Any) -> Any:
    return model.subgraphs[0]


def _move_buffer_far(m: Any) -> None:
    buffer = m.buffers[_sub(m).tensors[1].buffer]
    buffer.data, buffer.offset, buffer.size = None, 1 << 40, 48


HOSTILE: dict[str, tuple[Callable[[Any], None], str]] = {
    "absurd shape": (
        lambda m: setattr(_sub(m).tensors[-1], "shape", np.array([1 << 30, 1 << 30], np.int32)),
        "absurd shape",
    ),
    "negative dimension": (
        lambda m: setattr(_sub(m).tensors[-1], "shape", np.array([1, -5], np.int32)),
        "negative dimension",
    ),
    "tensor index out of range": (
        lambda m: setattr(_sub(m).operators[0], "inputs", np.array([0, 999, 1], np.int32)),
        "outside",
    ),
    "opcode index out of range": (
        lambda m: setattr(_sub(m).operators[0], "opcodeIndex", 50),
        "opcode",
    ),
    "buffer index out of range": (
        lambda m: setattr(_sub(m).tensors[1], "buffer", 10_000),
        "buffer",
    ),
    "buffer too small for shape": (
        lambda m: setattr(m.buffers[_sub(m).tensors[1].buffer], "data", np.zeros(3, np.uint8)),
        "needs",
    ),
    "buffer span outside the file": (_move_buffer_far, "outside the file"),
    "zero quantization scale": (
        lambda m: setattr(_sub(m).tensors[0].quantization, "scale", np.zeros(1, np.float32)),
        "finite and positive",
    ),
    "missing operator outputs": (
        lambda m: setattr(_sub(m).operators[0], "outputs", None),
        "outputs vector",
    ),
    "unknown tensor type": (
        lambda m: setattr(_sub(m).tensors[0], "type", schema.TensorType.STRING),
        "STRING",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_crafted_hostile_models_are_refused_with_a_clear_message(case: str) -> None:
    change, message = HOSTILE[case]
    bad = _mutated(_bytes("ad01_int8.tflite"), change)
    with time_limit(10.0), pytest.raises(InvalidModelError, match=message):
        import_tflite(bad)


def test_custom_and_control_flow_operators_are_named() -> None:
    def custom(m: Any) -> None:
        oc = schema.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
        oc.customCode = b"MyFancyOp"
        m.operatorCodes.append(oc)
        _sub(m).operators[3].opcodeIndex = len(m.operatorCodes) - 1
        _sub(m).operators[3].builtinOptions = None
        _sub(m).operators[3].builtinOptionsType = 0

    with pytest.raises(UnsupportedOperatorError, match=r"CUSTOM\(MyFancyOp\) at node '3 \("):
        import_tflite(_mutated(_bytes("ad01_int8.tflite"), custom))

    def while_loop(m: Any) -> None:
        oc = schema.OperatorCodeT()
        oc.builtinCode = oc.deprecatedBuiltinCode = schema.BuiltinOperator.WHILE
        m.operatorCodes.append(oc)
        op = _sub(m).operators[2]
        op.opcodeIndex = len(m.operatorCodes) - 1
        op.builtinOptionsType = schema.BuiltinOptions.WhileOptions
        op.builtinOptions = schema.WhileOptionsT()
        m.subgraphs.append(copy.deepcopy(m.subgraphs[0]))  # stands in for the loop body

    with pytest.raises(UnsupportedOperatorError, match=r"WHILE at node '2 \(") as info:
        import_tflite(_mutated(_bytes("ad01_int8.tflite"), while_loop))
    assert info.value.op == "WHILE"


def test_shared_table_bomb_is_refused_fast() -> None:
    """50k vector entries pointing at one tensor table, in 2000 copies of one subgraph:
    the object API would build 1e8 objects (a hang); the count check refuses it at once."""
    b = flatbuffers.Builder(1 << 20)
    name = b.CreateString("t")
    schema.TensorStart(b)
    schema.TensorAddName(b, name)
    tensor = schema.TensorEnd(b)
    schema.SubGraphStartTensorsVector(b, 50_000)
    for _ in range(50_000):
        b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    schema.SubGraphStart(b)
    schema.SubGraphAddTensors(b, tensors)
    sub = schema.SubGraphEnd(b)
    schema.ModelStartSubgraphsVector(b, 2000)
    for _ in range(2000):
        b.PrependUOffsetTRelative(sub)
    subs = b.EndVector()
    schema.ModelStart(b)
    schema.ModelAddVersion(b, 3)
    schema.ModelAddSubgraphs(b, subs)
    b.Finish(schema.ModelEnd(b), file_identifier=b"TFL3")
    with time_limit(5.0), pytest.raises(InvalidModelError, match="more tensors"):
        import_tflite(bytes(b.Output()))


def test_buffers_stored_after_the_flatbuffer_are_read() -> None:
    """Models over 2 GB keep buffers at (offset, size) after the flatbuffer; same logic at
    small scale: move one weight buffer out and append its bytes to the file."""
    data = _bytes("ad01_int8.tflite")
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    k = _sub(model).tensors[1].buffer
    payload = bytes(model.buffers[k].data)

    def pack(offset: int) -> bytes:
        model.buffers[k].data = None
        model.buffers[k].offset, model.buffers[k].size = offset, len(payload)
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    size = len(pack(1 << 40))
    start = -(-size // 16) * 16
    packed = pack(start)
    assert len(packed) == size
    moved = packed + bytes(start - size) + payload
    original, graph = import_tflite(data), import_tflite(moved)
    name = _sub(model).tensors[1].name.decode()
    assert np.array_equal(original.tensors[name].data, graph.tensors[name].data)  # type: ignore[arg-type]
    with pytest.raises(InvalidModelError, match="outside the file"):
        import_tflite(moved[:-1])


def test_pad_with_a_third_input_is_refused_not_dropped() -> None:
    """A pad value (PADV2's third input) on PAD would be lost: refuse the file instead."""
    from crosslevel.model.int8_zoo import zoo_int8_tflite

    data = zoo_int8_tflite("ds_cnn")
    pad_code = schema.BuiltinOperator.PAD

    def add_pad_value(model: Any) -> None:
        codes = model.operatorCodes
        for op in model.subgraphs[0].operators:
            if (
                max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)
                == pad_code
            ):
                op.inputs = [*op.inputs, op.inputs[1]]
                return
        raise AssertionError("ds_cnn int8 has no PAD")

    import_tflite(data)  # the original imports
    with pytest.raises(InvalidModelError, match=r"PAD\) has 3 inputs"):
        import_tflite(_mutated(data, add_pad_value))
