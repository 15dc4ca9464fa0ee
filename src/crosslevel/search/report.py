"""OUT/report.html (self-contained: inline SVG plots, no scripts, no external files) and
OUT/result.json.

The page is rendered from the result dictionary that is written as result.json, so its
numbers are those of the file by construction; every number cell also carries
``data-key`` (its path in result.json) and ``data-value`` (the JSON value) so a test can
check the page against the file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from crosslevel.report.arena_svg import arena_svg
from crosslevel.search.objectives import LABELS, OBJECTIVES
from crosslevel.search.space import Candidate

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>crosslevel optimize: {{ r.model }} on {{ r.device.name }}</title>
<style>
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.chosen { background: #e6f4e6; font-weight: bold; }
.ok { color: #17692a; } .no { color: #b00020; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
</style>
</head>
<body>
<h1>crosslevel optimize</h1>
<p>Model <b>{{ r.model }}</b>{% if r.data %} trained on <b>{{ r.data }}</b>{% endif %},
device <b>{{ r.device.name }}</b> ({{ r.device.cpu }}, {{ r.device.sram_bytes or
r.device.ram_bytes }} B working memory, {{ r.device.flash_bytes or "no" }} B flash).</p>
<h2>Demands</h2>
<table id="demands"><tr><th>demand</th><th>limit</th><th>unoptimized model</th><th>met</th></tr>
{% for name in r.objectives %}{% if limits[name] is not none %}
<tr><td>{{ labels[name] }}</td>{{ cell("demands." ~ demand_keys[name]) }}
{{ cell("baseline.objectives." ~ name) }}{{ yes(r.baseline_meets[name]) }}</tr>
{% endif %}{% endfor %}
</table>
<p>Search: {{ cell_text("search.evaluated_total") }} trials of the accuracy-changing knobs
evaluated ({{ cell_text("search.evaluated_this_run") }} this run,
{{ cell_text("search.measured_this_run") }} measured; the others stopped by the analytic
stage), each choosing the accuracy-preserving knobs by an inner analytic search
({{ cell_text("search.analytic_this_run") }} analytic evaluations this run) and
keeping its non-dominated points ({{ cell_text("search.points_total") }} points),
in {{ cell_text("search.trials_total") }} Optuna trials,
{{ cell_text("search.elapsed_s", "{:.1f}") }} s, stopped by
{{ r.search.stopped_by }}; sampler {{ r.settings.sampler }}.</p>

<h2>Chosen point</h2>
<table id="chosen"><tr><th>knobs</th>
{% for name in r.objectives %}<th>{{ labels[name] }}</th>{% endfor %}</tr>
<tr class="chosen"><td>{{ knobs(r.chosen.params) }}</td>
{% for name in r.objectives %}{{ cell("chosen.objectives." ~ name) }}{% endfor %}</tr></table>
<p>Memory plan ran inside its arena with the plain executor's outputs:
{{ yes(r.chosen.arena_check.verified) }}
(max |diff| {{ cell_text("chosen.arena_check.max_abs_diff", "{:g}") }}).
{% if r.chosen.tflm_check %}TFLM-ready model.tflite ({{ r.chosen.tflm_check.strategy }} plan):
head arena {{ cell_text("chosen.tflm_check.tflm_head_bytes", "{:,}") }} B measured in tflite-micro,
outputs identical: {{ yes(r.chosen.tflm_check.outputs_identical) }};
{% if r.chosen.tflm_check.verified %}written{% else %}not written: the check failed{% endif %}.
{% else %}No .tflite: a float point (the TFLite export is for int8 models).{% endif %}</p>

<h2>Pareto front</h2>
<table id="front"><tr><th>knobs</th>
{% for name in r.objectives %}<th>{{ labels[name] }}</th>{% endfor %}
<th>host latency (ms, measured)</th>
{% for name in limit_names %}<th>meets {{ labels[name] }}</th>{% endfor %}</tr>
{% for p in r.front %}{% set i = loop.index0 %}
<tr{% if p.trial == r.chosen.trial %} class="chosen"{% endif %}><td>{{ knobs(p.params) }}</td>
{% for name in r.objectives %}{{ cell("front." ~ i ~ ".objectives." ~ name) }}{% endfor %}
{{ cell("front." ~ i ~ ".figures.host_latency_ms") }}
{% for name in limit_names %}{{ yes(p.meets[name]) }}{% endfor %}</tr>
{% endfor %}</table>
<figure>{{ plots.pareto }}<figcaption>Every measured point (grey), the Pareto front
(blue), the chosen point (star) and the unoptimized model (red cross); dashed lines are the
limits.</figcaption></figure>

<h2>Contribution of each level</h2>
<p>Each level searched alone (the others unoptimized) against the joint search.
Hypervolume of (latency, RAM, flash) over points meeting every demand with at most
{{ r.hypervolume.accuracy_tolerance_pp }} pp accuracy lost; reference point: the
unoptimized model x 1.1.</p>
<table id="hypervolume"><tr><th>search</th><th>hypervolume</th><th>points in it</th></tr>
<tr><td>joint (all levels)</td>{{ cell("hypervolume.joint") }}
{{ cell("hypervolume.points.joint") }}</tr>
{% for name, hv in r.hypervolume.single_level.items() %}
<tr><td>{{ name }} only</td>{{ cell("hypervolume.single_level." ~ name) }}
{{ cell("hypervolume.points." ~ name) }}</tr>
{% endfor %}</table>
{% if plots.ablation %}<figure>{{ plots.ablation }}<figcaption>Feasible points of each
single-level search and of the joint search.</figcaption></figure>{% endif %}

<h2>Arena of the chosen plan</h2>
<figure>{{ plots.arena }}<figcaption>Operator step on x, arena offset on y; one box per
tensor (hover for name, size, lifetime).</figcaption></figure>

<h2>Layers of the chosen model</h2>
<table id="layers"><tr><th>layer</th><th>op</th><th>output</th><th>params</th><th>weight bytes</th>
<th>MACs</th><th>output bytes</th><th>latency (ms, predicted)</th></tr>
{% for row in r.layers %}{% set i = loop.index0 %}
<tr><td>{{ row.name }}</td>
<td>{{ row.op }}{% if row.activation != "NONE" %} + {{ row.activation }}{% endif %}</td>
<td>{{ row.output_shape|join("x") }}</td>
{% for key in ("params", "weight_bytes", "macs", "activation_bytes", "predicted_ms") %}
{{ cell("layers." ~ i ~ "." ~ key) }}{% endfor %}</tr>
{% endfor %}</table>

<h2>All points</h2>
<details><summary>{{ r.trials|length }} points of {{ r.search.evaluated_total }} trials</summary>
<table id="trials"><tr><th>trial</th><th>knobs</th><th>stage</th>
{% for name in r.objectives %}<th>{{ labels[name] }}</th>{% endfor %}</tr>
{% for t in r.trials %}{% set i = loop.index0 %}
<tr><td>{{ t.trial }}</td><td>{{ knobs(t.params) }}</td><td>{{ t.stage }}</td>
{% for name in r.objectives %}{{ cell("trials." ~ i ~ ".objectives." ~ name) }}{% endfor %}</tr>
{% endfor %}</table></details>

<h2>Notes</h2>
<ul>{% for n in r.notes %}<li>{{ n }}</li>{% endfor %}</ul>
</body>
</html>
"""

DEMAND_KEYS = {
    "accuracy_drop_pp": "max_accuracy_drop_pp",
    "latency_ms": "max_latency_ms",
    "peak_ram_bytes": "max_ram_bytes",
    "flash_bytes": "max_flash_bytes",
}


def lookup(result: dict[str, Any], path: str) -> Any:
    """The value at a dotted path ("front.0.objectives.latency_ms") of result.json."""
    node: Any = result
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def format_value(value: Any, fmt: str | None = None) -> str:
    """How a number is shown: integers with thousands separators, floats to 4 digits."""
    if value is None:
        return "-"
    if fmt is not None:
        return fmt.format(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and
                                  abs(value) >= 100):  # fmt: skip
        return f"{int(value):,}"
    return f"{value:.4g}" if abs(value) >= 1e4 else f"{value:.4f}"


def render_html(result: dict[str, Any], arena: str) -> str:
    """The page for ``result`` (the result.json dictionary) and the chosen plan's SVG."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)

    def cell_text(path: str, fmt: str | None = None) -> Markup:
        value = lookup(result, path)
        return Markup('<span data-key="{}" data-value="{}">{}</span>').format(
            path, json.dumps(value), format_value(value, fmt)
        )

    def cell(path: str, fmt: str | None = None) -> Markup:
        try:
            value = lookup(result, path)
        except (KeyError, IndexError):
            return Markup("<td>-</td>")
        return Markup('<td data-key="{}" data-value="{}">{}</td>').format(
            path, json.dumps(value), format_value(value, fmt)
        )

    def yes(ok: bool | None) -> Markup:
        if ok is None:
            return Markup("<td>-</td>")
        return Markup('<td class="ok">yes</td>') if ok else Markup('<td class="no">no</td>')

    def knobs(params: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in params.items()) or "(none)"

    limits = {name: result["demands"][DEMAND_KEYS[name]] for name in OBJECTIVES}
    plots = {
        "pareto": Markup(pareto_svg(result)),
        "ablation": Markup(ablation_svg(result)) if result["ablations"] else "",
        "arena": Markup(arena),
    }
    return env.from_string(TEMPLATE).render(
        r=result, labels=LABELS, limits=limits, demand_keys=DEMAND_KEYS,
        limit_names=[n for n in OBJECTIVES if limits[n] is not None], plots=plots,
        cell=cell, cell_text=cell_text, yes=yes, knobs=knobs,
    )  # fmt: skip


def _figure_svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "crosslevel"  # stable element ids
    import matplotlib.pyplot as plt

    return plt


def pareto_svg(result: dict[str, Any]) -> str:
    """Two panels: latency vs accuracy drop, and RAM vs flash."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    measured = [t for t in result["trials"] if t["stage"] == "measured"]
    panels = (("latency_ms", "accuracy_drop_pp"), ("peak_ram_bytes", "flash_bytes"))
    for ax, (x, y) in zip(axes, panels, strict=True):

        def pts(rows: list[dict[str, Any]], x: str = x, y: str = y) -> tuple[list[float], ...]:
            return ([r["objectives"][x] for r in rows], [r["objectives"][y] for r in rows])

        ax.scatter(*pts(measured), c="#bbbbbb", s=18, label="measured")
        ax.scatter(*pts(result["front"]), c="#1f5fbf", s=30, label="Pareto front")
        ax.scatter(*pts([result["chosen"]]), marker="*", c="#17692a", s=220, label="chosen")
        ax.scatter(*pts([result["baseline"]]), marker="x", c="#b00020", s=80, label="unoptimized")
        for key, line in ((x, ax.axvline), (y, ax.axhline)):
            limit = result["demands"][DEMAND_KEYS[key]]
            if limit is not None:
                line(limit, ls="--", c="#b00020", lw=0.8)
        ax.set_xlabel(LABELS[x])
        ax.set_ylabel(LABELS[y])
        if x != "latency_ms":
            ax.set_xscale("log")
            ax.set_yscale("log")
        else:
            ax.set_xscale("log")
    axes[0].legend(fontsize=8)
    return _figure_svg(fig)


def ablation_svg(result: dict[str, Any]) -> str:
    """Feasible points of each single-level search beside the joint one (latency, RAM)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    joint = [t for t in result["trials"] if t["stage"] == "measured" and t["feasible"]]
    series = [("joint", joint), *((f"{n} only", rows) for n, rows in result["ablations"].items())]
    markers = ("o", "s", "^", "D", "v")
    for (name, rows), marker in zip(series, markers, strict=False):
        xs = [r["objectives"]["latency_ms"] for r in rows]
        ys = [r["objectives"]["peak_ram_bytes"] for r in rows]
        ax.scatter(xs, ys, marker=marker, s=28, alpha=0.7, label=f"{name} ({len(rows)})")
    ax.set_xscale("log")
    ax.set_xlabel(LABELS["latency_ms"])
    ax.set_ylabel(LABELS["peak_ram_bytes"])
    ax.legend(fontsize=8)
    return _figure_svg(fig)


def write_report(out: Path, result: dict[str, Any], cand: Candidate) -> None:
    """OUT/result.json, and OUT/report.html rendered from the same dictionary (after a
    JSON round trip, so the page shows exactly what the file holds)."""
    text = json.dumps(result, indent=2, default=str) + "\n"
    (out / "result.json").write_text(text)
    title = f"{result['model']}: {result['chosen']['figures'].get('memory_strategy', '')} plan"
    page = render_html(json.loads(text), arena_svg(cand.plan, title))
    (out / "report.html").write_text(page)


__all__ = ["render_html", "write_report", "lookup", "format_value"]
