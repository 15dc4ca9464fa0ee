"""`crosslevel plan`: every memory strategy beside TFLM, the chosen plan written and proven."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from crosslevel.ir.load import LoadedModel
from crosslevel.memory.plan import Plan, write_plan
from crosslevel.memory.strategies import plan_strategies
from crosslevel.report.arena_svg import arena_svg

RESULT_FORMAT = "crosslevel.plan-result/1"


def strategy_table(plans: dict[str, Plan], chosen: str) -> Table:
    tflm = plans["tflm"].arena_bytes
    table = Table(title="activation arena per strategy (bytes, 16-B aligned)")
    for col in ("strategy", "arena", "bound for its order", "optimal", "TFLM / ours"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for name, plan in plans.items():
        mark = " (chosen)" if name == chosen else ""
        table.add_row(
            name + mark,
            f"{plan.arena_bytes:,}",
            f"{plan.bounds.peak_live_bytes:,}",
            "yes" if plan.bounds.optimal else f"gap {plan.bounds.gap_pct:.1f}%",
            f"{tflm / plan.arena_bytes:.2f}x" if plan.arena_bytes else "-",
        )
    return table


def plan_report(
    model: LoadedModel, strategy: str, out: Path, time_limit_s: float
) -> tuple[dict[str, Any], Table]:
    """Plan, write OUT/plan.json, OUT/arena.svg, OUT/result.json (and OUT/model.tflite)."""
    plans = plan_strategies(model.graph, time_limit_s)
    chosen = plans[strategy]
    out.mkdir(parents=True, exist_ok=True)
    write_plan(chosen, out / "plan.json")
    (out / "arena.svg").write_text(arena_svg(chosen, f"{model.source}: {strategy}"))
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "model": model.source,
        "strategy": strategy,
        "arena_bytes": {name: p.arena_bytes for name, p in plans.items()},
        "bounds": {name: p.bounds.__dict__ for name, p in plans.items()},
        "tflm_check": None,
    }
    if model.kind == "tflite" and model.file_bytes is not None:
        from crosslevel.memory.verify import tflm_ready_file, verify_in_tflm

        ready = tflm_ready_file(model.graph, chosen)
        check = verify_in_tflm(model.file_bytes, ready, model.graph, chosen)
        result["tflm_check"] = {**check.__dict__, "verified": check.verified}
        if check.verified:
            (out / "model.tflite").write_bytes(ready)
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result, strategy_table(plans, strategy)
