"""PyTorch -> IR: the exporter choice, the export cache, unsupported operators, the zoo."""

from __future__ import annotations

import copy
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crosslevel.errors import InvalidModelError, UnsupportedOperatorError
from crosslevel.ir import torch_io
from crosslevel.ir.onnx import export_onnx
from crosslevel.ir.torch_io import (
    cached_torch_onnx,
    export_torch_onnx,
    import_torch,
    torch_cache_key,
)
from crosslevel.model import zoo
from crosslevel.runtime.ort import run_onnx


def assert_close(ref: np.ndarray, got: np.ndarray) -> None:
    atol = 1e-5 * max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 4),
    )


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("torch-export-cache")


def test_export_is_fast_quiet_opset17_and_restores_training_mode(
    capfd: pytest.CaptureFixture[str],
) -> None:
    module = small_net().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escapes fails the test
        start = time.perf_counter()
        data = export_torch_onnx(module, (1, 3, 6, 6))
        elapsed = time.perf_counter() - start
    out, _ = capfd.readouterr()
    assert out == ""
    assert module.training  # restored
    assert elapsed < 5.0  # the TorchScript exporter; dynamo takes seconds per model
    model = onnx.load_from_string(data)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["output"]
    # eval mode: no Dropout, BN folded into Conv by the exporter's constant folding
    assert {n.op_type for n in model.graph.node} == {"Conv", "Relu", "Flatten", "Gemm"}


def test_import_torch_matches_torch_forward() -> None:
    module = small_net().eval()
    x = torch.randn(1, 3, 6, 6)
    graph = import_torch(module, x)
    assert graph.name == "Sequential" and graph.metadata["source_format"] == "torch"
    with torch.no_grad():
        expected = module(x).numpy()
    assert_close(expected, run_onnx(export_onnx(graph), [x.numpy()])[0])


def test_keep_batchnorm_preserves_bn_nodes() -> None:
    graph = import_torch(small_net(), (1, 3, 6, 6), keep_batchnorm=True)
    assert [n.op for n in graph.nodes].count("BATCH_NORM") == 1


def test_cache_key_tracks_weights_shape_and_structure() -> None:
    a = small_net()
    base = torch_cache_key(a, (1, 3, 6, 6))
    assert torch_cache_key(copy.deepcopy(a), (1, 3, 6, 6)) == base
    assert torch_cache_key(a, (2, 3, 6, 6)) != base
    assert torch_cache_key(a, (1, 3, 6, 6), keep_batchnorm=True) != base
    b = copy.deepcopy(a)
    conv_b = b[0]
    assert isinstance(conv_b, nn.Conv2d)
    with torch.no_grad():
        conv_b.weight[0, 0, 0, 0] += 1e-3
    assert torch_cache_key(b, (1, 3, 6, 6)) != base
    c = copy.deepcopy(a)
    bn_c = c[1]
    assert isinstance(bn_c, nn.BatchNorm2d) and bn_c.running_var is not None
    bn_c.running_var.mul_(2)  # buffers count, not only parameters
    assert torch_cache_key(c, (1, 3, 6, 6)) != base
    d = copy.deepcopy(a)
    conv_d = d[0]
    assert isinstance(conv_d, nn.Conv2d)
    conv_d.stride = (2, 2)  # same weights, different architecture
    assert torch_cache_key(d, (1, 3, 6, 6)) != base


def test_cache_is_used_and_a_damaged_entry_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = small_net()
    first = cached_torch_onnx(module, (1, 3, 6, 6), tmp_path)
    (entry,) = tmp_path.glob("torch-*.onnx")
    assert entry.read_bytes() == first

    def no_export(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("exported although the cache holds the model")

    with monkeypatch.context() as patch:
        patch.setattr(torch_io, "export_torch_onnx", no_export)
        graph = import_torch(module, (1, 3, 6, 6), cache_dir=tmp_path)
    assert graph.tensor(graph.inputs[0]).shape == (1, 3, 6, 6)

    entry.write_bytes(first[: len(first) // 2])  # a write cut short
    graph = import_torch(module, (1, 3, 6, 6), cache_dir=tmp_path)
    assert entry.read_bytes() == first
    graph.validate()


def test_dynamo_exporter_is_the_quiet_fallback(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    real = torch_io._export
    calls: list[bool] = []

    def legacy_fails(module: nn.Module, x: torch.Tensor, keep_bn: bool, dynamo: bool) -> bytes:
        calls.append(dynamo)
        if not dynamo:
            raise RuntimeError("legacy exporter broke")
        return real(module, x, keep_bn, dynamo)

    monkeypatch.setattr(torch_io, "_export", legacy_fails)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU()).eval()
    x = torch.randn(2, 4)
    graph = import_torch(module, x)
    assert calls == [False, True]
    assert capfd.readouterr() == ("", "")  # dynamo's prints and logs are silenced
    with torch.no_grad():
        assert_close(module(x).numpy(), run_onnx(export_onnx(graph), [x.numpy()])[0])

    def both_fail(module: nn.Module, x: torch.Tensor, keep_bn: bool, dynamo: bool) -> bytes:
        raise RuntimeError(f"exporter broke (dynamo={dynamo})")

    monkeypatch.setattr(torch_io, "_export", both_fail)
    with pytest.raises(InvalidModelError, match="dynamo=False"):
        import_torch(module, x)


class GridSample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(1, 4, 4, 2)
        return F.grid_sample(x, grid, align_corners=False)


@pytest.mark.parametrize(
    ("module", "shape", "op", "node"),
    [
        (GridSample(), (1, 2, 5, 5), "GridSample", "/GridSample"),
        (nn.Conv1d(3, 4, 3), (1, 3, 10), "Conv", "/Conv"),
        (
            nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(3, 2, 3)),
            (1, 3, 5, 5),
            "ConvTranspose",
            "/1/ConvTranspose",
        ),
    ],
    ids=["grid_sample", "conv1d", "conv_transpose"],
)
def test_unsupported_operator_names_op_and_node(
    module: nn.Module, shape: tuple[int, ...], op: str, node: str
) -> None:
    with pytest.raises(UnsupportedOperatorError) as info:
        import_torch(module, shape)
    assert info.value.op == op and info.value.node == node
    assert op in str(info.value) and node in str(info.value)


def test_operator_torch_cannot_export_is_named() -> None:
    class Svd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(x)

    with pytest.raises(UnsupportedOperatorError, match="aten::linalg_svdvals") as info:
        import_torch(Svd(), (1, 3, 3))
    assert info.value.op == "aten::linalg_svdvals"


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_zoo_model_imports_validates_and_round_trips(name: str, cache_dir: Path) -> None:
    entry = zoo.ZOO[name]
    module = zoo.build(name)
    shape = (1, *entry.input_shape)
    original = cached_torch_onnx(module, shape, cache_dir)
    graph = import_torch(module, shape, cache_dir=cache_dir)
    graph.validate()
    assert graph.tensor(graph.inputs[0]).shape == shape
    assert graph.tensor(graph.outputs[0]).shape == (1, entry.num_outputs)
    exported = export_onnx(graph)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert_close(run_onnx(original, [x])[0], run_onnx(exported, [x])[0])
