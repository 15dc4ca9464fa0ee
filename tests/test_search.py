"""The cross-level search on a synthetic space whose front is known by enumeration."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pytest

from crosslevel.errors import UsageError
from crosslevel.search.objectives import (
    Demands,
    hypervolume,
    meets,
    objective_values,
    pareto_indices,
)
from crosslevel.search.space import Candidate, Knob, KnobValue, Space
from crosslevel.search.study import (
    STUDY_NAME,
    Evaluator,
    Settings,
    choose,
    diagnose,
    run_search,
    single_level_fronts,
)


@dataclass
class Compression:
    """Accuracy-changing: stronger compression, less flash and latency, less accuracy."""

    name: str = "model"
    changes_accuracy: bool = True
    exact_calls: list[tuple[KnobValue, ...]] = field(default_factory=list)

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("q", (0, 1, 2, 3)), Knob("w", (0, 1, 2)))

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        q, w = int(values["q"]), int(values["w"])  # type: ignore[arg-type]
        cand.figures |= {
            "flash_bytes": 1000.0 / (1 + q) / (1 + w),
            "latency_ms": 10.0 - 2.0 * q - 1.0 * w,
            "peak_ram_bytes": 800.0 - 100.0 * w,
        }
        if exact:
            self.exact_calls.append((q, w))
            cand.figures["accuracy"] = 0.99 - 0.01 * q * q - 0.02 * w
        return cand


@dataclass
class Schedule:
    """Accuracy-preserving: less RAM for some extra latency (recomputation)."""

    name: str = "memory"
    changes_accuracy: bool = False

    @property
    def knobs(self) -> tuple[Knob, ...]:
        return (Knob("t", (0, 1, 2, 3)),)

    def apply(self, cand: Candidate, values: Mapping[str, KnobValue], exact: bool) -> Candidate:
        t = int(values["t"])  # type: ignore[arg-type]
        cand.figures["peak_ram_bytes"] *= 1.0 - 0.2 * t
        cand.figures["latency_ms"] += 0.5 * t
        return cand


DEMANDS = Demands(max_accuracy_drop_pp=5.5, max_ram_bytes=500, max_flash_bytes=400)


def make_space() -> tuple[Space, Compression]:
    model = Compression()
    return Space([model, Schedule()]), model


def true_feasible_front(space: Space) -> set[tuple[tuple[str, KnobValue], ...]]:
    """Enumerate every point (the ground truth the search must find)."""
    base = space.build(space.default(), exact=True).figures["accuracy"]
    names = list(space.params())
    points, keys = [], []
    for combo in itertools.product(*space.params().values()):
        params = dict(zip(names, combo, strict=True))
        values = objective_values(space.build(params, exact=True).figures, base)
        if all(meets(values, DEMANDS).values()):
            points.append(values)
            keys.append(tuple(sorted(params.items())))
    return {keys[i] for i in pareto_indices(points)}


def test_search_finds_the_enumerated_front_and_its_optimum() -> None:
    truth = true_feasible_front(make_space()[0])
    assert len(truth) == 8
    for seed in range(3):  # 36 of the 48 points evaluated, the rest left to the sampler
        space, _ = make_space()
        settings = Settings(budget=36, seed=seed)
        res = run_search(space, Evaluator(space, DEMANDS, None), settings, {"t": 1})
        found = {tuple(sorted(r.params.items())) for r in res.feasible_front()}
        assert found <= truth  # every reported front point is truly Pareto-optimal
        if seed == 0:
            assert found == truth
        # The known optimum (worked out by hand from the formulas): the fastest point
        # within 5.5 pp, 500 B of RAM and 400 B of flash is q=1, w=2 (5 pp, 167 B flash)
        # with t=1 (600 * 0.8 = 480 B of RAM) at 10 - 2 - 2 + 0.5 = 6.5 ms.
        best = choose(res, DEMANDS)[0]
        assert best.params == {"model.q": 1, "model.w": 2, "memory.t": 1}
        assert best.values[1] == pytest.approx(6.5)


def test_no_reported_feasible_point_violates_a_constraint() -> None:
    space, _ = make_space()
    res = run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=30), {"t": 2})
    assert res.feasible_front()
    for rec in res.records:
        if rec.feasible:
            assert rec.measured and all(meets(rec.values, DEMANDS).values())
        else:
            assert not all(meets(rec.values, DEMANDS).values()) or not rec.measured


def test_analytic_stage_skips_measurement_of_points_missing_a_limit() -> None:
    space, model = make_space()
    res = run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=30), {"t": 3})
    skipped = [r for r in res.records if r.stage == "analytic: misses a limit"]
    assert skipped
    measured_keys = {(int(r.params["model.q"]), int(r.params["model.w"]))  # type: ignore[arg-type]
                     for r in res.records if r.measured}  # fmt: skip
    for rec in skipped:
        assert rec.values[0] == 100.0  # pessimistic accuracy drop, never on the front
        assert not rec.feasible
    # Only the baseline and candidates passing the cheap limits were fine-tuned.
    assert set(model.exact_calls) <= measured_keys | {(0, 0)}


class CountingEvaluator(Evaluator):
    """Records every knob combination it evaluates."""

    def __init__(self, space: Space) -> None:
        super().__init__(space, DEMANDS, None)
        self.evaluated: list[tuple[tuple[str, KnobValue], ...]] = []

    def evaluate(self, number, params, done):  # type: ignore[no-untyped-def]
        self.evaluated.append(tuple(sorted(params.items())))
        return super().evaluate(number, params, done)


def _sampled(params: Mapping[str, KnobValue]) -> tuple[tuple[str, KnobValue], ...]:
    """The knobs the study samples (the accuracy-changing level's) of a point."""
    return tuple(sorted((k, v) for k, v in params.items() if k.startswith("model.")))


def test_resumed_study_continues_without_repeating_finished_trials(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    space, _ = make_space()
    first_eval = CountingEvaluator(space)
    first = run_search(space, first_eval, Settings(budget=5, study_path=db), {"t": 4})
    space2, model2 = make_space()  # as a new process would: nothing cached
    second_eval = CountingEvaluator(space2)
    second = run_search(space2, second_eval, Settings(budget=9, study_path=db), {"t": 4})
    assert first.evaluated_total == 5 and second.resumed_from == 5
    assert second.evaluated_total == 9 and second.evaluated_this_run == 4
    # Every point of the finished trials (several per trial) is restored from the file.
    restored = second.records[: len(first.records)]
    assert [(r.number, r.params, r.values) for r in restored] == [
        (r.number, r.params, r.values) for r in first.records
    ]
    assert len(first.records) > first.evaluated_total  # inner fronts: several points a trial
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{db}")
    assert len(study.trials) == second.trials_total > first.trials_total >= 5  # it grew
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    finished = {_sampled(r.params) for r in first.records}
    assert first_eval.evaluated and second_eval.evaluated
    assert not finished & set(second_eval.evaluated)  # nothing finished is evaluated again
    assert len(set(second_eval.evaluated)) == len(second_eval.evaluated)
    assert (0, 0) not in model2.exact_calls  # the baseline is kept in the study, not re-run
    assert second.baseline.values == first.baseline.values


def test_interrupted_trials_are_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    space, _ = make_space()
    run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=4, study_path=db), {"t": 5})
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{db}")
    study.ask()  # a trial left RUNNING, as a killed run leaves it
    res = run_search(
        space, Evaluator(space, DEMANDS, None), Settings(budget=6, study_path=db), {"t": 5}
    )
    states = [t.state for t in optuna.load_study(
        study_name=STUDY_NAME, storage=f"sqlite:///{db}").trials]  # fmt: skip
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert res.evaluated_total == 6


def test_a_study_of_another_search_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    space, _ = make_space()
    run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=2, study_path=db), {"a": 1})
    with pytest.raises(UsageError, match="another search"):
        run_search(
            space, Evaluator(space, DEMANDS, None), Settings(budget=3, study_path=db), {"a": 2}
        )


def test_tpe_sampler_and_time_budget() -> None:
    space, _ = make_space()
    res = run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=8, sampler="tpe"),
                     {"t": 6})  # fmt: skip
    assert res.evaluated_total == 8 and res.stopped_by == "budget"
    assert res.feasible_front()
    space, _ = make_space()
    res = run_search(space, Evaluator(space, DEMANDS, None),
                     Settings(budget=12, time_budget_s=1e-9), {"t": 6})  # fmt: skip
    assert res.stopped_by == "time budget" and not res.records


def test_infeasible_demands_name_the_hardest_one() -> None:
    space, _ = make_space()
    hard = Demands(max_ram_bytes=10, max_flash_bytes=400)
    res = run_search(space, Evaluator(space, hard, None), Settings(budget=12), {"t": 7})
    assert not res.feasible_front()
    diag = diagnose(res, hard)
    assert diag.hardest == "peak_ram_bytes" and diag.best_violation > 0
    assert diag.nearest


def test_single_level_ablations_search_one_level_each() -> None:
    space, _ = make_space()
    evaluator = Evaluator(space, DEMANDS, None)
    fronts = single_level_fronts(space, evaluator, Settings(), budget=10)
    assert set(fronts) == {"model", "memory"}
    assert all(r.params["memory.t"] == 0 for r in fronts["model"])
    assert all(r.params["model.q"] == 0 and r.params["model.w"] == 0 for r in fronts["memory"])


def test_hypervolume_against_known_values_and_monte_carlo() -> None:
    assert hypervolume([[1, 2], [2, 1]], [3, 3]) == pytest.approx(3.0)
    assert hypervolume([[4, 4]], [3, 3]) == 0.0
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (8, 3))
    samples = rng.uniform(0, 1, (200_000, 3))
    covered = np.zeros(len(samples), dtype=bool)
    for p in pts:
        covered |= np.all(samples >= p, axis=1)
    assert hypervolume(pts.tolist(), [1, 1, 1]) == pytest.approx(covered.mean(), abs=5e-3)


def test_unknown_knob_is_a_usage_error() -> None:
    space, _ = make_space()
    with pytest.raises(UsageError, match="unknown knobs"):
        space.build({"model.nope": 1}, exact=False)


def _study_with_one_trial(db: Path, fingerprint: dict[str, int], sampled: dict[str, int],
                          point: dict[str, int], values: list[float]) -> None:  # fmt: skip
    """A study file holding one finished trial (sampled knobs ``sampled``) whose one point
    (all knobs ``point``) claims to be feasible and measured."""
    from optuna.distributions import CategoricalDistribution

    study = optuna.create_study(storage=f"sqlite:///{db}", study_name=STUDY_NAME,
                                directions=["minimize"] * 4)  # fmt: skip
    study.set_user_attr("fingerprint", fingerprint)
    choices = make_space()[0].params()  # the space's distributions, as a real run stores
    study.enqueue_trial(sampled)
    trial = study.ask(
        {k: CategoricalDistribution(choices.get(k, (v,))) for k, v in sampled.items()}
    )
    for key, value in (("stage", "measured"), ("feasible", True), ("figures", {})):
        trial.set_user_attr(key, value)
    trial.set_user_attr("points", [{"params": point, "values": values, "stage": "measured",
                                    "feasible": True, "figures": {}}])  # fmt: skip
    study.tell(trial, values)


@pytest.mark.parametrize(("sampled", "point"), [
    ({"model.nope": 1}, {"model.nope": 1}),  # a knob the space does not have
    ({"model.q": 0, "model.w": 0}, {"model.q": 0, "model.w": 0, "memory.t": 9}),  # no choice 9
    ({"model.q": 0, "model.w": 0}, {"model.q": 1, "model.w": 0, "memory.t": 0}),  # other trial's
])  # fmt: skip
def test_a_stored_trial_outside_the_space_is_refused(
    tmp_path: Path, sampled: dict[str, int], point: dict[str, int]
) -> None:
    db = tmp_path / "study.db"
    _study_with_one_trial(db, {"t": 8}, sampled, point, [0.0, 1.0, 1.0, 1.0])
    space, _ = make_space()
    with pytest.raises(UsageError, match="does not belong to this search"):
        run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=2, study_path=db),
                   {"t": 8})  # fmt: skip


def test_feasibility_of_stored_trials_is_recomputed_not_trusted(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    params = {"model.q": 0, "model.w": 0, "memory.t": 0}
    _study_with_one_trial(db, {"t": 9}, {"model.q": 0, "model.w": 0}, params,
                          [0.0, 10.0, 800.0, 1000.0])  # misses RAM  # fmt: skip
    space, _ = make_space()
    res = run_search(space, Evaluator(space, DEMANDS, None), Settings(budget=3, study_path=db),
                     {"t": 9})  # fmt: skip
    stored = next(r for r in res.records if r.params == params)
    assert res.resumed_from == 1 and not stored.feasible
    assert all(all(meets(r.values, DEMANDS).values()) for r in res.feasible_front())


def synthetic_space() -> Space:
    """The synthetic space by an importable name: what Ray workers build (``SpaceSpec``)."""
    return make_space()[0]


def test_variant_table_keeps_the_front_extremes() -> None:
    from crosslevel.search.optimize import variant_table
    from crosslevel.search.study import Record

    def rec(n: int, drop: float, ms: float) -> Record:
        return Record(n, {"k": n}, [drop, ms, 1.0, 1.0], "measured", {}, True)

    chosen, accurate, fastest = rec(0, 0.5, 20.0), rec(1, 0.0, 90.0), rec(2, 9.0, 2.0)
    order = [chosen, rec(3, 0.6, 19.0), rec(4, 0.7, 18.0), accurate, fastest]
    table = variant_table(chosen, order, 3)
    assert table == [chosen, accurate, fastest]
    assert variant_table(chosen, order, 10) == [chosen, accurate, fastest, order[1], order[2]]


def test_a_trial_is_one_exact_evaluation_with_its_inner_front() -> None:
    """The study samples only the accuracy-changing knobs; each trial builds every
    preserving choice analytically and keeps its non-dominated points (here all four:
    each memory step trades RAM for latency), told to the study as one trial."""
    space, _ = make_space()
    demands = Demands(max_accuracy_drop_pp=5.5)
    res = run_search(space, Evaluator(space, demands, None), Settings(budget=1), {"t": 10})
    assert res.evaluated_total == 1 and res.measured_this_run == 1
    assert res.analytic_this_run == 4 and len(res.records) == 4
    assert {r.params["memory.t"] for r in res.records} == {0, 1, 2, 3}
    assert {r.number for r in res.records} == {0}
    told = res.records[0]
    # The most balanced: relative to the trial's largest, t=3 costs 11.5/11.5 + 320/800
    # = 1.4 (latency + RAM; accuracy and flash are equal), t=0 costs 10/11.5 + 1 = 1.87.
    assert told.feasible and told.params["memory.t"] == 3
    assert [r.params for r in res.feasible_front()] == [r.params for r in res.records]


def test_a_large_inner_space_is_sampled_the_same_way_every_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import crosslevel.search.study as study_module

    monkeypatch.setattr(study_module, "INNER_LIMIT", 3)
    space, _ = make_space()
    evaluator = Evaluator(space, DEMANDS, None)
    sampled = {"model.q": 1, "model.w": 2}
    points = evaluator.inner_points(sampled)
    assert len(points) == 3 and points[0] == {**sampled, "memory.t": 0}  # unoptimized first
    assert all(p.keys() == space.params().keys() for p in points)
    assert evaluator.inner_points(dict(sampled)) == points
