"""Zoo models build, run, export to ONNX exactly, and have the published sizes."""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch_counts import count_macs_params

from crosslevel.model import zoo
from crosslevel.model.datasets import load_dataset

# What the zoo promises the IR importer: the ops of the brief, as ONNX names. Identity
# (initializers the exporter deduplicates) and Constant (Clip bounds, Reshape targets) are
# exporter plumbing, not computation.
ALLOWED_OPS = {
    "Conv", "BatchNormalization", "Relu", "Clip", "Add", "MaxPool", "AveragePool",
    "GlobalAveragePool", "Flatten", "Gemm", "Concat", "MatMul", "Softmax",
    "LayerNormalization", "Transpose", "Reshape", "ReduceMean", "Identity", "Constant",
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Small models on a shared 2-core machine: one thread avoids OpenMP thrashing.

    Measured here with another process busy on one core: 3 epochs of digits_cnn took
    13 s with torch's default 2 threads and 1.6 s with 1.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN/LN non-trivial statistics so exported BN folding is really checked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d | nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


def export_onnx(model: nn.Module, x: torch.Tensor, path: Path) -> onnx.ModelProto:
    """The TorchScript exporter at opset 17 (dynamo=False: fast, no stdout)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False)
    return onnx.load(str(path))


def test_registry_lists_every_model() -> None:
    expected = {
        "ds_cnn", "resnet8", "mobilenet_v1_025", "fc_autoencoder", "mobilenet_v2",
        "mcunet_v2", "imu_cnn", "mnist1d_cnn", "digits_cnn", "inception_cells",
        "tiny_transformer",
    }  # fmt: skip
    assert set(zoo.list_models()) == expected
    assert all(name == entry.name for name, entry in zoo.ZOO.items())


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known models: .*ds_cnn.*tiny_transformer"):
        zoo.build("resnet9000")


@pytest.mark.parametrize("name", zoo.list_models())
def test_model_runs_exports_and_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    entry = zoo.ZOO[name]
    torch.manual_seed(0)
    model = randomize_norms(zoo.build(name))
    with torch.no_grad():
        assert model(torch.randn(2, *entry.input_shape)).shape == (2, entry.num_outputs)
        x = torch.randn(1, *entry.input_shape)
        ref = model(x).numpy()
    proto = export_onnx(model, x, tmp_path / f"{name}.onnx")
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= ALLOWED_OPS, f"{name} exports unexpected ops {ops - ALLOWED_OPS}"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(tmp_path / f"{name}.onnx"), options, providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    atol = 1e-5 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=atol)


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "outputs"),
    [
        ("mobilenet_v2", {"width_mult": 0.5, "resolution": 64, "num_classes": 7}, (3, 64, 64), 7),
        ("mcunet_v2", {"resolution": 96}, (3, 96, 96), 2),
        ("mobilenet_v1_025", {"num_classes": 5}, (3, 96, 96), 5),
        ("fc_autoencoder", {"input_dim": 128}, (128,), 128),
        ("digits_cnn", {"width": 4}, (1, 8, 8), 10),
    ],
)
def test_builder_kwargs(name: str, kwargs: dict, shape: tuple, outputs: int) -> None:
    assert zoo.ZOO[name].input_shape_for(**kwargs) == shape
    model = zoo.build(name, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, *shape)).shape == (1, outputs)


def test_bad_resolution_is_refused() -> None:
    with pytest.raises(ValueError, match="resolution"):
        zoo.build("mobilenet_v2", resolution=50)


# ---------------------------------------------------------------- the MAC/parameter counter


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)  # 4*5*5 out * 2*3*3 = 1,800 MACs
        self.dw = nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False)  # 4*2*2 * 9 = 144
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 3)  # 3 * 16 = 48

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.dw(self.conv(x))))
        return self.fc(y.flatten(1))


class _MatMuls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (1, 3, 4, 6)
        a = x @ self.w  # (1,3,4,5): 60 outputs * 6 = 360
        b = torch.matmul(a, a.transpose(-1, -2))  # (1,3,4,4): 48 * 5 = 240
        return b


def test_counter_on_hand_computed_models() -> None:
    tiny = _Tiny()
    params = (2 * 4 * 9 + 4) + 4 * 9 + 2 * 4 + (16 * 3 + 3)
    assert count_macs_params(tiny, (2, 5, 5)) == (1800 + 144 + 48, params)
    assert count_macs_params(_MatMuls(), (3, 4, 6)) == (600, 30)
    assert tiny.training  # the counter restores the mode it found


def test_counter_on_reference_architectures() -> None:
    """MACs hand-derived from the MLPerf Tiny architectures; the transformer by formula."""
    ds_cnn = 25 * 5 * 64 * 40 + 4 * (25 * 5 * 64 * 9 + 25 * 5 * 64 * 64) + 64 * 12
    assert count_macs_params(zoo.build("ds_cnn"), (1, 49, 10))[0] == ds_cnn == 2_656_768
    ae = 640 * 128 + 3 * 128 * 128 + 128 * 8 + 8 * 128 + 3 * 128 * 128 + 128 * 640
    assert count_macs_params(zoo.build("fc_autoencoder"), (640,))[0] == ae
    t, d, ff = 49, 64, 128
    layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * ff
    expected = t * 10 * d + 2 * layer + d * 12
    assert count_macs_params(zoo.build("tiny_transformer"), (1, 49, 10))[0] == expected


def _folded_params(model: nn.Module) -> int:
    """Parameters once BN is folded: conv/linear weights + one bias per output."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            total += m.weight.numel() + m.out_channels
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() + m.out_features
    return total


@pytest.mark.parametrize(
    ("name", "tflite_constants"),
    # Constant elements of the float reference .tflite files in
    # ../shared/models/mlperf-tiny (minus the 2-element Reshape target where present).
    [("ds_cnn", 22_604), ("resnet8", 77_706), ("mobilenet_v1_025", 210_850),
     ("fc_autoencoder", 265_864)],
)  # fmt: skip
def test_mlperf_models_match_reference_sizes(name: str, tflite_constants: int) -> None:
    assert _folded_params(zoo.build(name)) == tflite_constants


# ---------------------------------------------------------------- properties the levels rely on


def test_digits_cnn_exceeds_2kib_of_int8_activations() -> None:
    """Some conv's input + output exceed 2 KiB even at 1 byte per value."""
    model, peak = zoo.build("digits_cnn").eval(), [0]

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        peak[0] = max(peak[0], inputs[0].numel() + out.numel())

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 1, 8, 8))
    assert peak[0] > 2048


def test_mcunet_mixes_kernels_and_expansions() -> None:
    model = zoo.build("mcunet_v2")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert {m.kernel_size[0] for m in depthwise} == {3, 5, 7}
    ratios = {m.conv[0][0].out_channels // m.conv[0][0].in_channels
              for m in model.modules() if isinstance(m, zoo.InvertedResidual)}  # fmt: skip
    assert len(ratios) >= 3


def _peak_bytes(graph: onnx.GraphProto, order: list[int]) -> int:
    """Peak live activation bytes of `order` (DESIGN memory model, float32, no alignment)."""
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    sizes = {v.name: 4 * int(np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]))
             for v in [*graph.input, *graph.value_info, *graph.output]}  # fmt: skip
    last: dict[str, int] = {o.name: len(order) for o in graph.output}
    for step, i in enumerate(order):
        for name in graph.node[i].input:
            if name and name not in consts:
                last[name] = max(last.get(name, -1), step)
    live = {i.name for i in graph.input if i.name not in consts}
    peak = 0
    for step, i in enumerate(order):
        outs = [o for o in graph.node[i].output if o not in consts]
        peak = max(peak, sum(sizes[t] for t in live | set(outs)))
        live = {t for t in live | set(outs) if last.get(t, -1) > step}
    return peak


def _topo_order(graph: onnx.GraphProto, pick_last: bool) -> list[int]:
    """A topological order taking the earliest or the latest ready node each step."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    deps = [{producer[x] for x in n.input if x in producer} for n in graph.node]
    users: dict[int, list[int]] = defaultdict(list)
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, p in enumerate(pending) if p == 0]
    order: list[int] = []
    while ready:
        i = ready.pop(-1 if pick_last else 0)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    return order


def test_inception_peak_memory_depends_on_operator_order(tmp_path: Path) -> None:
    model = zoo.build("inception_cells").eval()
    proto = export_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / "inc.onnx")
    graph = onnx.shape_inference.infer_shapes(proto).graph
    peaks = {_peak_bytes(graph, _topo_order(graph, last)) for last in (False, True)}
    peaks.add(_peak_bytes(graph, list(range(len(graph.node)))))
    assert len(peaks) > 1, peaks


def test_digits_cnn_trains_in_seconds() -> None:
    ds = load_dataset("digits", seed=0)
    torch.manual_seed(0)
    model = zoo.build("digits_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    start = time.perf_counter()
    for _ in range(3):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    elapsed = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(ds.x_test)).argmax(1).numpy()
    assert (pred == ds.y_test).mean() > 0.8
    assert elapsed < 30
