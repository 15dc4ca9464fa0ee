"""The device side of split inference: head locally, tail on the edge, whole model as fallback.

``DeviceClient.infer`` answers every request exactly once. It runs the device part, sends
the cut tensors to the edge with a deadline and merges the edge's outputs; if the edge is
unreachable, times out, serves a different plan or answers with a malformed message, it
runs the whole model locally instead (the edge is stateless, so the local answer is the
only one the caller sees) and skips the edge until ``retry_s`` has passed, then tries
again: splitting resumes when the edge returns. A refused token is a configuration
error, not an outage: it raises. Each split call measures the link: bytes both ways over
the round trip minus the edge's own compute time.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from crosslevel.distributed.server import TierRunner, grpc_options, plan_id
from crosslevel.distributed.transport import (
    INFER,
    INFO,
    MAX_MESSAGE_BYTES,
    MessageError,
    TensorSpec,
    decode,
    encode,
)
from crosslevel.errors import UsageError

_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


@dataclass
class Answer:
    request_id: str
    outputs: list[np.ndarray]
    where: str  # "split" | "local"
    latency_ms: float


@dataclass
class LinkStats:
    """What the device saw of the link: for the controller and the report."""

    split_calls: int = 0
    local_runs: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    mbps: list[float] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "split_calls": self.split_calls,
            "local_runs": self.local_runs,
            "failures": dict(self.failures),
            "measured_mbps_median": statistics.median(self.mbps) if self.mbps else None,
            "measured_rtt_ms_median": statistics.median(self.rtt_ms) if self.rtt_ms else None,
        }


class DeviceClient:
    """Split inference with local fallback over one validated plan."""

    def __init__(
        self,
        plan: dict[str, Any],
        edge: str,
        token: str,
        timeout_s: float = 2.0,
        retry_s: float = 0.5,
        tls_root: bytes | None = None,
        compress: bool | None = None,
    ) -> None:
        from crosslevel.runtime.ort import make_session

        self.plan = plan
        self.plan_id = plan_id(plan)
        self.head = TierRunner(plan, 0, last=0)
        self.whole = make_session(Path(plan["_whole"]))
        self.inputs = [s["name"] for s in plan["inputs"]]
        self.outputs = [s["name"] for s in plan["outputs"]]
        self.sent = [s["name"] for s in plan["links"][0]["tensors"]]
        self.returned = [TensorSpec.from_json(s) for s in plan["links"][0]["returned"]]
        self.compress = plan["compress_int8"] if compress is None else compress
        self.remote = any(t.get("_path") for t in plan["tiers"][1:])
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.metadata = (("authorization", f"Bearer {token}"),)
        options = [*grpc_options(MAX_MESSAGE_BYTES), *_RECONNECT]
        if tls_root is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=tls_root)
            self.channel = grpc.secure_channel(edge, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(edge, options=options)
        self._infer = self.channel.unary_unary(INFER)
        self._info = self.channel.unary_unary(INFO)
        self.down_since: float | None = None
        self.stats = LinkStats()

    def close(self) -> None:
        self.channel.close()

    def check_plan(self) -> None:
        """Ask the edge which plan it serves; an unreachable edge, a refused token, a
        malformed reply or a different plan is one UsageError."""
        try:
            reply = self._info(b"", timeout=self.timeout_s, metadata=self.metadata)
            served = json.loads(reply).get("plan_id")
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            raise UsageError(f"cannot ask the edge for its plan: {code}") from None
        except (ValueError, RecursionError, AttributeError):  # not JSON, or not an object
            raise UsageError("the edge answered its plan id with a malformed reply") from None
        if served != self.plan_id:
            raise UsageError("the edge serves a different partition plan")

    def infer(self, request_id: str, inputs: list[np.ndarray]) -> Answer:
        start = time.perf_counter()
        retry_due = self.down_since is None or time.monotonic() - self.down_since >= self.retry_s
        if self.remote and retry_due:
            outputs = self._split(request_id, inputs)
            if outputs is not None:
                self.down_since = None
                ms = (time.perf_counter() - start) * 1e3
                return Answer(request_id, outputs, "split", ms)
            self.down_since = time.monotonic()
        outputs = self._local(inputs)
        return Answer(request_id, outputs, "local", (time.perf_counter() - start) * 1e3)

    def _local(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from crosslevel.runtime.ort import run_session

        self.stats.local_runs += 1
        return run_session(self.whole, inputs)

    def _failed(self, why: str) -> None:
        self.stats.failures[why] = self.stats.failures.get(why, 0) + 1

    def _split(self, request_id: str, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
        values = self.head.run(dict(zip(self.inputs, inputs, strict=True)))
        cut = {n: values[n] for n in self.sent}
        message = encode(request_id, cut, self.compress, extra={"plan_id": self.plan_id})
        sent_at = time.perf_counter()
        try:
            reply = self._infer(message, timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise UsageError("the edge refused the token") from None
            self._failed(code.name if code is not None else "rpc-error")
            return None
        round_trip_s = time.perf_counter() - sent_at
        try:
            reply_id, tensors, header = decode(reply, self.returned)
        except MessageError:
            self._failed("bad-reply")
            return None
        if reply_id != request_id:
            self._failed("wrong-request-id")
            return None
        self._measure(len(message) + len(reply), round_trip_s, header.get("compute_ms"))
        values.update(tensors)
        return [values[n] for n in self.outputs]

    def _measure(self, nbytes: int, round_trip_s: float, compute_ms: Any) -> None:
        self.stats.split_calls += 1
        # The edge's own compute time comes from the (untrusted) reply: use it only if sane.
        sane = isinstance(compute_ms, int | float) and 0 <= compute_ms < round_trip_s * 1e3
        edge_s = float(compute_ms) / 1e3 if sane else 0.0
        wire_s = max(round_trip_s - edge_s, 1e-6)
        self.stats.rtt_ms.append(wire_s * 1e3)
        self.stats.mbps.append(nbytes * 8 / wire_s / 1e6)
