"""The distributed level of the cross-level search: where to split, and how to send.

``SplitLevel`` is a ``search.space.Level`` with two knobs:

* ``split``: the share of the candidate's nodes (in its topological order) that runs on
  the device, ``1.0`` (all on the device: the unoptimized point) down to ``0.0`` (all on
  the edge); every prefix of a topological order is a valid cut (closed under
  predecessors, holding the inputs), and the nearest one is taken. ``"exact"`` is the
  exact solver's optimum for the candidate (DADS's minimum cut, or the ILP under the
  device's RAM/flash limits) with the level's link model;
* ``compress``: the cut tensors sent as int8 (with their scale) or as float32.

Knob choices are fixed fractions rather than node indices because the graph changes with
the levels before this one (pruning, graph passes). Cost figures: ``latency_ms`` is the
predicted end-to-end latency (device and edge compute from the cost model, the cut
tensors' serialization and the round trip from the link model: ``Problem.cost``),
``peak_ram_bytes`` the exact arena of the device part (the memory level's best plan),
``flash_bytes`` the device part's weights. The whole-graph figures of earlier levels are
kept beside them (``whole_*``). Compression changes outputs, so the level changes
accuracy when that knob is offered; ``exact=True`` then measures the split's top-1
agreement with the whole model on fixed random inputs (``split_top1_agreement``).

Register it in the search with one more entry in the levels list, e.g.
``Space([GraphLevel(...), MemoryLevel(), SplitLevel(get_link("wifi"))])``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from crosslevel.distributed.problem import Problem
from crosslevel.distributed.split import tensor_tiers
from crosslevel.hardware.devices import Device, Link, get_device
from crosslevel.ir.graph import Graph
from crosslevel.search.space import Candidate, Knob, KnobValue

SPLIT_CHOICES: tuple[KnobValue, ...] = (1.0, 0.75, 0.5, 0.25, 0.0, "exact")
COMPRESS_CHOICES: tuple[KnobValue, ...] = (False, True)


def prefix_assignment(graph: Graph, device_share: float) -> dict[str, int]:
    """The first ``round(share * nodes)`` nodes of the graph's order on the device (0),
    the rest on the edge (1): a valid cut, as the IR keeps nodes topologically sorted."""
    cut = round(device_share * len(graph.nodes))
    return {n.name: int(i >= cut) for i, n in enumerate(graph.nodes)}


@dataclass
class SplitLevel:
    """Split point and activation compression between a device and an edge (see above)."""

    link: Link
    device: str = "rpi4"  # catalogue names (`crosslevel devices`)
    edge: str = "host"
    compression: bool = True
    ram_limit: int | None = None
    flash_limit: int | None = None
    name: str = "split"
    changes_accuracy: bool = field(init=False)  # int8 cut tensors change the outputs
    _problems: dict[tuple[int, bool], tuple[Graph, Problem]] = field(
        default_factory=dict, repr=False
    )

    def __post_init__(self) -> None:
        self.changes_accuracy = self.compression
        self.devices: list[Device] = [get_device(self.device), get_device(self.edge)]

    @property
    def knobs(self) -> tuple[Knob, ...]:
        split = Knob("split", SPLIT_CHOICES, "share of nodes on the device, or the exact cut")
        if not self.compression:
            return (split,)
        return (split, Knob("compress", COMPRESS_CHOICES, "cut tensors sent as int8"))

    def problem(self, graph: Graph, compress: bool) -> Problem:
        # Keyed by identity; the graph is kept in the entry so its id cannot be reused.
        entry = self._problems.get((id(graph), compress))
        if entry is None or entry[0] is not graph:
            from crosslevel.distributed.partition import build_problem

            problem = build_problem(graph, self.devices, [self.link], "latency",
                                    self.ram_limit, self.flash_limit, compress)  # fmt: skip
            entry = (graph, problem)
            self._problems[(id(graph), compress)] = entry
        return entry[1]

    def assignment(self, problem: Problem, split: KnobValue) -> dict[str, int]:
        if split == "exact":
            from crosslevel.distributed.partition import solve

            return solve(problem)[0]
        return prefix_assignment(problem.graph, float(split))  # type: ignore[arg-type]

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        compress = bool(values.get("compress", False))
        problem = self.problem(cand.graph, compress)
        tier_of = self.assignment(problem, values["split"])
        fig = cand.figures
        for key in ("latency_ms", "peak_ram_bytes", "flash_bytes"):
            if key in fig:
                fig[f"whole_{key}"] = fig.pop(key)
        breakdown = problem.breakdown(tier_of)
        fig |= {
            "latency_ms": problem.cost(tier_of),
            "latency_label": f"predicted: cost model on {problem.devices[0].name} and "
            f"{problem.devices[1].name}, link model {self.link.name}",
            "peak_ram_bytes": problem.device_ram(tier_of),
            "flash_bytes": problem.device_flash(tier_of),
            "split_device_nodes": sum(1 for t in tier_of.values() if t == 0),
            "split_transfer_ms": sum(breakdown["transfer_ms"]) + sum(breakdown["rtt_ms"]),
            "split_fits_device": problem.fits(tier_of),
        }
        if any(t > 0 for t in tier_of.values()):  # what the controller judges by bandwidth
            up, down = _traffic(problem, tier_of)
            fig |= {"split_device_ms": breakdown["compute_ms"][0],
                    "split_remote_ms": sum(breakdown["compute_ms"][1:]),
                    "split_up_bytes": up, "split_down_bytes": down}  # fmt: skip
        if exact and compress:
            fig["split_top1_agreement"] = _fidelity(problem, tier_of)["top1_agreement"]
        return cand


def _traffic(problem: Problem, tier_of: Mapping[str, int]) -> tuple[int, int]:
    """Bytes sent device -> edge (cut tensors) and edge -> device (outputs made remotely)."""
    spans = tensor_tiers(problem.graph, tier_of)
    up = sum(problem.wire_bytes(n) for n in problem.readers() if spans[n][0] == 0 < spans[n][1])
    producer = problem.graph.producers()
    down = sum(problem.graph.tensors[n].nbytes for n in problem.graph.outputs
               if n in producer and tier_of[producer[n].name] > 0)  # fmt: skip
    return up, down


def _fidelity(problem: Problem, tier_of: dict[str, int]) -> dict[str, Any]:
    """The compressed split run part by part against the whole model (ONNX Runtime)."""
    from crosslevel.distributed.partition import PartRunner, export_parts, verify_split
    from crosslevel.distributed.parts import ONNX, export_part
    from crosslevel.distributed.split import split_graph

    split = split_graph(problem.graph, tier_of, 2)
    runner = PartRunner(split, export_parts(split))
    return verify_split(problem.graph, runner, export_part(problem.graph, ONNX), compress=True)
