"""How far the calibrated cost model is from ONNX Runtime on this machine, held out.

Measures zoo models and their width/resolution variants with ONNX Runtime (1 thread),
then for each variant fits the cost model on all the others and predicts it
(leave-one-out). Prints measured vs predicted per variant and the summary: the share of
held-out variants within +-10 % (target >= 90 %) and the median absolute percentage error.

    python benchmarks/cost_model_error.py [--quick] [--statistic median|min] [--rounds N]
                                          [--cache-dir DIR] [--save CAL.json] [--json]

"measured" is the median of N runs in the quietest of several interleaved rounds
(``--statistic min`` uses the fastest single run instead, which is steadier on a machine
that other processes are loading). Both columns are always printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crosslevel.hardware.calibrate import STATISTICS, calibrate_host
from crosslevel.hardware.cost_model import Calibration


def _table(cal: Calibration) -> Table:
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


def _factors_table(cal: Calibration) -> Table:
    table = Table(title="fitted factors (all variants)")
    table.add_column("factor")
    table.add_column("value", justify="right")
    for name in cal.fitted_keys:
        if name == "memory":
            value = f"{cal.factors.mem_efficiency:.3g} x catalogue bandwidth"
        elif name.startswith("dispatch:"):
            value = f"{cal.factors.dispatch(name.split(':', 1)[1]) * 1e6:.2f} us"
        else:
            value = f"{cal.factors.eff(name):.3g} x peak"
        table.add_row(name, value)
    return table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="four tiny models (seconds)")
    parser.add_argument("--statistic", choices=STATISTICS, default="median")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache of ONNX exports")
    parser.add_argument("--save", type=Path, default=None, help="write the calibration JSON")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cal = calibrate_host(
        quick=args.quick,
        progress=not args.json,
        rounds=args.rounds,
        cache_dir=args.cache_dir,
        statistic=args.statistic,
    )
    elapsed_s = time.perf_counter() - start
    if args.save is not None:
        cal.save(args.save)
    result = {**cal.to_dict(), "elapsed_s": elapsed_s}
    if args.json:
        print(json.dumps(result, indent=2))
        return result
    console = Console(width=max(Console().width, 110))
    console.print(_table(cal))
    console.print(_factors_table(cal))
    within = cal.error["loo_within_10pct"]
    verdict = "[green]meets[/green]" if within >= 0.9 else "[red]misses[/red]"
    console.print(
        f"held-out variants within +-10 %: {within:.0%} ({verdict} the 90 % target); "
        f"median absolute error {cal.error['loo_median_ape_pct']:.1f} %; "
        f"{int(cal.error['n_models'])} variants; measured = {args.statistic}; "
        f"{cal.runtime.split(';')[0]}; {elapsed_s:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
