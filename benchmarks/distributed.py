"""Split inference on emulated links: measured end-to-end latency beside the prediction.

Device and edge run in their own network namespaces joined by a veth pair shaped with tbf
(rate) and a user-space proxy (RTT); the rate and RTT in the table are measured. The
device process is slowed to Raspberry-Pi-4 class by a CPU quota (fraction = the
catalogue's rpi4 / host fp32 peak ratio) that it joins after start-up; the edge runs at
host speed. Every placement runs as a real gRPC request stream (one warm-up request, then
the mean of N back-to-back requests: the quota slows a process in 1 ms slices, so a short
run is either untouched or stalled, and only the mean shows the slowdown).

Predictions (labelled predicted): per-node times are the cost model's host shares scaled
so that the whole model matches its measured time, on the edge free (ONNX Runtime, median
of 40 runs) and on the device under the same quota (mean of 40); the link is the measured
rate and RTT. Candidate splits: every prefix of the node order plus the exact solver's
(min-cut) split. "Ours" is the split with the least predicted latency, exactly what
`crosslevel partition` picks from the same figures.

Screening: every split is measured at two rates (5 and 50 Mbit/s), elsewhere only the
splits predicted within 3x of the best (and all-device, all-edge), each with a few
requests in turn. The best of up to 66 short, noisy means is biased low (the winner's
curse), so a confirmation run then measures ours, the two best screened splits and the
better single placement again, interleaved round-robin with more requests, and the regret
and the "ours minus the better single placement" come from it, with 95% bootstrap
intervals over its rounds (the screening regret is shown too). Needs root (namespaces,
cgroup v1).

    nice python benchmarks/distributed.py [--quick] [--requests N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crosslevel.distributed.adaptive import candidate_entries
from crosslevel.distributed.emulation import CpuQuota, EmulatedLink, available
from crosslevel.distributed.partition import plan_partition, write_plan
from crosslevel.distributed.problem import Problem
from crosslevel.hardware.cost_model import predict_latency
from crosslevel.hardware.devices import Link, get_device, get_link
from crosslevel.ir.graph import Graph

CLI = str(Path(sys.executable).parent / "crosslevel")
PORT = 47200
LINKS = [(0.25, 100.0), (1.0, 50.0), (5.0, 20.0), (20.0, 10.0), (50.0, 5.0)]  # set: Mbit/s, ms
EVERY_SPLIT_AT = (5.0, 50.0)
# (label, zoo name, builder kwargs): untrained weights (latency does not depend on them),
# inputs at 96x96 so that a device run spans several quota periods and slows evenly.
MODELS = [
    ("MobileNetV2 1.0 (96x96)", "mobilenet_v2", {"width_mult": 1.0}),
    ("ResNet-8 (96x96)", "resnet8", {}),
    ("inception_cells (96x96)", "inception_cells", {}),
]
RESOLUTION = 96
CONFIRM_ROUNDS = 12  # interleaved rounds of the confirmation
CONFIRM_BUDGET_MS = 15_000  # ... fewer (3 at least) where the contenders are slow
# Timed requests per contender per round, after one untimed request: a CPU quota slows a
# process only on average, so work right after idle time (another contender's network
# wait) runs fast (ResNet-8 at 96x96 under the quota: 2-5 ms after 50 ms idle, 11 ms back
# to back); the untimed request brings the quota back to the steady state the screening's
# back-to-back requests measure.
PER_TURN = 2
BOOTSTRAP = 2000  # resamples of the confirmation rounds for the 95% intervals
NEUROSURGEON_SPEEDUP = 3.1  # average latency speed-up over mobile-only (ASPLOS 2017)


def model_graph(zoo_name: str, kwargs: dict[str, Any]) -> Graph:
    from crosslevel.model.compress import float_graph
    from crosslevel.model.zoo import build

    module = build(zoo_name, **kwargs).eval()
    return float_graph(module, (3, RESOLUTION, RESOLUTION))


# ------------------------------------------------------------------------- calibration
def _time_part(model_path: Path, quota: CpuQuota | None, runs: int = 40) -> float:
    """ms of one run of an ONNX model in a fresh process (joined to ``quota`` after
    loading, as the device process is): free, the median of ``runs`` per-run times (other
    programs on this shared host only add outliers); under the quota, the mean of ``runs``
    back-to-back runs (the quota stalls a run in 1 ms slices, so only the mean shows it)."""
    argv = [sys.executable, __file__, "--time-part", str(model_path), str(runs)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("timing helper failed to start")
        if quota is not None:
            quota.add(proc.pid)
        out, _ = proc.communicate("go\n", timeout=300)
    finally:
        proc.kill()
        proc.wait()
    times = json.loads(out)
    return statistics.fmean(times) if quota is not None else statistics.median(times)


def calibrate(graph: Graph, quota: CpuQuota, folder: Path) -> dict[str, Any]:
    """Host and device scales (measured whole-model time / cost-model host prediction).

    The whole model is timed both free and under the quota: the device scale then does
    not depend on a free timing (a part timed free on this loaded host came out 1.5-2x
    slow in one earlier run: MobileNetV2's slowdown came out 2.6x, not ~6x, and the
    inception device time was over-predicted by ~50%)."""
    from crosslevel.ir.onnx import export_onnx

    whole = folder / "whole.onnx"
    whole.write_bytes(export_onnx(graph).SerializeToString())
    host_ms, device_ms = _time_part(whole, None), _time_part(whole, quota)
    predicted = predict_latency(graph, get_device("host")).total_ms
    return {"host_ms": host_ms, "device_ms": device_ms, "host_scale": host_ms / predicted,
            "device_scale": device_ms / predicted}  # fmt: skip


def node_times(graph: Graph, cal: dict[str, Any]) -> list[dict[str, float]]:
    """Per-node device and edge ms: the cost model's shares, scaled to the measured totals."""
    pred = predict_latency(graph, get_device("host")).per_node_ms
    shares = {n.name: pred.get(n.name, 0.0) for n in graph.nodes}
    return [{k: v * cal[f"{tier}_scale"] for k, v in shares.items()} for tier in ("device", "host")]


# ---------------------------------------------------------------------------- planning
def candidate_plan(graph: Graph, folder: Path) -> list[dict[str, int]]:
    """A plan whose run-time candidates are every prefix cut and the min-cut split."""
    devices, link = [get_device("rpi4"), get_device("host")], [get_link("wifi")]
    result = plan_partition(graph, ["device", "edge"], devices, link)
    n = len(graph.nodes)
    cuts = [{v.name: int(i >= c) for i, v in enumerate(graph.nodes)} for c in range(n + 1)]
    if result.tier_of not in cuts:
        cuts.insert(-1, result.tier_of)
    entries, models = candidate_entries(result.problem, cuts)
    result.plan["candidates"], result.candidate_models = entries, models
    write_plan(result, folder)
    return cuts


def measured_link(link: EmulatedLink) -> Link:
    got = link.measure(nbytes=int(min(link.rate_mbit * 1e6 / 8 * 0.5, 2e6)), pings=10)
    return Link("emulated", got["rate_mbit"] * 1e6, got["rate_mbit"] * 1e6, got["rtt_ms"],
                "measured")  # fmt: skip


# ---------------------------------------------------------------------------- measuring
def run_device(
    link: EmulatedLink, quota: CpuQuota, plan: Path, work: dict[int, int], interleave: bool
) -> Any:
    """Run the device worker in its namespace under the quota; {candidate: [ms...]}."""
    address = link.edge_address(PORT)
    argv = [sys.executable, __file__, "--device", str(plan), address, json.dumps(work),
            "interleave" if interleave else "in-turn"]  # fmt: skip
    proc = link.start(link.device_ns, argv)
    assert proc.stdout is not None and proc.stdin is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "worker failed")
    quota.add(proc.pid)  # `ip netns exec` execs the worker: the same pid
    out, err = proc.communicate(b"go\n", timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(err.decode())
    return {int(k): v for k, v in json.loads(out).items()}


def measure_config(
    graph: Graph, cuts: list[dict[str, int]], node_ms: list[dict[str, float]], plan: Path,
    quota: CpuQuota, rate: float, rtt: float, requests: int,
) -> dict[str, Any]:  # fmt: skip
    """Screen the candidate splits, then confirm the contenders interleaved."""
    with EmulatedLink(rate_mbit=rate, rtt_ms=rtt) as link:
        model_link = measured_link(link)
        host = get_device("host")
        problem = Problem(graph, [host, host], [model_link], node_ms, "latency")
        predicted = [problem.cost(c) for c in cuts]
        best = min(predicted)
        every = rate in EVERY_SPLIT_AT
        ends = {0, len(cuts) - 1}
        chosen = [k for k, p in enumerate(predicted) if every or p <= 3 * best or k in ends]
        work = {k: requests if predicted[k] < 300 else 3 for k in chosen}
        link.start(link.edge_ns, [CLI, "serve", str(plan), "--host", "0.0.0.0", "--port",
                                  str(PORT), "--token", "bench"])  # fmt: skip
        screened = run_device(link, quota, plan, work, interleave=False)
        ours = min(range(len(predicted)), key=predicted.__getitem__)
        contenders = confirm_set(ours, {k: statistics.fmean(v) for k, v in screened.items()},
                                 len(cuts) - 1)  # fmt: skip
        confirmed = run_device(link, quota, plan, contenders, interleave=True)
    return {"link": model_link, "predicted": predicted, "measured": screened,
            "confirmed": confirmed, "ours": ours}  # fmt: skip


def confirm_set(ours: int, screened: dict[int, float], all_device: int) -> dict[int, int]:
    """{contender: interleaved rounds}: ours, the two best screened splits and the better
    single placement, CONFIRM_ROUNDS rounds or fewer (3 at least) where they are slow.
    Re-measuring the screening's winner removes the low bias of the best of up to 66
    short, noisy means (the winner's curse)."""
    ranked = sorted(screened, key=screened.__getitem__)
    single = min((all_device, 0), key=screened.__getitem__)
    keys = sorted({ours, single, *ranked[:2]})
    per_round = (PER_TURN + 1) * sum(screened[k] for k in keys)
    return dict.fromkeys(keys, max(3, min(CONFIRM_ROUNDS, int(CONFIRM_BUDGET_MS / per_round))))


def worker_device(plan_dir: str, address: str, work_json: str, order: str) -> None:
    """Inside the device namespace: every requested candidate's timed requests, either in
    turn after one warm-up request each, or interleaved round-robin in turns of an untimed
    request and PER_TURN timed ones (so that a drift of the shared host's load hits every
    candidate alike)."""
    import numpy as np

    from crosslevel.distributed.client import DeviceClient
    from crosslevel.distributed.partition import load_plan

    plan = load_plan(Path(plan_dir))
    client = DeviceClient(plan, address, "bench", timeout_s=60, adaptive=True)
    x = [np.random.default_rng(0).standard_normal(s["shape"]).astype(s["dtype"])
         for s in plan["inputs"]]  # fmt: skip
    print("ready", flush=True)
    sys.stdin.readline()  # the parent puts this process under the quota first
    work = {int(k): n for k, n in json.loads(work_json).items()}
    if order == "interleave":  # (candidate, timed) in the order they are run
        rounds = max(work.values())  # one turn: an untimed request, then PER_TURN timed
        turns = [(k, i > 0) for _ in range(rounds) for k in work for i in range(PER_TURN + 1)]
    else:
        turns = [(k, timed) for k, n in work.items() for timed in [False] + [True] * n]
    answers: dict[int, list[Any]] = {k: [] for k in work}
    for i, (k, timed) in enumerate(turns):
        answer = client.infer_on(f"r{i}", x, k)
        if timed:
            answers[k].append(answer)
    for k, got in answers.items():
        if not plan["candidates"][k]["local"] and any(a.where != "split" for a in got):
            raise SystemExit(f"candidate {k} fell back to local: {client.stats.summary()}")
    client.close()
    print(json.dumps({k: [a.latency_ms for a in got] for k, got in answers.items()}))


def worker_time_part(path: str, runs: int) -> None:
    import numpy as np

    from crosslevel.runtime.ort import make_session, run_session

    session = make_session(Path(path))
    x = [np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in
                                                   i.shape]).astype(np.float32)
         for i in session.get_inputs()]  # fmt: skip
    for _ in range(3):
        run_session(session, x)
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_session(session, x)
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps(times))


# ------------------------------------------------------------------------------- report
def paired_interval(
    runs: dict[int, list[float]], a: int, b: int, stat: Any
) -> tuple[float, float, float]:
    """``stat(mean of a, mean of b)`` and its 95% bootstrap interval, resampling the
    interleaved rounds (each contender's requests of one round are averaged, and a
    round's two averages resampled as a pair, so a drift common to both cancels)."""
    runs = {k: [statistics.fmean(runs[k][i : i + PER_TURN])
                for i in range(0, len(runs[k]), PER_TURN)] for k in (a, b)}  # fmt: skip
    n = min(len(runs[a]), len(runs[b]))
    point = stat(statistics.fmean(runs[a][:n]), statistics.fmean(runs[b][:n]))
    rng = random.Random(0)
    draws = sorted(
        stat(statistics.fmean(runs[a][i] for i in pick), statistics.fmean(runs[b][i] for i in pick))
        for pick in ([rng.randrange(n) for _ in range(n)] for _ in range(BOOTSTRAP))
    )  # fmt: skip
    return point, draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]


def device_nodes(cut: dict[str, int]) -> int:
    return sum(1 for tier in cut.values() if tier == 0)


def row(name: str, cuts: list[dict[str, int]], res: dict[str, Any]) -> tuple[list[str], Any]:
    screened = {k: statistics.fmean(v) for k, v in res["measured"].items()}
    confirmed = res["confirmed"]
    mean = {**screened, **{k: statistics.fmean(v) for k, v in confirmed.items()}}
    pred, ours, link = res["predicted"], res["ours"], res["link"]
    screen_best = min(screened, key=screened.__getitem__)
    best = min(confirmed, key=lambda k: mean[k])
    dev, edge = len(cuts) - 1, 0
    single = min((dev, edge), key=screened.__getitem__)  # as confirm_set chose it
    regret = paired_interval(confirmed, ours, best, lambda x, y: x / y - 1)
    # ours against the best other contender: the margin and its noise, even when ours won
    rival = min((k for k in confirmed if k != ours), key=lambda k: mean[k], default=ours)
    margin = paired_interval(confirmed, ours, rival, lambda x, y: x / y - 1)
    slower = paired_interval(confirmed, ours, single, lambda x, y: x - y)
    cells = [
        name,
        f"{link.bandwidth_up_bps / 1e6:.2f} Mbit/s, {link.rtt_ms:.0f} ms",
        f"{len(screened)}; {len(confirmed)} x {len(confirmed[ours])}",
        str(device_nodes(cuts[ours])),
        f"{mean[ours]:.1f}", f"{pred[ours]:.1f}", f"{(pred[ours] - mean[ours]) / mean[ours]:+.0%}",
        f"{mean[dev]:.1f}", f"{mean[edge]:.1f}",
        f"{screened[screen_best]:.1f} ({device_nodes(cuts[screen_best])}); "
        f"{mean[best]:.1f} ({device_nodes(cuts[best])})",
        f"{screened[ours] / screened[screen_best] - 1:.1%}; {regret[0]:.1%} (ours vs "
        f"{device_nodes(cuts[rival])}: {margin[0]:+.1%} [{margin[1]:+.1%}, {margin[2]:+.1%}])",
        f"{slower[0]:+.1f} [{slower[1]:+.1f}, {slower[2]:+.1f}]",
        f"{mean[dev] / mean[ours]:.2f}x",
    ]  # fmt: skip
    errors = [(pred[k] - m) / m for k, m in screened.items()]
    return cells, {"errors": errors, "screen_regret": screened[ours] / screened[screen_best] - 1,
                   "regret": regret, "ok": slower[1] <= 0}  # fmt: skip


def calibration_note(name: str, cal: dict[str, Any]) -> str:
    return (
        f"{name}: whole model {cal['host_ms']:.2f} ms free (median of 40; cost model x "
        f"{cal['host_scale']:.2f}), {cal['device_ms']:.2f} ms under the quota (mean of 40): "
        f"device slowdown {cal['device_ms'] / cal['host_ms']:.2f}x"
    )


def result_table(fraction: float, requests: int) -> Table:
    table = Table(title=(
        f"split inference on emulated links: device = host under a CPU quota of {fraction:.2f}"
        f" (rpi4/host peak), edge = host; over gRPC, measured. Screening: every candidate "
        f"split, mean of {requests} requests each in turn. Confirmation: ours, the two best "
        f"screened splits and the better single placement, interleaved round-robin, each turn "
        f"an untimed request then {PER_TURN} timed (splits measured = screened; confirmed x "
        f"timed requests each); ms are confirmation means where "
        f"confirmed, else screening means; \\[a, b] = 95% paired-bootstrap interval"
    ))  # fmt: skip
    for col in ("model", "link (measured)", "splits measured", "ours: device nodes",
                "ours ms (measured)", "ours ms (predicted)", "error", "all-device ms",
                "all-edge ms", "best measured ms (nodes): screening; confirmed",
                "regret: screening; confirmed (ours / next-best confirmed split - 1)",
                "ours - better single ms (confirmed)",
                f"speed-up vs all-device (Neurosurgeon avg {NEUROSURGEON_SPEEDUP}x)"):  # fmt: skip
        table.add_column(col)
    return table


def summary_line(summary: list[dict[str, Any]]) -> str:
    errors = [abs(e) for s in summary for e in s["errors"]]
    regrets = [s["regret"][0] for s in summary]
    screen = [s["screen_regret"] for s in summary]
    return (
        f"prediction error over every screened placement: median |error| "
        f"{statistics.median(errors):.0%} (target 20%), n = {len(errors)}; confirmed regret "
        f"median {statistics.median(regrets):.1%}, max {max(regrets):.1%} (target < 10%: met "
        f"in {sum(r < 0.10 for r in regrets)}/{len(summary)}; lower 95% bound above 10% in "
        f"{sum(s['regret'][1] > 0.10 for s in summary)}/{len(summary)}); screening regret "
        f"median {statistics.median(screen):.1%}, max {max(screen):.1%}; ours no slower than "
        f"the better single placement beyond noise (95% interval of the difference reaches "
        f"0) in {sum(s['ok'] for s in summary)}/{len(summary)} configurations"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-8 at two rates only")
    parser.add_argument("--requests", type=int, default=7, help="timed requests per split")
    args = parser.parse_args()
    missing = available()
    if missing:
        raise SystemExit(f"needs {missing}")
    start = time.monotonic()
    fraction = get_device("rpi4").peak_fp32_macs_per_s / get_device("host").peak_fp32_macs_per_s
    models = MODELS[1:2] if args.quick else MODELS
    links = [LINKS[1], LINKS[4]] if args.quick else LINKS
    table = result_table(fraction, args.requests)
    summary: list[dict[str, Any]] = []
    notes = []
    with CpuQuota(fraction, f"bench{time.time_ns() % 10**8}") as quota:
        for name, zoo_name, kwargs in models:
            graph = model_graph(zoo_name, kwargs)
            with tempfile.TemporaryDirectory() as tmp:
                cal = calibrate(graph, quota, Path(tmp))
                notes.append(calibration_note(name, cal))
                cuts = candidate_plan(graph, Path(tmp) / "plan")
                node_ms = node_times(graph, cal)
                for rate, rtt in links:
                    res = measure_config(graph, cuts, node_ms, Path(tmp) / "plan", quota, rate,
                                         rtt, args.requests)  # fmt: skip
                    cells, figures = row(name, cuts, res)
                    table.add_row(*cells)
                    summary.append(figures)
    console = Console(width=260)
    console.print(table)
    console.print(summary_line(summary) + f"; {time.monotonic() - start:.0f} s")
    for note in notes:
        console.print(note)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--device"]:
        worker_device(*sys.argv[2:6])
    elif sys.argv[1:2] == ["--time-part"]:
        worker_time_part(sys.argv[2], int(sys.argv[3]))
    else:
        main()
