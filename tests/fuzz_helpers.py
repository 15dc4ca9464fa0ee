"""Deterministic corruptions of model files, for testing importers against hostile input.

Pure functions on bytes: the same (data, seed) always gives the same corrupt file, so a
failing case can be reproduced from its label alone. Shared by the TFLite and ONNX tests.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import numpy as np


def flip_bytes(
    data: bytes, seed: int, count: int = 1, start: int = 0, end: int | None = None
) -> bytes:
    """XOR ``count`` random bytes in ``data[start:end]`` with random non-zero masks."""
    end = len(data) if end is None else min(end, len(data))
    if not data or start >= end:
        return data
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.integers(start, end, size=count):
        out[int(pos)] ^= int(rng.integers(1, 256))
    return bytes(out)


def flip_bits(data: bytes, seed: int, count: int = 1) -> bytes:
    """Flip ``count`` single random bits anywhere in ``data``."""
    if not data:
        return data
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for pos in rng.integers(0, len(data) * 8, size=count):
        out[int(pos) // 8] ^= 1 << (int(pos) % 8)
    return bytes(out)


def truncate(data: bytes, length: int) -> bytes:
    """The first ``length`` bytes (a download or write cut short)."""
    return data[: max(0, length)]


def wrong_magic(data: bytes, offset: int = 4, magic: bytes = b"XXXX") -> bytes:
    """Overwrite the format's magic/identifier (TFLite: bytes 4..8, ``TFL3``)."""
    return data[:offset] + magic + data[offset + len(magic) :]


def overwrite(data: bytes, seed: int, length: int, value: int | None = None) -> bytes:
    """Overwrite a random run of ``length`` bytes with ``value`` (or random bytes)."""
    if not data:
        return data
    rng = np.random.default_rng(seed)
    length = min(length, len(data))
    start = int(rng.integers(0, len(data) - length + 1))
    if value is None:
        fill = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    else:
        fill = bytes([value]) * length
    return data[:start] + fill + data[start + length :]


def random_bytes(seed: int, length: int, prefix: bytes = b"") -> bytes:
    """Garbage of ``length`` bytes, optionally behind a valid-looking ``prefix``."""
    rng = np.random.default_rng(seed)
    body = rng.integers(0, 256, size=max(0, length - len(prefix)), dtype=np.uint8).tobytes()
    return prefix + body


def corruptions(
    data: bytes, seed: int = 0, n_flips: int = 30, magic_offset: int = 4, head_bytes: int = 4096
) -> list[tuple[str, bytes]]:
    """About ``n_flips + 20`` labelled corrupt variants of ``data``.

    Flips are spread over the whole file and concentrated in its first and last
    ``head_bytes`` bytes, where flatbuffer/protobuf structure (offsets, lengths, vtables)
    tends to sit, since flips inside weights rarely break the structure.
    """
    size = len(data)
    cases: list[tuple[str, bytes]] = [
        ("empty", b""),
        ("wrong magic", wrong_magic(data, magic_offset)),
    ]
    for frac in (0.0005, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999):
        cases.append((f"truncated to {frac:.2%}", truncate(data, int(size * frac))))
    cases += [(f"truncated to {k} bytes", truncate(data, k)) for k in (1, 7, 8, 12, size - 1)]
    for k in range(n_flips):
        s = seed * 1000 + k
        if k % 3 == 0:
            case = flip_bytes(data, s, count=1 + k % 5)
            where = "anywhere"
        elif k % 3 == 1:
            case = flip_bytes(data, s, count=1 + k % 4, end=head_bytes)
            where = "head"
        else:
            case = flip_bytes(data, s, count=1 + k % 4, start=size - head_bytes)
            where = "tail"
        cases.append((f"flip seed={s} {where}", case))
    cases += [
        ("bit flips x8", flip_bits(data, seed, 8)),
        ("zeroed run", overwrite(data, seed, 64, 0)),
        ("0xff run", overwrite(data, seed + 1, 64, 0xFF)),
        ("random run", overwrite(data, seed + 2, 256)),
        ("garbage same size", random_bytes(seed, size)),
        ("garbage behind header", random_bytes(seed, size, prefix=data[:8])),
        ("doubled", data + data),
    ]
    return cases


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError if the body runs longer than ``seconds`` (main thread, POSIX)."""

    def _alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
