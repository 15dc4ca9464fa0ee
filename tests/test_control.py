"""The controller: feasible choices, hysteresis, switching under concurrent requests."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from typer.testing import CliRunner

from crosslevel.cli import app
from crosslevel.control.policy import Context, Policy, feasible, read_trace, write_trace
from crosslevel.control.runtime import Controller
from crosslevel.control.traces import make_trace
from crosslevel.control.variants import Variant, load_variants
from crosslevel.errors import InvalidModelError


def scale_model(k: float) -> bytes:
    """y = k * x on a (1, 4) input: outputs tell which variant answered."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    const = helper.make_tensor("k", TensorProto.FLOAT, [1], [k])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g", [x], [y],
                              initializer=[const])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_variants(folder: Path, specs: list[tuple[str, float, float, int]]) -> Path:
    """variants.json with (name, accuracy, latency_ms, peak_ram_bytes) per variant."""
    entries = []
    for i, (name, acc, lat, ram) in enumerate(specs):
        (folder / f"{name}.onnx").write_bytes(scale_model(float(i + 2)))
        entries.append({
            "name": name, "model_files": {"onnx": f"{name}.onnx"},
            "accuracy": {"kind": "accuracy", "mean": acc},
            "latency_ms": {"value": lat, "kind": "predicted"}, "peak_ram_bytes": ram,
            "flash_bytes": 0, "split": None,
        })  # fmt: skip
    path = folder / "variants.json"
    path.write_text(json.dumps({"format": "crosslevel.variants/1", "variants": entries}))
    return path


def fake(name: str, acc: float, lat: float, mem: int) -> Variant:
    return Variant(name, Path("/nonexistent"), acc, lat, "predicted", mem, 0)


VARIANTS = [fake("big", 0.99, 40.0, 3000), fake("mid", 0.97, 15.0, 1500),
            fake("small", 0.90, 5.0, 600)]  # fmt: skip
contexts = st.builds(
    Context, st.floats(0, 100), st.floats(0, 0.98), st.integers(0, 4000), st.floats(0, 100)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(contexts, min_size=1, max_size=30), st.integers(0, 4))
def test_never_infeasible_when_a_feasible_variant_exists(seq: list[Context], hold: int) -> None:
    policy = Policy(VARIANTS, deadline_ms=60.0, hold=hold, margin=0.2)
    current = None
    for ctx in seq:
        current = policy.decide(ctx, current)
        if any(feasible(v, ctx, 60.0) for v in VARIANTS):
            assert feasible(current, ctx, 60.0)


def test_hysteresis_switches_less_than_greedy() -> None:
    # Load flickers around the level where "big" just meets the deadline.
    seq = [Context(i, 0.30 if i % 2 else 0.36, 10_000) for i in range(40)]
    counts = {}
    for hold in (0, 3):
        policy, current, switches = Policy(VARIANTS, 60.0, hold=hold, margin=0.2), None, 0
        for ctx in seq:
            choice = policy.decide(ctx, current)
            switches += current is not None and choice.name != current.name
            current = choice
        counts[hold] = switches
    assert counts[3] < counts[0]


def test_switching_never_loses_or_duplicates_a_request(tmp_path: Path) -> None:
    specs = [("a", 0.99, 10.0, 100), ("b", 0.95, 5.0, 100), ("c", 0.90, 2.0, 100)]
    variants = load_variants(write_variants(tmp_path, specs))
    factor = {"a": 2.0, "b": 3.0, "c": 4.0}
    ctrl = Controller(variants, "a", preload=False)
    results: dict[int, tuple[str, float]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    stop = threading.Event()
    sent: dict[int, int] = {}

    def worker(first: int) -> None:
        try:
            i = first
            while not stop.is_set():  # requests keep running through every switch
                x = np.full((1, 4), float(i), dtype=np.float32)
                name, (y,) = ctrl.infer(x)
                with lock:
                    assert i not in results
                    results[i] = (name, float(y[0, 0]))
                i += 1
            sent[first] = i - first
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 100_000,)) for k in range(4)]
    for t in threads:
        t.start()
    names = ["b", "c", "a"]
    for switch in range(30):  # switch while requests run, re-creating evicted sessions
        ctrl.switch(names[switch % 3], memory_limit_bytes=variants[0].memory_bytes)
        time.sleep(0.002)  # (only one fits the limit)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == sum(sent.values()) > 30  # every request answered exactly once
    for i, (name, y) in results.items():
        assert y == pytest.approx(factor[name] * i)  # answered by the variant it names
    assert len({name for name, _ in results.values()}) >= 2


def test_variants_file_is_checked(tmp_path: Path) -> None:
    path = write_variants(tmp_path, [("a", 0.9, 1.0, 10)])
    doc = json.loads(path.read_text())
    doc["variants"][0]["model_files"]["onnx"] = "../../etc/passwd"
    path.write_text(json.dumps(doc))
    with pytest.raises(InvalidModelError, match="not a file inside"):
        load_variants(path)
    path.write_text("{not json")
    with pytest.raises(InvalidModelError):
        load_variants(path)
    path.write_text(json.dumps({"format": "other"}))
    with pytest.raises(InvalidModelError, match="format"):
        load_variants(path)
    for hostile in ("[" * 100_000, "1" * 5_000, '{"format": 1e999999}'):
        path.write_text(hostile)  # nesting depth, huge integer, infinite float
        with pytest.raises(InvalidModelError):
            load_variants(path)
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InvalidModelError):
        load_variants(path)


def test_trace_round_trip_and_bad_rows(tmp_path: Path) -> None:
    trace = make_trace("memory_pressure", 0, 10_000, ticks=50)
    path = tmp_path / "t.csv"
    write_trace(path, trace)
    again = read_trace(path)
    assert [c.mem_available_bytes for c in again] == [c.mem_available_bytes for c in trace]
    assert make_trace("cpu_bursts", 1, 100) == make_trace("cpu_bursts", 1, 100)  # seeded
    path.write_text(path.read_text().replace("0.", "x.", 1))
    with pytest.raises(InvalidModelError, match="row"):
        read_trace(path)


def test_adapt_replays_every_policy(tmp_path: Path) -> None:
    specs = [("a", 0.99, 40.0, 100), ("b", 0.95, 15.0, 100), ("c", 0.90, 4.0, 100)]
    path = write_variants(tmp_path, specs)
    result = CliRunner().invoke(app, ["adapt", str(path), "--trace", "cpu_bursts", "--json",
                                      "--no-real-load"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    by = {p["policy"]: p for p in doc["policies"]}
    assert set(by) == {"ours", "greedy", "static:a", "static:b", "static:c"}
    assert all(p["requests_served"] == doc["ticks"] for p in by.values())
    assert by["ours"]["deadline_misses"] <= by["static:a"]["deadline_misses"]
    assert by["ours"]["mean_accuracy"] >= by["static:c"]["mean_accuracy"]
    assert by["ours"]["decision_us_median"] < 1000


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("accuracy", 5, "accuracy must be an object"),
        ("accuracy", {"mean": float("nan")}, "finite"),
        ("accuracy", {"mean": 97.0}, "fraction"),
        ("peak_ram_bytes", float("inf"), "finite"),
        ("latency_ms", {"value": -1.0}, "non-negative"),
        ("model_files", {"onnx": "a\x00.onnx"}, "not a file inside"),
        ("model_files", {"onnx": "/etc/hostname"}, "not a file inside"),
    ],
)
def test_hostile_variant_fields_end_in_one_error(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    path = write_variants(tmp_path, [("a", 0.9, 1.0, 10)])
    doc = json.loads(path.read_text())
    doc["variants"][0][field] = value
    path.write_text(json.dumps(doc))  # NaN and Infinity as json.dumps writes them
    with pytest.raises(InvalidModelError, match=message):
        load_variants(path)


def test_trace_with_infinite_values_or_time_going_back_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_trace(path, make_trace("battery_drain", 0, 10_000, ticks=5))
    lines = path.read_text().splitlines()
    head, first, second = lines[0], lines[1].split(","), lines[2].split(",")
    first[2] = "inf"  # mem_available_bytes: int(inf) would overflow
    path.write_text("\n".join([head, ",".join(first)]) + "\n")
    with pytest.raises(InvalidModelError, match="row 2: value out of range"):
        read_trace(path)
    second[0] = "-1"
    path.write_text("\n".join([head, lines[1], ",".join(second)]) + "\n")
    with pytest.raises(InvalidModelError, match="back in time"):
        read_trace(path)


def test_adapt_usage_and_input_errors_have_their_exit_codes(tmp_path: Path) -> None:
    path = write_variants(tmp_path, [("a", 0.99, 4.0, 100), ("b", 0.9, 1.0, 100)])
    runner = CliRunner()
    bad_options = (["--deadline-ms", "-1"], ["--deadline-ms", "nan"], ["--margin", "1.5"],
                   ["--hold", "-2"], ["--trace", "nosuch"], ["--latency", "x"])  # fmt: skip
    for bad in bad_options:
        result = runner.invoke(app, ["adapt", str(path), *bad])
        assert result.exit_code == 2, (bad, result.output)
    trace = tmp_path / "bad.csv"
    trace.write_text("t_s,cpu_load\n0,0.5\n")
    result = runner.invoke(app, ["adapt", str(path), "--trace", str(trace)])
    assert result.exit_code == 4 and "columns" in result.output
    (tmp_path / "a.onnx").write_bytes(b"\x08\x01garbage" * 20)
    result = runner.invoke(app, ["adapt", str(path), "--no-real-load"])
    assert result.exit_code == 4 and "ONNX Runtime cannot load" in result.output


def test_adapt_json_is_strict_json_when_a_policy_never_switches(tmp_path: Path) -> None:
    path = write_variants(tmp_path, [("a", 0.99, 4.0, 100), ("b", 0.9, 1.0, 100)])
    result = CliRunner().invoke(app, ["adapt", str(path), "--json", "--trace",
                                      "battery_drain", "--no-real-load"])  # fmt: skip

    def no_constants(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    doc = json.loads(result.stdout, parse_constant=no_constants)
    static = [p for p in doc["policies"] if p["policy"].startswith("static:")]
    assert static and all(p["switches"] == 0 and p["switch_ms_max"] is None for p in static)


def test_bandwidth_decides_whether_a_split_variant_is_feasible() -> None:
    from dataclasses import replace as dc_replace

    from crosslevel.control.traces import shipped_trace
    from crosslevel.control.variants import Split

    # Remote part: 2 ms device + 8 KB over the link + RTT + 1 ms edge; local: 30 ms.
    split = dc_replace(fake("split", 0.99, 3.0, 500),
                       split=Split(device_ms=2.0, remote_ms=1.0, up_bytes=8000, down_bytes=40))
    local = fake("local", 0.95, 30.0, 500)
    policy = Policy([split, local], deadline_ms=40.0, hold=3, margin=0.2)
    fast, slow = Context(0, 0.1, 10_000, 90, 20.0, 12.0), Context(1, 0.1, 10_000, 90, 0.5, 90.0)
    assert policy.best(fast).name == "split" and policy.best(slow).name == "local"
    assert not feasible(split, Context(2, 0.0, 10_000, 90, 0.0, 0.0), 40.0)  # no link
    chosen = {policy.decide(ctx, None).name for ctx in shipped_trace("bandwidth", 10_000)}
    assert chosen == {"split", "local"}  # the shipped bandwidth trace moves the choice


def test_a_malformed_split_is_one_error(tmp_path: Path) -> None:
    path = write_variants(tmp_path, [("a", 0.9, 1.0, 10)])
    doc = json.loads(path.read_text())
    for bad in ({"device_ms": 1.0}, {"device_ms": -1, "remote_ms": 1, "up_bytes": 1,
                                     "down_bytes": 1}, 7):  # fmt: skip
        doc["variants"][0]["split"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(InvalidModelError, match="split"):
            load_variants(path)
    doc["variants"][0]["split"] = {"device_ms": 1, "remote_ms": 2, "up_bytes": 3, "down_bytes": 4}
    path.write_text(json.dumps(doc))
    assert load_variants(path)[0].split is not None


def test_battery_saving_is_opt_in_and_bounded_in_accuracy() -> None:
    variants = [fake("best", 0.990, 40.0, 100), fake("near", 0.985, 20.0, 100),
                fake("fast", 0.900, 2.0, 100)]  # fmt: skip
    low = Context(0, 0.0, 10_000, battery_pct=10.0)
    assert Policy(variants, 60.0).best(low).name == "best"  # off by default
    assert Policy(variants, 60.0, low_battery_pct=20.0).best(low).name == "near"
    assert Policy(variants, 60.0, low_battery_pct=20.0, battery_tolerance=0.2).best(low).name \
        == "fast"


def test_adapt_reports_latency_under_a_real_load_generator(tmp_path: Path) -> None:
    specs = [("a", 0.99, 40.0, 100), ("b", 0.95, 15.0, 100), ("c", 0.90, 4.0, 100)]
    path = write_variants(tmp_path, specs)
    result = CliRunner().invoke(app, ["adapt", str(path), "--trace", "cpu_bursts", "--json"])
    assert result.exit_code == 0, result.output
    loaded = json.loads(result.stdout)["real_load"]
    assert loaded["calm"]["ticks"] + loaded["busy"]["ticks"] == 200
    assert loaded["busy"]["measured_ms"] > loaded["calm"]["measured_ms"]
    assert loaded["busy"]["expected_ms"] > loaded["calm"]["expected_ms"]
