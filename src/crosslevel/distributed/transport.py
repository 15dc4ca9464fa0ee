"""The wire format of split inference: raw tensor bytes behind a small JSON header.

A message is ``MAGIC | u32 header length | header JSON | payload``. The header names the
request and, per tensor, its name, dtype, shape and byte range in the payload (and the
scale and zero point of an int8-compressed float tensor). Nothing is ever unpickled: a
receiver checks every field against the tensors it expects (names, dtypes, shapes, exact
byte counts, contiguous ranges) and raises one ``MessageError`` otherwise.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crosslevel.distributed.partition import dequantize_int8, quantize_int8
from crosslevel.errors import UsageError

MAGIC = b"CLX1"
MAX_HEADER_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVICE = "crosslevel.Split"
INFER = f"/{SERVICE}/Infer"
INFO = f"/{SERVICE}/Info"
_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")


class MessageError(UsageError):
    """A received message is malformed, oversized or does not match the expected tensors."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> TensorSpec:
        return cls(str(spec["name"]), tuple(int(d) for d in spec["shape"]), str(spec["dtype"]))


def encode(
    request_id: str,
    tensors: Mapping[str, np.ndarray],
    compress: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """One message; float32 tensors become int8 with their scale when ``compress``."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        array = np.ascontiguousarray(value)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape)}
        if compress and array.dtype == np.float32:
            q, scale, zero = quantize_int8(array)
            entry.update(dtype="int8", scale=scale, zero_point=zero, orig_dtype="float32")
            data = q.tobytes()
        else:
            entry["dtype"] = str(array.dtype)
            data = array.tobytes()
        entry.update(offset=offset, nbytes=len(data))
        entries.append(entry)
        chunks.append(data)
        offset += len(data)
    header = json.dumps({"id": request_id, "tensors": entries, **(extra or {})}).encode()
    if len(header) > MAX_HEADER_BYTES:
        raise MessageError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)


def _header(message: bytes) -> tuple[dict[str, Any], memoryview]:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise MessageError("message is not bytes")
    if len(message) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE_BYTES}")
    if len(message) < 8 or bytes(message[:4]) != MAGIC:
        raise MessageError("message does not start with the CLX1 magic")
    (size,) = struct.unpack("<I", bytes(message[4:8]))
    if size > MAX_HEADER_BYTES or 8 + size > len(message):
        raise MessageError(f"header length {size} is out of range")
    try:
        header = json.loads(bytes(message[8 : 8 + size]))
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, deep nesting, huge ints
        raise MessageError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("id"), str):
        raise MessageError("header must be an object with a string 'id'")
    if not isinstance(header.get("tensors"), list):
        raise MessageError("header 'tensors' must be a list")
    return header, memoryview(message)[8 + size :]


def header_of(message: bytes) -> dict[str, Any]:
    """The checked header alone (to pick the tensors to expect before ``decode``)."""
    return _header(message)[0]


def decode(
    message: bytes, expected: Sequence[TensorSpec]
) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """(request id, tensors by name, header) after checking them against ``expected``."""
    header, payload = _header(message)
    entries = header["tensors"]
    want = {s.name: s for s in expected}
    if len(entries) != len(want):
        raise MessageError(f"expected {len(want)} tensors, got {len(entries)}")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for entry in entries:
        name, array = _tensor(entry, want, payload, offset)
        if name in out:
            raise MessageError(f"tensor {name!r} sent twice")
        out[name] = array
        offset += int(entry["nbytes"])
    if offset != len(payload):
        raise MessageError(f"payload has {len(payload) - offset} unexplained trailing bytes")
    return header["id"], out, header


def _tensor(
    entry: Any, want: Mapping[str, TensorSpec], payload: memoryview, offset: int
) -> tuple[str, np.ndarray]:
    if not isinstance(entry, dict):
        raise MessageError("tensor entry must be an object")
    name = entry.get("name")
    spec = want.get(name) if isinstance(name, str) else None
    if spec is None or not isinstance(name, str):
        raise MessageError(f"unexpected tensor {name!r}; expected {sorted(want)}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or tuple(shape) != spec.shape:
        raise MessageError(f"tensor {name!r} has shape {shape!r}, expected {list(spec.shape)}")
    dtype = entry.get("dtype")
    # Only a float32 tensor may arrive int8-compressed; an int8 tensor is never dequantized.
    compressed = (
        spec.dtype == "float32" and dtype == "int8" and entry.get("orig_dtype") == "float32"
    )
    if dtype not in _DTYPES or (dtype != spec.dtype and not compressed):
        raise MessageError(f"tensor {name!r} has dtype {dtype!r}, expected {spec.dtype}")
    count = int(np.prod(spec.shape, dtype=np.int64))
    nbytes = count * np.dtype(dtype).itemsize
    if entry.get("offset") != offset or entry.get("nbytes") != nbytes:
        raise MessageError(f"tensor {name!r} byte range does not match its shape and dtype")
    if offset + nbytes > len(payload):
        raise MessageError(f"tensor {name!r} runs past the end of the message")
    array = np.frombuffer(payload[offset : offset + nbytes], dtype=dtype).reshape(spec.shape)
    if compressed:
        scale, zero = entry.get("scale"), entry.get("zero_point")
        if not isinstance(scale, float) or not np.isfinite(scale) or scale <= 0:
            raise MessageError(f"tensor {name!r} has an invalid int8 scale {scale!r}")
        if not isinstance(zero, int) or not -128 <= zero <= 127:
            raise MessageError(f"tensor {name!r} has an invalid zero point {zero!r}")
        return name, dequantize_int8(array, scale, zero)
    return name, array.copy()
