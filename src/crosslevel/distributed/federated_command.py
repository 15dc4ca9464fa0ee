"""`crosslevel federate`: federated fine-tuning with Flower (simulation or deployment)."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from crosslevel.errors import UsageError

if TYPE_CHECKING:  # torch, Flower and Ray load only when the command runs
    from crosslevel.distributed.federated import FederateConfig, FederateResult


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def rounds_table(result: FederateResult) -> Table:
    title = f"{result.config.model_name} on {result.config.data}: held-out accuracy"
    table = Table(title=title)
    for col in ("round", f"accuracy (width {result.eval_width:g})", "mean client train loss"):
        table.add_column(col, justify="right")
    losses = [None, *result.train_loss_per_round]
    for i, acc in enumerate(result.accuracy_per_round):
        loss = losses[i] if i < len(losses) else None
        table.add_row(str(i), f"{acc:.2%}", "-" if loss is None else f"{loss:.4f}")
    return table


def clients_table(result: FederateResult) -> Table:
    table = Table(title="clients (bytes: Flower ArrayRecord payloads over the run)")
    cols = ("client", "device", "width", "params", "RAM (TFLM greedy)", "flash", "samples",
            "received", "sent")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col == "device" else "right")
    for c in result.clients:
        table.add_row(
            str(c.client), c.device, f"{c.width:g}", f"{c.params:,}", f"{c.ram_bytes:,} B",
            f"{c.flash_bytes:,} B", str(c.samples), f"{c.downloaded_bytes:,} B",
            f"{c.uploaded_bytes:,} B",
        )  # fmt: skip
    return table


def federate_command(
    clients: Annotated[int, typer.Option("--clients", help="Simulated devices (clients).")] = 3,
    rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = 3,
    data: Annotated[str, typer.Option("--data", help="Offline data set: digits | mnist1d.")] = (
        "digits"
    ),
    model: Annotated[
        str | None,
        typer.Option("--model", help="Zoo model with elastic width (default: the data set's)."),
    ] = None,
    strategy: Annotated[str, typer.Option(help="fedavg | fedprox.")] = "fedavg",
    alpha: Annotated[
        float, typer.Option("--alpha", help="Dirichlet concentration: small = more non-IID.")
    ] = 0.5,
    widths: Annotated[
        str, typer.Option(help="Candidate sub-model widths, widest that fits is used.")
    ] = "1.0,0.5,0.25",
    devices: Annotated[
        str, typer.Option(help="Catalogue devices given to clients in turn.")
    ] = "rpi4,stm32f746,stm32g031k8",
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 2,
    lr: Annotated[float, typer.Option(help="Client SGD learning rate.")] = 0.05,
    mu: Annotated[float, typer.Option("--mu", help="FedProx proximal weight.")] = 0.01,
    seed: Annotated[int, typer.Option(help="Seed of split, init and training.")] = 0,
    deployment: Annotated[
        bool,
        typer.Option(
            "--deployment",
            help="Run on Flower's deployment engine: a SuperLink and one SuperNode per "
            "client on 127.0.0.1 (subprocesses), instead of the Ray simulation.",
        ),
    ] = False,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out/federate"),
    as_json: Annotated[bool, typer.Option("--json", help="Print result.json.")] = False,
) -> None:
    """Fine-tune a zoo model across simulated devices with Flower (FedAvg or FedProx).

    Each client gets a non-IID Dirichlet share of the data set and the widest elastic-width
    sub-model that fits its device (HeteroFL averaging). Reports held-out accuracy of the
    global model per round and bytes received/sent per client. Writes OUT/result.json
    (crosslevel.federate/1), OUT/model.npz (plain-array checkpoint) and OUT/model.onnx.
    """
    from crosslevel.distributed.federated import FederateConfig

    cfg = FederateConfig(
        clients=clients, rounds=rounds, data=data, model=model, strategy=strategy,
        alpha=alpha, widths=_floats(widths, "--widths"), devices=_names(devices),
        local_epochs=local_epochs, lr=lr, proximal_mu=mu, seed=seed,
    )  # fmt: skip
    cfg.validate()
    result = _run(cfg, deployment, progress=not as_json)
    written = _write(out, result)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2, default=str))
        return
    console = Console(width=None if sys.stdout.isatty() else 140)
    console.print(rounds_table(result))
    console.print(clients_table(result))
    console.print(f"{result.engine} engine, {result.seconds:.1f} s; wrote {', '.join(written)}")


def _write(out: Path, result: FederateResult) -> list[str]:
    """OUT/result.json, the global model as a plain-array checkpoint and as ONNX."""
    from crosslevel.ir.torch_io import export_torch_onnx
    from crosslevel.model.train import save_checkpoint
    from crosslevel.model.zoo import ZOO

    out.mkdir(parents=True, exist_ok=True)
    doc = result.to_json()
    (out / "result.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    assert result.model is not None
    meta = {"model": result.config.model_name, "width": result.eval_width, "federate": True}
    save_checkpoint(result.model, out / "model.npz", meta)
    shape = (1, *ZOO[result.config.model_name].input_shape)
    (out / "model.onnx").write_bytes(export_torch_onnx(result.model, shape))
    return [str(out / name) for name in ("result.json", "model.npz", "model.onnx")]


def _run(cfg: FederateConfig, deployment: bool, progress: bool) -> FederateResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from crosslevel.distributed.federated import simulate

    err = Console(stderr=True)
    if deployment:
        from crosslevel.distributed.federated_deploy import deploy

        status = err.status("Flower deployment engine running") if progress else nullcontext()
        with status:
            return deploy(cfg)
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("round {task.completed}/{task.total}  accuracy {task.fields[acc]}"),
        TimeElapsedColumn(), console=err, disable=not progress, transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("federated (Ray starting)", total=cfg.rounds, acc="-")

        def on_round(server_round: int, accuracy: float) -> None:
            bar.update(task, completed=server_round, acc=f"{accuracy:.1%}", description="federated")

        return simulate(cfg, on_round)


__all__ = ["federate_command"]
