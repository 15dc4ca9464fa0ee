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


def loo_summary(cal: Calibration) -> str:
    """One line: the share within +-10 % against the target, and the median error."""
    within = cal.error["loo_within_10pct"]
    verdict = "[green]meets[/green]" if within >= TARGET_WITHIN_10PCT else "[red]misses[/red]"
    return (
        f"held-out variants within +-10 %: {within:.0%} ({verdict} the "
        f"{TARGET_WITHIN_10PCT:.0%} target); median absolute error "
        f"{cal.error['loo_median_ape_pct']:.1f} %; {int(cal.error['n_models'])} variants"
    )
