"""`crosslevel compress`: model-level passes on a zoo model, before and after, measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crosslevel.errors import UsageError

if TYPE_CHECKING:  # torch and the passes load only when the command runs: `--help` is fast
    from crosslevel.model.compress import CompressResult
    from crosslevel.model.exits import ExitsResult

ZOO_PREFIX = "zoo:"


def _kib(n: int) -> str:
    return f"{n:,} B ({n / 1024:.1f} KiB)"


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after > 0 else "-"


def result_table(result: CompressResult) -> Table:
    """Before/after columns plus the reduction factor."""
    b, a = result.before, result.after
    table = Table(title=f"{result.config.model} on {result.config.data}: {result.config.label()}")
    for col in ("", "before", "after", "before/after"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("accuracy (ORT, held out)", b.accuracy.percent(), a.accuracy.percent(), "")
    table.add_row("dtype", b.dtype, a.dtype, "")
    for name, key in (("params", "params"), ("MACs", "macs")):
        vb, va = getattr(b, key), getattr(a, key)
        table.add_row(name, f"{vb:,}", f"{va:,}", _ratio(vb, va))
    for name, key in (("flash", "flash_bytes"), ("peak RAM (TFLM greedy)", "peak_ram_bytes")):
        vb, va = getattr(b, key), getattr(a, key)
        table.add_row(name, _kib(vb), _kib(va), _ratio(vb, va))
    table.add_row(
        "latency, measured here (ORT, 1 thread)",
        f"{b.latency_ms:.4f} ms", f"{a.latency_ms:.4f} ms", _ratio(b.latency_ms, a.latency_ms),
    )  # fmt: skip
    if b.predicted_ms is not None and a.predicted_ms is not None:
        table.add_row(
            f"latency on {result.config.device}, {a.predicted_label}",
            f"{b.predicted_ms:.4f} ms", f"{a.predicted_ms:.4f} ms",
            _ratio(b.predicted_ms, a.predicted_ms),
        )  # fmt: skip
    return table


def exits_table(result: ExitsResult) -> Table:
    """One row per exit, then the full model beside the early-exit runtime."""
    cfg = result.config
    table = Table(
        title=f"{cfg.model} on {cfg.data}: early exits (max drop {100 * cfg.max_drop:g} pt)"
    )
    for col in ("exit", "after block", "MACs to exit", "threshold", "accuracy", "share"):
        table.add_column(col, justify="right")
    for e in result.exits:
        last = e.index == len(result.exits) - 1
        table.add_row(
            f"{e.index}" + (" (final)" if last else ""), str(e.after_block),
            f"{e.macs_to_exit:,}", "always" if last else f"{e.threshold:.4f}",
            e.accuracy.percent(), f"{100 * e.share.mean:.1f} %",
        )  # fmt: skip
    full_ms, early_ms = result.full_latency_ms, result.early_latency_ms
    table.add_section()
    table.add_row(
        "full model", "", f"{result.full_macs:,}", "", result.full_accuracy.percent(),
        f"latency {full_ms:.4f} ms",
    )  # fmt: skip
    table.add_row(
        "early exit", "", f"{result.avg_macs.mean:,.0f} avg", "",
        result.early_accuracy.percent(),
        f"latency {early_ms:.4f} ms ({_ratio(full_ms, early_ms)})",
    )  # fmt: skip
    return table


def _write(out: Path, result: CompressResult) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(result.model_onnx)
    written = ["model.onnx", "result.json"]
    if result.model_tflite is not None:
        (out / "model.tflite").write_bytes(result.model_tflite)
        written.insert(1, "model.tflite")
    (out / "result.json").write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return written


def compress_command(
    model: Annotated[
        str, typer.Argument(help="A zoo model with an offline data set, e.g. digits_cnn.")
    ],
    data: Annotated[str, typer.Option("--data", help="digits | mnist1d | basic_motions.")],
    prune: Annotated[
        float | None, typer.Option("--prune", help="Channel pruning ratio in (0, 1).")
    ] = None,
    importance: Annotated[
        str, typer.Option(help="Pruning importance: magnitude | bn | taylor.")
    ] = "magnitude",
    global_pruning: Annotated[
        bool, typer.Option("--global", help="Rank channels across layers (a global budget).")
    ] = False,
    quant: Annotated[str | None, typer.Option("--quant", help="int8: PTQ to ONNX QDQ.")] = None,
    calibration: Annotated[
        str, typer.Option(help="int8 calibration: minmax | percentile | entropy.")
    ] = "minmax",
    qat: Annotated[
        str,
        typer.Option(
            help="int8: quantization-aware fine-tuning: auto (when PTQ loses more "
            "than --qat-threshold on validation samples) | off | always."
        ),
    ] = "auto",
    qat_threshold: Annotated[
        float, typer.Option(help="int8: accuracy points PTQ may lose before QAT runs.")
    ] = 1.0,
    qat_epochs: Annotated[int, typer.Option(help="int8: QAT fine-tuning epochs.")] = 3,
    rank: Annotated[int | None, typer.Option("--rank", help="Low-rank: rank per layer.")] = None,
    energy: Annotated[
        float | None, typer.Option("--energy", help="Low-rank: kept fraction of sum(S^2).")
    ] = None,
    distill: Annotated[
        bool, typer.Option("--distill", help="Fine-tune with KD from the uncompressed model.")
    ] = False,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            help="Fine-tuning epochs per pass (default: the recipe after pruning, half after "
            "low-rank).",
        ),
    ] = None,
    baseline_epochs: Annotated[
        int | None, typer.Option(help="Baseline training epochs (default: per-model recipe).")
    ] = None,
    exits: Annotated[
        str | None,
        typer.Option(
            "--exits",
            help="Early exits after these blocks: indices (0,1), depth fractions (0.5) or "
            "auto (about 1/3 and 2/3 of the blocks). Not combined with other passes.",
        ),
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option("--max-drop", help="Early exits: accuracy points they may cost (default 1)."),
    ] = None,
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds for accuracy (>= 3).")] = 3,
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="Also predict latency on this device.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/compress"),
    cache_dir: Annotated[
        Path | None, typer.Option(help="Baseline cache (default ~/.cache/crosslevel).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print result.json.")] = False,
) -> None:
    """Prune, factorize, distill and quantize a zoo model on real data; before vs after.

    Trained baselines are cached in --cache-dir. Writes OUT/model.onnx (float, or int8
    QDQ), OUT/result.json (crosslevel.compress/1) and, with --quant int8, OUT/model.tflite
    (TFLite-semantics int8, for the memory level and TFLite Micro).

    With --exits: a multi-exit network (heads trained on the frozen backbone, thresholds
    calibrated on held-out data to --max-drop), written as OUT/segment_K.onnx,
    OUT/exit_K.onnx, OUT/exits.json (run by crosslevel.runtime.early_exit),
    OUT/exit_heads.npz, OUT/model.onnx (the full model) and OUT/result.json
    (crosslevel.compress_exits/1); --epochs is then the heads' training epochs
    (default: the baseline's recipe).
    """
    name = model[len(ZOO_PREFIX) :] if model.startswith(ZOO_PREFIX) else model
    others = {"--prune": prune, "--quant": quant, "--rank": rank, "--energy": energy,
              "--distill": distill or None, "--device": device}  # fmt: skip
    if exits is None and max_drop is not None:
        raise UsageError("--max-drop applies to --exits only")
    if exits is not None:
        given = [flag for flag, value in others.items() if value is not None]
        if given:
            raise UsageError(f"--exits does not combine with {', '.join(given)} yet")
        drop = 0.01 if max_drop is None else max_drop / 100
        _run_exits(name, data, exits, drop, epochs, baseline_epochs, seeds, out, cache_dir, as_json)
        return
    import torch

    from crosslevel.model.compress import CompressConfig, compress

    cfg = CompressConfig(
        model=name, data=data, prune=prune, importance=importance,
        global_pruning=global_pruning, quant=quant, calibration=calibration, qat=qat,
        qat_threshold=qat_threshold, qat_epochs=qat_epochs, rank=rank,
        energy=energy, distill=distill, epochs=epochs, seeds=seeds, device=device,
        baseline_epochs=baseline_epochs,
    )  # fmt: skip
    cfg.validate()
    # One intra-op thread: these models are tiny, and on a shared 2-core machine torch's
    # default threads oversubscribe (measured: 20 digits epochs 9 s with 1 thread, 150 s
    # with the default under load). Latency is measured with 1 ORT thread too.
    torch.set_num_threads(1)
    err = Console(stderr=True)
    log: Any = None if as_json else (lambda msg: err.print(msg, highlight=False))
    result = compress(cfg, cache_dir=cache_dir, progress=not as_json, log=log)
    written = _write(out, result)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(result_table(result))
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    console.print(f"wrote {', '.join(str(out / f) for f in written)}")


def _run_exits(
    name: str, data: str, exits: str, max_drop: float, epochs: int | None,
    baseline_epochs: int | None, seeds: int, out: Path, cache_dir: Path | None, as_json: bool,
) -> None:  # fmt: skip
    import torch

    from crosslevel.model.exits import ExitConfig, compress_exits

    cfg = ExitConfig(
        model=name, data=data, exits=exits, max_drop=max_drop, epochs=epochs,
        baseline_epochs=baseline_epochs, seeds=seeds,
    )  # fmt: skip
    cfg.validate()
    torch.set_num_threads(1)  # as for the other passes (see compress_command)
    err = Console(stderr=True)
    log: Any = None if as_json else (lambda msg: err.print(msg, highlight=False))
    result = compress_exits(cfg, out, cache_dir=cache_dir, progress=not as_json, log=log)
    doc = result.to_json()
    (out / "result.json").write_text(json.dumps(doc, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(exits_table(result))
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    files = ", ".join(str(out / f) for f in [*result.files, "result.json"])
    console.print(f"wrote {files}", highlight=False)


__all__ = ["compress_command", "exits_table", "result_table"]
