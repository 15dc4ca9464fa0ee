"""Planning speed of ``best_order`` on issue 3's target sizes, on the benchmark's own graphs.

Targets: exact within 10 s on random DAGs of up to 20 operators and on graphs of up to
100 operators whose cells are joined by single tensors; any graph of up to 1,000 operators
ordered, with its gap to the bound, within 10 s. Times are wall clock around the whole
call. The 1,000-operator cases run with shorter limits than 10 s (the limit must hold
whatever it is) to keep this file fast; ``benchmarks/planning_scale.py`` runs them at 10 s.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.memory.lifetimes import buffers_for_order, peak_live_bytes
from crosslevel.memory.ordering import (
    OrderResult,
    best_order,
    largest_operator_footprint,
    reordered,
)


def _load_benchmark() -> ModuleType:
    """The benchmark script as a module: its generators are the graphs measured here."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "planning_scale.py"
    spec = importlib.util.spec_from_file_location("planning_scale", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("planning_scale", module)
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def _timed(graph: Graph, time_limit_s: float) -> tuple[OrderResult, float]:
    start = time.perf_counter()
    result = best_order(graph, time_limit_s=time_limit_s)
    return result, time.perf_counter() - start


def _check_consistent(graph: Graph, result: OrderResult) -> None:
    """A valid order whose peak is what the memory model says; bound and gap coherent."""
    order = reordered(graph, result.order).nodes  # raises unless topological
    assert result.peak_bytes == peak_live_bytes(buffers_for_order(graph, order))
    assert result.file_order_peak_bytes == peak_live_bytes(buffers_for_order(graph))
    assert result.peak_bytes <= result.file_order_peak_bytes
    assert largest_operator_footprint(graph) <= result.lower_bound_bytes <= result.peak_bytes
    gap = 100.0 * (result.peak_bytes - result.lower_bound_bytes) / result.lower_bound_bytes
    assert result.gap_pct == pytest.approx(gap)
    assert result.optimal == (result.peak_bytes == result.lower_bound_bytes)


def test_generators_are_deterministic_and_sized() -> None:
    a, b = bench.random_dag(20, 3), bench.random_dag(20, 3)
    assert [(n.name, n.inputs, n.outputs) for n in a.nodes] == [
        (n.name, n.inputs, n.outputs) for n in b.nodes
    ]
    assert {k: t.shape for k, t in a.tensors.items()} == {k: t.shape for k, t in b.tensors.items()}
    assert len(a.nodes) == 20 and len(bench.celled_graph(100, 0).nodes) == 100
    assert len(bench.random_dag(1000, 0).nodes) == 1000
    assert len(bench.wide_chains(40, 25, 0).nodes) == 1001


@pytest.mark.parametrize("seed", range(10))
def test_twenty_operator_random_dags_are_exact_within_ten_seconds(seed: int) -> None:
    graph = bench.random_dag(20, seed)
    result, wall = _timed(graph, 10.0)
    assert result.optimal and result.method in ("dp", "dp+cuts"), result
    assert wall < 10.0
    _check_consistent(graph, result)


def test_twenty_operator_dags_do_branch() -> None:
    """Not chains in disguise: most have several orders and many beat their file order."""
    results = [best_order(bench.random_dag(20, seed)) for seed in range(10)]
    assert sum(r.method == "dp" for r in results) >= 5  # no cut splits the whole graph
    assert sum(r.peak_bytes < r.file_order_peak_bytes for r in results) >= 5


@pytest.mark.parametrize("seed", range(5))
def test_hundred_operator_celled_graphs_are_exact_within_ten_seconds(seed: int) -> None:
    graph = bench.celled_graph(100, seed)
    result, wall = _timed(graph, 10.0)
    assert result.optimal and result.method == "dp+cuts", result
    assert wall < 10.0
    _check_consistent(graph, result)


@pytest.mark.parametrize(
    ("make", "limit_s"),
    [
        (lambda: bench.random_dag(1000, 0), 3.0),
        (lambda: bench.wide_chains(40, 25, 0), 3.0),
        (lambda: bench.celled_graph(1000, 0), 10.0),
    ],
    ids=["dag1000", "chains40x25", "cells1000"],
)
def test_thousand_operator_graphs_get_an_order_and_its_gap_within_the_limit(
    make: Callable[[], Graph], limit_s: float
) -> None:
    graph = make()
    result, wall = _timed(graph, limit_s)
    assert wall < limit_s
    _check_consistent(graph, result)
    assert result.peak_bytes < result.file_order_peak_bytes  # the search did improve
    if not result.optimal:
        assert result.method == "heuristic" and result.gap_pct > 0.0


def test_the_limit_holds_at_ten_seconds_on_a_thousand_operators() -> None:
    """The target itself, once: the random 1,000-operator DAG never finishes its search."""
    graph = bench.random_dag(1000, 1)
    result, wall = _timed(graph, 10.0)
    assert wall < 10.0 and not result.optimal
    _check_consistent(graph, result)
    assert result.gap_pct < 50.0


def _skip_over_branches() -> Graph:
    """s (1,000 B) crosses a two-operator branch; an independent branch c runs beside it."""
    sizes = {"x": 16, "s": 1000, "t": 10, "a": 100, "b": 100, "c": 10, "y": 16}
    tensors = {k: Tensor(k, (v,), "int8") for k, v in sizes.items()}
    nodes = [
        Node("n0", "ADD", ["x"], ["s", "t"]),
        Node("n1", "RELU", ["t"], ["a"]),
        Node("n2", "RELU", ["a"], ["b"]),
        Node("n4", "RELU", ["x"], ["c"]),
        Node("n3", "CONCATENATION", ["s", "b", "c"], ["y"]),
    ]
    graph = Graph("skip", tensors, nodes, ["x"], ["y"], "NHWC")
    graph.validate(check_shapes=False)
    return graph


def test_the_bound_counts_tensors_crossing_an_operator() -> None:
    """Without any search the bound is s + a + b at n2, above every operator's footprint.

    File order: at n2, x (still read by n4) + s + a + b = 1,216. The best order runs n4
    first, so c (10 B) instead of x (16 B) waits through n2: 1,210.
    """
    graph = _skip_over_branches()
    assert largest_operator_footprint(graph, alignment=1) == 1000 + 100 + 10 + 16
    quick = best_order(graph, time_limit_s=0.0, alignment=1)
    assert quick.lower_bound_bytes == 1000 + 100 + 100
    assert quick.peak_bytes == quick.file_order_peak_bytes == 1216 and not quick.optimal
    assert quick.gap_pct == pytest.approx(100 * 16 / 1200)
    exact = best_order(graph, time_limit_s=10.0, alignment=1)
    assert exact.optimal and exact.peak_bytes == exact.lower_bound_bytes == 1210
    assert exact.order[0] == "n4"


def test_benchmark_rows_and_targets() -> None:
    """The benchmark's row and target check agree with what best_order returned."""
    graph = bench.random_dag(20, 0)
    row = bench.measure("dag20", "dag20 seed 0", graph)
    assert row.operators == 20 and row.optimal and bench.meets_target(row)
    slow = bench.Row("dag20", "x", 20, True, 1, 1, 0.0, 10.5, 1, "dp")
    inexact = bench.Row("cells100", "x", 100, False, 2, 1, 100.0, 1.0, 2, "heuristic")
    gap_ok = bench.Row("any1000", "x", 1000, False, 2, 1, 100.0, 1.0, 2, "heuristic")
    assert not bench.meets_target(slow) and not bench.meets_target(inexact)
    assert bench.meets_target(gap_ok)
