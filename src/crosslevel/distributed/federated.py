"""Federated fine-tuning with Flower: non-IID clients, FedAvg/FedProx, HeteroFL widths.

Each client owns a Dirichlet(alpha) share of an offline data set's training split (a
small alpha gives each client few classes: the non-IID case of Hsu et al. 2019) and a
device from the catalogue. The server sends every client the widest elastic-width
sub-model (``model.elastic``) that fits its device, judged by the memory level's
figures for the float sub-model as deployed (TFLM-greedy activation arena against the
device's RAM, weight bytes against its flash). Clients train their slice locally (SGD;
FedProx adds ``mu/2 * ||w - w_global||^2``) and send it back; the server averages each
parameter element over the clients that hold it, weighted by their sample counts
(HeteroFL, Diao et al. 2021; with equal widths this is exactly FedAvg). BatchNorm
running statistics are the exception: they are width-specific, so the global model
keeps those of its widest clients (measured: digits, 4 clients, 5 rounds, seeds 0/1:
91.4/97.2 % instead of 84.7/95.0 % when narrow clients' statistics were averaged in;
HeteroFL itself sidesteps this with "static" BN). After every
round the global model (the widest any client trains: the full model unless every
device is small) is scored on the held-out split.

Flower does the messaging: ``flwr.serverapp.strategy.FedAvg``/``FedProx`` run the rounds
and a HeteroFL subclass changes only what each node is sent and how replies are
averaged. Parameters travel as Flower ``ArrayRecord``s, i.e. NumPy arrays that Flower
serializes with ``np.save(allow_pickle=False)``; nothing here pickles. Bytes sent and
received per client are the ArrayRecord payloads (``count_bytes``), not transport framing.
The simulation engine runs clients in a small Ray (2 CPUs, 1 per client, quiet logs);
``federated_deploy`` runs the same apps through Flower's deployment engine.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from torch import nn

from crosslevel.distributed.federated_client import (
    dirichlet_partition,
    from_record,
    make_client_app,
    state_arrays,
    to_record,
)
from crosslevel.errors import CrosslevelError, InfeasibleError, UsageError
from crosslevel.model import elastic
from crosslevel.model.baselines import check_pair
from crosslevel.model.datasets import Dataset, load_dataset
from crosslevel.model.evaluate import accuracy_torch

RESULT_FORMAT = "crosslevel.federate/1"
STRATEGIES = ("fedavg", "fedprox")
DATA_MODELS = {"digits": "digits_cnn", "mnist1d": "mnist1d_cnn"}  # the offline data sets
MAX_CLIENTS = 64  # a laptop-sized simulation; more nodes only queue on 2 CPUs
ROUND_TIMEOUT_S = 600.0
BN_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm buffers


class FederatedError(CrosslevelError):
    """A client or the Flower runtime failed during a run (exit 1, one message)."""


@dataclass(frozen=True)
class FederateConfig:
    """One federated run. ``devices`` are assigned to clients in turn (client i gets
    ``devices[i % len(devices)]``); ``widths`` are the candidate sub-model widths."""

    clients: int = 3
    rounds: int = 3
    data: str = "digits"
    model: str | None = None  # None: the data set's zoo model
    strategy: str = "fedavg"
    alpha: float = 0.5
    widths: tuple[float, ...] = (1.0, 0.5, 0.25)
    devices: tuple[str, ...] = ("rpi4", "stm32f746", "stm32g031k8")
    local_epochs: int = 2
    batch_size: int = 32
    lr: float = 0.05
    proximal_mu: float = 0.01
    seed: int = 0

    @property
    def model_name(self) -> str:
        return self.model or DATA_MODELS.get(self.data, "")

    def validate(self) -> None:
        """UsageError (exit 2) for any option out of range, before Ray or Flower start."""
        if not 1 <= self.clients <= MAX_CLIENTS:
            raise UsageError(f"--clients must be in 1..{MAX_CLIENTS}, got {self.clients}")
        if self.rounds < 1 or self.local_epochs < 1 or self.batch_size < 2:
            raise UsageError("--rounds and local epochs must be >= 1, the batch size >= 2")
        if self.data not in DATA_MODELS:
            raise UsageError(f"unknown data set {self.data!r}; use {', '.join(DATA_MODELS)}")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {self.strategy!r}; use {', '.join(STRATEGIES)}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise UsageError(f"--alpha must be a positive number, got {self.alpha}")
        if not (self.lr > 0 and self.proximal_mu >= 0):
            raise UsageError("the learning rate must be > 0 and the proximal mu >= 0")
        if not self.widths or not self.devices:
            raise UsageError("give at least one width and one device")
        for width in self.widths:
            elastic.check_width(self.model_name, width)
        from crosslevel.hardware.devices import get_device

        for device in self.devices:
            get_device(device)


# --------------------------------------------------------------------------- widths


@dataclass(frozen=True)
class WidthFit:
    """Deployed size of a sub-model (float32 IR after the graph level's passes)."""

    width: float
    params: int
    flash_bytes: int
    ram_bytes: int  # TFLM-greedy activation arena


def width_fits(model: str, widths: Iterable[float]) -> dict[float, WidthFit]:
    """The memory level's figures of each width's sub-model (one ONNX export each)."""
    from crosslevel.model.compress import float_graph, graph_figures
    from crosslevel.model.zoo import ZOO

    fits = {}
    for width in sorted(set(widths), reverse=True):
        figures = graph_figures(
            float_graph(elastic.build_at_width(model, width).eval(), ZOO[model].input_shape)
        )
        fits[width] = WidthFit(
            width, figures["params"], figures["flash_bytes"], figures["peak_ram_bytes"]
        )
    return fits


def choose_width(device_name: str, fits: dict[float, WidthFit]) -> WidthFit:
    """The widest candidate whose arena fits the device's RAM and weights its flash."""
    from crosslevel.hardware.devices import get_device

    device = get_device(device_name)
    for width in sorted(fits, reverse=True):
        fit = fits[width]
        if fit.ram_bytes <= device.memory_bytes and (
            device.flash_bytes is None or fit.flash_bytes <= device.flash_bytes
        ):
            return fit
    smallest = fits[min(fits)]
    raise InfeasibleError(
        f"no candidate width fits {device.name} ({device.memory_bytes:,} B RAM, "
        f"{device.flash_bytes or 0:,} B flash): width {smallest.width} needs "
        f"{smallest.ram_bytes:,} B RAM and {smallest.flash_bytes:,} B flash; add a smaller width"
    )


# --------------------------------------------------------------------------- HeteroFL


def heterofl_aggregate(
    global_arrays: dict[str, np.ndarray], updates: Sequence[tuple[dict[str, np.ndarray], float]]
) -> dict[str, np.ndarray]:
    """Average every element over the updates that hold it, weighted; others unchanged.

    Each update holds, per entry, the leading block ``[:n0, :n1, ...]`` of the global
    array (a channel-prefix sub-model). Integer entries (BatchNorm's batch counter) are
    averaged and rounded.
    """
    out = {}
    for key, current in global_arrays.items():
        total = np.zeros(current.shape, np.float64)
        weight = np.zeros(current.shape, np.float64)
        for arrays, w in updates:
            block = tuple(slice(0, n) for n in arrays[key].shape)
            total[block] += w * arrays[key].astype(np.float64)
            weight[block] += w
        held = weight > 0
        mean = np.where(held, total / np.where(held, weight, 1.0), current)
        if np.issubdtype(current.dtype, np.integer):
            mean = np.rint(mean)
        out[key] = mean.astype(current.dtype)
    return out


@dataclass
class Traffic:
    """ArrayRecord bytes to and from one node over the run."""

    downloaded_bytes: int = 0
    uploaded_bytes: int = 0


class HeteroFL:
    """Mixin for Flower's FedAvg/FedProx: per-node sub-models and HeteroFL averaging.

    ``width_of`` gives each Flower node id its width; ``slices`` holds each width's
    slice map. Sampling, configs (server round, FedProx's ``proximal-mu``), logging and
    metric averaging stay Flower's. Each training reply names the client (partition)
    it came from, which maps node ids to clients for the traffic report.
    """

    width_of: Callable[[int], float]
    slices: dict[float, elastic.SliceMap]
    traffic: dict[int, Traffic]
    node_partition: dict[int, int]
    _global: dict[str, np.ndarray]

    def setup(
        self, width_of: Callable[[int], float], slices: dict[float, elastic.SliceMap]
    ) -> None:
        self.width_of, self.slices = width_of, slices
        self.traffic = defaultdict(Traffic)
        self.node_partition = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]
        self._global = from_record(arrays)
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            width = self.width_of(node)
            sub = to_record({k: self._global[k][s] for k, s in self.slices[width].items()})
            node_config = ConfigRecord({**msg.content["config"], "width": width})
            self.traffic[node].downloaded_bytes += sub.count_bytes()
            content = RecordDict({"arrays": sub, "config": node_config})
            out.append(Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN))
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, failed = self._check_and_log_replies(replies, is_train=True)  # type: ignore[attr-defined]
        if failed:
            reasons = "; ".join(
                f"node {m.metadata.src_node_id}: {_last_line(m.error.reason)}" for m in failed
            )
            raise FederatedError(f"round {server_round}: {len(failed)} client(s) failed: {reasons}")
        updates, widths = [], []
        for msg in valid:
            sender = msg.metadata.src_node_id
            widths.append(self.width_of(sender))
            record = msg.content.array_records["arrays"]
            self.traffic[sender].uploaded_bytes += record.count_bytes()
            node: dict[str, Any] = dict(msg.content.config_records["node"])
            self.node_partition[sender] = int(node["partition-id"])
            arrays = from_record(record)
            self.check_update(sender, arrays)
            reported: dict[str, Any] = dict(msg.content.metric_records["metrics"])
            updates.append((arrays, float(reported["num-examples"])))
        merged = heterofl_aggregate(self._global, updates)
        # BatchNorm statistics describe the sub-network they were measured in (a channel
        # sees other inputs when its neighbours are gone): the global model, the widest,
        # keeps those of the widest clients; narrow clients re-estimate their own locally
        widest = [u for u, w in zip(updates, widths, strict=True) if w == max(widths)]
        stats = {k: v for k, v in self._global.items() if k.rsplit(".", 1)[-1] in BN_STATISTICS}
        merged.update(heterofl_aggregate(stats, widest))
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], "num-examples")  # type: ignore[attr-defined]
        return to_record(merged), metrics

    def check_update(self, node: int, arrays: dict[str, np.ndarray]) -> None:
        """A reply must hold exactly the sub-model it was sent: same entries, shapes, dtypes."""
        expected = self.slices[self.width_of(node)]
        if set(arrays) != set(expected):
            wrong = sorted(set(arrays) ^ set(expected))[:3]
            raise FederatedError(f"node {node} sent other parameters than it was given: {wrong}")
        for key, block in expected.items():
            shape = tuple(s.stop for s in block)
            if arrays[key].shape != shape or arrays[key].dtype != self._global[key].dtype:
                raise FederatedError(
                    f"node {node} sent {key} as {arrays[key].dtype}{list(arrays[key].shape)}, "
                    f"expected {self._global[key].dtype}{list(shape)}"
                )


def _last_line(text: str) -> str:
    """The final line of a remote traceback: the exception itself."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


class HeteroFedAvg(HeteroFL, FedAvg):
    """FedAvg whose clients may hold narrower sub-models."""


class HeteroFedProx(HeteroFL, FedProx):
    """FedProx whose clients may hold narrower sub-models."""


# --------------------------------------------------------------------------- server


@dataclass
class ClientReport:
    client: int
    device: str
    width: float
    params: int
    ram_bytes: int
    flash_bytes: int
    samples: int
    downloaded_bytes: int = 0
    uploaded_bytes: int = 0


@dataclass
class FederateResult:
    config: FederateConfig
    engine: str
    eval_width: float = 1.0  # width of the global model scored on the held-out split
    accuracy_per_round: list[float] = field(default_factory=list)  # index 0: before round 1
    train_loss_per_round: list[float] = field(default_factory=list)
    clients: list[ClientReport] = field(default_factory=list)
    seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # the trained global model

    def to_json(self) -> dict[str, Any]:
        doc = asdict(replace(self, model=None))  # the weights go to a checkpoint instead
        del doc["model"]
        return {"format": RESULT_FORMAT, **doc}


def run_config(cfg: FederateConfig) -> dict[str, Any]:
    """What every client needs to rebuild its data and model (sent in each message)."""
    return {
        "data": cfg.data, "model": cfg.model_name, "seed": cfg.seed, "alpha": cfg.alpha,
        "num-partitions": cfg.clients, "lr": cfg.lr, "batch-size": cfg.batch_size,
        "local-epochs": cfg.local_epochs,
    }  # fmt: skip


def _wait_for_nodes(grid: Grid, count: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise FederatedError(
                f"only {len(nodes)} of {count} clients connected in {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def query_partitions(grid: Grid, count: int, timeout_s: float = ROUND_TIMEOUT_S) -> dict[int, int]:
    """Flower node id -> the client (partition) index it serves."""
    nodes = _wait_for_nodes(grid, count, timeout_s)
    asks = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    partitions = {}
    for reply in grid.send_and_receive(asks, timeout=timeout_s):
        if reply.has_error():
            raise FederatedError(f"client query failed: {reply.error.reason}")
        answer: dict[str, Any] = dict(reply.content.config_records["node"])
        partitions[reply.metadata.src_node_id] = int(answer["partition-id"])
    if len(partitions) < count:
        raise FederatedError(f"only {len(partitions)} of {count} clients answered in {timeout_s} s")
    if sorted(partitions.values()) != list(range(count)):
        raise FederatedError(f"clients claim partitions {sorted(partitions.values())}")
    return partitions


@dataclass
class ServerPlan:
    """What the server decides before round 1: one report (device, width) per client."""

    cfg: FederateConfig
    data: Dataset
    parts: list[np.ndarray]  # training-sample indices per client
    clients: list[ClientReport]

    @classmethod
    def make(cls, cfg: FederateConfig, clients: list[ClientReport] | None = None) -> ServerPlan:
        """Split the data and give each client its device's width (or take ``clients``
        as already decided: the deployment harness decides once, before the run)."""
        data = load_dataset(cfg.data, seed=cfg.seed)
        check_pair(cfg.model_name, data)  # the model must take the data set's inputs
        parts = dirichlet_partition(data.y_train, cfg.clients, cfg.alpha, cfg.seed)
        if clients is None:
            fits = width_fits(cfg.model_name, cfg.widths)
            clients = []
            for i, part in enumerate(parts):
                device = cfg.devices[i % len(cfg.devices)]
                fit = choose_width(device, fits)
                clients.append(
                    ClientReport(i, device, fit.width, fit.params, fit.ram_bytes,
                                 fit.flash_bytes, len(part))
                )  # fmt: skip
        if [c.client for c in clients] != list(range(cfg.clients)):
            raise FederatedError(f"the plan names clients {[c.client for c in clients]}")
        return cls(cfg, data, parts, clients)


def make_strategy(cfg: FederateConfig) -> HeteroFL:
    common: dict[str, Any] = {
        "fraction_train": 1.0, "fraction_evaluate": 0.0, "min_train_nodes": cfg.clients,
        "min_available_nodes": cfg.clients,
    }  # fmt: skip
    if cfg.strategy == "fedprox":
        return HeteroFedProx(proximal_mu=cfg.proximal_mu, **common)
    return HeteroFedAvg(**common)


def serve(grid: Grid, plan: ServerPlan, on_round: Callable[[int, float], None]) -> FederateResult:
    """The server's whole run on a Flower grid (simulation or deployment alike)."""
    cfg = plan.cfg
    torch.manual_seed(cfg.seed)
    full = elastic.build_at_width(cfg.model_name, 1.0)
    strategy = make_strategy(cfg)
    widths = {c.width for c in plan.clients}
    slices = {w: elastic.slice_map(cfg.model_name, w) for w in widths}
    if len(widths) == 1:  # homogeneous: no need to know which node is which client
        strategy.setup(lambda node: next(iter(widths)), slices)
    else:
        partitions = query_partitions(grid, cfg.clients)
        node_widths = {node: plan.clients[p].width for node, p in partitions.items()}
        strategy.setup(node_widths.__getitem__, slices)
    # the global model is the widest any client trains (the full one unless all are narrow)
    result = FederateResult(cfg, engine="", eval_width=max(widths))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        full.load_state_dict({k: torch.from_numpy(v) for k, v in from_record(arrays).items()})
        model = elastic.extract_submodel(full, cfg.model_name, result.eval_width)
        acc = accuracy_torch(model, plan.data.x_test, plan.data.y_test)
        result.accuracy_per_round.append(acc)
        on_round(server_round, acc)
        return MetricRecord({"accuracy": acc})

    flower = strategy.start(  # type: ignore[attr-defined]
        grid, to_record(state_arrays(full)), num_rounds=cfg.rounds, timeout=ROUND_TIMEOUT_S,
        train_config=ConfigRecord(run_config(cfg)), evaluate_fn=evaluate,
    )  # fmt: skip
    result.train_loss_per_round = [
        float(flower.train_metrics_clientapp[r]["train-loss"])
        for r in sorted(flower.train_metrics_clientapp)
    ]
    for node, partition in strategy.node_partition.items():
        if not 0 <= partition < len(plan.clients):
            raise FederatedError(f"node {node} claims to be client {partition}")
        report = plan.clients[partition]
        report.downloaded_bytes = strategy.traffic[node].downloaded_bytes
        report.uploaded_bytes = strategy.traffic[node].uploaded_bytes
    result.clients = plan.clients
    full.load_state_dict({k: torch.from_numpy(v) for k, v in from_record(flower.arrays).items()})
    result.model = elastic.extract_submodel(full, cfg.model_name, result.eval_width)
    return result


# --------------------------------------------------------------------------- simulation


@contextlib.contextmanager
def quiet_flower() -> Iterator[None]:
    """Flower logs every round at INFO and warns that run_simulation is deprecated (its
    replacement is the CLI, not an API); Ray warns about GPU variables. Errors remain."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")
            yield
    finally:
        logger.setLevel(level)


def simulate(
    cfg: FederateConfig, on_round: Callable[[int, float], None] = lambda r, a: None
) -> FederateResult:
    """Run ``cfg`` in Flower's simulation engine (Ray, 2 CPUs, one per client)."""
    from flwr.simulation import run_simulation

    cfg.validate()
    plan = ServerPlan.make(cfg)
    splits = {i: (plan.data.x_train[p], plan.data.y_train[p]) for i, p in enumerate(plan.parts)}
    outcome: dict[str, FederateResult] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        outcome["result"] = serve(grid, plan, on_round)

    backend: Any = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": 2, "num_gpus": 0, "logging_level": logging.ERROR,
                      "log_to_driver": False, "include_dashboard": False},
    }  # fmt: skip
    start = time.perf_counter()
    with quiet_flower():
        try:
            run_simulation(server_app, make_client_app(splits), cfg.clients, backend_config=backend)
        except CrosslevelError:
            raise
        except Exception as exc:  # Flower wraps the server thread's failure
            raise FederatedError(f"Flower simulation failed: {exc}") from exc
    if "result" not in outcome:
        raise FederatedError("Flower simulation ended without a result (see its log above)")
    result = outcome["result"]
    result.engine, result.seconds = "simulation", time.perf_counter() - start
    return result
