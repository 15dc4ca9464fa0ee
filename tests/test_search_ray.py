"""The search with its trials evaluated on a local Ray cluster (the driver holds the study)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_search import DEMANDS, synthetic_space
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.errors import UsageError
from crosslevel.search.ray_backend import RayBackend, SpaceSpec
from crosslevel.search.study import Evaluator, Settings, run_search

SPEC = SpaceSpec("test_search:synthetic_space")


@pytest.fixture(scope="module")
def backend() -> Iterator[RayBackend]:
    with RayBackend(SPEC, DEMANDS, None) as ray_backend:
        yield ray_backend


def _front(res: object) -> list[tuple[tuple[str, object], ...]]:
    return sorted(tuple(sorted(r.params.items())) for r in res.feasible_front())  # type: ignore[attr-defined]


def test_ray_search_gives_the_in_process_front(backend: RayBackend) -> None:
    settings = Settings(budget=20, seed=3, parallel=2)
    space = synthetic_space()
    here = run_search(space, Evaluator(space, DEMANDS, None), settings, {"t": "ray"})
    space2 = synthetic_space()
    there_eval = Evaluator(space2, DEMANDS, None)
    there = run_search(space2, there_eval, settings, {"t": "ray"}, backend=backend)
    assert [r.params for r in there.records] == [r.params for r in here.records]
    assert [r.values for r in there.records] == [r.values for r in here.records]
    assert _front(there) == _front(here) and _front(here)
    # Only the baseline was measured on the driver; every trial ran on a worker.
    assert space2.levels[0].exact_calls == [(0, 0)]  # type: ignore[attr-defined]
    # One exact evaluation per measured trial (a trial keeps several points).
    assert there_eval.measured_runs == len({r.number for r in there.records if r.measured})
    assert there.analytic_this_run == here.analytic_this_run > there.evaluated_total


def test_ablations_run_on_the_workers_too(backend: RayBackend) -> None:
    from crosslevel.search.study import single_level_fronts

    space = synthetic_space()
    evaluator = Evaluator(space, DEMANDS, None)
    run_search(space, evaluator, Settings(budget=4, parallel=2), {"t": "abl"})
    fronts = single_level_fronts(space, evaluator, Settings(parallel=2), 6, backend)
    assert set(fronts) == {"model", "memory"}
    assert all(set(r.params) == set(space.params()) for recs in fronts.values() for r in recs)
    assert {r.params["memory.t"] for r in fronts["model"]} == {0}


def test_a_bad_factory_is_one_usage_error(backend: RayBackend) -> None:
    with pytest.raises(UsageError):
        SpaceSpec("test_search:DEMANDS").build()
    with pytest.raises(UsageError, match="cannot import"):
        SpaceSpec("no_such_module_here:f").build()


def test_optimize_with_ray_evaluates_on_the_workers(backend: RayBackend, tmp_path: Path) -> None:
    """`optimize --ray` on a model file (graph, memory and operator levels); the module's
    cluster is reused, since this process is already connected to it."""
    args = ["optimize", "mlperf:ad01_int8.tflite", "--device", "nrf52840", "--budget", "3",
            "--ablation-budget", "0", "--max-variants", "1", "--ray", "--json",
            "-o", str(tmp_path)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # No accuracy-changing level: one trial, whose inner search builds every combination
    # of the preserving knobs (graph 2 x 2, memory 5, operator 4) on a worker.
    assert doc["search"]["evaluated_total"] == 1
    assert doc["search"]["analytic_this_run"] == 80
    assert (tmp_path / "variants.json").exists()


def test_joining_a_cluster_that_is_not_there_is_one_usage_error() -> None:
    """Run last: it needs this process disconnected (after the module's cluster)."""
    import ray

    ray.shutdown()
    with pytest.raises(UsageError, match="join Ray"):
        RayBackend(SPEC, DEMANDS, None, address="127.0.0.1:1")
