"""Zoo models as int8 ``.tflite`` files that TensorFlow Lite Micro runs.

The path: zoo PyTorch module -> ``import_torch`` (NCHW IR) -> ``optimize_graph`` (BN
folded, activations fused) -> ``to_nhwc`` -> ``quantize_int8`` (calibrated) ->
``export_tflite``. Everything is seeded, so the same call gives the same bytes.

Why untrained models get their BatchNorm statistics settled first: a freshly built zoo
model has running mean 0 and variance 1 everywhere, so BN does not normalize and the
signal shrinks by a constant factor per layer; after 50 layers (MobileNetV2) activations
are ~1e-12 and the "model" outputs its last bias. ``settle_batchnorm`` scales every BN
by the RMS of its input on the calibration data, so activations have the O(1) scale of
a trained model and quantization is exercised on realistic ranges. Trained modules
passed in are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from crosslevel.errors import UsageError
from crosslevel.graph.layout import to_graph_layout, to_nhwc
from crosslevel.graph.optimize import optimize_graph
from crosslevel.ir.graph import Graph
from crosslevel.ir.tflite_io import export_tflite
from crosslevel.ir.torch_io import import_torch
from crosslevel.model import zoo
from crosslevel.model.quantize import quantize_int8

DEFAULT_CALIBRATION = 64


@dataclass
class Int8Model:
    """A zoo model through the int8 path, with what tests and reports compare it to."""

    name: str
    module: nn.Module  # the float model (eval mode) the graphs were taken from
    float_graph: Graph  # optimized, NHWC, float32
    int8_graph: Graph
    tflite: bytes
    calibration_nchw: np.ndarray  # the calibration inputs, in the module's layout
    builder_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_model_input(self, x_nchw: np.ndarray) -> np.ndarray:
        """Float NCHW data laid out for the NHWC graphs (and the .tflite file)."""
        return to_graph_layout(self.float_graph, self.float_graph.inputs[0], x_nchw)


def calibration_inputs(
    name: str, count: int = DEFAULT_CALIBRATION, seed: int = 0, **kwargs: Any
) -> np.ndarray:
    """``count`` calibration inputs (N, *input shape) in the zoo model's NCHW layout.

    digits_cnn gets real scikit-learn digits (its training split); the other models
    get standard normal inputs from a seeded generator (no offline data set here).
    """
    entry = _entry(name)
    shape = entry.input_shape_for(**kwargs)
    if entry.dataset == "digits":
        from crosslevel.model.datasets import load_dataset

        x = load_dataset("digits", seed=seed).x_train
        pick = np.random.default_rng(seed).permutation(len(x))[:count]
        return np.ascontiguousarray(x[pick], dtype=np.float32)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *shape)).astype(np.float32)


def settle_batchnorm(module: nn.Module, x: np.ndarray) -> None:
    """Make every BatchNorm divide its input by the input's root mean square over ``x``.

    One eval-mode pass: a pre-hook on each BN sets its running mean to 0 and its running
    variance to the mean square of the input it is about to normalize (so later layers
    see the already settled earlier ones). Why not the usual centered statistics: mean
    subtraction before ReLU makes a random deep network chaotic (small perturbations
    grow about 1.2x per layer, so int8 rounding noise swamps MobileNetV2's output),
    whereas dividing by the RMS keeps it at the edge of chaos like He initialization.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return

    def settle(bn: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inp = args[0]
        dims = [d for d in range(inp.dim()) if d != 1]
        assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
        assert bn.running_mean is not None and bn.running_var is not None
        bn.running_mean.zero_()
        bn.running_var.copy_(inp.pow(2).mean(dim=dims))

    module.eval()
    handles = [m.register_forward_pre_hook(settle) for m in norms]
    try:
        with torch.no_grad():
            module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for handle in handles:
            handle.remove()


def zoo_int8(
    name: str,
    *,
    seed: int = 0,
    num_calibration: int = DEFAULT_CALIBRATION,
    module: nn.Module | None = None,
    calibration: np.ndarray | None = None,
    **kwargs: Any,
) -> Int8Model:
    """Build (or take) zoo model ``name`` and run it through the int8 path.

    ``kwargs`` go to the zoo builder (``width_mult``, ``resolution``...). ``module``: a
    trained instance to use instead of a fresh seeded one; ``calibration``: NCHW inputs
    (N, *input shape) to use instead of ``calibration_inputs``.
    """
    entry = _entry(name)
    shape = (1, *entry.input_shape_for(**kwargs))
    if calibration is None:
        calibration = calibration_inputs(name, num_calibration, seed, **kwargs)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if module is None:
        torch.manual_seed(seed)
        module = zoo.build(name, **kwargs)
        settle_batchnorm(module, calibration)
    module.eval()
    graph = optimize_graph(import_torch(module, shape))
    graph.name = name
    nhwc = to_nhwc(graph)
    feeds = [to_graph_layout(nhwc, nhwc.inputs[0], x[None]) for x in calibration]
    int8 = quantize_int8(nhwc, feeds)
    return Int8Model(name, module, nhwc, int8, export_tflite(int8), calibration, dict(kwargs))


def zoo_int8_tflite(name: str, **kwargs: Any) -> bytes:
    """The int8 ``.tflite`` bytes of zoo model ``name`` (see ``zoo_int8`` for kwargs)."""
    return zoo_int8(name, **kwargs).tflite


def _entry(name: str) -> zoo.ZooEntry:
    entry = zoo.ZOO.get(name)
    if entry is None:
        raise UsageError(f"unknown zoo model {name!r}; known models: {', '.join(zoo.ZOO)}")
    return entry
