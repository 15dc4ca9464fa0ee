"""The Optuna study over the joint space: ask-and-tell, constraints, SQLite, budgets.

What a trial is. The costly part of evaluating a point is the exact evaluation of the
accuracy-changing knobs (fine-tuning over seeds, 10-20 s for a zoo model); the
accuracy-preserving levels (graph passes, memory plan, kernels) cannot change accuracy
and their figures are analytic (a second or less, cached per graph). So the study samples
only the accuracy-changing knobs (``Space.sampled_params``), and each trial chooses the
preserving knobs itself by an inner search: every preserving combination (or a seeded
sample of ``INNER_LIMIT`` of them when there are more) is built analytically, and the
non-dominated ones become the trial's points. A trial is thus one exact evaluation and
yields several front points (a smaller arena vs a faster kernel), each a ``Record``
tagged with its trial number; the trial budget counts trials (exact evaluations), the
inner analytic evaluations are counted separately (``analytic_this_run``). Without an
accuracy-changing level (a model file) the study has one trial: the inner search is the
whole search, since nothing there is costly.

Why ask-and-tell: the driver alone holds the study (DESIGN.md: SQLite is not shared
across Ray nodes), and it lets one trial be evaluated in two stages:

1. **Analytic** (always): every preserving combination's cheap build (``exact=False``)
   gives the deployed shapes, hence flash, MACs, the exact arena of the memory plan and
   the predicted latency on the device.
2. **Measured** (fine-tuning and accuracy) only when one of the trial's inner points can
   still be feasible and on the front:

   * it meets every hard limit that does not involve accuracy (RAM, flash, latency;
     fine-tuning does not change shapes, so these figures are final), and
   * no measured feasible point already weakly dominates its optimistic vector (its
     analytic figures with no accuracy lost: compression is assumed not to beat the
     baseline's accuracy, so such a point cannot enter the front).

   Only those inner points are built exactly (the fine-tuned model is cached, so this is
   one exact evaluation) and the trial keeps the non-dominated ones. A trial stopped after
   stage 1 keeps one point, its real analytic figures with a pessimistic 100 pp accuracy
   drop and its constraint violations, never reported as a front point. (Optuna's pruners
   do not work for multi-objective studies.)

The study is told one point per trial (a feasible one when there is one, then the most
balanced: smallest sum of objectives relative to the trial's largest); every point of the
trial is stored in the trial (user attribute ``points``), so a resumed study restores them.

Sampled combinations already evaluated (in this run or, from the SQLite file, in an
earlier one) are not evaluated again: the stored result is told again, so NSGA-II's
duplicates on small categorical spaces cost nothing, and the budget counts distinct
combinations evaluated (measured on the synthetic test space: with a trial budget,
NSGA-II spent three quarters of 100 trials on repeats). An interrupted run leaves RUNNING
trials in the file; they are marked FAIL when the study is resumed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from crosslevel.errors import UsageError
from crosslevel.search.objectives import (
    OBJECTIVES,
    Demands,
    constraint_vector,
    dominates,
    fill_costs,
    hypervolume,
    meets,
    objective_values,
    pareto_indices,
    violations,
)
from crosslevel.search.space import Candidate, KnobValue, Space

SAMPLERS = ("nsga2", "tpe")
STUDY_NAME = "crosslevel-optimize"
PESSIMISTIC_DROP_PP = 100.0
MAX_ASKS_PER_EVALUATION = 20  # stop when the sampler only re-proposes evaluated points
INNER_LIMIT = 512  # preserving combinations built per trial; beyond, a seeded sample
DEFAULT_ACCURACY_TOLERANCE_PP = 1.0  # the chosen point and hypervolume when no demand is set
_SCALAR = (int, float, str, bool)


@dataclass
class Record:
    """One evaluated knob combination."""

    number: int
    params: dict[str, KnobValue]
    values: list[float]
    stage: str  # "measured" | "analytic: misses a limit" | "analytic: dominated"
    figures: dict[str, Any]
    feasible: bool

    @property
    def measured(self) -> bool:
        return self.stage == "measured"

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "params": self.params,
            "objectives": dict(zip(OBJECTIVES, self.values, strict=True)),
            "stage": self.stage,
            "feasible": self.feasible,
            "figures": self.figures,
        }


@dataclass
class Settings:
    budget: int = 24
    time_budget_s: float | None = None
    sampler: str = "nsga2"
    seed: int = 0
    study_path: Path | None = None
    population_size: int = 8
    parallel: int = 1  # new combinations asked (and evaluated) per batch

    def validate(self) -> None:
        if self.parallel < 1:
            raise UsageError(f"trials per batch must be >= 1, got {self.parallel}")
        if self.budget < 1:
            raise UsageError(f"--budget must be >= 1, got {self.budget}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:  # NaN too
            raise UsageError(f"--time-budget must be > 0 s, got {self.time_budget_s}")
        if self.sampler not in SAMPLERS:
            raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}")


@dataclass
class SearchResult:
    records: list[Record]  # every trial's points, each tagged with its trial number
    baseline: Record
    trials_total: int  # completed Optuna trials, repeats of evaluated points included
    trials_this_run: int
    evaluated_total: int  # distinct sampled combinations evaluated: the budget's unit
    evaluated_this_run: int
    measured_this_run: int  # of which measured (stage 2: one exact evaluation each)
    analytic_this_run: int  # inner analytic evaluations (cheap builds) this run
    elapsed_s: float
    stopped_by: str
    resumed_from: int  # distinct sampled combinations already evaluated in the study file
    notes: list[str] = field(default_factory=list)

    def measured(self) -> list[Record]:
        return [r for r in self.records if r.measured]

    def front(self) -> list[Record]:
        """Non-dominated measured points (feasible or not)."""
        pts = self.measured()
        return [pts[i] for i in pareto_indices([r.values for r in pts])]

    def feasible_front(self) -> list[Record]:
        pts = [r for r in self.measured() if r.feasible]
        return [pts[i] for i in pareto_indices([r.values for r in pts])]


def scalar_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe figures stored in the study (and in result.json)."""
    return {k: v for k, v in figures.items() if isinstance(v, _SCALAR) or v is None}


class Evaluator:
    """Two-stage evaluation of a trial and its inner search (see the module docstring)."""

    def __init__(self, space: Space, demands: Demands, device: Any) -> None:
        self.space, self.demands, self.device = space, demands, device
        self.baseline_accuracy: float | None = None
        self.measured_runs = 0  # trials that reached the exact evaluation
        self.analytic_runs = 0  # inner analytic evaluations (cheap builds)

    def candidate(self, params: dict[str, KnobValue], exact: bool) -> Candidate:
        cand = self.space.build(params, exact)
        fill_costs(cand, self.device)
        return cand

    def baseline(self) -> Record:
        """The unoptimized point, measured (its accuracy is every drop's reference)."""
        cand = self.candidate(self.space.default(), exact=True)
        self.baseline_accuracy = cand.figures.get("accuracy")
        return self._record(-1, self.space.default(), cand, "measured")

    def point(self, params: dict[str, KnobValue]) -> Record:
        """``params`` built exactly, as a measured point outside any trial."""
        return self._record(-2, params, self.candidate(params, exact=True), "measured")

    def inner_points(self, sampled: dict[str, KnobValue]) -> list[dict[str, KnobValue]]:
        """Full knob combinations of the inner search for the sampled knobs: every
        preserving combination, or (more than ``INNER_LIMIT``) the unoptimized one and a
        sample seeded by the sampled values (the same on every worker and resume)."""
        inner = self.space.inner_params()
        total = math.prod(len(c) for c in inner.values())
        indices: Iterable[int] = range(total)
        if total > INNER_LIMIT:
            rng = random.Random(repr(sorted(sampled.items())))
            indices = [0, *sorted(rng.sample(range(1, total), INNER_LIMIT - 1))]
        choices = list(inner.values())
        return [{**sampled, **dict(zip(inner, _combination(i, choices), strict=True))}
                for i in indices]  # fmt: skip

    def evaluate(
        self, number: int, params: dict[str, KnobValue], done: list[Record]
    ) -> list[Record]:
        """Trial ``number`` of the sampled knobs ``params``: its points, the one to tell
        the study first. Dominance is judged against ``done`` only."""
        cheap = [(full, self.candidate(full, exact=False)) for full in self.inner_points(params)]
        self.analytic_runs += len(cheap)
        optimistic = [objective_values(c.figures, None) for _, c in cheap]  # no accuracy lost
        within = [i for i, v in enumerate(optimistic) if not self._misses_a_limit(v)]
        if not within:
            i = min(range(len(cheap)), key=lambda i: _total_violation(optimistic[i], self.demands))
            return [self._record(number, *cheap[i], "analytic: misses a limit")]
        front = [within[j] for j in pareto_indices([optimistic[i] for i in within])]
        still_open = [i for i in front if not self._dominated(optimistic[i], done)]
        if not still_open:
            return [self._record(number, *cheap[front[0]], "analytic: dominated")]
        self.measured_runs += 1
        exact = [self._record(number, cheap[i][0], self.candidate(cheap[i][0], exact=True),
                              "measured") for i in still_open]  # fmt: skip
        return _told_first([exact[i] for i in pareto_indices([r.values for r in exact])],
                           self.demands)  # fmt: skip

    def _dominated(self, optimistic: list[float], done: list[Record]) -> bool:
        """Whether a measured feasible point weakly dominates this optimistic vector (only
        where accuracy is measured: otherwise there is nothing to save)."""
        return bool(self.space.accuracy_levels()) and any(
            r.measured and r.feasible and _weakly_dominates(r.values, optimistic) for r in done
        )

    def _misses_a_limit(self, optimistic: list[float]) -> bool:
        missed = {k for k, v in violations(optimistic, self.demands).items() if v > 0}
        return bool(missed - {"accuracy_drop_pp"})

    def _record(
        self, number: int, params: dict[str, KnobValue], cand: Candidate, stage: str
    ) -> Record:
        values = objective_values(cand.figures, self.baseline_accuracy)
        if stage != "measured" and self.space.accuracy_levels():
            values[0] = PESSIMISTIC_DROP_PP
        feasible = stage == "measured" and all(meets(values, self.demands).values())
        return Record(number, dict(params), values, stage, scalar_figures(cand.figures), feasible)


def _combination(index: int, choices: list[tuple[KnobValue, ...]]) -> tuple[KnobValue, ...]:
    """The ``index``-th element of the product of ``choices`` (itertools.product order)."""
    picked: list[KnobValue] = []
    for options in reversed(choices):
        index, pick = divmod(index, len(options))
        picked.append(options[pick])
    return tuple(reversed(picked))


def _total_violation(values: list[float], demands: Demands) -> float:
    return sum(max(0.0, v) for k, v in violations(values, demands).items()
               if k != "accuracy_drop_pp")  # fmt: skip


def _told_first(records: list[Record], demands: Demands) -> list[Record]:
    """The trial's points, the one told to the study first: a feasible one if any (else
    the least violating), then the most balanced (smallest sum of objectives relative to
    the trial's largest). All points of a measured trial share the accuracy."""
    top = [max(abs(r.values[k]) for r in records) or 1.0 for k in range(len(OBJECTIVES))]

    def rank(r: Record) -> tuple[bool, float, float]:
        spread = sum(v / t for v, t in zip(r.values, top, strict=True))
        return (not r.feasible, sum(max(0.0, v) for v in violations(r.values, demands).values()),
                spread)  # fmt: skip

    best = min(records, key=rank)
    return [best, *(r for r in records if r is not best)]


def _weakly_dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True))


def make_sampler(settings: Settings, offset: int) -> optuna.samplers.BaseSampler:
    """NSGA-II passed explicitly (Optuna defaults to TPE for multi-objective studies).

    Constraints reach both samplers through ``Trial.set_constraint`` (Optuna 5's form of
    ``constraints_func``, which it deprecates). ``offset`` (completed trials already in
    the study) shifts the seed so a resumed run does not replay the first run's random
    proposals."""
    seed = settings.seed + offset
    if settings.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
    return optuna.samplers.NSGAIISampler(population_size=settings.population_size, seed=seed)


def open_study(settings: Settings, fingerprint: dict[str, Any]) -> optuna.Study:
    """A new in-memory study, or the SQLite one at ``--study`` (created or resumed)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = None
    try:
        if settings.study_path is not None:
            settings.study_path.parent.mkdir(parents=True, exist_ok=True)
            storage = f"sqlite:///{settings.study_path.resolve()}"
        study = optuna.create_study(
            storage=storage, study_name=STUDY_NAME, load_if_exists=True,
            directions=["minimize"] * len(OBJECTIVES),
        )  # fmt: skip
        stored = study.user_attrs.get("fingerprint")
    except Exception as exc:  # a corrupt or foreign file: one clear message
        raise UsageError(f"cannot open study {settings.study_path}: {exc}") from exc
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif stored != fingerprint:
        raise UsageError(
            f"study {settings.study_path} belongs to another search ({stored}); this one is "
            f"{fingerprint}: use another --study file"
        )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)  # left by an interrupted run
    sampler = make_sampler(settings, len(study.trials))
    study.sampler = sampler
    return study


STAGES = ("measured", "analytic: misses a limit", "analytic: dominated")


def _records_from_trial(
    trial: FrozenTrial, space: Space, demands: Demands, where: Path | None
) -> list[Record]:
    """The stored points of a finished trial, checked against the space: a study file is
    input, and a record that does not fit would fail later, far from its cause.
    Feasibility is recomputed from the values, never taken from the file."""
    attrs = trial.user_attrs
    if trial.values is None or "stage" not in attrs:
        return []
    sampled, points = space.sampled_params(), attrs.get("points")
    fits = (
        trial.params.keys() == sampled.keys()
        and all(v in sampled[k] for k, v in trial.params.items())
        and isinstance(points, list)
        and bool(points)
    )
    records = [_stored_point(p, trial, space, demands) for p in points or []] if fits else []
    if not records or None in records:
        raise UsageError(f"study {where}: trial {trial.number} does not belong to this search")
    return [r for r in records if r is not None]


def _stored_point(point: Any, trial: FrozenTrial, space: Space, demands: Demands) -> Record | None:
    """One stored point of ``trial`` (None when it does not fit the space or the trial)."""
    if not isinstance(point, dict):
        return None
    params, values = point.get("params"), point.get("values")
    stage, figures = point.get("stage"), point.get("figures", {})
    choices = space.params()
    fits = (
        isinstance(params, dict)
        and params.keys() == choices.keys()
        and all(v in choices[k] for k, v in params.items())
        and all(params[k] == v for k, v in trial.params.items())
        and isinstance(values, list)
        and len(values) == len(OBJECTIVES)
        and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        and stage in STAGES
        and isinstance(figures, dict)
    )
    if not fits:
        return None
    floats = [float(v) for v in values]  # type: ignore[union-attr]
    feasible = stage == "measured" and all(meets(floats, demands).values())
    return Record(trial.number, dict(params), floats, str(stage), dict(figures), feasible)  # type: ignore[arg-type]


def _tell(study: optuna.Study, trial: optuna.Trial, recs: list[Record], demands: Demands) -> None:
    """Tell the study the trial's first point; store all of them in the trial."""
    told = recs[0]
    for name, value in zip(OBJECTIVES, constraint_vector(told.values, demands), strict=True):
        trial.set_constraint(name, value)  # <= 0: met (0 for an unlimited objective)
    trial.set_user_attr("stage", told.stage)
    trial.set_user_attr("feasible", told.feasible)
    trial.set_user_attr("figures", told.figures)
    trial.set_user_attr("points", [
        {"params": r.params, "values": r.values, "stage": r.stage, "figures": r.figures}
        for r in recs
    ])  # fmt: skip
    study.tell(trial, told.values)


Progress = Callable[[int, int, str], None]
Batch = list[tuple[int, dict[str, KnobValue]]]


class Backend(Protocol):
    """Where a batch of new knob combinations is evaluated: here (``InProcess``) or on Ray
    workers (``search.ray_backend``). The driver alone asks and tells the study."""

    def evaluate(
        self, evaluator: Evaluator, batch: Batch, done: list[Record]
    ) -> list[list[Record]]:
        """Each trial's points (``Evaluator.evaluate``), in batch order; each evaluation
        sees only ``done`` (the records before the batch), so a batch's results do not
        depend on where or in which order its members ran."""
        ...


class InProcess:
    def evaluate(
        self, evaluator: Evaluator, batch: Batch, done: list[Record]
    ) -> list[list[Record]]:
        return [evaluator.evaluate(number, params, done) for number, params in batch]


def run_search(
    space: Space,
    evaluator: Evaluator,
    settings: Settings,
    fingerprint: dict[str, Any],
    progress: Progress | None = None,
    backend: Backend | None = None,
) -> SearchResult:
    """Run (or resume) the study until ``budget`` trials (distinct sampled combinations)
    or the time budget.

    Trials are asked ``settings.parallel`` new combinations at a time, evaluated by
    ``backend`` (default here, one after the other) and told in the order they were asked."""
    settings.validate()
    backend = backend or InProcess()
    start = time.monotonic()
    study = open_study(settings, fingerprint)
    baseline = _baseline(study, evaluator)
    stored = _stored_trials(study, space, evaluator.demands, settings.study_path)
    records = [r for recs in stored.values() for r in recs]
    asker = _Asker(study, space, evaluator.demands, settings, stored)
    measured_before, analytic_before = evaluator.measured_runs, evaluator.analytic_runs
    stopped = "budget"
    target = min(settings.budget, space.sampled_size())
    while asker.evaluated < target:
        if settings.time_budget_s is not None and time.monotonic() - start > settings.time_budget_s:
            stopped = "time budget"
            break
        batch = asker.ask(min(settings.parallel, target - asker.evaluated))
        if not batch:
            stopped = "sampler kept repeating evaluated points"
            break
        done = list(records)
        results = backend.evaluate(evaluator, [(t.number, dict(t.params)) for t in batch], done)
        for trial, recs in zip(batch, results, strict=True):
            records.extend(recs)
            asker.tell(trial, recs)
            if progress is not None:
                progress(asker.evaluated, target, recs[0].stage)
    if asker.evaluated >= space.sampled_size():
        stopped = "space exhausted"
    return SearchResult(
        records=records, baseline=baseline,
        trials_total=len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
        trials_this_run=asker.asked, evaluated_total=asker.evaluated,
        evaluated_this_run=asker.evaluated - asker.resumed,
        measured_this_run=evaluator.measured_runs - measured_before,
        analytic_this_run=evaluator.analytic_runs - analytic_before,
        elapsed_s=time.monotonic() - start, stopped_by=stopped, resumed_from=asker.resumed,
    )  # fmt: skip


ParamsKey = tuple[tuple[str, KnobValue], ...]


class _Asker:
    """Asks the study for new combinations of the sampled knobs and tells it results; a
    combination already evaluated (in this run or from the file) is told its stored result
    at once, and one asked twice within a batch is told when the batch's result arrives."""

    def __init__(self, study: optuna.Study, space: Space, demands: Demands, settings: Settings,
                 stored: dict[ParamsKey, list[Record]]) -> None:  # fmt: skip
        self.study, self.demands, self.settings = study, demands, settings
        self.by_key = dict(stored)
        self.resumed, self.asked = len(stored), 0
        self.waiting: dict[ParamsKey, list[optuna.Trial]] = {}
        sampled = space.sampled_params()
        if not study.trials:
            study.enqueue_trial({name: choices[0] for name, choices in sampled.items()})
        self.distributions: dict[str, BaseDistribution] = {
            n: CategoricalDistribution(c) for n, c in sampled.items()
        }

    @property
    def evaluated(self) -> int:
        return len(self.by_key)

    def ask(self, count: int) -> list[optuna.Trial]:
        batch: list[optuna.Trial] = []
        while len(batch) < count and self.asked < MAX_ASKS_PER_EVALUATION * self.settings.budget:
            try:
                trial = self.study.ask(self.distributions)
            except ValueError as exc:  # the file holds other choices for a knob
                raise UsageError(f"study {self.settings.study_path}: {exc}") from exc
            self.asked += 1
            key = _key(dict(trial.params))
            if key in self.by_key:  # same knobs as a finished trial: no new evaluation
                self._tell_copy(trial, self.by_key[key])
            elif key in self.waiting:
                self.waiting[key].append(trial)
            else:
                self.waiting[key] = []
                batch.append(trial)
        return batch

    def tell(self, trial: optuna.Trial, recs: list[Record]) -> None:
        key = _key(dict(trial.params))
        self.by_key[key] = recs
        _tell(self.study, trial, recs, self.demands)
        for twin in self.waiting.pop(key, []):
            self._tell_copy(twin, recs)

    def _tell_copy(self, trial: optuna.Trial, known: list[Record]) -> None:
        copies = [Record(trial.number, dict(r.params), r.values, r.stage, r.figures, r.feasible)
                  for r in known]  # fmt: skip
        _tell(self.study, trial, copies, self.demands)


def _baseline(study: optuna.Study, evaluator: Evaluator) -> Record:
    """The unoptimized point: measured once per study and kept in it, so a resumed run
    does not fine-tune and evaluate it again (the fingerprint pins what it depends on)."""
    stored = study.user_attrs.get("baseline")
    if stored is not None:
        values, figures = _checked_baseline(stored, study)
        evaluator.baseline_accuracy = figures.get("accuracy")
        feasible = all(meets(values, evaluator.demands).values())
        return Record(-1, evaluator.space.default(), values, "measured", figures, feasible)
    baseline = evaluator.baseline()
    study.set_user_attr("baseline", {"values": baseline.values, "figures": baseline.figures})
    return baseline


def _checked_baseline(stored: Any, study: optuna.Study) -> tuple[list[float], dict[str, Any]]:
    values = stored.get("values") if isinstance(stored, dict) else None
    figures = stored.get("figures") if isinstance(stored, dict) else None
    numbers = (
        isinstance(values, list)
        and len(values) == len(OBJECTIVES)
        and all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    )
    accuracy = figures.get("accuracy") if isinstance(figures, dict) else "?"
    if not numbers or not (accuracy is None or isinstance(accuracy, int | float)):
        raise UsageError(f"study {study.study_name}: its stored baseline is malformed")
    return [float(v) for v in values], dict(figures)  # type: ignore[union-attr, arg-type]


def _stored_trials(
    study: optuna.Study, space: Space, demands: Demands, where: Path | None
) -> dict[ParamsKey, list[Record]]:
    """The distinct sampled combinations already evaluated in the study (first trial of
    each) and their points."""
    trials: dict[ParamsKey, list[Record]] = {}
    for old in study.get_trials(states=(TrialState.COMPLETE,)):
        recs = _records_from_trial(old, space, demands, where)
        if recs:
            trials.setdefault(_key(dict(old.params)), recs)
    return trials


def _key(params: dict[str, KnobValue]) -> ParamsKey:
    return tuple(sorted(params.items()))


def accuracy_tolerance(demands: Demands) -> float:
    if demands.max_accuracy_drop_pp is not None:
        return demands.max_accuracy_drop_pp
    return DEFAULT_ACCURACY_TOLERANCE_PP


def choose(result: SearchResult, demands: Demands) -> list[Record]:
    """Feasible front points in the order they are offered for deployment: within the
    accuracy tolerance (the demand, else 1 pp) the fastest first (then least RAM), then
    the rest by accuracy. The first one whose plan is proven is the chosen point."""
    tol = accuracy_tolerance(demands)
    front = result.feasible_front()
    within = sorted((r for r in front if r.values[0] <= tol), key=lambda r: r.values[1:])
    rest = sorted((r for r in front if r.values[0] > tol), key=lambda r: r.values)
    return within + rest


def hv_points(records: list[Record], demands: Demands) -> list[list[float]]:
    """(latency, RAM, flash) of measured points meeting every demand and within the
    accuracy tolerance: what the hypervolume compares (accuracy enters as a limit, since
    the unoptimized drop is 0 and a reference of 0 x 1.1 would admit no compressed point)."""
    tol = accuracy_tolerance(demands)
    return [r.values[1:] for r in records if r.measured and r.feasible and r.values[0] <= tol]


def reference_point(baseline: Record) -> list[float]:
    """The unoptimized model's (latency, RAM, flash) x 1.1."""
    return [1.1 * v for v in baseline.values[1:]]


def front_hypervolume(records: list[Record], baseline: Record, demands: Demands) -> float:
    return hypervolume(hv_points(records, demands), reference_point(baseline))


@dataclass
class Diagnosis:
    """Why nothing is feasible: the hardest demand and the nearest points."""

    hardest: str
    best_violation: float
    nearest: list[Record]


def diagnose(result: SearchResult, demands: Demands, count: int = 3) -> Diagnosis:
    """The demand even the best point misses by the most (relative), and the points with
    the smallest total violation (analytic-only points included: their RAM, flash and
    latency are final)."""
    recs = [result.baseline, *result.records]
    worst_name, worst = "", -math.inf
    for name in demands.limits():
        idx = OBJECTIVES.index(name)
        pool = [r for r in recs if r.measured or idx > 0]
        best = min(violations(r.values, demands)[name] for r in pool)
        if best > worst:
            worst_name, worst = name, best

    def total(r: Record) -> float:
        v = violations(r.values, demands)
        if not r.measured:
            v.pop("accuracy_drop_pp", None)
        return sum(max(0.0, x) for x in v.values())

    unique = {_key(r.params): r for r in sorted(recs, key=total, reverse=True)}
    nearest = sorted(unique.values(), key=total)[:count]
    return Diagnosis(worst_name, worst, nearest)


def single_level_fronts(
    space: Space,
    evaluator: Evaluator,
    settings: Settings,
    budget: int,
    backend: Backend | None = None,
) -> dict[str, list[Record]]:
    """Each level searched alone (the others unoptimized) with the same sampler and
    ``budget`` trials, in memory, sharing the levels' caches: the ablations."""
    fronts: dict[str, list[Record]] = {}
    for level in space.levels:
        sub = space.restricted([level.name])
        sub_eval = Evaluator(sub, evaluator.demands, evaluator.device)
        sub_settings = Settings(budget=budget, sampler=settings.sampler, seed=settings.seed,
                                population_size=settings.population_size,
                                parallel=settings.parallel)  # fmt: skip
        res = run_search(sub, sub_eval, sub_settings, {"ablation": level.name}, None, backend)
        fronts[level.name] = res.records
    return fronts


__all__ = [
    "Evaluator",
    "Record",
    "SearchResult",
    "Settings",
    "choose",
    "diagnose",
    "dominates",
    "front_hypervolume",
    "run_search",
    "single_level_fronts",
]
