"""Build the generated C with the host gcc, load it with ctypes, run and measure it.

The host build is an executor of its own (``run_generated``, ``GeneratedLibrary``;
``GeneratedLibrary.invoker`` is a bound call for timing). Builds go into a folder named
by the hash of the sources and flags, inside a cache folder the caller names (tests use
a session tmp dir), so a model is compiled once per session. Besides the shared library,
``inspect_object`` compiles the object file exactly as a user would (``gcc -std=c99 -O3
-Wall -Wextra -c``) to collect warnings, the sizes ``size`` reports and gcc's
vectorization remarks. The test-main helpers (``run_process``, ``pack_inputs``,
``unpack_outputs``) are shared with the Cortex-M runs in ``cross``.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosslevel.codegen.c_files import KERNEL_HEADER, STAGES_HEADER
from crosslevel.codegen.emit import GeneratedModel, generate_c
from crosslevel.errors import CrosslevelError, InvalidModelError
from crosslevel.ir.graph import Graph
from crosslevel.memory.plan import Plan, make_plan

BASE_FLAGS = ("-std=c99", "-O3", "-Wall", "-Wextra")
HOST_FLAGS = (*BASE_FLAGS, "-march=native")
GCC_TIMEOUT_S = 600.0
VEC_INFO = "-fopt-info-vec-all=vec.txt"  # gcc's vectorizer remarks, per loop


class BuildError(CrosslevelError):
    """gcc is missing or rejected the generated code (a generator bug: exit 1)."""


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc not found on PATH: the host build needs it (apt-get install gcc)")
    return gcc


def run_tool(
    cmd: list[str], cwd: Path, timeout_s: float = GCC_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a compiler or binutils tool; a failure or a timeout is a BuildError."""
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise BuildError(f"{Path(cmd[0]).name} timed out after {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    return proc


def write_sources(gen: GeneratedModel, out: Path) -> Path:
    """Write the generated files into folder ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in gen.files.items():
        (out / name).write_text(text, encoding="utf-8")
    return out


def build_dir(gen: GeneratedModel, flags: Sequence[str], cache_dir: Path) -> Path:
    """The cache folder of one build: named by the hash of the sources and the flags."""
    digest = hashlib.sha256()
    for name in sorted(gen.files):
        digest.update(name.encode() + b"\0" + gen.files[name].encode() + b"\0")
    digest.update(" ".join(flags).encode())
    return cache_dir / f"{gen.symbol}-{digest.hexdigest()[:16]}"


# ----------------------------------------------------------------------------------
# shared library + ctypes
# ----------------------------------------------------------------------------------
class GeneratedLibrary:
    """The compiled model loaded in this process; ``run`` is one inference."""

    def __init__(self, gen: GeneratedModel, so_path: Path) -> None:
        self.gen = gen
        self.path = so_path
        self._lib = ctypes.CDLL(str(so_path))
        self._invoke = getattr(self._lib, f"{gen.symbol}_invoke")
        nargs = len(gen.inputs) + len(gen.outputs)
        self._invoke.argtypes = [ctypes.c_void_p] * nargs
        self._invoke.restype = ctypes.c_int
        arena = getattr(self._lib, f"{gen.symbol}_arena_bytes")
        arena.restype = ctypes.c_size_t
        self.arena_bytes = int(arena())
        self.log = CompileLog([], {})  # filled in by build_library
        self._outs = [np.zeros(s.shape, dtype=s.dtype) for s in gen.outputs]
        self._args = [0] * len(gen.inputs) + [o.ctypes.data for o in self._outs]

    def _bind(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self.gen.inputs):
            raise InvalidModelError(f"expected {len(self.gen.inputs)} inputs, got {len(inputs)}")
        arrays = []
        for spec, value in zip(self.gen.inputs, inputs, strict=True):
            arr = np.ascontiguousarray(value, dtype=spec.dtype)
            if arr.size * arr.itemsize != spec.nbytes:
                raise InvalidModelError(f"input {spec.name!r}: {arr.shape}, expected {spec.shape}")
            arrays.append(arr)
        for i, arr in enumerate(arrays):
            self._args[i] = arr.ctypes.data
        return arrays

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        keep = self._bind(inputs)
        status = self._invoke(*self._args)
        del keep
        if status != 0:
            raise CrosslevelError(f"generated {self.gen.symbol}_invoke returned {status}")
        return [o.copy() for o in self._outs]

    def invoker(self, inputs: Sequence[np.ndarray]) -> Callable[[], int]:
        """A zero-argument call of the model on ``inputs`` (bound once), for timing; the
        outputs land in the library's output buffers."""
        keep = self._bind(inputs)
        call, args = self._invoke, list(self._args)

        def invoke() -> int:
            del keep[:0]  # keeps the bound input arrays alive as long as the closure
            return int(call(*args))

        return invoke


def build_library(
    gen: GeneratedModel, cache_dir: Path, flags: Sequence[str] = HOST_FLAGS
) -> GeneratedLibrary:
    """Compile ``gen`` to a shared library (cached by content) and load it.

    The same gcc run records its warnings and its vectorization remarks
    (``-fopt-info-vec-all``) in the library's ``log``, so no second compile is needed.
    """
    folder = build_dir(gen, flags, Path(cache_dir))
    so_path = folder / "libmodel.so"
    if not so_path.exists():
        write_sources(gen, folder)
        tmp = folder / f"libmodel.{time.monotonic_ns()}.tmp.so"
        cmd = [_gcc(), *flags, "-fPIC", "-shared", VEC_INFO, "-o", tmp.name, "model.c", "-lm"]
        proc = run_tool(cmd, folder)
        (folder / "gcc.log").write_text(proc.stderr, encoding="utf-8")
        tmp.replace(so_path)
    lib = GeneratedLibrary(gen, so_path)
    lib.log = compile_log(folder)
    return lib


@dataclass
class CompileLog:
    """gcc's warnings and per-kernel vectorization remarks of one compile."""

    warnings: list[str]
    vectorized: dict[str, int]  # kernel -> loops vectorized


def compile_log(folder: Path) -> CompileLog:
    """The log of the compile in ``folder`` (``gcc.log`` and ``vec.txt``)."""
    log = folder / "gcc.log"
    text = log.read_text(encoding="utf-8") if log.exists() else ""
    vectorized: dict[str, int] = {}
    for name in (KERNEL_HEADER, STAGES_HEADER):
        if (folder / name).exists():
            header = (folder / name).read_text(encoding="utf-8").splitlines()
            vectorized.update(_vectorized_loops(folder / "vec.txt", name, header))
    return CompileLog([ln for ln in text.splitlines() if "warning" in ln], vectorized)


def run_generated(
    graph: Graph,
    inputs: Sequence[np.ndarray],
    plan: Plan | None = None,
    cache_dir: Path | None = None,
) -> list[np.ndarray]:
    """Executor: generate C for ``graph`` (``plan`` or the file order's plan), build it on
    the host and run it on ``inputs``; returns the outputs in ``graph.outputs`` order."""
    gen = generate_c(graph, plan if plan is not None else make_plan(graph))
    if cache_dir is not None:
        return build_library(gen, cache_dir).run(inputs)
    with tempfile.TemporaryDirectory(prefix="crosslevel-codegen-") as tmp:
        return build_library(gen, Path(tmp)).run(inputs)


def build_asan_checker(gen: GeneratedModel, cache_dir: Path) -> Path:
    """The test main linked with AddressSanitizer and ``CL_ASAN_CHECK``: a process that
    aborts (non-zero exit, report on stderr) when a kernel touches arena bytes outside
    its operator's planned regions."""
    flags = ("-std=c99", "-O1", "-g", "-fsanitize=address", "-DCL_ASAN_CHECK")
    folder = build_dir(gen, (*flags, "asan"), Path(cache_dir))
    exe = folder / "model_asan"
    if not exe.exists():
        write_sources(gen, folder)
        run_tool([_gcc(), *flags, "-o", exe.name, "main.c", "model.c", "-lm"], folder)
    return exe


def run_process(
    exe: Path, gen: GeneratedModel, inputs: Sequence[np.ndarray], timeout_s: float = 120.0
) -> tuple[int, list[np.ndarray], str]:
    """Run a generated test main (``main IN.bin OUT.bin``): (exit code, outputs, stderr)."""
    with tempfile.TemporaryDirectory(prefix="crosslevel-run-") as tmp:
        src, dst = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        src.write_bytes(pack_inputs(gen, inputs))
        try:
            proc = subprocess.run(
                [str(exe), str(src), str(dst)], capture_output=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise BuildError(f"{exe.name} did not finish in {timeout_s:.0f} s") from None
        data = dst.read_bytes() if dst.exists() else b""
    return proc.returncode, unpack_outputs(gen, data), proc.stderr.decode("utf-8", "replace")


def pack_inputs(gen: GeneratedModel, inputs: Sequence[np.ndarray]) -> bytes:
    """The raw input file of a test main: every input's bytes, in order."""
    return b"".join(
        np.ascontiguousarray(x, dtype=s.dtype).tobytes()
        for x, s in zip(inputs, gen.inputs, strict=True)
    )


def unpack_outputs(gen: GeneratedModel, data: bytes) -> list[np.ndarray]:
    """The outputs in a test main's raw output file; a short file (a process that
    aborted) yields only the outputs it holds completely."""
    outs, at = [], 0
    for spec in gen.outputs:
        if len(data) >= at + spec.nbytes:
            chunk = data[at : at + spec.nbytes]
            outs.append(np.frombuffer(chunk, dtype=spec.dtype).reshape(spec.shape).copy())
        at += spec.nbytes
    return outs


def random_inputs(gen: GeneratedModel, seed: int) -> list[np.ndarray]:
    """Random inputs over the whole int8 range, or standard normal floats."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in gen.inputs:
        if spec.dtype == "int8":
            out.append(rng.integers(-128, 128, size=spec.shape, dtype=np.int8))
        else:
            out.append(rng.standard_normal(spec.shape).astype(np.float32))
    return out


# ----------------------------------------------------------------------------------
# object file: warnings, sizes, vectorization
# ----------------------------------------------------------------------------------
@dataclass
class ObjectReport:
    """What ``gcc -c`` said about the generated code and what ``size`` measured."""

    warnings: list[str]
    text_bytes: int  # code + read-only data (weights): flash
    data_bytes: int
    bss_bytes: int  # the arena
    vectorized: dict[str, int] = field(default_factory=dict)  # kernel -> loops vectorized

    @property
    def flash_bytes(self) -> int:
        return self.text_bytes + self.data_bytes


def inspect_object(
    gen: GeneratedModel, cache_dir: Path, flags: Sequence[str] = HOST_FLAGS
) -> ObjectReport:
    """Compile ``model.c`` to an object with ``-fopt-info-vec``; sizes from ``size``."""
    folder = build_dir(gen, (*flags, "obj"), Path(cache_dir))
    write_sources(gen, folder)
    proc = run_tool([_gcc(), *flags, VEC_INFO, "-c", "model.c", "-o", "model.o"], folder)
    (folder / "gcc.log").write_text(proc.stderr, encoding="utf-8")
    log = compile_log(folder)
    text, data, bss = object_sizes(folder / "model.o")
    return ObjectReport(log.warnings, text, data, bss, log.vectorized)


def object_sizes(obj: Path, size_tool: str | None = None) -> tuple[int, int, int]:
    """(text, data, bss) of an object file, from binutils ``size`` (Berkeley format);
    ``size_tool``: another ``size`` (a cross toolchain's)."""
    size = size_tool or shutil.which("size")
    if size is None:
        raise BuildError("binutils 'size' not found on PATH")
    # size runs in the object's folder, so it gets the bare name (a relative path would
    # be resolved twice)
    proc = run_tool([size, obj.name], obj.parent)
    fields = proc.stdout.strip().splitlines()[-1].split()
    return int(fields[0]), int(fields[1]), int(fields[2])


_KERNEL_DEF = re.compile(r"^static inline \w+ (cl_\w+)\(")


def _vectorized_loops(report: Path, header_name: str, header: list[str]) -> dict[str, int]:
    """Count gcc's "loop vectorized" remarks per kernel of the header ``header_name`` (a
    remark names a header line; the kernel is the function that line is in)."""
    owner: list[str] = []
    current = "-"
    for line in header:
        m = _KERNEL_DEF.match(line)
        if m:
            current = m.group(1)
        owner.append(current)
    counts: dict[str, int] = {}
    seen: set[str] = set()
    text = report.read_text(encoding="utf-8", errors="replace") if report.exists() else ""
    for line in text.splitlines():
        m = re.match(rf"{re.escape(header_name)}:(\d+):\d+: (.*)", line)
        if not m or "optimized: loop vectorized" not in m.group(2) or line in seen:
            continue
        seen.add(line)
        lineno = int(m.group(1))
        name = owner[lineno - 1] if 0 < lineno <= len(owner) else "-"
        counts[name] = counts.get(name, 0) + 1
    return counts
