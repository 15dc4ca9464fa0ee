"""The device side of split inference: head locally, tail on the edge, whole model as fallback.

``DeviceClient.infer`` answers every request exactly once. It runs the device part, sends
the cut tensors to the edge with a deadline and merges the edge's outputs; if the edge is
unreachable, times out, serves a different plan or answers with a malformed message, it
runs the whole model locally instead (the edge is stateless, so the local answer is the
only one the caller sees) and skips the edge until ``retry_s`` has passed, then tries
again: splitting resumes when the edge returns. A refused token is a configuration
error, not an outage: it raises. Each split call measures the link: bytes both ways over
the round trip minus the edge's own compute time.

Adaptive mode (``start_adaptive``): the plan's run-time candidates (``adaptive``) each have
their own device part; a ``SplitChooser`` picks the one for each request from the
measured link and compute, and the request names it so that the edge runs the matching
tail. ``link_context`` hands the measured link to the controller (``control.policy``).
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

from crosslevel.distributed.adaptive import SplitChooser
from crosslevel.distributed.parts import PartSession
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
    candidate: int | None = None  # the run-time split candidate (adaptive mode)


class _Route:
    """One way of splitting: the device part, what it sends and what comes back."""

    def __init__(self, plan: dict[str, Any], index: int | None) -> None:
        self.index = index
        self.head = TierRunner(plan, 0, last=0)
        self.sent = [s["name"] for s in plan["links"][0]["tensors"]]
        self.returned = [TensorSpec.from_json(s) for s in plan["links"][0]["returned"]]
        self.remote = any(t.get("_path") for t in plan["tiers"][1:])


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
        adaptive: bool = False,
    ) -> None:
        self.plan = plan
        self.plan_id = plan_id(plan)
        self.whole = PartSession(Path(plan["_whole"]))
        self.inputs = [s["name"] for s in plan["inputs"]]
        self.outputs = [s["name"] for s in plan["outputs"]]
        self.route = _Route(plan, None)
        self.compress = plan["compress_int8"] if compress is None else compress
        self.routes: list[_Route] = []
        if adaptive:
            if not plan.get("candidates"):
                raise UsageError("--adaptive needs a plan made with `partition --candidates N`")
            self.routes = [_Route(c, k) for k, c in enumerate(plan["candidates"])]
        self.chooser: SplitChooser | None = None
        self.requests = 0
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

    def start_adaptive(self, link_mbps: float, link_rtt_ms: float) -> SplitChooser:
        """Calibrate (this device's speed on the whole model, the link's RTT by Info
        calls; the plan's link figures until a split call measures the rate) and start
        choosing among the plan's candidates."""
        # The median of a few runs: a CPU quota makes single short runs uneven.
        whole_ms = statistics.median(self._timed_local(self._zeros())[1] for _ in range(5))
        rtt = self.ping()
        self.chooser = SplitChooser(self.plan["candidates"], link_mbps,
                                    link_rtt_ms if rtt is None else rtt)  # fmt: skip
        local = next(k for k, c in enumerate(self.plan["candidates"]) if c["local"])
        self.chooser.observe_device(local, whole_ms)
        self.chooser.current = self.chooser.best()
        return self.chooser

    def link_context(self, t_s: float, cpu_load: float = 0.0, mem_available_bytes: int = 0) -> Any:
        """The measured link as the controller's ``control.policy.Context`` (the chooser's
        estimates in adaptive mode, else the medians of the split calls so far; 0 when
        nothing was measured, which the controller reads as "no link")."""
        from crosslevel.control.policy import Context

        if self.chooser is not None:
            mbps, rtt = self.chooser.mbps, self.chooser.rtt_ms
        else:
            summary = self.stats.summary()
            mbps = summary["measured_mbps_median"] or 0.0
            rtt = summary["measured_rtt_ms_median"] or 0.0
        return Context(t_s, cpu_load, mem_available_bytes, bandwidth_mbps=mbps, rtt_ms=rtt)

    def ping(self) -> float | None:
        """Round trip (ms) of a tiny Info call, None if the edge does not answer."""
        start = time.perf_counter()
        try:
            self._info(b"", timeout=self.timeout_s, metadata=self.metadata)
        except grpc.RpcError:
            return None
        return (time.perf_counter() - start) * 1e3

    def infer(self, request_id: str, inputs: list[np.ndarray]) -> Answer:
        route = self.route
        if self.chooser is not None:
            route = self.routes[self.chooser.next_candidate()]
            if route.index != self.chooser.current:  # a probe of the link: RTT too
                rtt = self.ping()
                if rtt is not None:
                    self.chooser.observe_rtt(rtt)
        answer = self._answer(request_id, inputs, route, time.perf_counter())
        self.requests += 1
        if self.chooser is not None:
            self.chooser.reconsider(self.requests)
        return answer

    def infer_on(self, request_id: str, inputs: list[np.ndarray], candidate: int) -> Answer:
        """One request split by the plan's run-time ``candidate`` (no adaptation): for
        benchmarks that measure every split."""
        if not 0 <= candidate < len(self.routes):
            raise UsageError(f"the plan has no run-time candidate {candidate}")
        return self._answer(request_id, inputs, self.routes[candidate], time.perf_counter())

    def _answer(
        self, request_id: str, inputs: list[np.ndarray], route: _Route, start: float
    ) -> Answer:
        retry_due = self.down_since is None or time.monotonic() - self.down_since >= self.retry_s
        if route.remote and retry_due:
            outputs = self._split(request_id, inputs, route)
            if outputs is not None:
                self.down_since = None
                ms = (time.perf_counter() - start) * 1e3
                return Answer(request_id, outputs, "split", ms, route.index)
            self.down_since = time.monotonic()
        outputs, ms = self._timed_local(inputs)
        self.stats.local_runs += 1
        if self.chooser is not None and route.index is not None and not route.remote:
            self.chooser.observe_device(route.index, ms)
        return Answer(request_id, outputs, "local", (time.perf_counter() - start) * 1e3,
                      route.index)  # fmt: skip

    def _zeros(self) -> list[np.ndarray]:
        return [np.zeros(s["shape"], s["dtype"]) for s in self.plan["inputs"]]

    def _timed_local(self, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
        start = time.perf_counter()
        outputs = self.whole.run(inputs)
        return outputs, (time.perf_counter() - start) * 1e3

    def _failed(self, why: str) -> None:
        self.stats.failures[why] = self.stats.failures.get(why, 0) + 1

    def _split(
        self, request_id: str, inputs: list[np.ndarray], route: _Route
    ) -> list[np.ndarray] | None:
        head_start = time.perf_counter()
        values = route.head.run(dict(zip(self.inputs, inputs, strict=True)))
        head_ms = (time.perf_counter() - head_start) * 1e3
        cut = {n: values[n] for n in route.sent}
        extra = {"plan_id": self.plan_id, "candidate": route.index}
        message = encode(request_id, cut, self.compress, extra=extra)
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
            reply_id, tensors, header = decode(reply, route.returned)
        except MessageError:
            self._failed("bad-reply")
            return None
        if reply_id != request_id:
            self._failed("wrong-request-id")
            return None
        nbytes = len(message) + len(reply)
        edge_s, wire_s = self._measure(nbytes, round_trip_s, header.get("compute_ms"))
        if self.chooser is not None and route.index is not None:
            self.chooser.observe_device(route.index, head_ms)
            self.chooser.observe_split(route.index, edge_s * 1e3, wire_s * 1e3, nbytes)
        values.update(tensors)
        return [values[n] for n in self.outputs]

    def _measure(self, nbytes: int, round_trip_s: float, compute_ms: Any) -> tuple[float, float]:
        """(edge compute s, wire s) of one split call, recorded in the stats."""
        self.stats.split_calls += 1
        # The edge's own compute time comes from the (untrusted) reply: use it only if sane.
        sane = isinstance(compute_ms, int | float) and 0 <= compute_ms < round_trip_s * 1e3
        edge_s = float(compute_ms) / 1e3 if sane else 0.0
        wire_s = max(round_trip_s - edge_s, 1e-6)
        self.stats.rtt_ms.append(wire_s * 1e3)
        self.stats.mbps.append(nbytes * 8 / wire_s / 1e6)
        return edge_s, wire_s
