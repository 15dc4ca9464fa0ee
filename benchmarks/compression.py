"""Model-level compression on real data: baseline vs each pass vs combinations, one run.

For digits_cnn on scikit-learn digits, mnist1d_cnn on mnist1d and imu_cnn on BasicMotions
(reported only: 40 test samples, 2.5 points each): accuracy of the deployed ONNX model in
ONNX Runtime (mean ± sample std over 3 seeds, each seed its own split, baseline and
fine-tuning), params, flash bytes, MACs, peak activation RAM (TFLM greedy), and host
latency, the fp32 baseline measured in the same run, in two runtimes: ONNX Runtime (the
deployed ONNX / QDQ model; 1 thread, median of 1000 runs) and LiteRT (``ai-edge-litert``,
default XNNPACK delegate, 1 thread, median of 2000 invocations after 50 warm-up) on the
generated ``.tflite`` (the TFLite-semantics int8 model for int8 rows, the float32 NHWC
export otherwise). int8 rows: sizes of the int8 IR, accuracy of the ONNX QDQ model; the
PTQ-or-QAT decision per seed is in the variant name. Baselines are cached in --cache-dir
(default ~/.cache/crosslevel).

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

import numpy as np
import torch
from rich.console import Console

from crosslevel.model.baselines import get_dataset
from crosslevel.model.compress import (
    CompressConfig,
    CompressResult,
    Metrics,
    compress,
    float_tflite,
)

PAIRS = {"digits_cnn": "digits", "mnist1d_cnn": "mnist1d", "imu_cnn": "basic_motions"}


def variants(model: str, data: str, seeds: int, epochs: int | None) -> list[CompressConfig]:
    """Each pass alone, then combinations (the first config's 'before' is the baseline)."""
    base = CompressConfig(model, data, seeds=seeds, epochs=epochs, latency_repeats=1000)
    return [
        replace(base, quant="int8"),
        replace(base, quant="int8", calibration="entropy"),
        replace(base, prune=0.5),
        replace(base, prune=0.5, distill=True),
        replace(base, prune=0.5, distill=True, importance="taylor"),
        replace(base, energy=0.9, distill=True),
        replace(base, prune=0.5, distill=True, importance="taylor", quant="int8"),
        replace(base, prune=0.5, distill=True, importance="taylor", quant="int8", qat="always"),
        replace(base, prune=0.5, distill=True, importance="taylor", energy=0.9, quant="int8"),
    ]


LITERT_REPEATS, LITERT_WARMUP = 2000, 50


def litert_ms(model: bytes, sample_nchw: np.ndarray) -> float:
    """Median LiteRT latency of a ``.tflite`` (default XNNPACK delegate, 1 thread)."""
    from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

    interp = Interpreter(model_content=model, num_threads=1)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    x = np.transpose(sample_nchw, (0, 2, 3, 1)) if sample_nchw.ndim == 4 else sample_nchw
    scale, zero = detail["quantization"]
    if detail["dtype"] == np.int8:  # the int8 model's input quantization
        x = np.clip(np.round(x / scale) + zero, -128, 127)
    interp.set_tensor(detail["index"], np.ascontiguousarray(x, dtype=detail["dtype"]))
    for _ in range(LITERT_WARMUP):
        interp.invoke()
    times = np.empty(LITERT_REPEATS)
    for i in range(LITERT_REPEATS):
        start = time.perf_counter()
        interp.invoke()
        times[i] = time.perf_counter() - start
    return float(np.median(times)) * 1e3


def litert_pair(result: CompressResult, sample: np.ndarray) -> tuple[float, float]:
    """LiteRT ms of the variant's .tflite and of the fp32 baseline's, in this run."""
    assert result.baseline_module is not None and result.float_module is not None
    shape = tuple(sample.shape[1:])
    after = result.model_tflite or float_tflite(result.float_module, shape)
    return litert_ms(after, sample), litert_ms(float_tflite(result.baseline_module, shape), sample)


def int8_tag(passes: dict[str, Any]) -> str:
    """' [QAT 2/3, PTQ 91.2 %]': how many seeds deployed QAT, and PTQ's test accuracy."""
    seeds = passes.get("int8", {}).get("per_seed")
    if not seeds:
        return ""
    qat = sum(d["method"] == "qat" for d in seeds)
    ptq = 100 * float(np.mean([d["ptq_accuracy"] for d in seeds]))
    tried = [d["qat_accuracy"] for d in seeds if d["qat_accuracy"] is not None]
    if not tried:
        return " [PTQ]"
    return f" [QAT {qat}/{len(seeds)}; PTQ {ptq:.1f}, QAT {100 * float(np.mean(tried)):.1f}]"


def row(
    model: str, m: Metrics, base: Metrics, seconds: float | None, passes: dict[str, Any],
    litert: tuple[float, float],
) -> dict[str, Any]:  # fmt: skip
    # ORT's fused u8s8 kernels saturated on 8-bit weights: qdq.py fell back to 7-bit ones
    seven_bit = bool(passes.get("int8", {}).get("reduce_range"))
    return {
        "model": model,
        "variant": m.label + (" [7-bit w]" if seven_bit else "") + int8_tag(passes),
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
        "litert_ms": litert[0],
        "litert_baseline_ms": litert[1],
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
            sample = get_dataset(data, 0).x_test[:1]
            litert = litert_pair(result, sample)
            if not base_row_done:
                rows.append(row(model, result.before, result.before, None, {}, (litert[1],) * 2))
                base_row_done = True
            rows.append(row(model, result.after, result.before, seconds, result.passes, litert))
    return rows


COLUMNS = ("model", "variant", "acc % (mean ± std)", "Δ pts", "params", "flash B", "MACs",
           "peak RAM B", "ORT ms", "ORT fp32 ms", "ORT speed-up", "LiteRT ms",
           "LiteRT fp32 ms", "LiteRT speed-up")  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table: ours (each variant) beside the fp32 baseline of the same run."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [
            r["model"], r["variant"],
            f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f}",
            f"{r['delta_points']:+.1f}", f"{r['params']:,}", f"{r['flash_bytes']:,}",
            f"{r['macs']:,}", f"{r['peak_ram_bytes']:,}", f"{r['latency_ms']:.4f}",
            f"{r['baseline_latency_ms']:.4f}",
            f"{r['baseline_latency_ms'] / r['latency_ms']:.2f}x", f"{r['litert_ms']:.4f}",
            f"{r['litert_baseline_ms']:.4f}",
            f"{r['litert_baseline_ms'] / r['litert_ms']:.2f}x",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning epochs per pass (default: the recipe after pruning, half after low-rank)",
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
        print(table(rows))


if __name__ == "__main__":
    main()
