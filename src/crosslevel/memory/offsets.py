"""Arena offsets for a fixed operator order: best-fit heuristics and an exact MILP.

Every planner here takes the buffers of ``lifetimes.buffers_for_order`` (sizes already
rounded to the target's alignment) and returns offsets such that two buffers live at the
same step never share a byte. ``plan_arena`` returns the best of TFLM's greedy planner,
best-fit and the exact solver, so its arena is never larger than TFLM's on the same order.

The exact solver is the classic dynamic-storage-allocation MILP solved by HiGHS through
``scipy.optimize.milp``: an integer offset per buffer, the arena size as the objective, and
one binary "i below j" per pair of buffers whose lifetimes overlap (big-M disjunction). The
heuristic's arena is the upper bound; the solver is asked for a strictly smaller arena, so
"infeasible" is itself the proof that the heuristic is optimal.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from crosslevel.errors import CrosslevelError
from crosslevel.memory.lifetimes import Buffer, peak_live_bytes
from crosslevel.memory.tflm_greedy import ArenaPlan, plan_tflm_greedy

# Random orderings tried by best-fit: bounded by the placement work (n^2 per ordering).
_PLACEMENT_BUDGET = 4_000_000
_MAX_RANDOM_ORDERS = 64
# Beyond this many overlapping pairs the MILP is too big to help within seconds: the
# heuristic is returned with its gap to the peak-live bound.
_MAX_PAIRS = 20_000


class PlanOverlapError(CrosslevelError):
    """Two buffers live at the same step share arena bytes (a planner bug or a bad file)."""


@dataclass(frozen=True)
class ExactPlan:
    """An arena plan with its proof status.

    ``lower_bound_bytes`` is at least the peak live sum; ``optimal`` means the arena equals
    the best proven bound; ``gap_pct`` = 100 * (arena - bound) / arena; ``solver`` names
    what produced the offsets (``highs``, ``best_fit``, ``tflm_greedy``).
    """

    offsets: dict[str, int]
    arena_bytes: int
    lower_bound_bytes: int
    optimal: bool
    gap_pct: float
    solver: str


# ----------------------------------------------------------------------------------
# checking
# ----------------------------------------------------------------------------------
def arena_of(buffers: Sequence[Buffer], offsets: dict[str, int]) -> int:
    """The arena size ``offsets`` need: the highest end of any buffer."""
    return max((offsets[b.name] + b.size_bytes for b in buffers), default=0)


def check_plan(buffers: Sequence[Buffer], offsets: dict[str, int]) -> None:
    """Raise PlanOverlapError if two time-overlapping buffers share bytes.

    Sweep over time keeping the live buffers sorted by offset: live buffers must be
    disjoint, so a newcomer only needs checking against its two neighbours. That keeps a
    hostile plan with many tensors at O(n log n + n * live) instead of O(n^2).
    """
    for buf in buffers:
        off = offsets.get(buf.name)
        if off is None:
            raise PlanOverlapError(f"buffer {buf.name!r} has no offset")
        if off < 0:
            raise PlanOverlapError(f"buffer {buf.name!r} has a negative offset {off}")
    by_start = sorted(buffers, key=lambda b: b.first)
    live: list[tuple[int, int, str]] = []  # (offset, end, name), sorted by offset
    ends: list[tuple[int, tuple[int, int, str]]] = []  # (last step, live item), sorted
    for buf in by_start:
        while ends and ends[0][0] < buf.first:
            live.remove(ends.pop(0)[1])
        if buf.size_bytes == 0:
            continue
        start = offsets[buf.name]
        item = (start, start + buf.size_bytes, buf.name)
        pos = bisect.bisect_left(live, item)
        for near in live[max(pos - 1, 0) : pos + 1]:
            if near[0] < item[1] and item[0] < near[1]:
                raise PlanOverlapError(
                    f"buffers {near[2]!r} [{near[0]}, {near[1]}) and {buf.name!r} "
                    f"[{item[0]}, {item[1]}) are live at the same time and overlap"
                )
        live.insert(pos, item)
        bisect.insort(ends, (buf.last, item))


# ----------------------------------------------------------------------------------
# best-fit
# ----------------------------------------------------------------------------------
def _place(buffers: Sequence[Buffer], order: Sequence[int]) -> tuple[list[int], int]:
    """Place buffers in ``order``, each at the lowest offset free during its lifetime."""
    offsets = [0] * len(buffers)
    placed: list[tuple[int, int]] = []  # (offset, index), sorted by offset
    for i in order:
        buf = buffers[i]
        candidate = 0
        for off, j in placed:
            other = buffers[j]
            if not buf.overlaps(other):
                continue
            if off - candidate >= buf.size_bytes:
                break
            candidate = max(candidate, off + other.size_bytes)
        offsets[i] = candidate
        bisect.insort(placed, (candidate, i))
    arena = max((offsets[i] + b.size_bytes for i, b in enumerate(buffers)), default=0)
    return offsets, arena


def _key_orders(buffers: Sequence[Buffer]) -> list[list[int]]:
    """Deterministic orderings that work well for interval packing."""
    idx = range(len(buffers))

    def length(i: int) -> int:
        return buffers[i].last - buffers[i].first + 1

    keys: list[Callable[[int], tuple[int, ...]]] = [
        lambda i: (-buffers[i].size_bytes, -i),  # TFLM's order
        lambda i: (-buffers[i].size_bytes, i),  # the other tie order
        lambda i: (-buffers[i].size_bytes, -length(i), buffers[i].first),
        lambda i: (-buffers[i].size_bytes, length(i), buffers[i].first),
        lambda i: (-buffers[i].size_bytes * length(i), -buffers[i].size_bytes),
        lambda i: (-length(i), -buffers[i].size_bytes),
        lambda i: (buffers[i].first, -buffers[i].size_bytes),
        lambda i: (-buffers[i].last, -buffers[i].size_bytes),
    ]
    return [sorted(idx, key=key) for key in keys]


def _random_orders(buffers: Sequence[Buffer], seed: int) -> list[list[int]]:
    """Size-descending orders with random swaps: cheap diversification of the ties."""
    n = len(buffers)
    count = min(_MAX_RANDOM_ORDERS, _PLACEMENT_BUDGET // max(n * n, 1))
    rng = random.Random(seed)
    base = sorted(range(n), key=lambda i: (-buffers[i].size_bytes, -i))
    orders = []
    for _ in range(count):
        order = list(base)
        for _ in range(max(1, n // 4)):
            a = rng.randrange(n)
            b = min(n - 1, a + rng.randrange(1, 4))
            order[a], order[b] = order[b], order[a]
        orders.append(order)
    return orders


def plan_best_fit(buffers: Sequence[Buffer], seed: int = 0) -> ArenaPlan:
    """Lowest-fit placement over several orderings (TFLM's among them); keeps the best.

    TFLM's own ordering is one of the candidates, so the result is never worse than
    TFLM's greedy planner on the same buffers.
    """
    if not buffers:
        return ArenaPlan({}, 0)
    best: tuple[list[int], int] | None = None
    for order in _key_orders(buffers) + _random_orders(buffers, seed):
        offsets, arena = _place(buffers, order)
        if best is None or arena < best[1]:
            best = (offsets, arena)
    assert best is not None
    return ArenaPlan({b.name: best[0][i] for i, b in enumerate(buffers)}, best[1])


# ----------------------------------------------------------------------------------
# exact (MILP, HiGHS)
# ----------------------------------------------------------------------------------
def _overlapping_pairs(buffers: Sequence[Buffer]) -> list[tuple[int, int]]:
    """Pairs (i < j) of non-empty buffers live at a common step."""
    order = sorted(range(len(buffers)), key=lambda i: buffers[i].first)
    pairs = []
    for a, i in enumerate(order):
        for j in order[a + 1 :]:
            if buffers[j].first > buffers[i].last:
                break
            if buffers[i].size_bytes and buffers[j].size_bytes:
                pairs.append((min(i, j), max(i, j)))
    return pairs


def _fixed_pairs(buffers: Sequence[Buffer], pairs: list[tuple[int, int]]) -> dict[int, int]:
    """Binary values fixed by symmetry, keyed by pair index (1 = first below second).

    Identical buffers (same size and lifetime) are interchangeable: keep them in index
    order. Every plan has a mirror image (offset -> arena - offset - size) with every
    binary flipped; fixing one pair of buffers that have no identical twin removes it
    (a twin-free pair keeps its binary when twins are re-sorted after mirroring).
    """
    key = [(b.size_bytes, b.first, b.last) for b in buffers]
    twins = {k for k, count in Counter(key).items() if count > 1}
    fixed: dict[int, int] = {}
    mirror_done = False
    for p, (i, j) in enumerate(pairs):
        if key[i] == key[j]:
            fixed[p] = 1
        elif not mirror_done and key[i] not in twins and key[j] not in twins:
            fixed[p] = 1
            mirror_done = True
    return fixed


@dataclass(frozen=True)
class _Model:
    unit: int
    upper: int  # strict: the solver must beat the heuristic (scaled)
    lower: int  # scaled lower bound
    pairs: list[tuple[int, int]]


def _milp_arrays(
    buffers: Sequence[Buffer], model: _Model
) -> tuple[np.ndarray, np.ndarray, Bounds, LinearConstraint]:
    """Objective, integrality, bounds and constraints; variables [o_0..o_n-1, A, z_p...]."""
    n, m, big = len(buffers), len(model.pairs), model.upper
    size = [b.size_bytes // model.unit for b in buffers]
    nvar = n + 1 + m
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    upper_rhs: list[float] = []
    r = 0
    for i in range(n):  # o_i + s_i <= A
        rows += [r, r]
        cols += [i, n]
        vals += [1.0, -1.0]
        upper_rhs.append(-size[i])
        r += 1
    for p, (i, j) in enumerate(model.pairs):
        z = n + 1 + p
        # z = 1: o_i + s_i <= o_j   ->  o_i - o_j + M z <= M - s_i
        rows += [r, r, r]
        cols += [i, j, z]
        vals += [1.0, -1.0, float(big)]
        upper_rhs.append(big - size[i])
        r += 1
        # z = 0: o_j + s_j <= o_i   ->  o_j - o_i - M z <= -s_j
        rows += [r, r, r]
        cols += [j, i, z]
        vals += [1.0, -1.0, -float(big)]
        upper_rhs.append(-size[j])
        r += 1
    matrix = coo_matrix((vals, (rows, cols)), shape=(r, nvar)).tocsr()
    constraints = LinearConstraint(matrix, -np.inf, np.array(upper_rhs))
    lo = np.zeros(nvar)
    hi = np.ones(nvar)
    hi[:n] = [max(model.upper - s, 0) for s in size]
    lo[n], hi[n] = model.lower, model.upper
    for p, value in _fixed_pairs(buffers, model.pairs).items():
        lo[n + 1 + p] = hi[n + 1 + p] = value
    c = np.zeros(nvar)
    c[n] = 1.0
    return c, np.ones(nvar), Bounds(lo, hi), constraints


def _solution_offsets(buffers: Sequence[Buffer], x: np.ndarray, unit: int) -> dict[str, int] | None:
    offsets = {b.name: int(round(x[i])) * unit for i, b in enumerate(buffers)}
    try:
        check_plan(buffers, offsets)
    except PlanOverlapError:
        return None  # numerical trouble in the solver: keep the heuristic instead
    return offsets


def _gap_pct(arena: int, bound: int) -> float:
    return 0.0 if arena <= bound or arena == 0 else 100.0 * (arena - bound) / arena


def plan_exact(buffers: Sequence[Buffer], time_limit_s: float = 10.0) -> ExactPlan:
    """Minimum arena for these lifetimes, proven optimal or with its gap when time runs out.

    Offsets are multiples of the gcd of the sizes (so of the alignment the sizes were
    rounded to). The result is never worse than best-fit or TFLM's greedy planner.
    """
    heuristic = plan_best_fit(buffers)
    greedy = plan_tflm_greedy(buffers)
    start = heuristic if heuristic.arena_bytes <= greedy.arena_bytes else greedy
    name = "best_fit" if start is heuristic else "tflm_greedy"
    lower = peak_live_bytes(buffers)
    unit = math.gcd(*(b.size_bytes for b in buffers)) if buffers else 1
    if start.arena_bytes <= lower or unit == 0:
        return ExactPlan(dict(start.offsets), start.arena_bytes, start.arena_bytes, True, 0.0, name)
    pairs = _overlapping_pairs(buffers)
    if len(pairs) > _MAX_PAIRS:
        gap = _gap_pct(start.arena_bytes, lower)
        return ExactPlan(dict(start.offsets), start.arena_bytes, lower, False, gap, name)
    model = _Model(
        unit=unit,
        upper=start.arena_bytes // unit - 1,
        lower=-(-lower // unit),
        pairs=pairs,
    )
    c, integrality, bounds, constraints = _milp_arrays(buffers, model)
    res = milp(
        c,
        integrality=integrality,
        bounds=bounds,
        constraints=constraints,
        options={"time_limit": max(float(time_limit_s), 0.01), "disp": False},
    )
    if res.status == 2:  # no arena below the heuristic's exists: it is optimal
        return ExactPlan(dict(start.offsets), start.arena_bytes, start.arena_bytes, True, 0.0, name)
    bound = lower
    if res.mip_dual_bound is not None and np.isfinite(res.mip_dual_bound):
        bound = max(bound, math.ceil(res.mip_dual_bound - 1e-6) * unit)
    offsets, arena, solver = dict(start.offsets), start.arena_bytes, name
    if res.x is not None:
        found = _solution_offsets(buffers, res.x, unit)
        if found is not None and arena_of(buffers, found) < arena:
            offsets, arena, solver = found, arena_of(buffers, found), "highs"
    proven = res.status == 0 and solver == "highs"
    bound = arena if proven else min(bound, arena)
    return ExactPlan(offsets, arena, bound, arena <= bound, _gap_pct(arena, bound), solver)


def plan_arena(buffers: Sequence[Buffer], time_limit_s: float = 10.0) -> ExactPlan:
    """The best of TFLM's greedy, best-fit and the exact solver (never worse than TFLM)."""
    plan = plan_exact(buffers, time_limit_s)
    check_plan(buffers, plan.offsets)
    return plan
