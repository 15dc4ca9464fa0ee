"""The memory strategies `crosslevel plan` compares, each a Plan for one graph.

* ``tflm``: the file's order with TFLM's greedy offsets (what TFLM does today);
* ``reorder``: our minimum-peak operator order with TFLM's greedy offsets;
* ``optimal``: our order with the best offsets (best-fit or the exact HiGHS model);
* ``best``: the smallest arena of the above (the default: every candidate is checked
  for overlaps, and for .tflite models run in TFLM by the caller).
"""

from __future__ import annotations

from crosslevel.ir.graph import Graph
from crosslevel.memory.ordering import best_order
from crosslevel.memory.plan import Plan, make_plan

STRATEGIES = ("tflm", "reorder", "optimal", "best")


def plan_strategies(graph: Graph, time_limit_s: float = 10.0) -> dict[str, Plan]:
    """Every strategy's plan; ``best`` is one of the others (smallest arena)."""
    by_name = {n.name: n for n in graph.nodes}
    ordering = best_order(graph, time_limit_s=time_limit_s / 2)
    order = [by_name[name] for name in ordering.order]
    plans = {
        "tflm": make_plan(graph, tflm_offsets=True),
        "reorder": make_plan(graph, order, tflm_offsets=True),
        "optimal": make_plan(graph, order, time_limit_s=time_limit_s / 2),
    }
    plans["best"] = min(plans.values(), key=lambda p: p.arena_bytes)
    return plans
