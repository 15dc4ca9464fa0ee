"""Arena offsets: best-fit and the exact MILP against brute force, the Plan JSON, and the
plans of the real MLPerf Tiny models run inside the stock TFLM runtime."""

from __future__ import annotations

import itertools
import json
import random
import time
from pathlib import Path

import numpy as np
import pytest

from crosslevel.errors import UsageError
from crosslevel.memory.lifetimes import Buffer, buffers_for_order, peak_live_bytes
from crosslevel.memory.offsets import (
    PlanOverlapError,
    arena_of,
    check_plan,
    plan_arena,
    plan_best_fit,
    plan_exact,
)
from crosslevel.memory.plan import (
    FORMAT,
    InvalidPlanError,
    load_plan,
    make_plan,
    offline_offsets,
    plan_to_json,
    write_plan,
)
from crosslevel.memory.tflm_greedy import plan_tflm_greedy
from crosslevel.model.mlperf_tiny import FILE_ORDER_BOUNDS, INT8_FILES


def _random_buffers(rng: random.Random, n: int, steps: int) -> list[Buffer]:
    out = []
    for k in range(n):
        first = rng.randrange(steps)
        last = min(steps - 1, first + rng.randrange(steps))
        out.append(Buffer(f"t{k}", 16 * rng.choice([1, 2, 3, 5, 7, 11]), first, last))
    return out


def _lowest_fit(buffers: list[Buffer], order: tuple[int, ...]) -> int:
    """Place in ``order``, each at its lowest feasible offset; the arena it needs.

    Written independently of the planners: over all orders this reaches the optimum (sort
    any optimal plan by offset; lowest-fit in that order never places a buffer higher).
    """
    offsets: dict[int, int] = {}
    for i in order:
        cand = 0
        while True:
            clash = [
                offsets[j] + buffers[j].size_bytes
                for j in offsets
                if buffers[i].overlaps(buffers[j])
                and offsets[j] < cand + buffers[i].size_bytes
                and cand < offsets[j] + buffers[j].size_bytes
            ]
            if not clash:
                break
            cand = max(clash)
        offsets[i] = cand
    return max((offsets[i] + buffers[i].size_bytes for i in offsets), default=0)


def _brute_force(buffers: list[Buffer]) -> int:
    return min(_lowest_fit(buffers, p) for p in itertools.permutations(range(len(buffers))))


# ----------------------------------------------------------------------------------
# the checker
# ----------------------------------------------------------------------------------
def test_check_plan_accepts_touching_and_time_disjoint_buffers() -> None:
    buffers = [Buffer("a", 32, 0, 1), Buffer("b", 16, 1, 2), Buffer("c", 48, 2, 3)]
    check_plan(buffers, {"a": 0, "b": 48, "c": 0})  # c reuses a's bytes once a is dead
    check_plan(buffers, {"a": 0, "b": 32, "c": 48})  # a and b touch: no shared byte
    with pytest.raises(PlanOverlapError, match="'b'.*'c'|'c'.*'b'"):
        check_plan(buffers, {"a": 0, "b": 48, "c": 16})
    with pytest.raises(PlanOverlapError, match="'a'.*'b'|'b'.*'a'"):
        check_plan(buffers, {"a": 0, "b": 16, "c": 48})
    with pytest.raises(PlanOverlapError, match="no offset"):
        check_plan(buffers, {"a": 0, "b": 48})
    with pytest.raises(PlanOverlapError, match="negative"):
        check_plan(buffers, {"a": 0, "b": 48, "c": -16})


def test_check_plan_catches_every_overlap_brute_force_finds() -> None:
    """The sweep-line checker agrees with the O(n^2) definition on random plans."""
    rng = random.Random(11)
    caught = 0
    for _ in range(300):
        buffers = _random_buffers(rng, 6, 5)
        offsets = {b.name: 16 * rng.randrange(60) for b in buffers}
        clash = any(
            a.overlaps(b)
            and offsets[a.name] < offsets[b.name] + b.size_bytes
            and offsets[b.name] < offsets[a.name] + a.size_bytes
            for a, b in itertools.combinations(buffers, 2)
        )
        if clash:
            caught += 1
            with pytest.raises(PlanOverlapError):
                check_plan(buffers, offsets)
        else:
            check_plan(buffers, offsets)
    assert 50 < caught < 300  # both branches exercised


# ----------------------------------------------------------------------------------
# planners against brute force
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_exact_equals_brute_force_and_is_proven(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(12):
        buffers = _random_buffers(rng, 6, 6)
        exact = plan_exact(buffers, time_limit_s=10.0)
        check_plan(buffers, exact.offsets)
        assert all(off % 16 == 0 for off in exact.offsets.values())
        assert arena_of(buffers, exact.offsets) == exact.arena_bytes
        best_fit = plan_best_fit(buffers)
        check_plan(buffers, best_fit.offsets)
        greedy = plan_tflm_greedy(buffers).arena_bytes
        assert peak_live_bytes(buffers) <= exact.arena_bytes <= best_fit.arena_bytes <= greedy
        assert exact.arena_bytes == _brute_force(buffers)
        assert exact.optimal and exact.gap_pct == 0.0
        assert exact.lower_bound_bytes == exact.arena_bytes


def test_exact_beats_best_fit_where_best_fit_is_not_optimal() -> None:
    """Found by search over random instances: every best-fit ordering needs 416 bytes."""
    spec = [(112, 2, 7), (112, 7, 7), (112, 0, 3), (112, 3, 7), (32, 3, 5), (48, 5, 7), (80, 4, 5)]
    buffers = [Buffer(f"t{k}", s, a, b) for k, (s, a, b) in enumerate(spec)]
    best_fit = plan_best_fit(buffers)
    exact = plan_exact(buffers, time_limit_s=10.0)
    check_plan(buffers, exact.offsets)
    assert exact.arena_bytes == _brute_force(buffers) == 384 < best_fit.arena_bytes
    assert exact.solver == "highs" and exact.optimal


def test_time_limit_is_kept_and_the_gap_reported() -> None:
    rng = random.Random(5)
    buffers = _random_buffers(rng, 80, 30)
    start = time.monotonic()
    plan = plan_arena(buffers, time_limit_s=1.0)
    assert time.monotonic() - start < 8.0  # the heuristics and the model build add a little
    check_plan(buffers, plan.offsets)
    assert plan.arena_bytes <= plan_best_fit(buffers).arena_bytes
    assert peak_live_bytes(buffers) <= plan.lower_bound_bytes <= plan.arena_bytes
    assert plan.optimal == (plan.gap_pct == 0.0)
    expected_gap = 100.0 * (plan.arena_bytes - plan.lower_bound_bytes) / plan.arena_bytes
    assert plan.gap_pct == pytest.approx(expected_gap)


def test_plan_arena_never_above_tflm_and_handles_degenerate_input() -> None:
    rng = random.Random(9)
    for _ in range(40):
        buffers = _random_buffers(rng, rng.randint(1, 12), rng.randint(1, 8))
        plan = plan_arena(buffers, time_limit_s=2.0)
        check_plan(buffers, plan.offsets)
        assert plan.arena_bytes <= plan_tflm_greedy(buffers).arena_bytes
    empty = plan_arena([], 1.0)
    assert (empty.arena_bytes, empty.offsets, empty.optimal) == (0, {}, True)
    one = plan_arena([Buffer("x", 48, 0, 0)], 1.0)
    assert (one.arena_bytes, one.offsets) == (48, {"x": 0})


# ----------------------------------------------------------------------------------
# the Plan JSON
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vww_plan_file(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    from crosslevel.ir.tflite_io import import_tflite

    graph = import_tflite((models_dir / "vww_96_int8.tflite").read_bytes())
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    write_plan(make_plan(graph, time_limit_s=5.0), path)
    return path


def test_plan_json_round_trip(vww_plan_file: Path) -> None:
    data = json.loads(vww_plan_file.read_text())
    assert data["format"] == FORMAT
    assert data["inplace"] == [] and data["patch_stages"] == [] and data["scratch"] == []
    first = data["tensors"][0]
    assert set(first) == {"id", "size_bytes", "offset", "first", "last", "alignment"}
    plan = load_plan(vww_plan_file)
    assert plan_to_json(plan) == data
    assert plan.bounds.tflm_greedy_bytes == 73_728
    assert plan.bounds.peak_live_bytes == FILE_ORDER_BOUNDS["vww_96_int8.tflite"]


def _mutations() -> list[tuple[str, object]]:
    """(what the message must name, a change to the valid JSON object or raw bytes)."""
    return [
        ("format", lambda d: d.update(format="crosslevel.plan/9")),
        ("lacks", lambda d: d.pop("order")),
        ("unknown fields", lambda d: d.update(extra=1)),
        ("offset", lambda d: d["tensors"][0].update(offset=-16)),
        ("offset", lambda d: d["tensors"][0].update(offset=True)),
        ("multiple of 16", lambda d: d["tensors"][0].update(offset=8)),
        ("beyond the arena", lambda d: d.update(arena_bytes=16)),
        ("last", lambda d: d["tensors"][0].update(last=10_000)),
        ("size_bytes", lambda d: d["tensors"][0].update(size_bytes="big")),
        ("overlap", lambda d: [t.update(offset=0) for t in d["tensors"]]),
        ("twice", lambda d: d["tensors"].append(dict(d["tensors"][0]))),
        ("gap_pct", lambda d: d["bounds"].update(gap_pct=150.0)),
        ("lower_bound", lambda d: d["bounds"].update(lower_bound_bytes=1)),
        ("inplace", lambda d: d.update(inplace=[["nope", "x"]])),
        ("patch_stages", lambda d: d.update(patch_stages=[{"layers": []}])),
        ("object", lambda d: d.update(bounds=[1, 2])),
    ]


@pytest.mark.parametrize("index", range(len(_mutations())))
def test_load_plan_rejects_bad_fields_with_one_clear_error(
    vww_plan_file: Path, tmp_path: Path, index: int
) -> None:
    needle, mutate = _mutations()[index]
    data = json.loads(vww_plan_file.read_text())
    mutate(data)  # type: ignore[operator]
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InvalidPlanError, match=needle) as info:
        load_plan(bad)
    assert isinstance(info.value, UsageError)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"format": NaN}',
        b'{"format": 1' + b"0" * 5000 + b"}",
        b"[]",
        b"null",
    ],
    ids=["empty", "syntax", "not-utf8", "deep", "nan", "huge-int", "list", "null"],
)
def test_load_plan_rejects_hostile_files(tmp_path: Path, raw: bytes) -> None:
    bad = tmp_path / "plan.json"
    bad.write_bytes(raw)
    with pytest.raises(InvalidPlanError):
        load_plan(bad)


def test_load_plan_rejects_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(InvalidPlanError, match="cannot read"):
        load_plan(tmp_path / "missing.json")
    with pytest.raises(InvalidPlanError, match="cannot read"):
        load_plan(tmp_path)


# ----------------------------------------------------------------------------------
# verification by execution: our offsets inside the stock TFLM runtime
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", INT8_FILES)
def test_offline_plan_runs_in_tflm_with_our_arena(models_dir: Path, name: str) -> None:
    from crosslevel.ir.tflite_io import export_tflite, import_tflite
    from crosslevel.runtime.tflm import TflmInterpreter, measure_tflm_arena

    original = (models_dir / name).read_bytes()
    graph = import_tflite(original)
    plan = make_plan(graph, time_limit_s=5.0)
    check_plan(plan.buffers(), plan.offsets)
    assert plan.arena_bytes <= plan.bounds.tflm_greedy_bytes
    # Every real model reaches the bound of its order (TFLM misses it by 33% on vww).
    assert plan.arena_bytes == plan.bounds.peak_live_bytes == FILE_ORDER_BOUNDS[name]
    assert plan.bounds.optimal

    planned = export_tflite(graph, offline_offsets=offline_offsets(graph, plan))
    assert measure_tflm_arena(planned).head_bytes == plan.arena_bytes

    ours, theirs = TflmInterpreter(planned), TflmInterpreter(original)
    rng = np.random.default_rng(0)
    for _ in range(3):
        inputs = [
            rng.integers(-128, 128, size=shape, dtype=np.int8)
            if dtype == np.int8
            else rng.standard_normal(shape).astype(dtype)
            for shape, dtype in theirs.input_specs
        ]
        for got, want in zip(ours.run(inputs), theirs.run(inputs), strict=True):
            np.testing.assert_array_equal(got, want)


def test_a_wrong_offline_plan_changes_tflm_outputs(models_dir: Path) -> None:
    """The round trip can fail: overlapping live tensors corrupt the result TFLM computes."""
    from crosslevel.ir.tflite_io import export_tflite, import_tflite, tflite_tensors
    from crosslevel.runtime.tflm import TflmInterpreter

    original = (models_dir / "vww_96_int8.tflite").read_bytes()
    graph = import_tflite(original)
    bad = [0 if t.in_arena else -1 for t in tflite_tensors(graph)]  # everything at 0
    ours, theirs = (
        TflmInterpreter(export_tflite(graph, offline_offsets=bad)),
        TflmInterpreter(original),
    )
    rng = np.random.default_rng(1)
    shape, _ = theirs.input_specs[0]
    inputs = [rng.integers(-128, 128, size=shape, dtype=np.int8)]
    assert not all(
        np.array_equal(a, b) for a, b in zip(ours.run(inputs), theirs.run(inputs), strict=True)
    )


def test_offline_offsets_refuse_a_plan_missing_a_tensor(models_dir: Path) -> None:
    from crosslevel.ir.tflite_io import import_tflite

    graph = import_tflite((models_dir / "ad01_int8.tflite").read_bytes())
    plan = make_plan(graph, time_limit_s=1.0)
    trimmed = type(plan)(**{**plan.__dict__, "tensors": plan.tensors[1:]})
    with pytest.raises(InvalidPlanError, match="no offset"):
        offline_offsets(graph, trimmed)
    assert len(buffers_for_order(graph)) == len(plan.tensors)
