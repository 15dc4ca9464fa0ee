"""`crosslevel plan`: every memory strategy beside TFLM, the chosen plan written and proven.

Every plan counts only once it ran: the chosen one inside our arena executor (outputs
equal to the plain executor's), and, for a .tflite model, the smallest plan within TFLM's
rules inside the stock tflite-micro runtime (``OUT/model.tflite``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from crosslevel.errors import CrosslevelError
from crosslevel.graph.layout import to_nhwc
from crosslevel.hardware.devices import get_device
from crosslevel.ir.graph import Graph
from crosslevel.ir.load import LoadedModel
from crosslevel.memory.ordering import best_order, largest_operator_footprint
from crosslevel.memory.plan import Plan, write_plan
from crosslevel.memory.strategies import plan_strategies
from crosslevel.memory.verify import ArenaCheck, verify_in_arena
from crosslevel.report.arena_svg import arena_svg

RESULT_FORMAT = "crosslevel.plan-result/1"


def strategy_table(plans: dict[str, Plan], chosen: str, checks: dict[str, ArenaCheck]) -> Table:
    tflm = plans["tflm"].arena_bytes
    table = Table(title="activation arena per strategy (bytes, 16-B aligned)")
    cols = ("strategy", "arena", "floor for its order", "optimal", "TFLM / ours", "ran in arena")
    for col in cols:
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, plan in plans.items():
        if name == "best":  # the smallest within TFLM's rules: a row of its own already
            continue
        mark = " (chosen)" if name == chosen else ""
        check = checks.get(name)
        ran = "-" if check is None else ("outputs equal" if check.verified else "FAILED")
        table.add_row(
            name + mark,
            f"{plan.arena_bytes:,}",
            f"{plan.bounds.peak_live_bytes:,}",
            "yes" if plan.bounds.optimal else f"gap {plan.bounds.gap_pct:.1f}%",
            f"{tflm / plan.arena_bytes:.2f}x" if plan.arena_bytes else "-",
            ran,
        )
    return table


def choose(
    graph: Graph, plans: dict[str, Plan], strategy: str
) -> tuple[str, dict[str, ArenaCheck]]:
    """The strategy to write and the arena checks run: ``best`` is the smallest plan that
    ran with equal outputs; a named strategy is checked and must pass too."""
    checks: dict[str, ArenaCheck] = {}
    rank = list(plans)  # ties go to the simpler strategy (TFLM's rules first)
    candidates = [n for n in plans if n != "best"]
    by_size = sorted(candidates, key=lambda n: (plans[n].arena_bytes, rank.index(n)))
    names = [strategy] if strategy != "best" else by_size
    for name in names:
        checks[name] = verify_in_arena(graph, plans[name])
        if checks[name].verified:
            return name, checks
    if strategy == "best":
        raise CrosslevelError(f"no plan ran correctly in the arena: {checks}")
    raise CrosslevelError(
        f"the {strategy} plan did not run correctly in the arena "
        f"({checks[strategy].error or 'outputs differ'})"
    )


def lower_bounds(graph: Graph, plans: dict[str, Plan], time_limit_s: float) -> dict[str, Any]:
    """Issue 3's bounds: the file order's peak, the best order's (exact when proven) and
    the largest single-operator footprint (inputs + outputs + scratch)."""
    ordering = best_order(graph, time_limit_s=time_limit_s / 2)
    return {
        "file_order_peak_bytes": plans["tflm"].bounds.peak_live_bytes,
        "best_order_peak_bytes": ordering.lower_bound_bytes,
        "best_order_exact": ordering.optimal,
        "largest_operator_bytes": largest_operator_footprint(graph),
    }


def device_fit(device: str | None, arena_bytes: int) -> dict[str, Any] | None:
    """Whether the chosen arena fits the device's working memory (SRAM on an MCU)."""
    if device is None:
        return None
    target = get_device(device)
    return {
        "device": target.name,
        "memory_bytes": target.memory_bytes,
        "arena_bytes": arena_bytes,
        "fits": arena_bytes <= target.memory_bytes,
    }


def plan_report(
    model: LoadedModel, strategy: str, out: Path, time_limit_s: float, device: str | None = None
) -> tuple[dict[str, Any], Table]:
    """Plan, write OUT/plan.json, OUT/arena.svg, OUT/result.json (and OUT/model.tflite)."""
    graph = model.graph
    if graph.layout == "NCHW":  # rows and pixels are contiguous only in NHWC: plan that
        graph = to_nhwc(graph)
    plans = plan_strategies(graph, time_limit_s)
    name, checks = choose(graph, plans, strategy)
    chosen = plans[name]
    out.mkdir(parents=True, exist_ok=True)
    write_plan(chosen, out / "plan.json")
    (out / "arena.svg").write_text(arena_svg(chosen, f"{model.source}: {name}"))
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "model": model.source,
        "strategy": name,
        "arena_bytes": {n: p.arena_bytes for n, p in plans.items()},
        "bounds": {n: p.bounds.__dict__ for n, p in plans.items()},
        "arena_check": {n: {**c.__dict__, "verified": c.verified} for n, c in checks.items()},
        "layout": graph.layout,
        "lower_bounds": lower_bounds(graph, plans, time_limit_s),
        "extra_macs": sum(stage["extra_macs"] for stage in chosen.patch_stages),
        "device_fit": device_fit(device, chosen.arena_bytes),
        "tflm_check": None,
    }
    if model.kind == "tflite" and model.file_bytes is not None:
        from crosslevel.memory.verify import tflm_ready_file, verify_in_tflm

        ready_plan = plans["best"]  # the smallest plan within TFLM's rules
        ready = tflm_ready_file(model.graph, ready_plan)
        check = verify_in_tflm(model.file_bytes, ready, model.graph, ready_plan)
        result["tflm_check"] = {**check.__dict__, "verified": check.verified}
        if check.verified:
            (out / "model.tflite").write_bytes(ready)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result, strategy_table(plans, name, checks)
