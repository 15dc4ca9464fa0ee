"""The joint search space: every level contributes knobs, a pass and its cost effects.

One small interface (``Level``) is all the search sees of a level:

* ``knobs``: its part of the space (categorical choices; the first choice of each knob is
  the "off" value, so the all-first point is the unoptimized model);
* ``apply(candidate, values, exact)``: its pass on the candidate built so far (a new IR,
  a memory plan, ...) and its effect on the cost figures (``candidate.figures``: flash,
  RAM, latency, accuracy). ``exact=False`` is the cheap analytic version (structure only:
  e.g. prune without fine-tuning, which gives the same shapes and so the same params,
  flash, MACs, arena and predicted latency); ``exact=True`` adds what is measured
  (fine-tuning and accuracy over seeds);
* ``changes_accuracy``: whether its knobs can change the model's outputs. Without a PyTorch
  model and a data set only levels with ``changes_accuracy=False`` are searched. It also
  splits the space for the search: the study samples the accuracy-changing knobs (whose
  exact evaluation is costly), the preserving knobs are chosen per sample by a cheap inner
  search (``study.py``).

Levels are applied in order (model before memory: the memory plan is made for the graph
the model level produced). A new level is one more object in the ``Space``'s list; the
search code (``study.py``) does not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from crosslevel.errors import UsageError

KnobValue = str | int | float | bool | None


@dataclass(frozen=True)
class Knob:
    """One categorical knob; ``choices[0]`` is the unoptimized setting."""

    name: str
    choices: tuple[KnobValue, ...]
    help: str = ""


@dataclass
class Candidate:
    """A point of the joint space as it passes through the levels.

    ``graph`` is the deployable IR (None for synthetic levels), ``plan`` its memory plan,
    ``figures`` the cost figures levels set (``accuracy``, ``accuracy_std``,
    ``latency_ms``, ``peak_ram_bytes``, ``flash_bytes``, ``macs``, ...), ``artifacts``
    what a level produced for deployment (model bytes) and ``notes`` what to tell the user.
    """

    values: dict[str, KnobValue]
    graph: Any = None
    plan: Any = None
    figures: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    exact: bool = False


class Level(Protocol):
    """What a level contributes to the joint space (see the module docstring)."""

    name: str
    changes_accuracy: bool

    @property
    def knobs(self) -> tuple[Knob, ...]: ...

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        """Its pass and cost effects on ``cand`` (values: this level's knobs only)."""
        ...


def qualified(level: Level, knob: Knob) -> str:
    """The parameter name in the study: ``level.knob`` (unique across levels)."""
    return f"{level.name}.{knob.name}"


@dataclass
class Space:
    """The ordered levels searched jointly."""

    levels: list[Level]

    def __post_init__(self) -> None:
        names = [lv.name for lv in self.levels]
        if len(set(names)) != len(names):
            raise UsageError(f"two levels share a name: {names}")
        if not self.levels:
            raise UsageError("the search space has no level")

    def params(self) -> dict[str, tuple[KnobValue, ...]]:
        """Every study parameter and its choices, in level order."""
        return {qualified(lv, k): k.choices for lv in self.levels for k in lv.knobs}

    def default(self) -> dict[str, KnobValue]:
        """The unoptimized point: every knob at its first choice."""
        return {name: choices[0] for name, choices in self.params().items()}

    def size(self) -> int:
        return math.prod(len(choices) for choices in self.params().values())

    def level_values(self, level: Level, values: Mapping[str, KnobValue]) -> dict[str, KnobValue]:
        return {k.name: values[qualified(level, k)] for k in level.knobs}

    def build(self, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        """Apply every level in order; ``exact`` also runs the measured (costly) parts."""
        unknown = set(values) - set(self.params())
        if unknown:
            raise UsageError(f"unknown knobs {sorted(unknown)}; known: {sorted(self.params())}")
        full = {**self.default(), **values}
        cand = Candidate(values=dict(full), exact=exact)
        for level in self.levels:
            cand = level.apply(cand, self.level_values(level, full), exact)
        return cand

    def restricted(self, keep: Sequence[str]) -> Space:
        """The same space with only the levels named in ``keep`` searched (the others
        stay at their unoptimized setting): the single-level ablations."""
        levels: list[Level] = [lv if lv.name in keep else _Frozen(lv) for lv in self.levels]
        return Space(levels)

    def searched(self) -> list[str]:
        """Names of the levels with a choice to make (a restricted space's unfrozen ones)."""
        return [lv.name for lv in self.levels if any(len(k.choices) > 1 for k in lv.knobs)]

    def accuracy_levels(self) -> list[Level]:
        return [lv for lv in self.levels if lv.changes_accuracy]

    def sampled_params(self) -> dict[str, tuple[KnobValue, ...]]:
        """The knobs the study samples: those of the accuracy-changing levels (each new
        combination of them costs an exact evaluation: fine-tuning)."""
        return {qualified(lv, k): k.choices for lv in self.accuracy_levels() for k in lv.knobs}

    def sampled_size(self) -> int:
        return math.prod(len(choices) for choices in self.sampled_params().values())

    def inner_params(self) -> dict[str, tuple[KnobValue, ...]]:
        """The knobs of the accuracy-preserving levels: cheap and analytic (they cannot
        change accuracy), chosen per sampled combination by the inner search."""
        sampled = self.sampled_params()
        return {name: c for name, c in self.params().items() if name not in sampled}


class _Frozen:
    """A level with every knob pinned to its unoptimized choice (not searched)."""

    def __init__(self, level: Level) -> None:
        self.inner = level
        self.name = level.name
        self.changes_accuracy = level.changes_accuracy

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return tuple(replace(k, choices=k.choices[:1]) for k in self.inner.knobs)

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        return self.inner.apply(cand, values, exact)
