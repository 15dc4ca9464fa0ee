"""What a federated client runs: its non-IID data share, local training, the ClientApp.

Kept apart from the server side so that every client process (a Ray actor in the
simulation, a ``flwr-clientapp`` subprocess per message in the deployment engine)
imports only Flower's client API, torch and the model level, not the server's strategy,
the memory level or ONNX tooling.

Parameters arrive and leave as Flower ``ArrayRecord``s of NumPy arrays (Flower
serializes them with ``np.save(allow_pickle=False)``); a sub-model whose entries or
shapes do not match the width it was sent for is refused by ``load_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from crosslevel.errors import InfeasibleError
from crosslevel.model import elastic
from crosslevel.model.datasets import load_dataset
from crosslevel.model.train import load_state

MIN_CLIENT_SAMPLES = 8  # every client needs a few batches of its own

Split = tuple[np.ndarray, np.ndarray]


# --------------------------------------------------------------------------- data


def dirichlet_partition(
    labels: np.ndarray, clients: int, alpha: float, seed: int, min_samples: int = MIN_CLIENT_SAMPLES
) -> list[np.ndarray]:
    """Sample indices per client: each class split over clients by Dirichlet(alpha).

    Redrawn (same seed stream) until every client has ``min_samples``; an impossible
    demand is an InfeasibleError rather than a client with nothing to train on.
    """
    if len(labels) < clients * min_samples:
        raise InfeasibleError(
            f"{len(labels)} training samples cannot give {clients} clients "
            f"{min_samples} each; use at most {len(labels) // min_samples} clients"
        )
    rng = np.random.default_rng(seed)
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_samples:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise InfeasibleError(
        f"Dirichlet alpha {alpha} left a client with fewer than {min_samples} samples in "
        "100 draws; raise --alpha or lower --clients"
    )


def client_split(config: Mapping[str, Any], partition: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one client, rebuilt deterministically from the run's settings."""
    data = load_dataset(str(config["data"]), seed=int(config["seed"]))
    parts = dirichlet_partition(
        data.y_train, int(config["num-partitions"]), float(config["alpha"]), int(config["seed"])
    )
    idx = parts[partition]
    return data.x_train[idx], data.y_train[idx]


# --------------------------------------------------------------------------- parameters


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    # np.array, not ascontiguousarray: that one turns 0-d entries (BN counters) into 1-d
    return ArrayRecord({k: Array(np.array(v, order="C")) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


# --------------------------------------------------------------------------- training


def local_train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, config: Mapping[str, Any], seed: int
) -> float:
    """SGD over the client's data; FedProx's proximal term when ``proximal-mu`` > 0.

    Returns the sample-weighted mean loss of the last epoch.
    """
    mu = float(config.get("proximal-mu", 0.0))
    anchor = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    batch = int(config["batch-size"])
    model.train()
    loss_sum = 0.0
    for _ in range(int(config["local-epochs"])):
        order, loss_sum = torch.randperm(len(xt), generator=gen), 0.0
        for start in range(0, len(xt), batch):
            idx = order[start : start + batch]
            if len(idx) < 2:  # BatchNorm cannot train on one sample
                continue
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            if mu > 0:
                drift = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + mu / 2 * drift
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
    model.eval()
    return loss_sum / len(xt)


def partition_id(context: Context) -> int:
    """The client index this node serves (Flower's ``partition-id`` node setting)."""
    node: dict[str, Any] = dict(context.node_config)
    return int(node["partition-id"])


def _train_reply(msg: Message, context: Context, split: Split | None) -> Message:
    torch.set_num_threads(1)  # one core per client: two clients share the two CPUs
    config: dict[str, Any] = dict(msg.content.config_records["config"])
    partition = partition_id(context)
    x, y = split if split is not None else client_split(config, partition)
    width = float(config["width"])
    model = elastic.build_at_width(str(config["model"]), width)
    state = {
        k: torch.from_numpy(v) for k, v in from_record(msg.content.array_records["arrays"]).items()
    }
    load_state(model, state, where=f"round {config['server-round']!s} sub-model")
    seed = int(config["seed"]) * 1_000_003 + int(config["server-round"]) * 1_009 + partition
    loss = local_train(model, x, y, config, seed)
    metrics = MetricRecord({"num-examples": len(x), "train-loss": loss})
    reply = RecordDict({
        "arrays": to_record(state_arrays(model)), "metrics": metrics,
        "node": ConfigRecord({"partition-id": partition}),
    })  # fmt: skip
    return Message(content=reply, reply_to=msg)


def make_client_app(splits: dict[int, Split] | None = None) -> ClientApp:
    """The ClientApp: answers the server's query and trains its sub-model.

    ``splits`` (partition id -> data) spares simulated clients rebuilding their split
    every round; deployed clients (``splits`` None) rebuild it from the message config.
    """
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        answer = ConfigRecord({"partition-id": partition_id(context)})
        return Message(RecordDict({"node": answer}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        split = None if splits is None else splits[partition_id(context)]
        return _train_reply(msg, context, split)

    return app


# The deployment engine's clientapp component: a `flwr-clientapp` process per message
# imports this module, so it stays free of server-side imports.
client_app = make_client_app()
