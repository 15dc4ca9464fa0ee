"""The edge side of split inference: the tail parts in ONNX Runtime behind gRPC.

One generic gRPC service (no generated code): ``Infer`` takes a transport message with the
cut tensors and answers with the graph outputs the device does not compute; ``Info``
answers the plan's identity (``DeviceClient.check_plan``). Every call must carry
``authorization: Bearer TOKEN`` (compared in constant time); every message is checked
by ``transport.decode`` against the plan's tensor specs and must name the plan's id (so a
device never mixes plans; the device then answers locally); gRPC enforces the message size
limit before our code runs. A bad call is refused with a status and a clear message and
the server keeps serving. With three tiers this server runs the cloud part after its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np

from crosslevel.distributed.transport import (
    MAX_MESSAGE_BYTES,
    SERVICE,
    MessageError,
    TensorSpec,
    decode,
    encode,
)
from crosslevel.errors import CrosslevelError, InvalidModelError, UsageError


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def plan_id(plan: dict[str, Any]) -> str:
    """A digest of the parts' model hashes: device and edge must agree on it."""
    digests = [str(t.get("sha256")) for t in plan["tiers"]]
    return hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]


class TierRunner:
    """Sessions of the plan's parts ``first`` to ``last`` (inclusive), fed by name."""

    def __init__(self, plan: dict[str, Any], first: int, last: int | None = None) -> None:
        from crosslevel.runtime.ort import make_session

        self.tiers = plan["tiers"][first : None if last is None else last + 1]
        self.sessions = [
            None if t.get("_path") is None else make_session(Path(t["_path"])) for t in self.tiers
        ]
        for tier, session in zip(self.tiers, self.sessions, strict=True):
            if session is not None:
                _check_names(tier, session)

    def run(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from crosslevel.runtime.ort import run_session

        for tier, session in zip(self.tiers, self.sessions, strict=True):
            if session is None:
                continue
            feed = [values[s["name"]] for s in tier["inputs"]]
            outs = run_session(session, feed)
            values.update(zip((s["name"] for s in tier["outputs"]), outs, strict=True))
        return values


def _check_names(tier: dict[str, Any], session: Any) -> None:
    """The plan feeds and reads a part by the names it lists: they must be the model's."""
    for key, got in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        want = [s["name"] for s in tier[key]]
        if [g.name for g in got] != want:
            raise InvalidModelError(
                f"partition plan: tier {tier['role']!r} lists {key} {want}, but its model "
                f"has {[g.name for g in got]}"
            )


class EdgeService:
    """The Infer/Info handlers over one validated plan."""

    def __init__(self, plan: dict[str, Any], token: str) -> None:
        if not token:
            raise UsageError("the edge needs a non-empty token")
        self.token = token.encode()
        self.plan_id = plan_id(plan)
        self.expected = [TensorSpec.from_json(s) for s in plan["links"][0]["tensors"]]
        self.returned = [s["name"] for s in plan["links"][0]["returned"]]
        self.runner = TierRunner(plan, 1)
        self.served = 0
        self.rejected = 0
        self._lock = threading.Lock()  # the handlers run on a thread pool

    def _authorized(self, context: grpc.ServicerContext) -> bool:
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str):
                return hmac.compare_digest(value.encode(), b"Bearer " + self.token)
        return False

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, why: str) -> NoReturn:
        with self._lock:
            self.rejected += 1
        context.abort(code, why)
        raise AssertionError("grpc's abort returned")  # it raises; keeps the types honest

    def infer(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if not self._authorized(context):
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        try:
            request_id, tensors, header = decode(request, self.expected)
        except MessageError as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if header.get("plan_id") != self.plan_id:  # tensors that fit but mean something else
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "a different plan")
        start = time.perf_counter()
        try:
            values = self.runner.run(dict(tensors))
        except CrosslevelError as exc:  # ONNX Runtime failed: refuse, keep serving
            self._refuse(context, grpc.StatusCode.INTERNAL, str(exc))
        compute_ms = (time.perf_counter() - start) * 1e3
        with self._lock:
            self.served += 1
        return encode(
            request_id, {n: values[n] for n in self.returned}, extra={"compute_ms": compute_ms}
        )

    def info(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if not self._authorized(context):
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        return json.dumps({"plan_id": self.plan_id}).encode()


def start_server(
    plan: dict[str, Any],
    token: str,
    port: int = 0,
    host: str = "127.0.0.1",
    tls: tuple[bytes, bytes] | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[grpc.Server, int, EdgeService]:
    """Start the edge service; returns the server, the bound port and the service."""
    if not 0 <= port <= 65535:  # grpc would silently wrap it (70000 -> 4464)
        raise UsageError(f"port {port} is not in 0..65535")
    service = EdgeService(plan, token)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Infer": grpc.unary_unary_rpc_method_handler(service.infer),
            "Info": grpc.unary_unary_rpc_method_handler(service.info),
        },
    )
    # No SO_REUSEPORT: a port already in use must fail, not share requests with whatever
    # else listens there (another edge may serve another plan).
    options = [*grpc_options(max_message_bytes), ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    server.add_generic_rpc_handlers((handler,))
    address = f"{host}:{port}"
    try:
        if tls is not None:
            key, cert = tls
            bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc's "Failed to bind" (in use, bad address, bad PEM)
        raise UsageError(f"cannot listen on {address}: {exc}") from None
    if bound == 0:
        raise UsageError(f"cannot listen on {address}")
    server.start()
    return server, bound, service
