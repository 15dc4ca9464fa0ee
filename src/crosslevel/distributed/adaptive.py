"""Run-time split-point switching: candidate splits in the plan, a chooser on the device.

Planning (``plan_candidates``): Neurosurgeon's observation is that only a few chain splits
are ever best: the lower envelope of ``compute(c) + bytes(c) / bandwidth + rtt`` over the
bandwidths a link can have. We keep the prefix cuts of the node order that are best for
some rate on a geometric grid (0.05 Mbit/s to 2 Gbit/s), always with all-device and
all-edge, and write each as a small two-tier plan (its own device and edge ONNX parts,
verified against the whole model like the main split) under ``plan["candidates"]``, with
its predicted device and edge compute (cost model) and its bytes each way.

Running (``SplitChooser``): the device predicts every candidate's latency from what it
measured (its own compute over the prediction, the edge's reported compute over the
prediction, the link's RTT from small Info calls and its rate from each split call's
bytes over its wire time) and switches to a better candidate only when it is better by
``hysteresis`` for ``patience`` requests in a row, so one noisy measurement does not flap
the split. A switch happens between requests: each request runs under one candidate and
is answered once (by the split, or locally if the edge fails). On all-device nothing
crosses the link, so every ``probe_every``-th request goes to the best remote candidate to
measure the link again.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crosslevel.distributed.problem import Problem
from crosslevel.distributed.split import split_graph

RATE_GRID_MBIT = [0.05 * 1.5**i for i in range(25)]  # 0.05 .. ~840 Mbit/s
MAX_CANDIDATES = 256  # benchmarks measure every chain split of a model
MAX_RATE_MBIT = 10_000.0  # a sample above this is a timing artefact


def _prefix(problem: Problem, cut: int) -> dict[str, int]:
    return {n.name: int(i >= cut) for i, n in enumerate(problem.graph.nodes)}


def _link_bytes(problem: Problem, tier_of: dict[str, int]) -> tuple[int, int]:
    """Bytes up (cut tensors, as sent) and down (remote graph outputs) of a split."""
    split = split_graph(problem.graph, tier_of, 2)
    up = sum(problem.wire_bytes(n) for n in split.boundary[0])
    down = sum(problem.graph.tensors[n].nbytes for n in split.returned[0])
    return up, down


def plan_candidates(problem: Problem, max_candidates: int = 8) -> list[int]:
    """Prefix cuts (nodes on the device) on the lower envelope over ``RATE_GRID_MBIT``."""
    n = len(problem.graph.nodes)
    rows = []
    for cut in range(n + 1):
        tier_of = _prefix(problem, cut)
        if not problem.fits(tier_of):
            continue
        b = problem.breakdown(tier_of)
        up, down = _link_bytes(problem, tier_of)
        rtt = problem.links[0].rtt_ms if cut < n else 0.0
        rows.append((cut, sum(b["compute_ms"]) + rtt, up + down))
    chosen = {0, n} & {r[0] for r in rows}
    for rate in RATE_GRID_MBIT:
        best = min(rows, key=lambda r: r[1] + r[2] * 8 / (rate * 1e3))
        chosen.add(best[0])
    if len(chosen) > max_candidates:  # keep the ends and an even spread of the rest
        inner = sorted(chosen - {0, n})
        step = len(inner) / (max_candidates - 2)
        chosen = {0, n} | {inner[int(i * step)] for i in range(max_candidates - 2)}
    return sorted(chosen)


def candidate_entries(
    problem: Problem, cuts: Sequence[int | dict[str, int]]
) -> tuple[list[dict[str, Any]], list[list[bytes | None]]]:
    """The plan entries of the candidate cuts (prefix lengths, or any valid two-tier
    assignments) and their per-tier models, each split verified against the whole model
    (ONNX Runtime, DESIGN.md's float tolerance)."""
    from crosslevel.distributed.partition import (
        PartRunner,
        _tensor_spec,
        export_parts,
        verify_split,
    )
    from crosslevel.distributed.parts import export_part, part_format
    from crosslevel.errors import InvalidModelError

    g = problem.graph
    fmt = part_format(g)
    whole = export_part(g, fmt)
    entries, models = [], []
    for k, given in enumerate(cuts):
        tier_of: dict[str, int] = _prefix(problem, given) if isinstance(given, int) else given
        cut = sum(1 for t in tier_of.values() if t == 0)
        split = split_graph(g, tier_of, 2)
        parts: list[bytes | None] = [None, None]
        if cut < len(g.nodes):
            parts = export_parts(split, fmt)
            runner = PartRunner(split, parts, fmt)
            fidelity = verify_split(g, runner, whole, problem.compress_int8, fmt)
            if not problem.compress_int8 and not fidelity["within_tolerance"]:
                raise InvalidModelError(f"candidate split {cut} differs from the whole model")
        b = problem.breakdown(tier_of)
        up, down = _link_bytes(problem, tier_of)
        tiers = []
        for t, role in enumerate(("device", "edge")):
            part, model = split.parts[t], parts[t]
            tiers.append({
                "role": role,
                "model_file": None if model is None else f"cand{k}_{role}.{fmt}",
                "inputs": [] if model is None or part is None else
                [_tensor_spec(g, n) for n in part.inputs],
                "outputs": [] if model is None or part is None else
                [_tensor_spec(g, n) for n in part.outputs],
                "sha256": None if model is None else _sha(model),
            })  # fmt: skip
        links = [{
            "tensors": [_tensor_spec(g, n) for n in split.boundary[0]] if parts[1] else [],
            "returned": [_tensor_spec(g, n) for n in split.returned[0]] if parts[1] else [],
        }]  # fmt: skip
        entries.append({
            "device_nodes": cut, "device_ms": b["compute_ms"][0], "edge_ms": b["compute_ms"][1],
            "up_bytes": up, "down_bytes": down, "local": cut == len(g.nodes),
            "tiers": tiers, "links": links,
            "label": "compute predicted by the cost model; bytes exact",
        })  # fmt: skip
        models.append(parts)
    return entries, models


def _sha(model: bytes) -> str:
    import hashlib

    return hashlib.sha256(model).hexdigest()


# ------------------------------------------------------------------------------ run time
@dataclass
class SplitChooser:
    """Picks the candidate with the least predicted latency from measured figures."""

    candidates: list[dict[str, Any]]
    mbps: float
    rtt_ms: float
    hysteresis: float = 0.25
    patience: int = 4
    probe_every: int = 8
    current: int = 0
    device_scale: float = 1.0
    edge_scale: float = 1.0
    switches: list[dict[str, Any]] = field(default_factory=list)
    _rates: deque[float] = field(default_factory=lambda: deque(maxlen=7))
    _better_for: int = 0
    _since_probe: int = 0

    def __post_init__(self) -> None:
        self.current = self.best()

    def predict_ms(self, k: int) -> float:
        c = self.candidates[k]
        ms = c["device_ms"] * self.device_scale
        if c["local"]:
            return ms
        link = self.rtt_ms + (c["up_bytes"] + c["down_bytes"]) * 8 / (self.mbps * 1e3)
        return ms + c["edge_ms"] * self.edge_scale + link

    def best(self, remote_only: bool = False) -> int:
        pool = [k for k, c in enumerate(self.candidates) if not (remote_only and c["local"])]
        return min(pool, key=self.predict_ms)

    def next_candidate(self) -> int:
        """The candidate for the next request (a probe if the link is not being used)."""
        if self.candidates[self.current]["local"]:
            self._since_probe += 1
            if self._since_probe >= self.probe_every:
                self._since_probe = 0
                return self.best(remote_only=True)
        return self.current

    def observe_device(self, k: int, measured_ms: float) -> None:
        predicted = self.candidates[k]["device_ms"]
        if predicted > 0 and measured_ms > 0:
            self.device_scale = _ewma(self.device_scale, measured_ms / predicted)

    def observe_split(self, k: int, edge_ms: float, wire_ms: float, nbytes: int) -> None:
        c = self.candidates[k]
        if c["edge_ms"] > 0 and edge_ms > 0:
            self.edge_scale = _ewma(self.edge_scale, edge_ms / c["edge_ms"])
        # The RTT (measured by Info calls) is the fixed part; the rest scales with bytes.
        transfer_ms = max(wire_ms - self.rtt_ms, 0.1 * wire_ms)
        self._rates.append(min(nbytes * 8 / transfer_ms / 1e3, MAX_RATE_MBIT))
        self.mbps = statistics.median(self._rates)

    def observe_rtt(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms

    def reconsider(self, request: int) -> None:
        """Switch when another candidate is better by the hysteresis, ``patience`` times
        in a row."""
        best = self.best()
        if best != self.current and self.predict_ms(best) < (1 - self.hysteresis) * (
            self.predict_ms(self.current)
        ):
            self._better_for += 1
        else:
            self._better_for = 0
        if self._better_for >= self.patience:
            self.switches.append({
                "request": request, "from": self.candidates[self.current]["device_nodes"],
                "to": self.candidates[best]["device_nodes"], "measured_mbps": self.mbps,
                "measured_rtt_ms": self.rtt_ms,
            })  # fmt: skip
            self.current, self._better_for, self._since_probe = best, 0, 0


def _ewma(old: float, new: float, alpha: float = 0.3) -> float:
    if not math.isfinite(new):
        return old
    return (1 - alpha) * old + alpha * new
