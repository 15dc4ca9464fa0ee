"""`crosslevel analyze`: the per-layer and memory report a TinyML engineer expects.

Modelled on STM32's `stedgeai analyze`: a per-layer table, totals (params, flash, MACs),
peak activation RAM without reuse, with TFLM's greedy planner and the lower bound for the
file's order, and, for a device, whether the model fits and what it would cost (predicted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from crosslevel.ir.graph import Graph
from crosslevel.ir.load import LoadedModel
from crosslevel.ir.ops import node_macs
from crosslevel.memory.lifetimes import (
    TFLM_ALIGNMENT,
    buffers_for_order,
    no_reuse_bytes,
    peak_live_bytes,
)
from crosslevel.memory.scratch import unknown_scratch_ops
from crosslevel.memory.tflm_greedy import plan_tflm_greedy

REPORT_FORMAT = "crosslevel.analyze/1"


@dataclass
class LayerRow:
    name: str
    op: str
    activation: str
    output_shape: list[int]
    params: int
    weight_bytes: int
    macs: int
    activation_bytes: int


@dataclass
class MemoryFigures:
    """Peak activation RAM (bytes) under DESIGN.md's memory model, TFLM alignment."""

    alignment: int
    no_reuse_bytes: int
    tflm_greedy_bytes: int
    lower_bound_bytes: int  # largest live sum at one step, for the file's order
    unknown_scratch_ops: list[str]
    tflm_measured_head_bytes: int | None = None  # from the real tflite-micro interpreter
    tflm_measured_tail_bytes: int | None = None
    tflm_measure_error: str | None = None


@dataclass
class DeviceFit:
    device: str
    ram_what: str
    ram_bytes: int
    flash_bytes: int | None
    needs_ram_bytes: int
    needs_flash_bytes: int
    fits_ram: bool
    fits_flash: bool
    latency_ms: float
    energy_mj: float
    latency_label: str


@dataclass
class AnalyzeReport:
    model: str
    kind: str
    layout: str
    dtypes: list[str]
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int]]
    layers: list[LayerRow]
    params: int
    weight_bytes: int
    file_bytes: int | None
    macs: int
    memory: MemoryFigures
    device: DeviceFit | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": REPORT_FORMAT, **asdict(self)}


def layer_rows(graph: Graph) -> list[LayerRow]:
    rows = []
    for node in graph.nodes:
        consts = [graph.tensors[i] for i in node.inputs if i and graph.tensors[i].is_constant]
        out = graph.tensors[node.outputs[0]]
        rows.append(
            LayerRow(
                name=node.name,
                op=node.op,
                activation=str(node.attrs.get("activation", "NONE")),
                output_shape=list(out.shape),
                params=sum(t.num_elements for t in consts),
                weight_bytes=sum(t.nbytes for t in consts),
                macs=node_macs(graph, node),
                activation_bytes=sum(graph.tensors[o].nbytes for o in node.outputs if o),
            )
        )
    return rows


def memory_figures(graph: Graph, alignment: int = TFLM_ALIGNMENT) -> MemoryFigures:
    """Peak RAM with no reuse, with TFLM's greedy planner, and the file-order bound."""
    buffers = buffers_for_order(graph, alignment=alignment)
    return MemoryFigures(
        alignment=alignment,
        no_reuse_bytes=no_reuse_bytes(buffers),
        tflm_greedy_bytes=plan_tflm_greedy(buffers).arena_bytes,
        lower_bound_bytes=peak_live_bytes(buffers),
        unknown_scratch_ops=unknown_scratch_ops(graph),
    )


def _measure_tflm(model: LoadedModel, memory: MemoryFigures) -> None:
    """Add TFLM's own head/tail numbers (measured) for a .tflite source."""
    from crosslevel.errors import CrosslevelError
    from crosslevel.runtime.tflm import measure_tflm_arena

    assert model.file_bytes is not None
    try:
        arena = measure_tflm_arena(model.file_bytes)
    except CrosslevelError as exc:
        memory.tflm_measure_error = str(exc)
        return
    memory.tflm_measured_head_bytes = arena.head_bytes
    memory.tflm_measured_tail_bytes = arena.tail_bytes


def analyze(
    model: LoadedModel,
    device: str | None = None,
    measure: bool = True,
    graph_passes: bool = True,
    calibration: Any = None,
) -> AnalyzeReport:
    """Build the report; ``measure`` runs the real TFLM interpreter for .tflite files.

    ONNX and zoo models are reported after the accuracy-preserving graph passes (as they
    would be deployed); a .tflite file is reported as it is, since TFLM runs it as it is.
    """
    graph = model.graph
    notes = []
    if graph_passes and model.kind != "tflite":
        from crosslevel.graph import optimize_graph

        before = len(graph.nodes)
        graph = optimize_graph(graph)
        notes.append(
            f"graph passes applied (constant/BN folding, activation fusion, identity and "
            f"dead-code removal): {before} -> {len(graph.nodes)} operators"
        )
    layers = layer_rows(graph)
    memory = memory_figures(graph)
    if measure and model.kind == "tflite":
        _measure_tflm(model, memory)
    # Shared constant buffers count once, as they are stored once in flash.
    weight_bytes = sum(t.nbytes for t in graph.constants())
    report = AnalyzeReport(
        model=model.source,
        kind=model.kind,
        layout=graph.layout,
        dtypes=sorted({t.dtype for t in graph.activations()}),
        inputs={n: list(graph.tensors[n].shape) for n in graph.inputs},
        outputs={n: list(graph.tensors[n].shape) for n in graph.outputs},
        layers=layers,
        params=sum(t.num_elements for t in graph.constants()),
        weight_bytes=weight_bytes,
        file_bytes=len(model.file_bytes) if model.file_bytes is not None else None,
        macs=sum(r.macs for r in layers),
        memory=memory,
        notes=notes,
    )
    if memory.unknown_scratch_ops:
        report.notes.append(
            "scratch rule unknown for "
            + ", ".join(memory.unknown_scratch_ops)
            + ": the TFLM-greedy figure excludes their scratch; trust the measured TFLM head"
        )
    if device is not None:
        report.device = device_fit(graph, report, device, calibration)
    return report


def device_fit(
    graph: Graph, report: AnalyzeReport, device_name: str, calibration: Any = None
) -> DeviceFit:
    """Does it fit the device, and what latency and energy are predicted there.

    RAM needed is the activation arena (TFLM's measured head when we have it, else our
    restatement of its planner); flash needed is the model file, else the weights. A device
    without a flash figure (DRAM boards that boot from storage) never runs out of it.
    """
    from crosslevel.hardware.cost_model import predict_latency
    from crosslevel.hardware.devices import get_device

    device = get_device(device_name)
    mem = report.memory
    if mem.tflm_measured_head_bytes is not None and mem.tflm_measured_tail_bytes is not None:
        ram_what = "RAM (TFLM arena: head + tail, measured)"
        needs_ram = mem.tflm_measured_head_bytes + mem.tflm_measured_tail_bytes
    else:
        ram_what = "RAM (activation arena, TFLM greedy)"
        needs_ram = mem.tflm_greedy_bytes
    needs_flash = report.file_bytes or report.weight_bytes
    prediction = predict_latency(graph, device, calibration)
    return DeviceFit(
        device=device.name,
        ram_what=ram_what,
        ram_bytes=device.memory_bytes,
        flash_bytes=device.flash_bytes,
        needs_ram_bytes=needs_ram,
        needs_flash_bytes=needs_flash,
        fits_ram=needs_ram <= device.memory_bytes,
        fits_flash=device.flash_bytes is None or needs_flash <= device.flash_bytes,
        latency_ms=prediction.total_ms,
        energy_mj=prediction.energy_mj,
        latency_label=prediction.label,
    )


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n:,} B ({n / 1024:.1f} KiB)"


def render(report: AnalyzeReport, console: Any) -> None:
    """Print the report with Rich: layers, totals, memory, device."""
    from rich.table import Table

    table = Table(
        title=f"{report.model} ({report.kind}, {report.layout}, {'/'.join(report.dtypes)})"
    )
    for col in ("#", "layer", "op", "output", "params", "MACs", "act. bytes"):
        table.add_column(col, justify="right" if col not in ("layer", "op", "output") else "left")
    for i, row in enumerate(report.layers):
        op = row.op if row.activation == "NONE" else f"{row.op}+{row.activation}"
        table.add_row(
            str(i),
            row.name[-40:],
            op,
            "x".join(map(str, row.output_shape)),
            f"{row.params:,}",
            f"{row.macs:,}",
            f"{row.activation_bytes:,}",
        )
    console.print(table)
    mem = report.memory
    summary = Table(show_header=False, title="totals")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("params", f"{report.params:,}")
    summary.add_row("weights (flash)", _kib(report.weight_bytes))
    if report.file_bytes is not None:
        summary.add_row("model file", _kib(report.file_bytes))
    summary.add_row("MACs", f"{report.macs:,}")
    summary.add_row(
        f"activation RAM, no reuse ({mem.alignment}-B aligned)", _kib(mem.no_reuse_bytes)
    )
    summary.add_row(
        "activation RAM, TFLM greedy planner (ours, restated)", _kib(mem.tflm_greedy_bytes)
    )
    summary.add_row("lower bound for this operator order", _kib(mem.lower_bound_bytes))
    if mem.tflm_measured_head_bytes is not None:
        summary.add_row(
            "TFLM head arena, measured (tflite-micro)", _kib(mem.tflm_measured_head_bytes)
        )
        summary.add_row(
            "TFLM tail arena, measured (tflite-micro)", _kib(mem.tflm_measured_tail_bytes)
        )
    if mem.tflm_measure_error:
        summary.add_row("TFLM measurement", f"failed: {mem.tflm_measure_error}")
    console.print(summary)
    if report.device is not None:
        _render_device(report.device, console)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


def _render_device(fit: DeviceFit, console: Any) -> None:
    from rich.table import Table

    def verdict(ok: bool) -> str:
        return "[green]fits[/green]" if ok else "[red]does not fit[/red]"

    table = Table(title=f"on {fit.device}")
    for col in ("resource", "needs", "has", "verdict"):
        table.add_column(col)
    table.add_row(
        fit.ram_what, _kib(fit.needs_ram_bytes), _kib(fit.ram_bytes), verdict(fit.fits_ram)
    )
    table.add_row(
        "flash", _kib(fit.needs_flash_bytes), _kib(fit.flash_bytes), verdict(fit.fits_flash)
    )
    table.add_row("latency", f"{fit.latency_ms:.3f} ms", "", fit.latency_label)
    table.add_row("energy", f"{fit.energy_mj:.4f} mJ", "", fit.latency_label)
    console.print(table)
