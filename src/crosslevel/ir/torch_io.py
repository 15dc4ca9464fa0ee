"""PyTorch -> IR through ``torch.onnx.export`` (the exporter is chosen here, once).

Why the TorchScript exporter (``dynamo=False``): torch 2.13 defaults to the dynamo
exporter, which takes seconds per model and prints to stdout; the TorchScript one is about
20x faster and exports the zoo's operator set at opset 17 with constant folding. It is
deprecated, so its warnings are filtered here; if it fails on a module, the dynamo
exporter is tried (its prints are captured) before giving up.

Exports are cached as ONNX bytes under an explicit ``cache_dir`` keyed by a hash of the
module (class, structure, state dict bytes), the example input's shape and dtype, and the
export settings. There is no hidden cache: without ``cache_dir`` every call exports.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from crosslevel.errors import CrosslevelError, InvalidModelError, UnsupportedOperatorError
from crosslevel.ir.graph import Graph
from crosslevel.ir.onnx import import_onnx, load_onnx_model

EXPORT_OPSET = 17
INPUT_NAME = "input"
CACHE_VERSION = "1"  # bump when the export settings below change

ExampleInput = Sequence[int] | torch.Tensor


def example_tensor(example: ExampleInput) -> torch.Tensor:
    """``example`` itself, or a deterministic random float32 tensor of that shape."""
    if isinstance(example, torch.Tensor):
        return example.detach()
    shape = tuple(int(d) for d in example)
    if not shape or any(d <= 0 for d in shape):
        raise InvalidModelError(f"input shape {shape} must be non-empty and positive")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator)


def export_torch_onnx(
    module: nn.Module, example: ExampleInput, keep_batchnorm: bool = False
) -> bytes:
    """Serialized ONNX (opset 17, constant folding on) of ``module`` in eval mode.

    The module's training flag is restored afterwards. ``keep_batchnorm`` exports
    BatchNormalization nodes as they are instead of letting the exporter fold them into
    the preceding convolution (for testing the graph level's own BN folding).
    """
    x = example_tensor(example)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            try:
                return _export(module, x, keep_batchnorm, dynamo=False)
            except UnsupportedOperatorError:
                raise
            except Exception as legacy_error:
                try:
                    return _export(module, x, keep_batchnorm, dynamo=True)
                except Exception:
                    raise InvalidModelError(
                        f"torch.onnx.export failed for {type(module).__name__}: {legacy_error}"
                    ) from legacy_error
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' warnings, prints and logs while they run.

    They print from Python (dynamo's progress), from C++ (the TorchScript graph dump on
    failure, written to file descriptor 1) and through ``logging`` (dynamo's opset
    conversion tracebacks, on stderr); failures still surface as exceptions.
    """
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        _fd_to_devnull(1),
        _fd_to_devnull(2),
    ):
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        previous = logging.root.manager.disable
        logging.disable(max(previous, logging.WARNING))
        try:
            yield
        finally:
            logging.disable(previous)


@contextlib.contextmanager
def _fd_to_devnull(fd: int) -> Iterator[None]:
    stream = sys.__stdout__ if fd == 1 else sys.__stderr__
    try:
        if stream is not None:
            stream.flush()
        saved = os.dup(fd)
    except OSError:  # no such descriptor (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _export(module: nn.Module, x: torch.Tensor, keep_batchnorm: bool, dynamo: bool) -> bytes:
    training = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    # a file, not a BytesIO: both exporters accept a path, only the legacy one a buffer
    with tempfile.TemporaryDirectory(prefix="crosslevel-export-") as tmp, _quiet_exporter():
        path = Path(tmp) / "model.onnx"
        try:
            torch.onnx.export(
                module,
                (x,),
                path,
                input_names=[INPUT_NAME],
                output_names=_output_names(module, x),
                opset_version=EXPORT_OPSET,
                do_constant_folding=True,
                training=training,
                dynamo=dynamo,
            )
        except torch.onnx.errors.UnsupportedOperatorError as exc:
            raise _unsupported(exc) from exc
        # dynamo writes weights to an external "model.onnx.data": inline them (checked)
        return load_onnx_model(path).SerializeToString()


def _output_names(module: nn.Module, x: torch.Tensor) -> list[str]:
    out = module(x)
    count = len(out) if isinstance(out, tuple | list) else 1
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _unsupported(exc: Exception) -> UnsupportedOperatorError:
    """Torch's own 'operator not supported by the exporter', as our error naming the op."""
    match = re.search(r"operator '([^']+)'", str(exc))
    op = match.group(1) if match else "unknown"
    return UnsupportedOperatorError(op, "(torch.onnx.export)", str(exc).splitlines()[0])


# --------------------------------------------------------------------------- caching


def torch_cache_key(module: nn.Module, example: ExampleInput, keep_batchnorm: bool = False) -> str:
    """Hash of everything the exported bytes depend on.

    The class and ``repr`` capture the architecture (layer hyper-parameters), the state
    dict bytes the weights and buffers, and the input shape/dtype the traced shapes.
    """
    x = example_tensor(example)
    digest = hashlib.sha256()
    cls = type(module)
    for part in (
        CACHE_VERSION,
        torch.__version__,
        str(EXPORT_OPSET),
        f"{cls.__module__}.{cls.__qualname__}",
        repr(module),
        str(tuple(x.shape)),
        str(x.dtype),
        str(keep_batchnorm),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, value in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_torch_onnx(
    module: nn.Module, example: ExampleInput, cache_dir: Path | None, keep_batchnorm: bool = False
) -> bytes:
    """``export_torch_onnx``, reading and writing ``cache_dir`` when one is given."""
    if cache_dir is None:
        return export_torch_onnx(module, example, keep_batchnorm)
    path = Path(cache_dir) / f"torch-{torch_cache_key(module, example, keep_batchnorm)}.onnx"
    if path.is_file():
        return path.read_bytes()
    data = export_torch_onnx(module, example, keep_batchnorm)
    _write_atomic(path, data)
    return data


def import_torch(
    module: nn.Module,
    example: ExampleInput,
    cache_dir: Path | None = None,
    keep_batchnorm: bool = False,
) -> Graph:
    """IR graph (NCHW) of ``module`` traced on ``example`` (an input shape or tensor).

    A cached export that no longer imports (a damaged file) is exported afresh once.
    """
    data = cached_torch_onnx(module, example, cache_dir, keep_batchnorm)
    try:
        graph = import_onnx(data)
    except UnsupportedOperatorError:
        raise
    except CrosslevelError:
        if cache_dir is None:
            raise
        data = export_torch_onnx(module, example, keep_batchnorm)
        _write_atomic(
            Path(cache_dir) / f"torch-{torch_cache_key(module, example, keep_batchnorm)}.onnx", data
        )
        graph = import_onnx(data)
    graph.name = type(module).__name__
    graph.metadata["source_format"] = "torch"
    return graph
