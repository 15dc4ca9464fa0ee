"""Operator ordering: the execution order with the smallest peak of live bytes.

TFLM runs operators in the file's order. On graphs that branch, another topological order
can keep fewer tensors live at once (SERENITY, MLSys 2020). ``best_order`` finds the order
whose peak under DESIGN.md's memory model (``lifetimes.py``) is smallest:

* **Exact search.** Dynamic programming over the set of executed operators: the live bytes
  between two steps depend only on that set (a tensor is live while it is a graph output or
  still has an unexecuted consumer), so the rest of a schedule depends only on it. The
  search answers "is there an order with peak <= B?" by depth-first search, memoizing the
  sets proven dead for B; a dead set stays dead for every smaller B, so the memo survives
  as B drops to one below each order found, until no order exists (the last one is optimal).
  A dominance rule prunes further: a ready operator whose run frees at least as many bytes
  as it leaves behind can always go first.
* **Divide and conquer at cuts.** An operator comparable with every other one (all others
  are its ancestors or descendants) splits every topological order at the same place, as a
  single-tensor cut in SERENITY does; the parts are solved independently (their live bytes
  are counted globally, so tensors crossing a part are charged to it) and concatenated.
* **Time limit.** The clock is checked inside the search; parts that do not finish keep
  their best order (never worse than a greedy order or the file's), and the answer carries
  a valid lower bound and its gap.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from crosslevel.ir.graph import Graph, Node
from crosslevel.memory.lifetimes import (
    TFLM_ALIGNMENT,
    align_up,
    buffers_for_order,
    peak_live_bytes,
)
from crosslevel.memory.scratch import scratch_bytes


@dataclass(frozen=True)
class OrderResult:
    """The chosen order, its peak, the file order's peak, and what is proven about them."""

    order: list[str]
    peak_bytes: int
    file_order_peak_bytes: int
    lower_bound_bytes: int
    optimal: bool
    gap_pct: float
    method: str  # "dp", "dp+cuts" or "heuristic"
    elapsed_s: float


class _Timeout(Exception):
    """The search ran past its deadline (caught inside this module only)."""


def _arena_tensors(graph: Graph) -> set[str]:
    """Tensors that occupy the arena: graph inputs and produced non-constant, non-state."""
    names = set(graph.inputs) | {o for n in graph.nodes for o in n.outputs if o}
    return {
        name
        for name in names
        if name in graph.tensors
        and not graph.tensors[name].is_constant
        and not graph.tensors[name].is_variable
    }


def _scratch(graph: Graph, node: Node, alignment: int) -> int:
    # Unknown scratch counts as 0, exactly as buffers_for_order does.
    return align_up(scratch_bytes(graph, node) or 0, alignment)


def largest_operator_footprint(graph: Graph, alignment: int = TFLM_ALIGNMENT) -> int:
    """The largest inputs + outputs + scratch of one operator: no order goes below it."""
    arena = _arena_tensors(graph)
    best = 0
    for node in graph.nodes:
        names = {n for n in [*node.inputs, *node.outputs] if n in arena}
        size = sum(align_up(graph.tensors[n].nbytes, alignment) for n in names)
        best = max(best, size + _scratch(graph, node, alignment))
    return best


class _Problem:
    """The graph as bitmasks: node ``i`` is bit ``i`` (file order), tensors by index."""

    def __init__(self, graph: Graph, alignment: int) -> None:
        self.nodes = list(graph.nodes)
        arena = _arena_tensors(graph)
        names = sorted(arena)
        tid = {name: k for k, name in enumerate(names)}
        self.size = [align_up(graph.tensors[n].nbytes, alignment) for n in names]
        outputs = set(graph.outputs)
        self.is_output = [n in outputs for n in names]
        self.cons = [0] * len(names)
        producer: dict[str, int] = {}
        self.inputs: list[list[int]] = []
        self.outs: list[list[int]] = []
        graph_inputs = set(graph.inputs)
        for i, node in enumerate(self.nodes):
            ins = [tid[n] for n in dict.fromkeys(node.inputs) if n in tid]
            for t in ins:
                self.cons[t] |= 1 << i
            self.inputs.append(ins)
            # A tensor that is also a graph input is live from step 0 already.
            self.outs.append([tid[n] for n in node.outputs if n in tid and n not in graph_inputs])
            for n in node.outputs:
                if n:
                    producer[n] = i
        self.preds = [0] * len(self.nodes)
        for i, node in enumerate(self.nodes):
            for n in node.inputs:
                if n in producer and producer[n] != i:
                    self.preds[i] |= 1 << producer[n]
        self.producer = [-1] * len(names)  # -1: a graph input
        for i, outs in enumerate(self.outs):
            for t in outs:
                self.producer[t] = i
        self.out_bytes = [sum(self.size[t] for t in outs) for outs in self.outs]
        self.persist = [
            sum(self.size[t] for t in outs if self.cons[t] or self.is_output[t])
            for outs in self.outs
        ]
        self.scratch = [_scratch(graph, n, alignment) for n in self.nodes]
        gin = [tid[n] for n in dict.fromkeys(graph.inputs) if n in tid]
        # Graph inputs nobody reads are live at step 0 only (buffers_for_order: 0..0).
        self.extra0 = sum(self.size[t] for t in gin if not self.cons[t] and not self.is_output[t])
        self.mem0 = sum(self.size[t] for t in gin if self.cons[t] or self.is_output[t])

    def step(self, done: int, mem: int, v: int) -> tuple[int, int, int]:
        """Run ``v`` after the set ``done`` holding ``mem`` live bytes.

        Returns (live bytes during the step, live bytes after it, bytes it freed).
        """
        cost = mem + self.out_bytes[v] + self.scratch[v] + (self.extra0 if done == 0 else 0)
        after = done | (1 << v)
        freed = sum(
            self.size[t]
            for t in self.inputs[v]
            if not self.is_output[t] and not self.cons[t] & ~after
        )
        return cost, mem + self.persist[v] - freed, freed

    def ready(self, done: int, members: Sequence[int]) -> Iterator[int]:
        for v in members:
            if not done >> v & 1 and not self.preds[v] & ~done:
                yield v

    def run(self, done: int, mem: int, order: Sequence[int]) -> tuple[int, int]:
        """Run ``order`` after ``done``: (peak live bytes of its steps, live bytes after)."""
        peak = 0
        for v in order:
            cost, mem, _ = self.step(done, mem, v)
            done |= 1 << v
            peak = max(peak, cost)
        return peak, mem


def _reach(problem: _Problem) -> tuple[list[int], list[int]]:
    """Ancestor and descendant bitmasks per node (file order is topological)."""
    n = len(problem.nodes)
    preds = [[u for u in range(n) if problem.preds[v] >> u & 1] for v in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    anc = [0] * n
    for v in range(n):
        for u in preds[v]:
            anc[v] |= anc[u] | (1 << u)
            succs[u].append(v)
    desc = [0] * n
    for u in reversed(range(n)):
        for v in succs[u]:
            desc[u] |= desc[v] | (1 << v)
    return anc, desc


def _segments(problem: _Problem) -> list[list[int]]:
    """Split at cut nodes (comparable with every other node); parts in execution order."""
    n = len(problem.nodes)
    anc, desc = _reach(problem)
    full = (1 << n) - 1
    cuts = [v for v in range(n) if (anc[v] | desc[v] | (1 << v)) == full]
    cuts.sort(key=lambda v: anc[v].bit_count())
    parts, taken = [], 0
    for v in cuts:
        part = (anc[v] | (1 << v)) & ~taken
        parts.append([u for u in range(n) if part >> u & 1])
        taken |= part
    if taken != full:
        parts.append([u for u in range(n) if not taken >> u & 1])
    return parts


class _Part:
    """Exact min-peak search over one part, with its memo kept across budgets and calls."""

    def __init__(self, problem: _Problem, members: list[int], base: int, base_mem: int) -> None:
        self.p = problem
        self.members = members
        self.base, self.base_mem = base, base_mem
        self.full = base
        for v in members:
            self.full |= 1 << v
        self.dead: set[int] = set()
        self.best = sorted(members)  # members are file indices; file order is topological
        self.best_peak, self.end_mem = problem.run(base, base_mem, self.best)
        # One operator has one order: skip the bound's cost on long chains.
        self.lower = self.footprint_bound() if len(members) > 1 else self.best_peak
        self.finished = self.best_peak <= self.lower
        self.tried_greedy = False

    def peak(self, order: Sequence[int]) -> int:
        return self.p.run(self.base, self.base_mem, order)[0]

    def footprint_bound(self) -> int:
        """Max over members of inputs + outputs + scratch + tensors live across the part."""
        p, bound = self.p, 0
        through = self._live_throughout()
        for v in self.members:
            names = set(p.inputs[v]) | set(p.outs[v]) | through
            bound = max(bound, sum(p.size[t] for t in names) + p.scratch[v])
        return bound

    def _live_throughout(self) -> set[int]:
        """Tensors already live at the part's start that stay live past its end."""
        p = self.p
        return {
            t
            for t in range(len(p.size))
            if (p.producer[t] < 0 or self.base >> p.producer[t] & 1)
            and (p.is_output[t] or p.cons[t] & ~self.full)
        }

    def greedy(self, deadline: float) -> list[int]:
        """Run the ready node leaving the fewest live bytes (then lowest step, file order)."""
        done, mem, order = self.base, self.base_mem, []
        for _ in self.members:
            if time.perf_counter() > deadline:
                raise _Timeout
            _, _, v, mem = min(
                (after, cost, u, after)
                for u in self.p.ready(done, self.members)
                for cost, after, _ in [self.p.step(done, mem, u)]
            )
            done |= 1 << v
            order.append(v)
        return order

    def candidates(self, done: int, mem: int, budget: int) -> list[tuple[int, int, int]]:
        """Ready nodes within ``budget``: (node, set after, live after), best first."""
        found = []
        for v in self.p.ready(done, self.members):
            cost, after, freed = self.p.step(done, mem, v)
            if cost > budget:
                continue
            nxt = done | (1 << v)
            if self.p.persist[v] <= freed:
                # Dominance: running v now lowers every later step it would have waited
                # through, so some best order (within budget) starts with it.
                return [] if nxt in self.dead else [(v, nxt, after)]
            if nxt not in self.dead:
                found.append((after, cost, v, nxt))
        found.sort()
        return [(v, nxt, after) for after, _, v, nxt in found]

    def search(self, budget: int, deadline: float) -> list[int] | None:
        """An order of the part with peak <= budget, or None; _Timeout past the deadline."""
        stack = [iter(self.candidates(self.base, self.base_mem, budget))]
        states, path = [self.base], list[int]()
        ticks = 0
        while stack:
            if states[-1] == self.full:
                return path
            nxt = next(stack[-1], None)
            if nxt is None:
                self.dead.add(states.pop())
                stack.pop()
                if path:
                    path.pop()
                continue
            v, done, mem = nxt
            if done in self.dead:
                continue
            ticks += 1
            if ticks & 15 == 0 and time.perf_counter() > deadline:
                raise _Timeout
            path.append(v)
            states.append(done)
            stack.append(iter(self.candidates(done, mem, budget)))
        return None

    def solve(self, deadline: float) -> None:
        """Lower the budget below each order found until none exists or time runs out."""
        if not self.finished and not self.tried_greedy:
            try:
                self.improve(self.greedy(deadline))
            except _Timeout:
                return
            self.tried_greedy = True
        while not self.finished:
            try:
                found = self.search(self.best_peak - 1, deadline)
            except _Timeout:
                return
            if found is None:
                self.lower = self.best_peak
                self.finished = True
            else:
                self.improve(found)

    def improve(self, order: list[int]) -> None:
        """Keep ``order`` if it beats the best so far (ties keep the earlier one)."""
        peak = self.peak(order)
        if peak < self.best_peak:
            self.best, self.best_peak = order, peak
        self.finished = self.best_peak <= self.lower

    @property
    def bound(self) -> int:
        return self.best_peak if self.finished else self.lower


def _solve_parts(parts: list[_Part], start: float, time_limit_s: float) -> None:
    """Give each part a share of the time by size, then leftover time to unfinished ones."""
    total = sum(len(p.members) for p in parts if not p.finished) or 1
    for part in parts:
        if part.finished:
            continue
        remaining = start + time_limit_s - time.perf_counter()
        share = remaining * len(part.members) / total
        total -= len(part.members)
        part.solve(time.perf_counter() + max(share, 0.0))
    open_parts = [p for p in parts if not p.finished]
    for k, part in enumerate(open_parts):
        remaining = start + time_limit_s - time.perf_counter()
        part.solve(time.perf_counter() + max(remaining / (len(open_parts) - k), 0.0))


def _peak(graph: Graph, order: Sequence[Node], alignment: int) -> int:
    return peak_live_bytes(buffers_for_order(graph, order, alignment))


def best_order(
    graph: Graph, time_limit_s: float = 10.0, alignment: int = TFLM_ALIGNMENT
) -> OrderResult:
    """The topological order of ``graph`` with the smallest peak of live bytes.

    Exact when ``optimal`` is True; otherwise the best order found within ``time_limit_s``
    with a valid lower bound on every order's peak. Never worse than the file's order
    (on a tie the file's order is kept).
    """
    start = time.perf_counter()
    graph.validate(check_shapes=False)  # one clear InvalidModelError on a broken graph
    file_peak = _peak(graph, graph.nodes, alignment)
    problem = _Problem(graph, alignment)
    parts, base, mem = [], 0, problem.mem0
    for members in _segments(problem) if graph.nodes else []:
        parts.append(_Part(problem, members, base, mem))
        mem = parts[-1].end_mem  # the live bytes after a set do not depend on its order
        for v in members:
            base |= 1 << v
    # Keep a little time for the work after the search (lifetimes of the final order).
    _solve_parts(parts, start, time_limit_s - min(0.05 * time_limit_s, 0.25))
    order = [problem.nodes[v] for part in parts for v in part.best]
    peak = _peak(graph, order, alignment)
    if peak >= file_peak:
        order, peak = list(graph.nodes), file_peak
    optimal = all(p.finished for p in parts)
    lower = max([p.bound for p in parts] + [largest_operator_footprint(graph, alignment)])
    lower = min(lower, peak)
    method = ("dp+cuts" if len(parts) > 1 else "dp") if optimal else "heuristic"
    return OrderResult(
        order=[n.name for n in order],
        peak_bytes=peak,
        file_order_peak_bytes=file_peak,
        lower_bound_bytes=lower,
        optimal=optimal or peak <= lower,
        gap_pct=100.0 * (peak - lower) / lower if lower else 0.0,
        method=method,
        elapsed_s=time.perf_counter() - start,
    )


def reordered(graph: Graph, order: Sequence[str]) -> Graph:
    """A copy of ``graph`` whose nodes run in ``order`` (names); validated."""
    out = graph.copy()
    by_name = {n.name: n for n in out.nodes}
    out.nodes = [by_name[name] for name in order]
    out.validate(check_shapes=False)
    return out
