"""Federated fine-tuning: HeteroFL averaging, non-IID splits, option checks, and real
Flower runs (the Ray simulation engine and the deployment engine on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.distributed.federated import (
    FederateConfig,
    FederatedError,
    FederateResult,
    choose_width,
    heterofl_aggregate,
    make_strategy,
    simulate,
    width_fits,
)
from crosslevel.distributed.federated_client import dirichlet_partition
from crosslevel.errors import InfeasibleError, UsageError
from crosslevel.model.datasets import load_dataset
from crosslevel.model.evaluate import accuracy_torch


def test_heterofl_average_of_overlapping_slices_is_the_weighted_mean() -> None:
    current: dict[str, np.ndarray] = {
        "w": np.full((4, 3), 7.0, np.float32),
        "n": np.array(5, np.int64),
    }
    wide: dict[str, np.ndarray] = {
        "w": np.arange(9, dtype=np.float32).reshape(3, 3),
        "n": np.array(10, np.int64),
    }
    narrow: dict[str, np.ndarray] = {
        "w": np.full((2, 2), 100.0, np.float32),
        "n": np.array(1, np.int64),
    }
    merged = heterofl_aggregate(current, [(wide, 3.0), (narrow, 1.0)])
    expected = np.full((4, 3), 7.0)  # row 3: nobody holds it, the global value stays
    expected[:3, :3] = wide["w"]  # held by the wide client alone
    expected[:2, :2] = (3.0 * wide["w"][:2, :2] + 1.0 * 100.0) / 4.0  # held by both
    np.testing.assert_allclose(merged["w"], expected, rtol=1e-6)
    assert merged["w"].dtype == np.float32
    assert merged["n"].dtype == np.int64 and int(merged["n"]) == round((30 + 1) / 4)


def test_equal_widths_reduce_to_fedavg() -> None:
    rng = np.random.default_rng(0)
    updates = [({"w": rng.normal(size=(3, 2)).astype(np.float32)}, float(n)) for n in (5, 1, 2)]
    merged = heterofl_aggregate({"w": np.zeros((3, 2), np.float32)}, updates)
    fedavg = sum(n * u["w"] for u, n in updates) / 8.0
    np.testing.assert_allclose(merged["w"], fedavg, rtol=1e-5, atol=1e-6)


def test_dirichlet_split_covers_the_data_once_and_small_alpha_is_skewed() -> None:
    labels = load_dataset("digits", seed=0).y_train
    parts = dirichlet_partition(labels, clients=4, alpha=0.1, seed=0)
    joined = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(joined, np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 8
    # with alpha 0.1 each client is dominated by a few classes; with 100 it is near uniform
    skew = np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])
    even = dirichlet_partition(labels, clients=4, alpha=100.0, seed=0)
    skew_even = np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in even])
    assert skew > 0.3 > 0.15 > skew_even
    with pytest.raises(InfeasibleError, match="at most"):
        dirichlet_partition(labels[:20], clients=4, alpha=1.0, seed=0)


def test_each_device_gets_the_widest_fitting_sub_model() -> None:
    fits = width_fits("digits_cnn", (1.0, 0.5, 0.25))
    assert fits[1.0].ram_bytes > 8192 >= fits[0.5].ram_bytes  # STM32G031K8: 8 KiB SRAM
    assert choose_width("rpi4", fits).width == 1.0
    assert choose_width("stm32g031k8", fits).width == 0.5
    with pytest.raises(InfeasibleError, match="stm32g031k8"):
        choose_width("stm32g031k8", {1.0: fits[1.0]})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", "0"], "--clients must be in"),
        (["--strategy", "fedsgd"], "unknown strategy 'fedsgd'"),
        (["--data", "cifar10"], "unknown data set 'cifar10'"),
        (["--alpha", "-1"], "--alpha must be a positive"),
        (["--widths", "1.0,abc"], "--widths: expected comma-separated numbers"),
        (["--devices", "toaster"], "toaster"),
        (["--model", "inception_cells"], "no elastic width"),
    ],
)
def test_bad_options_give_one_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["federate", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_a_reply_that_is_not_the_sub_model_sent_is_refused() -> None:
    from crosslevel.distributed.federated_client import state_arrays
    from crosslevel.model import elastic

    strategy = make_strategy(FederateConfig())
    strategy.setup(lambda node: 0.5, {0.5: elastic.slice_map("digits_cnn", 0.5)})
    full = state_arrays(elastic.build_at_width("digits_cnn", 1.0))
    strategy._global = full
    sent = {k: full[k][s] for k, s in elastic.slice_map("digits_cnn", 0.5).items()}
    strategy.check_update(7, sent)  # the honest reply passes
    too_wide = {**sent, "head.2.weight": full["head.2.weight"]}
    with pytest.raises(FederatedError, match=r"node 7 sent head.2.weight as float32\[10, 64\]"):
        strategy.check_update(7, too_wide)
    with pytest.raises(FederatedError, match="other parameters"):
        strategy.check_update(7, {**sent, "extra": np.zeros(1, np.float32)})
    as_float64 = {**sent, "head.2.bias": sent["head.2.bias"].astype(np.float64)}
    with pytest.raises(FederatedError, match="float64"):
        strategy.check_update(7, as_float64)


def test_config_validation_is_usage_error() -> None:
    with pytest.raises(UsageError):
        FederateConfig(clients=0).validate()


@pytest.fixture(scope="module")
def deployment_run() -> Iterator[Future[FederateResult]]:
    """The deployment-engine run, started in the background when first requested.

    Both Flower runs spend most of their time starting processes (Ray and its actors;
    the SuperLink, SuperNodes and a `flwr-clientapp` per message), so the simulation
    test runs while this one proceeds. Teardown waits for it: the harness stops every
    process it started before it returns, even on failure.
    """
    from crosslevel.distributed.federated_deploy import deploy

    # two full-width devices: HeteroFL widths are covered by the simulation test, and
    # equal widths spare a query message (a `flwr-clientapp` process start per node)
    cfg = FederateConfig(clients=2, rounds=1, devices=("rpi4", "stm32f746"), seed=0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(deploy, cfg, 180.0)


def test_flower_simulation_improves_held_out_accuracy(
    deployment_run: Future[FederateResult],
) -> None:
    cfg = FederateConfig(clients=3, rounds=3, data="digits", strategy="fedprox", seed=0)
    seen: list[tuple[int, float]] = []
    result = simulate(cfg, on_round=lambda r, acc: seen.append((r, acc)))
    assert [r for r, _ in seen] == [0, 1, 2, 3]
    acc = result.accuracy_per_round
    assert len(acc) == 4 and acc[-1] > acc[0] + 0.3 and acc[-1] > 0.6, acc
    widths = {c.device: c.width for c in result.clients}
    assert widths == {"rpi4": 1.0, "stm32f746": 1.0, "stm32g031k8": 0.5}
    for client in result.clients:
        # the same sub-model goes down and comes back every round
        assert client.downloaded_bytes == client.uploaded_bytes > 0
    narrow = next(c for c in result.clients if c.width == 0.5)
    wide = next(c for c in result.clients if c.width == 1.0)
    assert narrow.downloaded_bytes < wide.downloaded_bytes / 3
    data = load_dataset("digits", seed=0)
    assert sum(c.samples for c in result.clients) == len(data.y_train)
    assert result.model is not None  # the global model scores what the last round reported
    assert accuracy_torch(result.model, data.x_test, data.y_test) == acc[-1]


def test_deployment_engine_run_with_two_supernodes(
    deployment_run: Future[FederateResult],
) -> None:
    result = deployment_run.result(timeout=240)
    assert result.engine == "deployment"
    assert [c.width for c in result.clients] == [1.0, 1.0]
    assert all(c.uploaded_bytes == c.downloaded_bytes > 0 for c in result.clients)
    assert result.accuracy_per_round[-1] > result.accuracy_per_round[0] + 0.2
    # the server's checkpoint, read back without unpickling, is the model it scored
    data = load_dataset("digits", seed=0)
    assert result.model is not None
    assert accuracy_torch(result.model, data.x_test, data.y_test) == result.accuracy_per_round[-1]
