"""Split inference over a real gRPC connection on loopback: outputs, hostile messages,
tokens, and the edge stopping mid-stream."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from distributed_helpers import half_split_plan, self_signed_cert

from crosslevel.distributed.client import DeviceClient
from crosslevel.distributed.partition import load_plan, write_plan
from crosslevel.distributed.server import plan_id, start_server
from crosslevel.distributed.transport import INFER, MAGIC, MessageError, TensorSpec, decode, encode
from crosslevel.errors import UsageError
from crosslevel.runtime.ort import make_session, run_session

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = half_split_plan("zoo:resnet8")
    out = tmp_path_factory.mktemp("plan")
    write_plan(result, out)
    return load_plan(out)


@pytest.fixture()
def edge(plan: dict[str, Any]) -> Iterator[tuple[int, Any]]:
    server, port, service = start_server(plan, TOKEN, max_message_bytes=1 << 20)
    yield port, service
    server.stop(0).wait(5)


def _inputs(plan: dict[str, Any], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s["shape"]).astype(np.float32) for s in plan["inputs"]]


def _reference(plan: dict[str, Any], x: list[np.ndarray]) -> list[np.ndarray]:
    return run_session(make_session(Path(plan["_whole"])), x)


def _close(a: np.ndarray, ref: np.ndarray) -> None:
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


def test_split_over_loopback_equals_whole_model(plan: dict[str, Any], edge: Any) -> None:
    port, service = edge
    client = DeviceClient(plan, f"127.0.0.1:{port}", TOKEN)
    try:
        client.check_plan()
        for i in range(5):
            x = _inputs(plan, i)
            answer = client.infer(f"r{i}", x)
            assert answer.where == "split"
            _close(answer.outputs[0], _reference(plan, x)[0])
        stats = client.stats.summary()
    finally:
        client.close()
    assert service.served == 5
    assert stats["split_calls"] == 5 and stats["measured_mbps_median"] > 0


def test_unreachable_edge_and_bad_ports_are_clear_errors(plan: dict[str, Any], edge: Any) -> None:
    port, _ = edge
    client = DeviceClient(plan, "127.0.0.1:1", TOKEN, timeout_s=0.5)  # nothing listens there
    try:
        with pytest.raises(UsageError, match="cannot ask the edge"):
            client.check_plan()
        assert client.infer("r0", _inputs(plan, 0)).where == "local"
    finally:
        client.close()
    with pytest.raises(UsageError, match="not in 0..65535"):
        start_server(plan, TOKEN, port=70000)
    with pytest.raises(UsageError, match="cannot listen"):  # in use: no silent port sharing
        start_server(plan, TOKEN, port=port)


def _raw_call(port: int, message: bytes, token: str = TOKEN) -> bytes:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(INFER)
        return call(message, timeout=5, metadata=(("authorization", f"Bearer {token}"),))  # type: ignore[no-any-return]


def _cut_tensors(plan: dict[str, Any], **replace: np.ndarray) -> dict[str, np.ndarray]:
    """The cut tensors of the plan, with the first one replaced by ``replace["first"]``."""
    rng = np.random.default_rng(0)
    specs = plan["links"][0]["tensors"]
    tensors = {s["name"]: rng.standard_normal(s["shape"]).astype(np.float32) for s in specs}
    if "first" in replace:
        tensors[specs[0]["name"]] = replace["first"]
    return tensors


def _good_message(plan: dict[str, Any], served_plan: str | None = None) -> bytes:
    return encode("ok", _cut_tensors(plan), extra={"plan_id": served_plan or plan_id(plan)})


def _bad_messages(plan: dict[str, Any]) -> list[bytes]:
    good = _good_message(plan)
    spec = plan["links"][0]["tensors"][0]
    wrong_shape = encode("x", _cut_tensors(plan, first=np.zeros([1, 2, 3], np.float32)))
    wrong_dtype = encode("x", _cut_tensors(plan, first=np.zeros(spec["shape"], np.float64)))
    wrong_name = encode("x", {"evil": np.zeros(spec["shape"], np.float32)})
    huge_header = MAGIC + struct.pack("<I", 2**31) + b"{}"
    deep = b"[" * 60_000  # json's recursion limit, inside the 64 KiB header limit
    huge_int = b'{"id": "x", "tensors": [], "n": ' + b"9" * 5000 + b"}"  # int digit limit
    return [
        MAGIC + struct.pack("<I", len(deep)) + deep,
        MAGIC + struct.pack("<I", len(huge_int)) + huge_int,
        b"",
        b"garbage",
        good[:-7],
        good + b"extra",
        wrong_shape,
        wrong_dtype,
        wrong_name,
        huge_header,
        MAGIC + struct.pack("<I", 5) + b"\xff\xfe\x00{}",
    ]


def test_bad_messages_rejected_and_server_keeps_serving(plan: dict[str, Any], edge: Any) -> None:
    port, service = edge
    for message in _bad_messages(plan):
        with pytest.raises(grpc.RpcError) as info:
            _raw_call(port, message)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert info.value.details()  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(port, b"\x00" * (2 << 20))  # over the 1 MiB limit
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    with pytest.raises(grpc.RpcError) as info:  # right tensors, another plan's id
        _raw_call(port, _good_message(plan, served_plan="0" * 16))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    reply = _raw_call(port, _good_message(plan))
    specs = [TensorSpec.from_json(s) for s in plan["links"][0]["returned"]]
    assert decode(reply, specs)[0] == "ok"
    assert service.rejected == len(_bad_messages(plan)) + 1 and service.served == 1


def test_decode_names_the_problem(plan: dict[str, Any]) -> None:
    specs = [TensorSpec.from_json(s) for s in plan["links"][0]["tensors"]]
    wrong = encode("x", _cut_tensors(plan, first=np.zeros([1, 2, 3], np.float32)))
    with pytest.raises(MessageError, match="shape"):
        decode(wrong, specs)
    wrong = encode("x", _cut_tensors(plan, first=np.zeros(specs[0].shape, np.int32)))
    with pytest.raises(MessageError, match="dtype"):
        decode(wrong, specs)
    packed = encode("x", _cut_tensors(plan), compress=True)
    assert len(packed) < len(encode("x", _cut_tensors(plan))) / 3
    assert decode(packed, specs)[1][specs[0].name].dtype == np.float32


def test_int8_tensor_is_never_dequantized() -> None:
    """A header claiming an int8 tensor was compressed from float32 does not change its
    dtype: only tensors the plan declares float32 may arrive compressed."""
    spec = TensorSpec("a", (2,), "int8")
    entry = {"name": "a", "shape": [2], "dtype": "int8", "offset": 0, "nbytes": 2}
    entry.update(orig_dtype="float32", scale=0.5, zero_point=0)
    header = json.dumps({"id": "x", "tensors": [entry]}).encode()
    message = MAGIC + struct.pack("<I", len(header)) + header + bytes([3, 4])
    got = decode(message, [spec])[1]["a"]
    assert got.dtype == np.int8 and got.tolist() == [3, 4]


def test_bad_token_refused(plan: dict[str, Any], edge: Any) -> None:
    port, service = edge
    with pytest.raises(grpc.RpcError) as info:
        _raw_call(port, _good_message(plan), token="wrong")
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    client = DeviceClient(plan, f"127.0.0.1:{port}", "wrong")
    with pytest.raises(UsageError, match="token"):
        client.infer("r0", _inputs(plan, 0))
    client.close()
    assert service.served == 0


def test_edge_stops_mid_stream_every_request_answered_once(plan: dict[str, Any]) -> None:
    server, port, first = start_server(plan, TOKEN)
    second = None
    client = DeviceClient(plan, f"127.0.0.1:{port}", TOKEN, timeout_s=1.0, retry_s=0.2)
    answers = []
    try:
        for i in range(24):
            if i == 8:
                server.stop(0).wait(5)  # the edge goes away mid-stream
            if i == 16:
                server, port2, second = start_server(plan, TOKEN, port=port)  # and comes back
                assert port2 == port
                time.sleep(0.3)
            x = _inputs(plan, i)
            answer = client.infer(f"r{i}", x)
            _close(answer.outputs[0], _reference(plan, x)[0])
            answers.append(answer)
            time.sleep(0.03)
    finally:
        server.stop(0).wait(5)
        client.close()
    ids = [a.request_id for a in answers]
    assert ids == [f"r{i}" for i in range(24)]  # each answered, in order
    where = [a.where for a in answers]
    assert set(where[:8]) == {"split"}
    assert set(where[8:16]) == {"local"}
    assert "split" in where[16:]  # splitting resumed once the edge returned
    assert where[-1] == "split"
    # Never answered twice: every request the edges computed is one the device took as
    # split; none of them was also (or instead) answered locally.
    assert second is not None
    assert first.served == 8 and second.served == where[16:].count("split")
    assert client.stats.local_runs == where.count("local")


def test_tls_with_a_self_signed_certificate(plan: dict[str, Any], tmp_path: Path) -> None:
    """Split inference over TLS; a client without the root certificate cannot connect."""
    key, cert = self_signed_cert(tmp_path)
    server, port, service = start_server(plan, TOKEN, tls=(key, cert))
    try:
        client = DeviceClient(plan, f"localhost:{port}", TOKEN, tls_root=cert)
        x = _inputs(plan, 3)
        answer = client.infer("tls", x)
        assert answer.where == "split"
        _close(answer.outputs[0], _reference(plan, x)[0])
        client.close()
        plain = DeviceClient(plan, f"localhost:{port}", TOKEN, timeout_s=1.0)
        assert plain.infer("plain", x).where == "local"  # no TLS: refused, answered locally
        plain.close()
        assert service.served == 1
    finally:
        server.stop(0)
