"""The graph and operator levels of the joint space (both preserve accuracy).

* ``GraphPassLevel`` (graph): which of ``graph.optimize``'s passes run on the candidate's
  IR: BN/bias folding (constants first, so computed BN parameters fold) and activation
  fusion. The passes are the fixed pipeline's own, in its order; cleanup sweeps (identity,
  dead code) run whenever a pass does. Cost effects come from the rewritten IR: fewer
  nodes and tensors mean less predicted latency, a smaller arena and (folded BN) less
  flash. The graph passes are tested to keep outputs within DESIGN.md's tolerance.
* ``KernelLevel`` (operator): the int8 convolution kernel of the generated C code
  (``codegen``): the generator's default pick per layer, every layer forced to ``direct``
  or ``gemm``, or ``tuned`` (the fastest per layer, as ``crosslevel generate --tune``).
  Why this knob and not ONNX Runtime's optimization level: the latency objective is the
  target's, and the generated C is what runs on the target; ORT's settings only move host
  latency. The cost model does not know kernels, so the level measures each kernel's
  processor time per layer on the host (``codegen.tune``, -DCL_PROFILE build) and scales
  that layer's predicted time by (chosen / default); the figure stays labelled predicted.
  All kernels are bit-exact. Graphs without int8 convolutions (float ones) have nothing
  to choose: the knob leaves them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosslevel.ir.graph import Graph
from crosslevel.search.space import Candidate, Knob, KnobValue

KERNEL_CHOICES: tuple[KnobValue, ...] = ("default", "direct", "gemm", "tuned")
KERNEL_RUNS = 30


def _selected_passes(fold: bool, fuse: bool) -> tuple[Callable[[Graph], None], ...]:
    """The fixed pipeline's steps for these knobs, in the pipeline's order."""
    from crosslevel.graph import optimize as gopt

    wanted = set()
    if fold:
        wanted |= {gopt.fold_constants_in_place, gopt.fold_batchnorm_in_place,
                   gopt.fold_bias_add_in_place}  # fmt: skip
    if fuse:
        wanted.add(gopt.fuse_activations_in_place)
    if wanted:
        wanted |= {gopt.remove_dead_code_in_place, gopt.eliminate_identity_in_place}
    return tuple(step for step in gopt.PIPELINE if step in wanted)


@dataclass
class GraphPassLevel:
    """Graph passes on/off (see the module docstring)."""

    name: str = "graph"
    changes_accuracy: bool = False
    _done: dict[tuple[int, bool, bool], tuple[Graph, Graph]] = field(
        default_factory=dict, repr=False
    )

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (
            Knob("fold", (False, True), "fold BatchNorm and bias adds into the layer before"),
            Knob("fuse", (False, True), "fuse activations into their producer"),
        )

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        fold, fuse = bool(values["fold"]), bool(values["fuse"])
        cand.figures["graph_passes"] = "+".join(
            name for name, on in (("fold", fold), ("fuse", fuse)) if on
        ) or "none"  # fmt: skip
        if cand.graph is None or not (fold or fuse):
            return cand
        # Keyed by identity; the source graph is kept in the entry so its id stays unique.
        key = (id(cand.graph), fold, fuse)
        entry = self._done.get(key)
        if entry is None or entry[0] is not cand.graph:
            result = cand.graph.copy()
            for step in _selected_passes(fold, fuse):
                step(result)
            result.validate()
            entry = (cand.graph, result)
            self._done[key] = entry
        cand.graph = entry[1]
        return cand


def int8_convs(graph: Graph) -> list[str]:
    return [n.name for n in graph.nodes
            if n.op == "CONV_2D" and graph.tensor(n.inputs[0]).dtype == "int8"]  # fmt: skip


def _shape_key(graph: Graph) -> tuple[Any, ...]:
    """What the kernel timings depend on: every node's op, attributes and tensor shapes."""
    return tuple(
        (n.op, repr(sorted(n.attrs.items())) if n.attrs else "",
         tuple(tuple(graph.tensor(t).shape) for t in (*n.inputs, *n.outputs) if t))
        for n in graph.nodes
    )  # fmt: skip


@dataclass
class KernelTimes:
    """Per int8 convolution, in graph order (names differ between graphs of the same
    shapes): the generator's default kernel and each kernel's processor time (us)."""

    default: list[str]
    time_us: list[dict[str, float]]

    def chosen(self, choice: str) -> list[str]:
        if choice == "default":
            return list(self.default)
        if choice == "tuned":
            return [min(t, key=lambda k: t[k]) for t in self.time_us]
        return [choice] * len(self.time_us)

    def scale(self, choice: str) -> list[float]:
        """Per layer: measured time of the chosen kernel / the default kernel's."""
        return [t[pick] / max(t[base], 1e-9)
                for t, pick, base in zip(self.time_us, self.chosen(choice), self.default,
                                         strict=True)]  # fmt: skip


@dataclass
class KernelLevel:
    """Generated-code int8 convolution kernels (see the module docstring)."""

    cache_dir: Path | None = None
    runs: int = KERNEL_RUNS
    name: str = "operator"
    changes_accuracy: bool = False
    measurements: int = 0  # kernel timings run (for tests)
    _times: dict[tuple[Any, ...], KernelTimes] = field(default_factory=dict, repr=False)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("conv_kernel", KERNEL_CHOICES, "int8 conv kernel of the generated C"),)

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        choice = str(values["conv_kernel"])
        cand.figures["conv_kernel"] = choice
        if choice == "default" or cand.graph is None or not int8_convs(cand.graph):
            return cand
        times = self.times(cand.graph)
        convs = int8_convs(cand.graph)
        cand.figures["node_latency_scale"] = dict(zip(convs, times.scale(choice), strict=True))
        cand.figures["conv_kernels"] = ",".join(times.chosen(choice))
        return cand

    def times(self, graph: Graph) -> KernelTimes:
        """Kernel timings for this graph's shapes (measured once per shape signature).

        Measured with TFLM's plan for the graph's own order: kernels read and write whole
        tensors in any plan without patch stages (the C generator has none yet), so the
        layer times do not depend on which memory strategy is searched."""
        key = _shape_key(graph)
        if key not in self._times:
            self._times[key] = self._measure(graph)
        return self._times[key]

    def _measure(self, graph: Graph) -> KernelTimes:
        from crosslevel.codegen.emit import generate_c
        from crosslevel.codegen.tune import tune_conv_variants
        from crosslevel.memory.plan import make_plan
        from crosslevel.model.baselines import default_cache_dir

        plan = make_plan(graph, tflm_offsets=True)
        folder = (self.cache_dir or default_cache_dir()) / "kernels"
        tuning = tune_conv_variants(graph, plan, folder, runs=self.runs)
        picked = generate_c(graph, plan).variants
        self.measurements += 1
        convs = int8_convs(graph)
        default = ["gemm" if "gemm" in picked.get(n, "") else "direct" for n in convs]
        return KernelTimes(default, [tuning.time_us[n] for n in convs])
