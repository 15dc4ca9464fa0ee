"""How far the calibrated cost model is from ONNX Runtime on this machine, held out.

Measures zoo models and their width/resolution variants with ONNX Runtime (1 thread),
then for each variant fits the cost model on all the others and predicts it
(leave-one-out). Prints measured vs predicted per variant and the summary: the share of
held-out variants within +-10 % (target >= 90 %) and the median absolute percentage error.

    python benchmarks/cost_model_error.py [--quick] [--statistic median|min] [--rounds N]
                                          [--cache-dir DIR] [--save CAL.json] [--json]

"measured" is the fastest of many runs over several interleaved rounds (default: load
from other processes only adds time, so the minimum is what repeats on a shared machine);
``--statistic median`` uses the median of the quietest round instead. Both columns are
always printed. The fit uses per-node kernel times from ONNX Runtime's profiler; the
held-out variant's are never in it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from crosslevel.hardware.calibrate import STATISTICS, calibrate_host
from crosslevel.report.calibration import factors_table, loo_summary, loo_table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="four tiny models (seconds)")
    parser.add_argument("--statistic", choices=STATISTICS, default="min")
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
    console.print(loo_table(cal))
    console.print(factors_table(cal))
    console.print(
        f"{loo_summary(cal)}; measured = {args.statistic}; "
        f"{cal.runtime.split(';')[0]}; {elapsed_s:.0f} s"
    )
    return result


if __name__ == "__main__":
    main()
