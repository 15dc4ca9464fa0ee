"""Zoo models as int8 ``.tflite`` files that TensorFlow Lite Micro runs.

The path: zoo PyTorch module -> ``import_torch`` (NCHW IR) -> ``optimize_graph`` (BN
folded, activations fused) -> ``to_nhwc`` -> ``quantize_int8`` (calibrated) ->
``export_tflite``. Everything is seeded, so the same call gives the same bytes.

Why untrained models get their BatchNorm statistics settled first: a freshly built zoo
model has running mean 0 and variance 1 everywhere, so BN does not normalize and the
signal shrinks by a constant factor per layer; after 50 layers (MobileNetV2) activations
are ~1e-12 and the "model" outputs its last bias. Running the calibration inputs through
the model in training mode once (cumulative averages) gives every BN the statistics of
real activations, as a trained model has, so quantization is exercised on activations
of a realistic scale. Trained modules passed in are left as they are.
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

DEFAULT_CALIBRATION = 16


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
    """Give every BatchNorm the statistics of ``x``'s activations (one pass, no grads).

    Dropout stays in eval mode so the statistics are those of inference.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    module.eval()
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
        m.train()
    try:
        with torch.no_grad():
            module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        module.eval()


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
