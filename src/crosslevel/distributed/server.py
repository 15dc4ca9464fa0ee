"""The edge side of split inference: the tail parts in ONNX Runtime behind gRPC.

One generic gRPC service (no generated code): ``Infer`` takes a transport message with the
cut tensors and answers with the graph outputs the device does not compute; ``Info``
answers the plan's identity (``DeviceClient.check_plan``). Every call must carry
``authorization: Bearer TOKEN`` (compared in constant time); every message is checked
by ``transport.decode`` against the plan's tensor specs and must name the plan's id (so a
device never mixes plans; the device then answers locally); gRPC enforces the message size
limit before our code runs. A bad call is refused with a status and a clear message and
the server keeps serving.

Three tiers: the same service runs as ``role="cloud"`` (the cloud part, fed by link 1)
and as ``role="edge"`` with a ``CloudLink``, which sends the tensors link 1 carries to
the cloud server and merges its answer; an edge without one runs the cloud part itself.
A cloud that fails or answers badly makes the edge refuse the call (UNAVAILABLE), so the
device answers that request locally: still exactly once.
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

from crosslevel.distributed.parts import PartSession
from crosslevel.distributed.transport import (
    INFER,
    MAX_MESSAGE_BYTES,
    SERVICE,
    MessageError,
    TensorSpec,
    decode,
    encode,
    header_of,
)
from crosslevel.errors import CrosslevelError, UsageError


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def plan_id(plan: dict[str, Any]) -> str:
    """A digest of the parts' model hashes (run-time candidates' too): device and edge
    must agree on it."""
    tiers = [*plan["tiers"], *(t for c in plan.get("candidates", []) for t in c["tiers"])]
    digests = [str(t.get("sha256")) for t in tiers]
    return hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]


class TierRunner:
    """Sessions of the plan's parts ``first`` to ``last`` (inclusive), fed by name."""

    def __init__(self, plan: dict[str, Any], first: int, last: int | None = None) -> None:
        self.tiers = plan["tiers"][first : None if last is None else last + 1]
        self.sessions = [
            None if t.get("_path") is None else PartSession(Path(t["_path"])) for t in self.tiers
        ]
        for tier, session in zip(self.tiers, self.sessions, strict=True):
            if session is not None:
                session.check(tier["inputs"], tier["outputs"], f"tier {tier['role']!r}")

    def run(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for tier, session in zip(self.tiers, self.sessions, strict=True):
            if session is None:
                continue
            feed = [values[s["name"]] for s in tier["inputs"]]
            outs = session.run(feed)
            values.update(zip((s["name"] for s in tier["outputs"]), outs, strict=True))
        return values


class CloudLink:
    """The edge's client of the cloud server: link 1's tensors up, the cloud's outputs back."""

    def __init__(
        self, plan: dict[str, Any], address: str, token: str, timeout_s: float,
        tls_root: bytes | None = None,
    ) -> None:
        if len(plan["tiers"]) != 3:
            raise UsageError("--cloud needs a three-tier plan (device, edge, cloud)")
        link = plan["links"][1]
        self.sent = [s["name"] for s in link["tensors"]]
        self.returned = [TensorSpec.from_json(s) for s in link["returned"]]
        self.compress = bool(plan["compress_int8"])
        self.plan_id = plan_id(plan)
        self.timeout_s = timeout_s
        self.metadata = (("authorization", f"Bearer {token}"),)
        options = grpc_options(MAX_MESSAGE_BYTES)
        if tls_root is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:  # the same TLS as the device's link: the cloud is across a network too
            creds = grpc.ssl_channel_credentials(root_certificates=tls_root)
            self.channel = grpc.secure_channel(address, creds, options=options)
        self._infer = self.channel.unary_unary(INFER)

    def run(self, request_id: str, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The cloud's outputs for this request; MessageError if it fails or lies."""
        message = encode(request_id, {n: values[n] for n in self.sent}, self.compress,
                         extra={"plan_id": self.plan_id})  # fmt: skip
        try:
            reply = self._infer(message, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            raise MessageError(f"the cloud failed: {code}") from None
        reply_id, tensors, _ = decode(reply, self.returned)
        if reply_id != request_id:
            raise MessageError("the cloud answered another request")
        return tensors

    def close(self) -> None:
        self.channel.close()


class _Route:
    """What a request split one way carries in (``link``'s tensors) and gets back."""

    def __init__(self, plan: dict[str, Any], link: int, runner: TierRunner) -> None:
        self.expected = [TensorSpec.from_json(s) for s in plan["links"][link]["tensors"]]
        self.returned = [s["name"] for s in plan["links"][link]["returned"]]
        self.runner = runner


def _candidate(header: dict[str, Any]) -> int | None | str:
    """The header's candidate index (None: the plan's own split; a string never matches)."""
    value = header.get("candidate")
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    return "invalid"


class EdgeService:
    """The Infer/Info handlers over one validated plan, as the edge or the cloud."""

    def __init__(
        self,
        plan: dict[str, Any],
        token: str,
        role: str = "edge",
        cloud: CloudLink | None = None,
    ) -> None:
        if not token:
            raise UsageError(f"the {role} needs a non-empty token")
        if role not in ("edge", "cloud") or (role == "cloud" and cloud is not None):
            raise UsageError("serve runs --role edge [--cloud ADDR] or --role cloud")
        if role == "cloud" and len(plan["tiers"]) != 3:
            raise UsageError("--role cloud needs a three-tier plan (device, edge, cloud)")
        link = 0 if role == "edge" else 1
        self.token = token.encode()
        self.plan_id = plan_id(plan)
        # The edge runs tier 1 (and tier 2 unless a cloud server does); the cloud tier 2.
        self.routes: dict[int | str | None, _Route] = {
            None: _Route(plan, link, TierRunner(plan, link + 1, 1 if cloud else None))
        }
        if role == "edge":  # run-time candidates: a request names the one it was split by
            for k, cand in enumerate(plan.get("candidates", [])):
                if not cand["local"]:
                    self.routes[k] = _Route(cand, 0, TierRunner(cand, 1))
        self.cloud = cloud
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
            route = self.routes.get(_candidate(header_of(request)), None)
            if route is None:
                raise MessageError("the request names no split candidate of this plan")
            request_id, tensors, header = decode(request, route.expected)
        except MessageError as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if header.get("plan_id") != self.plan_id:  # tensors that fit but mean something else
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "a different plan")
        start = time.perf_counter()
        try:
            values = route.runner.run(dict(tensors))
        except CrosslevelError as exc:  # ONNX Runtime failed: refuse, keep serving
            self._refuse(context, grpc.StatusCode.INTERNAL, str(exc))
        if self.cloud is not None:
            try:
                values.update(self.cloud.run(request_id, values))
            except MessageError as exc:  # the device answers this request locally
                self._refuse(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        # All time spent here (the cloud hop included) is not the device-edge link's.
        compute_ms = (time.perf_counter() - start) * 1e3
        with self._lock:
            self.served += 1
        return encode(
            request_id, {n: values[n] for n in route.returned}, extra={"compute_ms": compute_ms}
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
    role: str = "edge",
    cloud: CloudLink | None = None,
) -> tuple[grpc.Server, int, EdgeService]:
    """Start the edge (or cloud) service; returns the server, the bound port and the
    service."""
    if not 0 <= port <= 65535:  # grpc would silently wrap it (70000 -> 4464)
        raise UsageError(f"port {port} is not in 0..65535")
    service = EdgeService(plan, token, role, cloud)
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
