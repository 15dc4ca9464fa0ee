"""Tables of a host calibration: measured vs held-out predicted latency per model variant."""

from __future__ import annotations

from rich.table import Table

from crosslevel.hardware.cost_model import Calibration

TARGET_WITHIN_10PCT = 0.9  # issue #2: at least 90 % of held-out variants within +-10 %


def loo_table(cal: Calibration) -> Table:
    """One row per variant: measured (median, min), held-out prediction, error."""
    table = Table(title=f"Cost model vs ONNX Runtime on {cal.device}, leave-one-out")
    table.add_column("model variant", no_wrap=True)
    for col in ("runs", "median ms", "min ms", "held-out pred. ms", "error %"):
        table.add_column(col, justify="right")
    for row in cal.rows:
        error = row["error_pct"]
        style = "green" if abs(error) <= 10 else "red"
        table.add_row(
            row["model"],
            str(row["runs"]),
            f"{row['median_ms']:.3f}",
            f"{row['min_ms']:.3f}",
            f"{row['predicted_ms']:.3f}",
            f"[{style}]{error:+.1f}[/{style}]",
        )
    return table


def factors_table(cal: Calibration) -> Table:
    """The fitted efficiency, memory and dispatch factors (fitted on every variant)."""
    table = Table(title="fitted factors (all variants)")
    table.add_column("factor")
    table.add_column("value", justify="right")
    for name in cal.fitted_keys:
        if name == "memory":
            value = f"{cal.factors.mem_efficiency:.3g} x catalogue bandwidth"
        elif name.startswith("dispatch:"):
            value = f"{cal.factors.dispatch(name.split(':', 1)[1]) * 1e6:.2f} us"
        elif name.startswith("shape:"):
            exps = cal.factors.shape_exponents[name.split(":", 1)[1]]
            value = "exponents " + ", ".join(f"{e:+.3f}" for e in exps)
        elif name.startswith("weights:"):
            per_byte, free = cal.factors.weight_cost[name.split(":", 1)[1]]
            value = f"{per_byte * 1e12:.3g} ps/byte beyond {free / 1e3:.0f} kB"
        elif name.startswith("epilogue:"):
            fixed, per_el = cal.factors.activation_s[name.split(":", 1)[1]]
            value = f"{fixed * 1e6:.2f} us + {per_el * 1e12:.3g} ps/element"
        elif name == "node_scale":
            value = f"x {cal.factors.node_scale:.3f}"
        elif name == "overhead":
            value = f"{cal.factors.overhead_s * 1e6:.2f} us per inference"
        elif name == "profiler":
            value = "taken off dispatch (profiler's own per-kernel cost)"
        else:
            value = f"{cal.factors.eff(name):.3g} x peak"
        table.add_row(name, value)
    return table


def loo_summary(cal: Calibration) -> str:
    """One line: the share within +-10 % against the target, and the median error."""
    within = cal.error["loo_within_10pct"]
    verdict = "[green]meets[/green]" if within >= TARGET_WITHIN_10PCT else "[red]misses[/red]"
    return (
        f"held-out variants within +-10 %: {within:.0%} ({verdict} the "
        f"{TARGET_WITHIN_10PCT:.0%} target); median absolute error "
        f"{cal.error['loo_median_ape_pct']:.1f} %; {int(cal.error['n_models'])} variants"
    )
