"""Exact placement solvers over one cost problem: chain scan, minimum s-t cut, ILP, brute force.

Every solver minimizes the same objective (``Problem.cost``), so they can be checked
against each other and against brute force over every valid assignment.

* ``solve_chain``: Neurosurgeon's search, every prefix of the node order on the device;
* ``solve_mincut``: DADS's exact minimum s-t cut (NetworkX) for two tiers, additive
  objectives and no resource limits. One auxiliary vertex per tensor makes a tensor read by
  several far-side nodes cost its transfer once; infinite reverse edges keep the device part
  closed under predecessors. The link's round trip is a constant added whenever the edge
  part is non-empty, so it does not change which non-empty cut is best: the answer is the
  cut or all-device, whichever costs less with it;
* ``solve_ilp``: HiGHS (``scipy.optimize.milp``) over cumulative tier variables
  ``z[v, k] = [tier(v) >= k]``: handles three ordered tiers, the device's flash limit
  exactly (one variable per shared weight) and the throughput objective (bottleneck stage).
  The device RAM limit is not linear in the placement (it is the memory planner's arena of
  the device part), so it is enforced exactly by lazy no-good cuts: each solution whose
  device part does not fit is excluded and the ILP re-solved; a necessary linear condition
  (every device node's inputs and outputs fit at once) prunes most of them up front.
"""

from __future__ import annotations

import itertools
from typing import Any

import networkx as nx
import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import lil_matrix

from crosslevel.distributed.problem import Problem
from crosslevel.errors import InfeasibleError

Assignment = dict[str, int]
MAX_LAZY_ROUNDS = 200


def solve_brute(problem: Problem, limit: int = 200_000) -> tuple[Assignment, float]:
    """The best valid assignment by enumerating all of them (small graphs only)."""
    best: tuple[Assignment, float] | None = None
    for count, tier_of in enumerate(problem.all_assignments()):
        if count >= limit:
            raise InfeasibleError(f"more than {limit} assignments: too many to enumerate")
        if not problem.fits(tier_of):
            continue
        value = problem.cost(tier_of)
        if best is None or value < best[1] - 1e-12:
            best = (tier_of, value)
    if best is None:
        raise InfeasibleError("no placement fits the device's RAM and flash")
    return best


def solve_chain(problem: Problem) -> tuple[Assignment, float, list[dict[str, Any]]]:
    """Neurosurgeon: every split of the node order into contiguous tiers; also the table."""
    names = [n.name for n in problem.graph.nodes]
    k = problem.n_tiers
    best: tuple[Assignment, float] | None = None
    rows: list[dict[str, Any]] = []
    for cuts in itertools.combinations_with_replacement(range(len(names) + 1), k - 1):
        bounds = [0, *cuts, len(names)]
        tier_of = {n: t for t in range(k) for n in names[bounds[t] : bounds[t + 1]]}
        if not problem.fits(tier_of):
            continue
        value = problem.cost(tier_of)
        rows.append({"cut": list(cuts), "value": value})
        if best is None or value < best[1] - 1e-12:
            best = (tier_of, value)
    if best is None:
        raise InfeasibleError("no chain split fits the device's RAM and flash")
    return best[0], best[1], rows


def solve_mincut(problem: Problem) -> tuple[Assignment, float]:
    """Exact two-tier placement by a minimum s-t cut (see the module docstring)."""
    if problem.n_tiers != 2 or not problem.additive or problem.has_limits:
        raise ValueError("min-cut needs two tiers, an additive objective and no limits")
    g = problem.graph
    w = problem.weights()
    net = nx.DiGraph()
    src, dst = "__device__", "__edge__"
    producer = g.producers()
    for node in g.nodes:
        v = ("n", node.name)
        net.add_edge(src, v, capacity=w.compute[1] * problem.node_ms[1][node.name])
        net.add_edge(v, dst, capacity=w.compute[0] * problem.node_ms[0][node.name])
        for name in node.inputs:
            p = producer.get(name)
            if p is not None:
                net.add_edge(v, ("n", p.name))  # no capacity = infinite: closure
    for name, readers in problem.readers().items():
        aux = ("t", name)
        p = producer.get(name)
        tail = src if p is None else ("n", p.name)
        net.add_edge(tail, aux, capacity=w.transfer * problem.up_ms(0, name))
        for r in readers:
            net.add_edge(aux, ("n", r))
    for name in g.outputs:
        p = producer.get(name)
        if p is not None:  # output computed on the edge travels back down
            cap = net[src][("n", p.name)]["capacity"] + w.transfer * problem.down_ms(0, name)
            net[src][("n", p.name)]["capacity"] = cap
    _, (side_s, _) = nx.minimum_cut(net, src, dst)
    tier_of = {n.name: 0 if ("n", n.name) in side_s else 1 for n in g.nodes}
    # The cut minimized the cost without the round trip; the best non-empty edge part is
    # still the cut's, but with its round trip all-device may now be cheaper.
    device_only = {n.name: 0 for n in g.nodes}
    return min((tier_of, device_only), key=problem.cost), min(
        problem.cost(tier_of), problem.cost(device_only)
    )


class _Vars:
    """Column indices of the ILP's variables."""

    def __init__(self, problem: Problem) -> None:
        self.names = [n.name for n in problem.graph.nodes]
        self.k = problem.n_tiers
        n = len(self.names)
        self.z = {
            (v, t): i * (self.k - 1) + (t - 1)
            for i, v in enumerate(self.names)
            for t in range(1, self.k)
        }
        col = n * (self.k - 1)
        self.t: dict[tuple[str, int], int] = {}
        for name in problem.readers():
            for t in range(1, self.k):
                self.t[(name, t)] = col
                col += 1
        self.used = {t: col + t - 1 for t in range(1, self.k)}
        col += self.k - 1
        self.flash: dict[str, int] = {}
        if problem.flash_limit is not None:
            for c in problem.weight_users():
                self.flash[c] = col
                col += 1
        self.bottleneck = col if problem.objective == "throughput" else None
        self.count = col + (1 if self.bottleneck is not None else 0)


def _zcoef(row: dict[int, float], vs: _Vars, v: str, t: int, coef: float) -> None:
    """Add ``coef * z[v, t]`` (z[v, 0] = 1 and z[v, K] = 0 are constants, dropped)."""
    if 1 <= t < vs.k:
        row[vs.z[(v, t)]] = row.get(vs.z[(v, t)], 0.0) + coef


def _tier_terms(
    problem: Problem, vs: _Vars, t: int, scale: float
) -> tuple[dict[int, float], float]:
    """Linear form of tier t's compute: sum_v ms_t(v) * (z[v,t] - z[v,t+1]) (+ constant)."""
    row: dict[int, float] = {}
    const = 0.0
    for v in vs.names:
        ms = scale * problem.node_ms[t][v]
        if t == 0:
            const += ms
        else:
            _zcoef(row, vs, v, t, ms)
        _zcoef(row, vs, v, t + 1, -ms)
    return row, const


def _link_terms(problem: Problem, vs: _Vars, t: int, scale: float) -> dict[int, float]:
    """Linear form of link t-1 -> t's serialization time."""
    row: dict[int, float] = {}
    for name in problem.readers():
        row[vs.t[(name, t)]] = scale * problem.up_ms(t - 1, name)
    producer = problem.graph.producers()
    for name in problem.graph.outputs:
        if name in producer:
            _zcoef(row, vs, producer[name].name, t, scale * problem.down_ms(t - 1, name))
    return row


class _Model:
    """Rows of ``lo <= A x <= hi`` collected as dicts."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[tuple[dict[int, float], float, float]] = []

    def add(self, row: dict[int, float], lo: float, hi: float) -> None:
        self.rows.append((row, lo, hi))

    def constraint(self) -> LinearConstraint:
        a = lil_matrix((len(self.rows), self.n))
        for i, (row, _, _) in enumerate(self.rows):
            for j, c in row.items():
                a[i, j] = c
        lo = np.array([r[1] for r in self.rows])
        hi = np.array([r[2] for r in self.rows])
        return LinearConstraint(a.tocsr(), lo, hi)


def _structure(problem: Problem, vs: _Vars, m: _Model) -> None:
    producer = problem.graph.producers()
    for v in vs.names:
        for t in range(1, vs.k - 1):
            m.add({vs.z[(v, t)]: 1.0, vs.z[(v, t + 1)]: -1.0}, 0.0, np.inf)
        for t in range(1, vs.k):
            m.add({vs.used[t]: 1.0, vs.z[(v, t)]: -1.0}, 0.0, np.inf)
    for node in problem.graph.nodes:
        for name in node.inputs:
            p = producer.get(name)
            if p is not None:
                for t in range(1, vs.k):
                    m.add({vs.z[(node.name, t)]: 1.0, vs.z[(p.name, t)]: -1.0}, 0.0, np.inf)
    for name, readers in problem.readers().items():
        p = producer.get(name)
        for r in readers:
            for t in range(1, vs.k):
                row = {vs.t[(name, t)]: 1.0, vs.z[(r, t)]: -1.0}
                if p is not None:
                    row[vs.z[(p.name, t)]] = 1.0
                m.add(row, 0.0, np.inf)


def _limits(problem: Problem, vs: _Vars, m: _Model, lo: np.ndarray) -> None:
    if problem.flash_limit is not None:
        users = problem.weight_users()
        for c, nodes in users.items():
            for v in nodes:
                m.add({vs.flash[c]: 1.0, vs.z[(v, 1)]: 1.0}, 1.0, np.inf)
        sizes = problem.weight_bytes()
        m.add({vs.flash[c]: float(sizes[c]) for c in users}, -np.inf, float(problem.flash_limit))
    if problem.ram_limit is not None:
        for v in problem.too_big_for_device():
            lo[vs.z[(v, 1)]] = 1.0  # necessary: its inputs and outputs cannot coexist in RAM


def _objective(problem: Problem, vs: _Vars, m: _Model) -> np.ndarray:
    c = np.zeros(vs.count)
    w = problem.weights()
    if vs.bottleneck is not None:
        c[vs.bottleneck] = 1.0
        for t in range(vs.k):
            row, const = _tier_terms(problem, vs, t, 1.0)
            row[vs.bottleneck] = -1.0
            m.add(row, -np.inf, -const)
        for t in range(1, vs.k):
            row = _link_terms(problem, vs, t, 1.0)
            row[vs.bottleneck] = -1.0
            m.add(row, -np.inf, 0.0)
        return c
    for t in range(vs.k):
        for j, coef in _tier_terms(problem, vs, t, w.compute[t])[0].items():
            c[j] += coef
    for t in range(1, vs.k):
        for j, coef in _link_terms(problem, vs, t, w.transfer).items():
            c[j] += coef
        c[vs.used[t]] += w.rtt * problem.links[t - 1].rtt_ms
    return c


def solve_ilp(problem: Problem) -> tuple[Assignment, float, int]:
    """Exact placement with HiGHS; returns (assignment, objective, lazy rounds)."""
    vs = _Vars(problem)
    m = _Model(vs.count)
    _structure(problem, vs, m)
    lo = np.zeros(vs.count)
    hi = np.ones(vs.count)
    if vs.bottleneck is not None:
        hi[vs.bottleneck] = np.inf
    _limits(problem, vs, m, lo)
    c = _objective(problem, vs, m)
    integrality = np.zeros(vs.count)
    integrality[list(vs.z.values())] = 1
    for rounds in range(1, MAX_LAZY_ROUNDS + 1):
        res = milp(c, constraints=m.constraint(), bounds=Bounds(lo, hi), integrality=integrality)
        if res.x is None:
            raise InfeasibleError(
                f"no placement fits the device (RAM limit {problem.ram_limit} B, flash limit "
                f"{problem.flash_limit} B); nearest feasible: run everything on the edge"
            )
        tier_of = {
            v: sum(int(round(res.x[vs.z[(v, t)]])) for t in range(1, vs.k)) for v in vs.names
        }
        if problem.fits(tier_of):
            return tier_of, problem.cost(tier_of), rounds
        _exclude_device_set(m, vs, tier_of)
    raise InfeasibleError(f"RAM limit not met after {MAX_LAZY_ROUNDS} lazy rounds")


def _exclude_device_set(m: _Model, vs: _Vars, tier_of: Assignment) -> None:
    """No-good cut: the device part must differ from this one in at least one node."""
    row: dict[int, float] = {}
    outside = 0
    for v in vs.names:
        if tier_of[v] == 0:
            row[vs.z[(v, 1)]] = 1.0
        else:
            row[vs.z[(v, 1)]] = -1.0
            outside += 1
    m.add(row, 1.0 - outside, np.inf)
