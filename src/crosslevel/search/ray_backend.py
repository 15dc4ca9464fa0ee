"""Evaluating a search's trials on a Ray cluster (``--ray``, ``--ray-address``).

The driver alone holds the Optuna study (its SQLite file cannot be shared across nodes)
and asks and tells it; Ray workers only evaluate. What crosses the wire is plain data:
a ``SpaceSpec`` (an importable factory and its JSON-able arguments: each worker builds the
levels itself, so no live torch object or cache travels), the demands, the device's name,
and per trial its number, knob values, the measured feasible objective vectors so far and
the baseline accuracy; back come the trial's points as plain dicts (``Record``'s fields)
and its count of inner analytic evaluations. Each worker is an actor that keeps its
levels (and their caches) between trials.

``--ray`` starts a small local cluster (2 CPUs, no dashboard, quiet logs) and shuts it
down afterwards; ``--ray-address ADDR`` joins a running one (the package must be
importable on its nodes) and only disconnects. A process already connected to Ray keeps
its connection (and its cluster).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from crosslevel.errors import UsageError
from crosslevel.search.objectives import OBJECTIVES, Demands
from crosslevel.search.space import KnobValue, Space
from crosslevel.search.study import Batch, Evaluator, Record

LOCAL_CPUS = 2
PROBE_TIMEOUT_S = 5.0
BATCH_TIMEOUT_S = 3600.0  # a batch of fine-tuning trials takes minutes, not an hour


@dataclass(frozen=True)
class SpaceSpec:
    """How a worker builds the space: ``factory`` is ``"package.module:function"``
    returning a ``Space``, called with ``kwargs`` (JSON-able values)."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Space:
        module_name, _, func_name = self.factory.partition(":")
        try:
            func = getattr(importlib.import_module(module_name), func_name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise UsageError(f"cannot import the space factory {self.factory}: {exc}") from exc
        space = func(**self.kwargs) if callable(func) else None
        if not isinstance(space, Space):
            raise UsageError(f"{self.factory} did not return a Space")
        return space


class SpaceWorker:
    """One Ray actor: builds the space once, evaluates trials of it (or of a restricted
    copy: the single-level ablations, which share the levels and their caches)."""

    def __init__(self, spec: SpaceSpec, demands: dict[str, Any], device: str | None) -> None:
        from crosslevel.hardware.devices import get_device

        self.space = spec.build()
        self.demands = Demands(**demands)
        self.device = get_device(device) if device is not None else None
        self.spaces: dict[tuple[str, ...], Space] = {}

    def evaluate(
        self,
        searched: tuple[str, ...],
        number: int,
        params: dict[str, KnobValue],
        front: list[list[float]],
        baseline_accuracy: float | None,
    ) -> dict[str, Any]:
        """The trial's points and how many inner analytic evaluations it took."""
        space = self.spaces.get(searched)
        if space is None:
            space = self.space.restricted(list(searched))
            self.spaces[searched] = space
        evaluator = Evaluator(space, self.demands, self.device)
        evaluator.baseline_accuracy = baseline_accuracy
        done = [Record(-2, {}, values, "measured", {}, True) for values in front]
        records = evaluator.evaluate(number, params, done)
        return {"records": [asdict(r) for r in records], "analytic": evaluator.analytic_runs}


class RayBackend:
    """A ``study.Backend`` evaluating each batch on Ray actors, one per worker CPU."""

    def __init__(
        self,
        spec: SpaceSpec,
        demands: Demands,
        device: str | None,
        address: str | None = None,
        workers: int = LOCAL_CPUS,
    ) -> None:
        import ray

        if workers < 1:
            raise UsageError(f"Ray needs at least one worker, got {workers}")
        self._ray = ray
        # A driver already connected (a notebook, a test's cluster) keeps its connection.
        self._connected_here = not ray.is_initialized()
        if self._connected_here:
            _start_or_join(ray, address)
        # Ray's actor default: a CPU to be placed, none held while alive, so a second
        # search (the ablations, another driver) is never starved of actors.
        actor: Any = ray.remote(SpaceWorker)
        demand_values = asdict(demands)
        self.actors: list[Any] = [actor.remote(spec, demand_values, device) for _ in range(workers)]

    def evaluate(
        self, evaluator: Evaluator, batch: Batch, done: list[Record]
    ) -> list[list[Record]]:
        searched = tuple(evaluator.space.searched())
        front = [r.values for r in done if r.measured and r.feasible]
        refs = [
            self.actors[i % len(self.actors)].evaluate.remote(
                searched, number, params, front, evaluator.baseline_accuracy
            )
            for i, (number, params) in enumerate(batch)
        ]
        try:
            results = self._ray.get(refs, timeout=BATCH_TIMEOUT_S)
        except self._ray.exceptions.RayError as exc:
            raise UsageError(f"a Ray worker failed: {_cause(exc)}") from exc
        trials = [[_record(d) for d in result["records"]] for result in results]
        evaluator.measured_runs += sum(any(r.measured for r in recs) for recs in trials)
        evaluator.analytic_runs += sum(int(result["analytic"]) for result in results)
        return trials

    def close(self) -> None:
        if not self._ray.is_initialized():  # already disconnected: nothing left to end
            return
        for actor in self.actors:
            self._ray.kill(actor)
        if self._connected_here:
            self._ray.shutdown()  # a joined cluster keeps running: only this driver leaves

    def __enter__(self) -> RayBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start_or_join(ray: Any, address: str | None) -> None:
    # Workers get one intra-op thread (trials of small models on a shared machine) and, on
    # a local cluster, the driver's import path: what the driver imports, they import.
    env_vars = {"OMP_NUM_THREADS": "1"}
    if address is None:
        env_vars["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    quiet = {"include_dashboard": False, "log_to_driver": False,
             "logging_level": logging.ERROR, "runtime_env": {"env_vars": env_vars}}  # fmt: skip
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    if address is not None:
        _probe(address)
    try:
        if address is None:
            ray.init(num_cpus=LOCAL_CPUS, **quiet)
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:  # ConnectionError, a bad address, a version mismatch, ...
        raise UsageError(f"cannot {'join Ray at ' + address if address else 'start Ray'}: "
                         f"{exc}") from exc  # fmt: skip


def _probe(address: str) -> None:
    """A HOST:PORT nobody listens on is one clear error at once: Ray itself retries its
    connection for minutes. Other forms (``auto``, ``ray://...``) go to Ray as they are."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise UsageError(f"cannot join Ray at {address}: nothing answers there ({exc})") from exc


def _cause(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _record(d: dict[str, Any]) -> Record:
    values = [float(v) for v in d["values"]]
    if len(values) != len(OBJECTIVES):
        raise UsageError(f"a Ray worker returned {len(values)} objectives")
    return Record(int(d["number"]), dict(d["params"]), values, str(d["stage"]),
                  dict(d["figures"]), bool(d["feasible"]))  # fmt: skip
