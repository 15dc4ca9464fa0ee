"""Federated fine-tuning in Flower's simulation engine, one table from one run.

Rows: FedAvg and FedProx with every client at full width (as if every device held the
full model), FedAvg and FedProx with HeteroFL widths (half the clients on an 8 KiB
STM32G031K8 train the width-0.5 sub-model that fits it), and FedAvg where every client
trains that width-0.5 model (what fits everywhere without HeteroFL). Columns: held-out
accuracy of the global model per round and at the end (mean ± sample std over seeds,
each seed its own split, Dirichlet partition and init), ArrayRecord bytes each client
receives and sends per round (the mean over clients; one entry per width), and wall
time of a run. The anchor, measured in the same run: centralized training of the same
model on the pooled training split (``model.train``, AdamW, rounds x local epochs
epochs), the accuracy federated training approaches from below.

    nice python benchmarks/federated.py [--data digits] [--clients 4] [--rounds 5]
        [--alpha 0.5] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from crosslevel.distributed.federated import FederateConfig, FederateResult, simulate
from crosslevel.model import zoo
from crosslevel.model.datasets import load_dataset
from crosslevel.model.evaluate import accuracy_torch
from crosslevel.model.train import TrainConfig, train

HETERO_DEVICES = ("rpi4", "stm32g031k8")  # widths 1.0 and 0.5 for digits_cnn


def variants(base: FederateConfig) -> list[tuple[str, FederateConfig]]:
    return [
        ("FedAvg, all full width", replace(base, devices=("rpi4",))),
        ("FedProx, all full width", replace(base, strategy="fedprox", devices=("rpi4",))),
        ("FedAvg, HeteroFL", replace(base, devices=HETERO_DEVICES)),
        ("FedProx, HeteroFL", replace(base, strategy="fedprox", devices=HETERO_DEVICES)),
        ("FedAvg, all width 0.5", replace(base, widths=(0.5,), devices=HETERO_DEVICES)),
    ]


def centralized(cfg: FederateConfig, seed: int) -> float:
    data = load_dataset(cfg.data, seed=seed)
    torch.manual_seed(seed)
    model = zoo.build(cfg.model_name)
    train(model, data, TrainConfig(epochs=cfg.rounds * cfg.local_epochs, seed=seed))
    return accuracy_torch(model, data.x_test, data.y_test)


def _spread(values: list[float]) -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.1%} ± {std:.1%}"


def _bytes_per_round(runs: list[FederateResult]) -> str:
    """Per width: bytes a client receives / sends per round (identical over seeds)."""
    by_width: dict[float, tuple[int, int]] = {}
    for c in runs[0].clients:
        rounds = runs[0].config.rounds
        by_width[c.width] = (c.downloaded_bytes // rounds, c.uploaded_bytes // rounds)
    return ", ".join(f"w{w:g}: {d:,} / {u:,}" for w, (d, u) in sorted(by_width.items()))


def row(name: str, runs: list[FederateResult]) -> dict[str, Any]:
    curves = np.array([r.accuracy_per_round for r in runs])
    return {
        "variant": name,
        "widths": "/".join(f"{c.width:g}" for c in runs[0].clients),
        "accuracy_by_round": [float(v) for v in curves.mean(axis=0)],
        "final": _spread([float(v) for v in curves[:, -1]]),
        "bytes_per_round": _bytes_per_round(runs),
        "seconds": float(np.median([r.seconds for r in runs])),
    }


def table(rows: list[dict[str, Any]], anchor: str, base: FederateConfig) -> Table:
    out = Table(
        title=f"{base.model_name} on {base.data}: {base.clients} clients, {base.rounds} rounds, "
        f"Dirichlet alpha {base.alpha}, {base.local_epochs} local epochs"
    )
    cols = ("variant", "client widths", "accuracy by round (mean)", "final accuracy",
            "bytes per client per round (recv / sent)", "run s (median)")  # fmt: skip
    for col in cols:
        out.add_column(col)
    for r in rows:
        curve = " ".join(f"{v:.0%}" for v in r["accuracy_by_round"])
        out.add_row(r["variant"], r["widths"], curve, r["final"], r["bytes_per_round"],
                    f"{r['seconds']:.0f}")  # fmt: skip
    out.add_row("anchor: centralized training", "1", "-", anchor, "- (data moved)", "-")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", help="digits | mnist1d")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = FederateConfig(
        clients=args.clients, rounds=args.rounds, data=args.data, alpha=args.alpha
    )
    console = Console(stderr=True)
    rows = []
    for name, cfg in variants(base):
        runs = []
        for seed in range(args.seeds):
            start = time.perf_counter()
            runs.append(simulate(replace(cfg, seed=seed)))
            console.print(f"{name} seed {seed}: {runs[-1].accuracy_per_round[-1]:.1%} "
                          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
        rows.append(row(name, runs))
    anchor = _spread([centralized(base, seed) for seed in range(args.seeds)])
    if args.json:
        print(json.dumps({"rows": rows, "anchor_centralized": anchor}, indent=2))
        return
    Console(width=200).print(table(rows, anchor, base))


if __name__ == "__main__":
    main()
