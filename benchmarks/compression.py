"""Model-level compression on real data: baseline vs each pass vs combinations, one run.

For digits_cnn on scikit-learn digits, mnist1d_cnn on mnist1d and imu_cnn on BasicMotions
(reported only: 40 test samples, 2.5 points each): accuracy of the deployed ONNX model in
ONNX Runtime (mean ± sample std over 3 seeds, each seed its own split, baseline and
fine-tuning), params, flash bytes, MACs, peak activation RAM (TFLM greedy), and host
latency (ONNX Runtime, 1 thread, median of many runs, the fp32 baseline measured in the
same run). int8 rows: sizes of the TFLite-semantics int8 IR, accuracy and latency of the
ONNX QDQ model. Baselines are cached in --cache-dir (default ~/.cache/crosslevel).

    python benchmarks/compression.py [--models digits_cnn,mnist1d_cnn,imu_cnn] [--seeds 3]
        [--epochs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from crosslevel.model.compress import CompressConfig, CompressResult, Metrics, compress

PAIRS = {"digits_cnn": "digits", "mnist1d_cnn": "mnist1d", "imu_cnn": "basic_motions"}


def variants(model: str, data: str, seeds: int, epochs: int | None) -> list[CompressConfig]:
    """Each pass alone, then combinations (the first config's 'before' is the baseline)."""
    base = CompressConfig(model, data, seeds=seeds, epochs=epochs, latency_repeats=1000)
    return [
        replace(base, quant="int8"),
        replace(base, quant="int8", calibration="entropy"),
        replace(base, prune=0.5),
        replace(base, prune=0.5, distill=True),
        replace(base, energy=0.9, distill=True),
        replace(base, prune=0.5, distill=True, quant="int8"),
        replace(base, prune=0.5, distill=True, energy=0.9, quant="int8"),
    ]


def row(
    model: str, m: Metrics, base: Metrics, seconds: float | None, passes: dict[str, Any]
) -> dict[str, Any]:
    # ORT's fused u8s8 kernels saturated on 8-bit weights: qdq.py fell back to 7-bit ones
    seven_bit = bool(passes.get("int8", {}).get("reduce_range"))
    return {
        "model": model,
        "variant": m.label + (" [7-bit w]" if seven_bit else ""),
        "dtype": m.dtype,
        "accuracy_mean": m.accuracy.mean,
        "accuracy_std": m.accuracy.std,
        "accuracy_values": list(m.accuracy.values),
        "delta_points": 100 * (m.accuracy.mean - base.accuracy.mean),
        "params": m.params,
        "flash_bytes": m.flash_bytes,
        "macs": m.macs,
        "peak_ram_bytes": m.peak_ram_bytes,
        "latency_ms": m.latency_ms,
        "baseline_latency_ms": base.latency_ms,
        "seconds": seconds,
    }


def run(models: list[str], seeds: int, epochs: int | None, cache_dir: Path | None) -> list[dict]:
    console = Console(stderr=True)
    rows: list[dict[str, Any]] = []
    for model in models:
        data = PAIRS[model]
        base_row_done = False
        for cfg in variants(model, data, seeds, epochs):
            start = time.perf_counter()
            result: CompressResult = compress(cfg, cache_dir=cache_dir)
            seconds = time.perf_counter() - start
            console.print(f"{model}: {cfg.label()} in {seconds:.1f} s", highlight=False)
            if not base_row_done:
                rows.append(row(model, result.before, result.before, None, {}))
                base_row_done = True
            rows.append(row(model, result.after, result.before, seconds, result.passes))
    return rows


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="model-level compression (accuracy: ORT on held-out split, 3 seeds)")
    for col in ("model", "variant", "accuracy", "Δ pts", "params", "flash B", "MACs",
                "peak RAM B", "ORT ms", "fp32 ms (same run)", "speed-up"):  # fmt: skip
        t.add_column(col, justify="left" if col in ("model", "variant") else "right")
    for r in rows:
        t.add_row(
            r["model"], r["variant"],
            f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
            f"{r['delta_points']:+.1f}", f"{r['params']:,}", f"{r['flash_bytes']:,}",
            f"{r['macs']:,}", f"{r['peak_ram_bytes']:,}", f"{r['latency_ms']:.4f}",
            f"{r['baseline_latency_ms']:.4f}",
            f"{r['baseline_latency_ms'] / r['latency_ms']:.2f}x",
        )  # fmt: skip
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning epochs per pass (default: half the recipe)",
    )
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared 2-core host
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in PAIRS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(PAIRS)}")
    rows = run(models, args.seeds, args.epochs, args.cache_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        Console(width=200).print(table(rows))


if __name__ == "__main__":
    main()
