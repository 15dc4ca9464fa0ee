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
* **Lower bound.** Whatever the order, an operator runs while its ancestors' outputs
  that it or a descendant still reads (and graph outputs made before it) are live; the
  largest such sum over operators bounds every order's peak (at least the largest
  single-operator footprint). A part whose best order reaches it is done without search.
* **Time limit.** The clock is checked inside the search; parts that do not finish keep
  their best order (never worse than a greedy order or the file's), and the answer carries
  a valid lower bound and its gap. Ready sets are updated from each operator's successors
  and the set-up is near-linear, so graphs of 1,000 operators get a greedy order, search
  time and their gap well within 10 s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
        # Predecessors as a bitmask (the ready test) and as lists, successors as lists
        # (ready sets are updated from them instead of rescanning every node).
        self.pred_list: list[list[int]] = []
        for i, node in enumerate(self.nodes):
            found = {producer[n] for n in node.inputs if n in producer and producer[n] != i}
            self.pred_list.append(sorted(found))
        self.preds = [sum(1 << u for u in us) for us in self.pred_list]
        self.succ_list: list[list[int]] = [[] for _ in self.nodes]
        for v, us in enumerate(self.pred_list):
            for u in us:
                self.succ_list[u].append(v)
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

    def ready(self, done: int, members: Sequence[int]) -> list[int]:
        """Members not run yet whose predecessors all ran (a full scan: for a start)."""
        return [v for v in members if not done >> v & 1 and not self.preds[v] & ~done]

    def ready_after(self, ready: Sequence[int], done: int, v: int, mask: int) -> list[int]:
        """The ready members once ``v`` (one of ``ready``) ran, ``done`` including it.

        Only successors of ``v`` can become ready, so this costs the ready set's width,
        not the graph's size (the search visits many states on 1,000-operator graphs).
        """
        new = [u for u in ready if u != v]
        new.extend(s for s in self.succ_list[v] if mask >> s & 1 and not self.preds[s] & ~done)
        return new

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
    anc = [0] * n
    for v in range(n):
        for u in problem.pred_list[v]:
            anc[v] |= anc[u] | (1 << u)
    desc = [0] * n
    for u in reversed(range(n)):
        for v in problem.succ_list[u]:
            desc[u] |= desc[v] | (1 << v)
    return anc, desc


def _forced_live(problem: _Problem, anc: list[int], desc: list[int]) -> list[int]:
    """Per operator, the bytes live during its step in *every* topological order.

    A tensor made before ``v`` whatever the order (a graph input, or an output of an
    ancestor) and needed after it whatever the order (a graph output, or read by ``v`` or
    a descendant) is live while ``v`` runs; so are ``v``'s outputs and scratch. The
    largest of these sums bounds every order's peak; it is never below the operator's
    own footprint, and it also counts what crosses it (skip connections, graph outputs).
    """
    n = len(problem.nodes)
    full = (1 << n) - 1
    width = (n + 7) // 8
    total = np.array(problem.scratch, dtype=np.int64)
    for t, size in enumerate(problem.size):
        p = problem.producer[t]
        until = full if problem.is_output[t] else 0
        cons = problem.cons[t]
        while cons and until != full:
            c = cons.bit_length() - 1
            until |= anc[c] | (1 << c)
            cons ^= 1 << c
        mask = until if p < 0 else (desc[p] & until) | (1 << p)
        if mask:
            bits = np.frombuffer(mask.to_bytes(width, "little"), dtype=np.uint8)
            total += size * np.unpackbits(bits, bitorder="little")[:n].astype(np.int64)
    return [int(b) for b in total]


def _segments(problem: _Problem, anc: list[int], desc: list[int]) -> list[list[int]]:
    """Split at cut nodes (comparable with every other node); parts in execution order."""
    n = len(problem.nodes)
    full = (1 << n) - 1
    cuts = [v for v in range(n) if (anc[v] | desc[v] | (1 << v)) == full]
    cuts.sort(key=lambda v: anc[v].bit_count())
    parts, taken = [], 0
    for v in cuts:
        part = (anc[v] | (1 << v)) & ~taken
        parts.append(_bits(part))
        taken |= part
    if taken != full:
        parts.append(_bits(full & ~taken))
    return parts


def _bits(mask: int) -> list[int]:
    """The set bits of ``mask``, lowest first (cost per bit, not per node of the graph)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


class _Part:
    """Exact min-peak search over one part, with its memo kept across budgets and calls."""

    def __init__(
        self, problem: _Problem, members: list[int], base: int, base_mem: int, forced: list[int]
    ) -> None:
        self.p = problem
        self.members = members
        self.base, self.base_mem = base, base_mem
        self.mask = sum(1 << v for v in members)
        self.full = base | self.mask
        self.dead: set[int] = set()
        self.best = sorted(members)  # members are file indices; file order is topological
        self.best_peak, self.end_mem = problem.run(base, base_mem, self.best)
        # One operator has one order: its peak is exact.
        self.lower = max(forced[v] for v in members) if len(members) > 1 else self.best_peak
        self.finished = self.best_peak <= self.lower
        self.tried_greedy = False

    def peak(self, order: Sequence[int]) -> int:
        return self.p.run(self.base, self.base_mem, order)[0]

    def greedy(self, deadline: float) -> list[int]:
        """Run the ready node leaving the fewest live bytes (then lowest step, file order)."""
        done, mem, order = self.base, self.base_mem, []
        ready = self.p.ready(done, self.members)
        while ready:
            if time.perf_counter() > deadline:
                raise _Timeout
            _, _, v, mem = min(
                (after, cost, u, after)
                for u in ready
                for cost, after, _ in [self.p.step(done, mem, u)]
            )
            done |= 1 << v
            ready = self.p.ready_after(ready, done, v, self.mask)
            order.append(v)
        return order

    def candidates(
        self, done: int, mem: int, budget: int, ready: Sequence[int]
    ) -> list[tuple[int, int, int]]:
        """Ready nodes within ``budget``: (node, set after, live after), best first."""
        found = []
        for v in ready:
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
        first = self.p.ready(self.base, self.members)
        stack = [iter(self.candidates(self.base, self.base_mem, budget, first))]
        states, readies, path = [self.base], [first], list[int]()
        ticks = 0
        while stack:
            if states[-1] == self.full:
                return path
            nxt = next(stack[-1], None)
            if nxt is None:
                self.dead.add(states.pop())
                readies.pop()
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
            ready = self.p.ready_after(readies[-1], done, v, self.mask)
            path.append(v)
            states.append(done)
            readies.append(ready)
            stack.append(iter(self.candidates(done, mem, budget, ready)))
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
    # Keep time for the work after the search: one more such peak (twice, for noise) and
    # freeing the memo, which grows with the search time (5% of the limit covers it).
    reserve = max(0.05 * time_limit_s, 2 * (time.perf_counter() - start))
    problem = _Problem(graph, alignment)
    anc, desc = _reach(problem)
    forced = _forced_live(problem, anc, desc)
    parts, base, mem = [], 0, problem.mem0
    for members in _segments(problem, anc, desc) if graph.nodes else []:
        parts.append(_Part(problem, members, base, mem, forced))
        mem = parts[-1].end_mem  # the live bytes after a set do not depend on its order
        for v in members:
            base |= 1 << v
    _solve_parts(parts, start, time_limit_s - reserve)
    for part in parts:
        part.dead.clear()  # millions of sets after a long search: free them in the limit
    order = [problem.nodes[v] for part in parts for v in part.best]
    peak = _peak(graph, order, alignment)
    if peak >= file_peak:
        order, peak = list(graph.nodes), file_peak
    optimal = all(p.finished for p in parts)
    # Each part's bound is at least its operators' forced-live bytes, which include every
    # operator's own footprint (largest_operator_footprint) and what crosses it.
    lower = min(max((p.bound for p in parts), default=0), peak)
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
