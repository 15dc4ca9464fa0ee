"""The placement problem every solver minimizes: per-tier node times, links, limits.

Cost of an assignment (``Problem.cost``), with ``ser_k(x)`` the serialization time of
tensor x over link k (bytes x 8 / the link's rate) and ``rtt_k`` its round trip:

* ``latency`` (ms): sum of node times on their tiers + every cut tensor's serialization
  on each link it crosses (once per link, however many far-side nodes read it) + the
  graph outputs computed remotely sent back down + one round trip per link in use;
* ``energy`` (mJ, the device's): the device's active power while it computes and sends or
  receives, its idle power while it waits for the edge (remote compute and round trips);
* ``throughput`` (ms per inference in a pipeline): the slowest stage, a tier's compute or
  a link's serialization.

Node times come from the cost model (labelled predicted); the chosen parts are then
measured on this host with ONNX Runtime by ``partition.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from crosslevel.distributed.split import split_graph, tensor_tiers
from crosslevel.hardware.devices import Device, Link
from crosslevel.ir.graph import Graph
from crosslevel.memory.lifetimes import TFLM_ALIGNMENT
from crosslevel.memory.strategies import plan_strategies

OBJECTIVES = ("latency", "energy", "throughput")
INT8_HEADER_BYTES = 8  # a float32 scale and an int32 zero point per compressed tensor


@dataclass(frozen=True)
class Weights:
    """Multipliers of the additive objectives (1 for latency, watts for energy)."""

    compute: tuple[float, ...]
    transfer: float
    rtt: float


def _aligned(n: int) -> int:
    return -(-n // TFLM_ALIGNMENT) * TFLM_ALIGNMENT


@dataclass
class Problem:
    """One graph, its tiers (device first), the links between them and the device limits."""

    graph: Graph
    devices: list[Device]
    links: list[Link]
    node_ms: list[dict[str, float]]
    objective: str = "latency"
    ram_limit: int | None = None
    flash_limit: int | None = None
    compress_int8: bool = False
    _ram_cache: dict[frozenset[str], int] = field(default_factory=dict, repr=False)

    @property
    def n_tiers(self) -> int:
        return len(self.devices)

    @property
    def additive(self) -> bool:
        return self.objective in ("latency", "energy")

    @property
    def has_limits(self) -> bool:
        return self.ram_limit is not None or self.flash_limit is not None

    # ----- tensors -----------------------------------------------------------------
    def readers(self) -> dict[str, list[str]]:
        """Activations (graph inputs included) and the nodes that read them."""
        users: dict[str, list[str]] = {}
        for node in self.graph.nodes:
            for name in dict.fromkeys(i for i in node.inputs if i):
                if not self.graph.tensors[name].is_constant:
                    users.setdefault(name, []).append(node.name)
        return users

    def wire_bytes(self, name: str) -> int:
        """Bytes of one tensor on the wire (int8 with its scale if compressed)."""
        t = self.graph.tensors[name]
        if self.compress_int8 and t.dtype == "float32":
            return t.num_elements + INT8_HEADER_BYTES
        return t.nbytes

    def up_ms(self, link: int, name: str) -> float:
        return self.wire_bytes(name) * 8 / self.links[link].bandwidth_up_bps * 1e3

    def down_ms(self, link: int, name: str) -> float:
        # Results are sent uncompressed: they are the answer.
        nbytes = self.graph.tensors[name].nbytes
        return nbytes * 8 / self.links[link].bandwidth_down_bps * 1e3

    def weights(self) -> Weights:
        k = self.n_tiers
        if self.objective == "energy":
            dev = self.devices[0]
            rest = (dev.idle_power_w,) * (k - 1)
            return Weights((dev.active_power_w, *rest), dev.active_power_w, dev.idle_power_w)
        return Weights((1.0,) * k, 1.0, 1.0)

    # ----- limits ------------------------------------------------------------------
    def weight_users(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {}
        for node in self.graph.nodes:
            for name in dict.fromkeys(i for i in node.inputs if i):
                if self.graph.tensors[name].is_constant:
                    users.setdefault(name, []).append(node.name)
        return users

    def weight_bytes(self) -> dict[str, int]:
        return {c: self.graph.tensors[c].nbytes for c in self.weight_users()}

    def too_big_for_device(self) -> list[str]:
        """Nodes whose own inputs and outputs exceed the RAM limit: never on the device."""
        if self.ram_limit is None:
            return []
        big = []
        for node in self.graph.nodes:
            names = dict.fromkeys(n for n in [*node.inputs, *node.outputs] if n)
            live = sum(
                _aligned(self.graph.tensors[n].nbytes)
                for n in names
                if not self.graph.tensors[n].is_constant
            )
            if live > self.ram_limit:
                big.append(node.name)
        return big

    def device_ram(self, tier_of: Mapping[str, int]) -> int:
        """Exact arena bytes of the device part (the memory level's best plan)."""
        key = frozenset(v for v, t in tier_of.items() if t == 0)
        if key not in self._ram_cache:
            part = split_graph(self.graph, tier_of, self.n_tiers).parts[0]
            self._ram_cache[key] = (
                0 if part is None else plan_strategies(part, time_limit_s=1.0)["best"].arena_bytes
            )
        return self._ram_cache[key]

    def device_flash(self, tier_of: Mapping[str, int]) -> int:
        return sum(
            size
            for c, size in self.weight_bytes().items()
            if any(tier_of[v] == 0 for v in self.weight_users()[c])
        )

    def fits(self, tier_of: Mapping[str, int]) -> bool:
        if self.flash_limit is not None and self.device_flash(tier_of) > self.flash_limit:
            return False
        return self.ram_limit is None or self.device_ram(tier_of) <= self.ram_limit

    # ----- cost --------------------------------------------------------------------
    def breakdown(self, tier_of: Mapping[str, int]) -> dict[str, list[float]]:
        """Per tier compute ms, per link serialization ms (up + down) and round trips."""
        compute = [0.0] * self.n_tiers
        for node in self.graph.nodes:
            t = tier_of[node.name]
            compute[t] += self.node_ms[t][node.name]
        spans = tensor_tiers(self.graph, tier_of)  # graph inputs included, held by tier 0
        serial = [0.0] * (self.n_tiers - 1)
        for name in self.readers():
            first, last = spans[name]
            for k in range(first, last):
                serial[k] += self.up_ms(k, name)
        producer = self.graph.producers()
        for name in self.graph.outputs:
            if name in producer:
                for k in range(tier_of[producer[name].name]):
                    serial[k] += self.down_ms(k, name)
        used = [max(tier_of.values(), default=0) > k for k in range(self.n_tiers - 1)]
        rtt = [self.links[k].rtt_ms if used[k] else 0.0 for k in range(self.n_tiers - 1)]
        return {"compute_ms": compute, "transfer_ms": serial, "rtt_ms": rtt}

    def cost(self, tier_of: Mapping[str, int]) -> float:
        b = self.breakdown(tier_of)
        if self.objective == "throughput":
            return max([*b["compute_ms"], *b["transfer_ms"]])
        w = self.weights()
        total = sum(wc * ms for wc, ms in zip(w.compute, b["compute_ms"], strict=True))
        return total + w.transfer * sum(b["transfer_ms"]) + w.rtt * sum(b["rtt_ms"])

    def all_assignments(self) -> Iterator[dict[str, int]]:
        """Every monotone assignment (each node on a tier >= its producers' tiers)."""
        nodes = self.graph.nodes
        producer = self.graph.producers()
        preds = [[producer[i].name for i in n.inputs if i in producer] for n in nodes]
        current: dict[str, int] = {}

        def rec(i: int) -> Iterator[dict[str, int]]:
            if i == len(nodes):
                yield dict(current)
                return
            low = max((current[p] for p in preds[i]), default=0)
            for t in range(low, self.n_tiers):
                current[nodes[i].name] = t
                yield from rec(i + 1)
            current.pop(nodes[i].name, None)

        yield from rec(0)
