"""One federated run through Flower's deployment engine on loopback.

The harness starts a SuperLink and one SuperNode per client as subprocesses
(``flower-superlink --insecure``, ``flower-supernode --insecure``), all bound to
127.0.0.1 on free ports, with a private ``FLWR_HOME`` (Flower's config and installed
apps) inside a temporary folder. With ``flwr run`` it submits a Flower App whose
``pyproject.toml`` names ``server_app`` below and ``federated_client.client_app``; the
ServerApp runs the same ``federated.serve`` as the simulation and writes its result as
JSON to a path in the run config, which the harness reads back (no pickles). Runtime
dependency installation is disabled: the apps come from this installed package.
Everything is bounded by a deadline and every process started is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from crosslevel.distributed import federated_client
from crosslevel.distributed.federated import (
    ClientReport,
    FederateConfig,
    FederatedError,
    FederateResult,
    ServerPlan,
    serve,
)
from crosslevel.model import elastic
from crosslevel.model.train import load_checkpoint, load_state, save_checkpoint

DEPLOY_TIMEOUT_S = 240.0
CHECKPOINT = "model.npz"  # beside the result file: the global model's weights

server_app = ServerApp()


def _config_from_run(run_config: dict[str, Any]) -> FederateConfig:
    """The FederateConfig from Flower's run config (which has no lists: widths and
    devices travel as comma-separated strings)."""
    return FederateConfig(
        clients=int(run_config["clients"]), rounds=int(run_config["rounds"]),
        data=str(run_config["data"]), model=str(run_config["model"]) or None,
        strategy=str(run_config["strategy"]), alpha=float(run_config["alpha"]),
        widths=tuple(float(w) for w in str(run_config["widths"]).split(",")),
        devices=tuple(str(run_config["devices"]).split(",")),
        local_epochs=int(run_config["local-epochs"]), batch_size=int(run_config["batch-size"]),
        lr=float(run_config["lr"]), proximal_mu=float(run_config["proximal-mu"]),
        seed=int(run_config["seed"]),
    )  # fmt: skip


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    """Serve the run, then write the checkpoint and the result JSON for the harness; on
    failure write the error instead, so the harness reports it rather than timing out."""
    path = Path(str(context.run_config["result-path"]))
    doc: dict[str, Any] = {"error": "the ServerApp was interrupted"}
    try:
        doc = _serve_deployed(grid, dict(context.run_config), path.with_name(CHECKPOINT))
    except Exception as exc:
        doc = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    finally:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, default=str))
        tmp.replace(path)  # atomic: the harness never sees half a file


def _serve_deployed(grid: Grid, run_config: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    cfg = _config_from_run(run_config)
    clients = [ClientReport(**c) for c in json.loads(str(run_config["plan"]))]
    result = serve(grid, ServerPlan.make(cfg, clients), on_round=lambda r, a: None)
    result.engine = "deployment"
    assert result.model is not None
    save_checkpoint(result.model, checkpoint)  # plain arrays, no pickle
    return result.to_json()


def _run_config(cfg: FederateConfig, plan: ServerPlan, result_path: Path) -> dict[str, Any]:
    return {
        "plan": json.dumps([asdict(c) for c in plan.clients]),
        "clients": cfg.clients, "rounds": cfg.rounds, "data": cfg.data,
        "model": cfg.model or "", "strategy": cfg.strategy, "alpha": cfg.alpha,
        "widths": ",".join(str(w) for w in cfg.widths), "devices": ",".join(cfg.devices),
        "local-epochs": cfg.local_epochs, "batch-size": cfg.batch_size, "lr": cfg.lr,
        "proximal-mu": cfg.proximal_mu, "seed": cfg.seed, "result-path": str(result_path),
    }  # fmt: skip


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML's basic strings, integers and floats are JSON's


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    """A minimal Flower App project (pyproject.toml only) naming our two apps."""
    app = folder / "app"
    app.mkdir(parents=True)
    config_lines = "\n".join(f"{k} = {_toml_value(v)}" for k, v in run_config.items())
    (app / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n\n'
        '[project]\nname = "crosslevel-federate"\nversion = "1.0.0"\n'
        'description = "crosslevel federated fine-tuning"\nlicense = "Apache-2.0"\n'
        "dependencies = []\n\n"
        '[tool.flwr.app]\npublisher = "crosslevel"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{__name__}:server_app"\n'
        f'clientapp = "{federated_client.__name__}:client_app"\n\n'
        f"[tool.flwr.app.config]\n{config_lines}\n"
    )
    return app


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    """A Flower console script of this interpreter's environment."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        raise FederatedError(f"{name} is not installed (pip install 'flwr[simulation]')")
    return found


def _flower_env(home: Path) -> dict[str, str]:
    """Our environment with a private FLWR_HOME, and this interpreter's scripts first on
    PATH: the SuperLink starts ``flower-superexec`` by name, and a venv used without
    activation (``.venv/bin/python -m pytest``, as CI does) is not on PATH."""
    scripts = str(Path(sys.executable).parent)
    path = os.pathsep.join([scripts, os.environ.get("PATH", "")])
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path}


def _start(
    stack: ExitStack, argv: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, logging to ``log``; stopped on exit."""
    handle = stack.enter_context(open(log, "wb"))
    proc = subprocess.Popen(
        argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    stack.callback(_stop, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created (Flower's app subprocesses are in it), then
    SIGKILL what is left after a grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5.0)
            return
        except subprocess.TimeoutExpired:
            continue


def deploy(cfg: FederateConfig, timeout_s: float = DEPLOY_TIMEOUT_S) -> FederateResult:
    """Run ``cfg`` with a SuperLink and ``cfg.clients`` SuperNodes on loopback."""
    cfg.validate()
    plan = ServerPlan.make(cfg)  # infeasible widths fail here, before any process starts
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crosslevel-flower-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        env = _flower_env(folder / "flwr_home")
        link_port = _free_port()
        (folder / "flwr_home").mkdir()
        (folder / "flwr_home" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
        )
        link = _start(stack, [
            _tool("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(link_port),
        ], env, folder / "superlink.log")  # fmt: skip
        nodes = [
            _start(
                stack,
                [
                    _tool("flower-supernode"),
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(_free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={cfg.clients}",
                ],
                env,
                folder / f"supernode{i}.log",
            )  # fmt: skip
            for i in range(cfg.clients)
        ]
        result_path = folder / "result.json"
        app = write_app(folder, _run_config(cfg, plan, result_path))
        deadline = time.monotonic() + timeout_s
        _wait_for_port(link_port, deadline)
        _submit(app, env, link, deadline, folder)
        result = _wait_result(result_path, [link, *nodes], deadline, folder)
    result.seconds = time.perf_counter() - start
    return result


def _wait_for_port(port: int, deadline: float) -> None:
    """Until the SuperLink listens (each failed ``flwr run`` would cost seconds)."""
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FederatedError(f"the SuperLink did not listen on 127.0.0.1:{port} in time")


def _submit(
    app: Path, env: dict[str, str], link: subprocess.Popen[bytes], deadline: float, folder: Path
) -> None:
    """``flwr run`` until the SuperLink accepts the run (it may still be starting).

    ``flwr run --format json`` exits 0 even when the SuperLink is unreachable; its
    JSON's ``success`` says whether a run was created.
    """
    while True:
        done = subprocess.run(
            [_tool("flwr"), "run", str(app), "local", "--format", "json"],
            env=env, capture_output=True, timeout=max(1.0, deadline - time.monotonic()),
        )  # fmt: skip
        answer = done.stdout.decode(errors="replace")
        try:
            if json.loads(answer).get("success") is True:
                return
        except ValueError:
            pass
        if link.poll() is not None or time.monotonic() > deadline:
            tail = (folder / "superlink.log").read_text(errors="replace")[-400:]
            raise FederatedError(f"flwr run failed: {answer[-300:]}; SuperLink log ends: {tail}")
        time.sleep(1.0)


def _wait_result(
    path: Path, procs: list[subprocess.Popen[bytes]], deadline: float, folder: Path
) -> FederateResult:
    while not path.exists():
        dead = [p.args[0] for p in procs if p.poll() is not None]  # type: ignore[index]
        if dead or time.monotonic() > deadline:
            why = f"{dead} exited" if dead else "timed out"
            tail = (folder / "superlink.log").read_text(errors="replace")[-400:]
            raise FederatedError(f"deployment run {why}; SuperLink log ends: {tail}")
        time.sleep(0.5)
    doc = json.loads(path.read_text())
    if "error" in doc:
        raise FederatedError(f"the deployed ServerApp failed: {doc['error']}")
    result = _result_from_json(doc)
    state, _ = load_checkpoint(path.with_name(CHECKPOINT))
    model = elastic.build_at_width(result.config.model_name, result.eval_width)
    load_state(model, state, where="the deployed server's checkpoint")
    result.model = model.eval()
    return result


def _result_from_json(doc: dict[str, Any]) -> FederateResult:
    cfg = doc["config"]
    config = FederateConfig(
        **{**cfg, "widths": tuple(cfg["widths"]), "devices": tuple(cfg["devices"])}
    )
    return FederateResult(
        config=config, engine=doc["engine"], eval_width=doc["eval_width"],
        accuracy_per_round=doc["accuracy_per_round"],
        train_loss_per_round=doc["train_loss_per_round"],
        clients=[ClientReport(**c) for c in doc["clients"]], seconds=doc["seconds"],
    )  # fmt: skip
