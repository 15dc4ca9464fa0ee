"""The memory strategies `crosslevel plan` compares, each a Plan for one graph.

* ``tflm``: the file's order with TFLM's greedy offsets (what TFLM does today);
* ``reorder``: our minimum-peak operator order with TFLM's greedy offsets;
* ``optimal``: our order with the best offsets (best-fit or the exact HiGHS model);
* ``inplace``: our order, outputs overwriting the inputs they consume (``inplace.py``),
  run by our arena executor (and generated code), not by the stock TFLM runtime;
* ``patch``: ``inplace`` plus a depth-first first stage (``depth_first.py``): the first
  layers computed row by row through line buffers, their output over the consumed input;
* ``best``: the smallest arena within TFLM's rules (``TFLM_RULES``: what the stock TFLM
  runtime can run from a .tflite file, and what whole-tensor kernels can run).

`crosslevel plan` proves every plan by execution and defaults to the smallest proven.
"""

from __future__ import annotations

from crosslevel.ir.graph import Graph
from crosslevel.memory.ordering import best_order
from crosslevel.memory.plan import Plan, make_plan

STRATEGIES = ("tflm", "reorder", "optimal", "inplace", "patch", "best")
TFLM_RULES = ("tflm", "reorder", "optimal")


def plan_strategies(graph: Graph, time_limit_s: float = 10.0) -> dict[str, Plan]:
    """Every strategy's plan; ``best`` is the smallest of ``TFLM_RULES``."""
    by_name = {n.name: n for n in graph.nodes}
    ordering = best_order(graph, time_limit_s=time_limit_s / 2)
    order = [by_name[name] for name in ordering.order]
    plans = {
        "tflm": make_plan(graph, tflm_offsets=True),
        "reorder": make_plan(graph, order, tflm_offsets=True),
        "optimal": make_plan(graph, order, time_limit_s=time_limit_s / 2),
    }
    plans["best"] = min(plans.values(), key=lambda p: p.arena_bytes)
    plans["inplace"] = make_plan(graph, order, time_limit_s=time_limit_s / 2, inplace=True)
    plans["patch"] = make_plan(
        graph, order, time_limit_s=time_limit_s / 2, inplace=True, depth_first=True
    )
    return plans
