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

A second table (alone with --latency-only): int8 vs fp32 host latency on larger models
(>= 5 MMAC: resnet8, a 2x-width resnet8, inception_cells; depthwise-heavy mobilenet_v1_025,
mobilenet_v2, mcunet_v2), untrained but BN-settled, calibrated on random inputs; for the
depthwise-heavy ones every int8 form ONNX Runtime's quantizer offers (QDQ/QOperator,
per-channel/per-tensor, uint8/int8 activations, 8/7-bit weights) and a per-op-type ORT
profile of fp32, the package's int8 and the fastest form.

    python benchmarks/compression.py [--models digits_cnn,mnist1d_cnn,imu_cnn] [--seeds 3]
        [--epochs N] [--latency-only] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
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


# ------------------------------------------------------- int8 vs fp32 latency, larger models

# (label, zoo name, builder kwargs, depthwise-heavy); MACs >= 5 M each (checked by the IR)
LATENCY_MODELS: tuple[tuple[str, str, dict[str, Any], bool], ...] = (
    ("resnet8", "resnet8", {}, False),
    ("resnet8 2x width", "resnet8", {"filters": (32, 64, 128)}, False),
    ("inception_cells", "inception_cells", {}, False),
    ("mobilenet_v1_025", "mobilenet_v1_025", {}, True),
    ("mobilenet_v2", "mobilenet_v2", {}, True),
    ("mcunet_v2", "mcunet_v2", {}, True),
)  # fmt: skip
LATENCY_CALIBRATION = 64
ORT_REPEATS, ORT_WARMUP, PROFILE_RUNS = 1000, 50, 300
FORM_CHECK_SAMPLES = 16
# a form counts as usable when its error vs fp32 is at most this times the package int8's
FORM_ERROR_SLACK = 1.25


@dataclass
class LatencyModel:
    """A seeded zoo model with settled BatchNorm, its float ONNX and calibration inputs."""

    label: str
    name: str
    module: torch.nn.Module
    input_shape: tuple[int, ...]
    onnx_fp32: bytes
    calibration: np.ndarray


def latency_model(label: str, name: str, kwargs: dict[str, Any]) -> LatencyModel:
    """Untrained (latency does not depend on weights) but BN-settled, so ranges are O(1)."""
    from crosslevel.ir.torch_io import export_torch_onnx
    from crosslevel.model import zoo
    from crosslevel.model.int8_zoo import calibration_inputs, settle_batchnorm

    calibration = calibration_inputs(name, LATENCY_CALIBRATION, seed=0, **kwargs)
    torch.manual_seed(0)
    module = zoo.build(name, **kwargs)
    settle_batchnorm(module, calibration)
    module.eval()
    fp32 = export_torch_onnx(module, torch.from_numpy(calibration[:1]))
    shape = tuple(zoo.ZOO[name].input_shape_for(**kwargs))
    return LatencyModel(label, name, module, shape, fp32, calibration)


@dataclass(frozen=True)
class Int8Form:
    """One way ONNX Runtime's quantizer can write an int8 model."""

    qdq: bool  # QDQ nodes around float ops (fused by ORT) vs QOperator (QLinearConv...)
    per_channel: bool
    activations: str  # uint8 or int8
    reduce_range: bool  # 7-bit weights

    def label(self) -> str:
        return "/".join([
            "QDQ" if self.qdq else "QOperator", "per-channel" if self.per_channel else "per-tensor",
            f"{self.activations} act", "7-bit w" if self.reduce_range else "8-bit w",
        ])  # fmt: skip


INT8_FORMS = tuple(
    Int8Form(qdq, per_channel, act, reduce_range)
    for qdq in (True, False)
    for per_channel in (True, False)
    for act in ("uint8", "int8")
    for reduce_range in (False, True)
)


def quantize_form(model: LatencyModel, form: Int8Form) -> bytes:
    """``quantize_static`` (min-max) in ``form``, after ORT's quant_pre_process."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from crosslevel.model.qdq import ArrayCalibrationReader, _quiet

    act = QuantType.QUInt8 if form.activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="crosslevel-int8-form-") as tmp:
        src, pre, dst = Path(tmp) / "f.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(model.onnx_fp32)
        with _quiet():
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre), str(dst),
                ArrayCalibrationReader(onnx_input_name(model.onnx_fp32), model.calibration),
                quant_format=QuantFormat.QDQ if form.qdq else QuantFormat.QOperator,
                per_channel=form.per_channel, activation_type=act,
                weight_type=QuantType.QInt8, reduce_range=form.reduce_range,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )  # fmt: skip
        return dst.read_bytes()


def onnx_input_name(model: bytes) -> str:
    import onnx

    return str(onnx.load_from_string(model).graph.input[0].name)


def ort_ms(model: bytes, sample: np.ndarray) -> float:
    """Median ONNX Runtime latency (1 intra-op thread) of ``ORT_REPEATS`` runs."""
    from crosslevel.runtime.ort import time_onnx

    return time_onnx(model, [sample], repeats=ORT_REPEATS, warmup=ORT_WARMUP).median_ms


def relative_error(model: bytes, reference: bytes, samples: np.ndarray) -> float:
    """Max |int8 - fp32| / max |fp32| over ``samples``: a form that is fast but wrong loses."""
    from crosslevel.runtime.ort import make_session, run_session

    quant, ref = make_session(model), make_session(reference)
    outs = [(run_session(quant, [s[None]])[0], run_session(ref, [s[None]])[0]) for s in samples]
    worst = max(float(np.max(np.abs(a - b))) for a, b in outs)
    return worst / max(max(float(np.max(np.abs(b))) for _, b in outs), 1e-12)


def op_profile(model: bytes, sample: np.ndarray, runs: int = PROFILE_RUNS) -> dict[str, float]:
    """Median µs per run spent in each op type (ORT's profiler, 1 thread, optimized graph).

    Convolutions are split into depthwise and the rest by their weight's shape, because
    that split is where int8 and fp32 differ on depthwise-heavy models.
    """
    import onnxruntime as ort

    from crosslevel.runtime.ort import session_options

    options = session_options(threads=1)
    with tempfile.TemporaryDirectory(prefix="crosslevel-profile-") as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: np.ascontiguousarray(sample, dtype=np.float32)}
        for _ in range(ORT_WARMUP):  # profiled too: dropped below by keeping the last runs
            session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    grouped = grouped_conv_names(model)
    per_run = len(kernels) // (ORT_WARMUP + runs)
    kinds = [kernel_kind(e, grouped) for e in kernels[:per_run]]  # every run: the same nodes
    durations = np.array([float(e["dur"]) for e in kernels[-per_run * runs :]])
    durations = durations.reshape(runs, per_run)
    # median over runs of each op type's per-run sum: robust to the shared host's stalls
    return {
        kind: float(np.median(durations[:, [k == kind for k in kinds]].sum(axis=1)))
        for kind in set(kinds)
    }


def grouped_conv_names(model: bytes) -> set[str]:
    """Names of the model's convolutions with group > 1 (depthwise in this zoo)."""
    import onnx

    return {
        node.name
        for node in onnx.load_from_string(model).graph.node
        if any(a.name == "group" and a.i > 1 for a in node.attribute)
    }


def kernel_kind(event: dict[str, Any], grouped: set[str]) -> str:
    """The op type, with ' (depthwise)' for depthwise convolutions.

    ORT renames fused nodes (``<name>_token_4``) and prepacks QLinearConv weights (their
    profiled shape is no longer (C, 1, kh, kw)), so a conv is depthwise when its kernel
    name extends a grouped conv's name or, for float kernels, its weight is (C, 1, kh, kw).
    """
    args = event["args"]
    op = str(args.get("op_name", "?"))
    if "Conv" not in op:
        return op
    node = event["name"].removesuffix("_kernel_time")
    by_name = any(node == g or node.startswith(g + "_") for g in grouped)
    shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
    weight = shapes[1] if len(shapes) > 1 and op in ("Conv", "FusedConv") else []
    by_shape = len(weight) == 4 and weight[1] == 1 and weight[0] > 1 and weight[2] * weight[3] > 1
    return op + (" (depthwise)" if by_name or by_shape else "")


@dataclass
class LatencyRow:
    """One model's fp32 and int8 latencies (ms), all measured in this run."""

    label: str
    depthwise_heavy: bool
    macs: int
    ort_fp32: float
    ort_int8: float  # the package's int8 (qdq.quantize_qdq: QDQ, per-channel, uint8 act)
    ort_int8_form: str  # its form, as Int8Form.label() writes it
    ort_int8_error: float  # max |int8 - fp32| / max |fp32| on FORM_CHECK_SAMPLES inputs
    litert_fp32: float
    litert_int8: float
    forms: dict[str, tuple[float, float]] = field(default_factory=dict)  # ms, rel. error
    profiles: dict[str, dict[str, float]] = field(default_factory=dict)  # µs per op type


def measure_latency(label: str, name: str, kwargs: dict[str, Any], dw: bool) -> LatencyRow:
    from crosslevel.model.compress import float_graph, float_tflite, graph_figures
    from crosslevel.model.qdq import quantize_qdq, quantize_tflite_int8

    model = latency_model(label, name, kwargs)
    sample = model.calibration[:1]
    int8 = quantize_qdq(model.onnx_fp32, model.calibration)
    form = Int8Form(True, True, int8.activation_type, int8.reduce_range).label()
    tflite_int8 = quantize_tflite_int8(model.module, name, model.calibration).tflite
    checks = model.calibration[:FORM_CHECK_SAMPLES]
    result = LatencyRow(
        label, dw, graph_figures(float_graph(model.module, model.input_shape))["macs"],
        ort_ms(model.onnx_fp32, sample), ort_ms(int8.onnx, sample), form,
        relative_error(int8.onnx, model.onnx_fp32, checks),
        litert_ms(float_tflite(model.module, model.input_shape), sample),
        litert_ms(tflite_int8, sample),
    )  # fmt: skip
    if dw:
        forms = {f.label(): quantize_form(model, f) for f in INT8_FORMS}
        result.forms = {
            k: (ort_ms(v, sample), relative_error(v, model.onnx_fp32, checks))
            for k, v in forms.items()
        }
        fastest = fastest_form(result)
        result.profiles = {
            "fp32": op_profile(model.onnx_fp32, sample),
            "int8": op_profile(int8.onnx, sample),
            "fastest int8": op_profile(forms[fastest], sample),
        }
    return result


def fastest_form(row: LatencyRow) -> str:
    """The fastest int8 form no less accurate (within ``FORM_ERROR_SLACK``) than the package's.

    Random untrained models have large int8 errors whatever the form, so the bar is
    relative: a form may not buy speed with accuracy the package's int8 keeps.
    """
    limit = FORM_ERROR_SLACK * row.ort_int8_error
    usable = {k: ms for k, (ms, err) in row.forms.items() if err <= limit}
    return min(usable, key=usable.__getitem__)


def latency_table(rows: list[LatencyRow]) -> str:
    """Per model: MACs, ORT and LiteRT fp32 vs int8, and the fastest ORT int8 form found."""
    head = ("model", "convs", "MMAC", "ORT fp32 ms", "ORT int8 ms", "ORT fp32/int8",
            "LiteRT fp32 ms", "LiteRT int8 ms", "LiteRT fp32/int8", "fastest ORT int8 form",
            "its ms", "fp32/its")  # fmt: skip
    lines = [md_row(head), "|" + "---|" * len(head)]
    for r in rows:
        best = ("—", "—", "—")
        if r.forms:
            name = fastest_form(r)
            ms = r.forms[name][0]
            best = (name, f"{ms:.4f}", f"{r.ort_fp32 / ms:.2f}x")
        lines.append(md_row((
            r.label, "depthwise-heavy" if r.depthwise_heavy else "standard",
            f"{r.macs / 1e6:.2f}", f"{r.ort_fp32:.4f}", f"{r.ort_int8:.4f}",
            f"{r.ort_fp32 / r.ort_int8:.2f}x", f"{r.litert_fp32:.4f}", f"{r.litert_int8:.4f}",
            f"{r.litert_fp32 / r.litert_int8:.2f}x", *best,
        )))  # fmt: skip
    return "\n".join(lines)


def forms_table(rows: list[LatencyRow]) -> str:
    """Every int8 form tried: ORT ms (and max error / max |fp32|) per depthwise-heavy model."""
    tried = [r for r in rows if r.forms]
    head = ("ORT int8 form", *(f"{r.label} ms (rel. err)" for r in tried))
    lines = [md_row(head), "|" + "---|" * len(head)]
    lines.append(md_row(("fp32", *(f"{r.ort_fp32:.4f}" for r in tried))))
    package = (f"{r.ort_int8:.4f} ({r.ort_int8_error:.3f})" for r in tried)
    lines.append(md_row(("package int8 (qdq.quantize_qdq)", *package)))
    for form in INT8_FORMS:
        cells = [f"{r.forms[form.label()][0]:.4f} ({r.forms[form.label()][1]:.3f})" for r in tried]
        lines.append(md_row((form.label(), *cells)))
    return "\n".join(lines)


def profile_table(rows: list[LatencyRow], min_us: float = 1.0) -> str:
    """µs per run by op type (ORT profiler): where int8 loses to fp32, per model."""
    head = ("model", "op type (ORT kernel)", "fp32 µs", "int8 µs", "fastest int8 form µs")
    lines = [md_row(head), "|" + "---|" * len(head)]
    for r in rows:
        if not r.profiles:
            continue
        runs = [r.profiles["fp32"], r.profiles["int8"], r.profiles["fastest int8"]]
        ops = sorted(
            {op for p in runs for op in p}, key=lambda op: -max(p.get(op, 0) for p in runs)
        )
        for op in ops:
            if max(p.get(op, 0.0) for p in runs) >= min_us:
                lines.append(md_row((r.label, op, *(f"{p.get(op, 0.0):.1f}" for p in runs))))
        lines.append(
            md_row((r.label, "**sum of op medians**", *(f"{sum(p.values()):.1f}" for p in runs)))
        )
    return "\n".join(lines)


def md_row(cells: tuple[str, ...] | list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def run_latency(console: Console) -> list[LatencyRow]:
    rows = []
    for label, name, kwargs, depthwise_heavy in LATENCY_MODELS:
        start = time.perf_counter()
        rows.append(measure_latency(label, name, kwargs, depthwise_heavy))
        console.print(f"latency: {label} in {time.perf_counter() - start:.1f} s", highlight=False)
    return rows


LATENCY_NOTE = (
    "int8 vs fp32 latency on larger models. Untrained zoo models (seed 0; latency does not "
    "depend on weight values) with BatchNorm settled on, and int8 calibrated (min-max) on, "
    f"{LATENCY_CALIBRATION} seeded standard-normal inputs (random, not real data). ORT: 1 "
    f"intra-op thread, median of {ORT_REPEATS} runs after {ORT_WARMUP}; LiteRT: XNNPACK, 1 "
    f"thread, median of {LITERT_REPEATS} after {LITERT_WARMUP}. ORT int8 = qdq.quantize_qdq "
    "(QDQ, per-channel int8 weights, uint8 activations, 7-bit weights if its saturation "
    "check fails); LiteRT int8 = qdq.quantize_tflite_int8. Fastest form: the fastest of "
    f"the {len(INT8_FORMS)} forms below whose max |int8 - fp32| / max |fp32| on "
    f"{FORM_CHECK_SAMPLES} inputs is at most {FORM_ERROR_SLACK}x the package int8's "
    "(random nets have large int8 errors in every form). Profiles: ORT profiler, median µs "
    f"per run over {PROFILE_RUNS} runs (profiling overhead included, so totals exceed the "
    "medians), ops under 1 µs omitted."
)


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
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="only the int8 vs fp32 latency table on larger (>= 5 MMAC) models",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is fastest on a shared 2-core host
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in PAIRS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(PAIRS)}")
    rows = [] if args.latency_only else run(models, args.seeds, args.epochs, args.cache_dir)
    latency = run_latency(Console(stderr=True))
    if args.json:
        print(json.dumps({"compression": rows, "int8_latency": [asdict(r) for r in latency]}))
        return
    if rows:
        print(table(rows) + "\n")
    print(LATENCY_NOTE + "\n")
    print("\n\n".join((latency_table(latency), forms_table(latency), profile_table(latency))))


if __name__ == "__main__":
    main()
