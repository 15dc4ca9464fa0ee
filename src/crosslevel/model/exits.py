"""Early exits: a trained zoo classifier becomes a multi-exit network (BranchyNet style).

The backbone is cut into blocks (a block = a module with weights plus the weightless
modules after it, e.g. conv+BN+ReLU then max-pool), and a small exit head (average pool to
at most 4 cells, flatten, linear) is attached after the chosen blocks. The model's own
classifier stays as the last exit. Deployed, the network is one ONNX model per segment
and per exit head plus a manifest (``runtime.early_exit``); the runtime answers at the
first exit whose softmax confidence reaches that exit's threshold.

Heads are trained with the backbone frozen, on features precomputed once by the backbone
in eval mode. Why not jointly (weighted sum of exit losses): joint training changes the
backbone, so the full model's accuracy would have to be re-established, while frozen
training keeps the last exit bit-for-bit the trained baseline (thresholds above 1 give
exactly the full model) and one trained baseline serves every other pass too; training
only linear heads also takes seconds. The price is somewhat weaker early heads than joint
training would give, which the calibrated thresholds account for.

Thresholds are calibrated on one half of the held-out split and everything is reported on
the other half (the backbone saw the whole training split, so its confidence there is
optimistic). Calibration is greedy from the first exit: each exit gets the lowest
threshold (the most samples leaving) that keeps the overall accuracy, with the later early
exits still off, within ``max_drop`` of the full model's (with a statistical margin, see
``calibrate_thresholds``); later exits then only take what is left of that budget. Early
exits are preferred because they save the most MACs.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from crosslevel.errors import InvalidModelError, UsageError
from crosslevel.ir.onnx import import_onnx
from crosslevel.ir.ops import node_macs
from crosslevel.ir.torch_io import export_torch_onnx
from crosslevel.model import zoo
from crosslevel.model.baselines import check_pair, get_dataset, recipe, trained_baseline
from crosslevel.model.datasets import Dataset
from crosslevel.model.evaluate import SeedStats
from crosslevel.model.train import TrainConfig, load_checkpoint, load_state, save_checkpoint, train
from crosslevel.runtime.early_exit import (
    MANIFEST_NAME,
    EarlyExitRunner,
    ExitManifest,
    OnnxPart,
    Stage,
    load_manifest,
    max_softmax,
    write_manifest,
)
from crosslevel.runtime.ort import make_session

RESULT_FORMAT = "crosslevel.compress_exits/1"
NEVER_EXIT = 2.0  # softmax confidence never exceeds 1: an exit with this threshold is off
MAX_POOL_CELLS = 4  # pooled cells per exit head: coarse position survives, heads stay tiny
HEADS_FILE = "exit_heads.npz"
MARGIN_Z = 1.0  # standard deviations of the net accuracy loss kept in reserve (calibration)

Log = Callable[[str], None]


# --------------------------------------------------------------------------- structure


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _backbone_modules(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """Children before ``head`` in order, containers of blocks opened one level."""
    children = dict(model.named_children())
    head = children.pop("head", None)
    if head is None or not children:
        raise UsageError(
            f"{type(model).__name__} has no backbone + 'head' structure; early exits need "
            "a classifier whose forward is head(blocks(x))"
        )
    modules: list[nn.Module] = []
    for child in children.values():
        # a Sequential of composite modules (features, stacks, cells) is a list of blocks;
        # a Sequential of leaves (one conv+BN+ReLU) is one block
        is_block_list = isinstance(child, nn.Sequential) and any(
            len(list(c.children())) for c in child
        )
        modules.extend(list(child.children()) if is_block_list else [child])
    return modules, head


def backbone_blocks(
    model: nn.Module, input_shape: tuple[int, ...]
) -> tuple[list[nn.Module], nn.Module]:
    """(blocks, classifier head) of a zoo classifier, checked to compose to the model."""
    groups: list[list[nn.Module]] = []
    modules, head = _backbone_modules(model)
    for module in modules:
        if not groups or (_has_weights(module) and any(map(_has_weights, groups[-1]))):
            groups.append([module])
        else:  # a weightless module (pool, dropout) belongs to the block before it
            groups[-1].append(module)
    blocks: list[nn.Module] = [nn.Sequential(*g) for g in groups]
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        want, got = model(x), head(nn.Sequential(*blocks)(x))
    if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-5, atol=1e-5):
        raise UsageError(
            f"{type(model).__name__}'s forward is not head(blocks(x)): early exits need a "
            "sequential backbone"
        )
    return blocks, head


def default_exits(n_blocks: int) -> list[int]:
    """Exits after about one third and two thirds of the blocks."""
    return sorted({max(0, round(n_blocks * k / 3) - 1) for k in (1, 2)} & set(range(n_blocks - 1)))


def parse_exits(spec: str, n_blocks: int) -> list[int]:
    """Block indices of the early exits from ``--exits`` (UsageError when invalid).

    ``auto``; or a comma list of block indices (``0,1``) and fractions of the backbone
    depth in (0, 1) (``0.5``: after the block holding the middle of the backbone).
    """
    if n_blocks < 2:
        raise UsageError("the backbone has one block: there is no room for an early exit")
    if spec.strip() == "auto":
        return default_exits(n_blocks)
    blocks = [_exit_block(item.strip(), n_blocks) for item in spec.split(",")]
    if len(set(blocks)) != len(blocks):
        raise UsageError(f"--exits {spec!r} puts two exits after the same block ({blocks})")
    return sorted(blocks)


def _exit_block(item: str, n_blocks: int) -> int:
    last = n_blocks - 2  # block n-1 ends in the model's own classifier
    valid = f"block indices 0..{last} or fractions in (0, 1)"
    index = _block_index(item, n_blocks)
    if index is None:
        raise UsageError(f"--exits: {item!r} is neither a block index nor a fraction in (0, 1)")
    if not 0 <= index <= last:
        raise UsageError(
            f"--exits: {item} is block {index} of a {n_blocks}-block backbone; give {valid}"
        )
    return index


def _block_index(item: str, n_blocks: int) -> int | None:
    """An integer is a block index; a fraction of depth maps to the block holding it."""
    try:
        return int(item)
    except ValueError:
        pass
    try:
        fraction = float(item)
    except ValueError:
        return None
    if not 0.0 < fraction < 1.0:  # also refuses nan
        return None
    return max(0, math.ceil(fraction * n_blocks) - 1)


def _bins(size: int, limit: int) -> int:
    """Largest divisor of ``size`` not above ``limit`` (pooling windows tile exactly)."""
    return max(d for d in range(1, min(size, limit) + 1) if size % d == 0)


def exit_head(feature_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Average pool to at most MAX_POOL_CELLS cells, flatten, linear classifier."""
    if len(feature_shape) != 3:
        raise UsageError(f"an exit head needs a C x H x W feature, got {feature_shape}")
    c, h, w = feature_shape
    per_axis = MAX_POOL_CELLS if min(h, w) == 1 else math.isqrt(MAX_POOL_CELLS)
    bh, bw = _bins(h, per_axis), _bins(w, per_axis)
    return nn.Sequential(
        nn.AvgPool2d((h // bh, w // bw)), nn.Flatten(), nn.Linear(c * bh * bw, num_classes)
    )


@dataclass
class MultiExit:
    """A frozen backbone cut into blocks, early heads after ``exit_blocks``, final head."""

    blocks: list[nn.Module]
    final_head: nn.Module
    exit_blocks: list[int]
    heads: nn.ModuleList

    def stages(self) -> Iterator[tuple[nn.Module, nn.Module, int]]:
        """(segment, exit head, index of the segment's last block) in running order."""
        start = 0
        ends = [*self.exit_blocks, len(self.blocks) - 1]
        for end, head in zip(ends, [*self.heads, self.final_head], strict=True):
            yield nn.Sequential(*self.blocks[start : end + 1]), head, end
            start = end + 1

    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit (the last is the original model's)."""
        return [head(x := segment(x)) for segment, head, _ in self.stages()]


def build_multi_exit(
    model: nn.Module, input_shape: tuple[int, ...], num_classes: int, exits: str
) -> MultiExit:
    """``model`` with fresh (untrained) exit heads after the blocks ``exits`` names."""
    blocks, head = backbone_blocks(model, input_shape)
    exit_blocks = parse_exits(exits, len(blocks))
    x = torch.zeros((1, *input_shape))
    heads = []
    with torch.no_grad():
        for i, block in enumerate(blocks):
            x = block(x)
            if i in exit_blocks:
                heads.append(exit_head(tuple(x.shape[1:]), num_classes))
    return MultiExit(blocks, head, exit_blocks, nn.ModuleList(heads))


# --------------------------------------------------------------------------- training


def _features(multi: MultiExit, x: np.ndarray) -> list[np.ndarray]:
    """Backbone features (eval mode) at each early exit, for inputs ``x``."""
    out: list[np.ndarray] = []
    feature = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        for i, block in enumerate(multi.blocks[: max(multi.exit_blocks, default=-1) + 1]):
            block.eval()
            feature = block(feature)
            if i in multi.exit_blocks:
                out.append(feature.numpy())
    return out


def train_exit_heads(
    multi: MultiExit, data: Dataset, config: TrainConfig, progress: bool = False
) -> list[float]:
    """Train each early head on frozen backbone features; returns final losses."""
    train_feats = _features(multi, data.x_train)
    test_feats = _features(multi, data.x_test)
    losses = []
    for k, head in enumerate(multi.heads):
        features = replace(
            data, name=f"{data.name} after block {multi.exit_blocks[k]}",
            x_train=train_feats[k], x_test=test_feats[k],
            input_shape=tuple(train_feats[k].shape[1:]),
        )  # fmt: skip
        result = train(head, features, config, progress=progress, description=f"exit {k} head")
        losses.append(result.losses[-1] if result.losses else float("nan"))
    return losses


def save_exit_heads(multi: MultiExit, path: Path, meta: dict[str, Any]) -> None:
    """The early heads as a plain-tensor checkpoint (``model.train``), exit blocks in meta."""
    save_checkpoint(multi.heads, path, {**meta, "exit_blocks": multi.exit_blocks})


def load_exit_heads(multi: MultiExit, path: Path) -> None:
    """Load heads saved by ``save_exit_heads`` into ``multi`` (InvalidModelError if foreign)."""
    state, meta = load_checkpoint(path)
    if meta.get("exit_blocks") != multi.exit_blocks:
        raise InvalidModelError(
            f"{path} holds heads for exits after blocks {meta.get('exit_blocks')}, not "
            f"{multi.exit_blocks}"
        )
    load_state(multi.heads, state, str(path))


# --------------------------------------------------------------------------- export


def onnx_macs(model: bytes) -> int:
    graph = import_onnx(model)
    return sum(node_macs(graph, n) for n in graph.nodes)


def _write_part(module: nn.Module, shape: tuple[int, ...], path: Path) -> OnnxPart:
    data = export_torch_onnx(module, shape)
    path.write_bytes(data)
    proto = onnx.load_from_string(data)
    return OnnxPart(path, proto.graph.input[0].name, proto.graph.output[0].name, onnx_macs(data))


def export_multi_exit(
    multi: MultiExit, model_name: str, input_shape: tuple[int, ...], num_classes: int,
    folder: Path,
) -> ExitManifest:  # fmt: skip
    """segment_k.onnx and exit_k.onnx per stage plus exits.json (early exits off)."""
    folder.mkdir(parents=True, exist_ok=True)
    shape, stages = (1, *input_shape), []
    for k, (segment, head, end) in enumerate(multi.stages()):
        seg = _write_part(segment, shape, folder / f"segment_{k}.onnx")
        with torch.no_grad():
            shape = tuple(segment.eval()(torch.zeros(shape)).shape)
        head_part = _write_part(head, shape, folder / f"exit_{k}.onnx")
        threshold = NEVER_EXIT if k < len(multi.heads) else 0.0  # the last always answers
        stages.append(Stage(seg, head_part, threshold, end))
    manifest = ExitManifest(folder, model_name, num_classes, (1, *input_shape), tuple(stages))
    write_manifest(manifest, folder / MANIFEST_NAME)
    return load_manifest(folder / MANIFEST_NAME)


# --------------------------------------------------------------------------- calibration


def exit_logits(runner: EarlyExitRunner, x: np.ndarray) -> np.ndarray:
    """Logits of every exit for every sample, (stages, samples, classes), through ORT."""
    per_sample = [runner.all_exit_logits(s[None]) for s in x]
    return np.stack([np.concatenate(stage) for stage in zip(*per_sample, strict=True)])


def _leaving_prefix(
    conf: np.ndarray, lost: np.ndarray, discordant: np.ndarray, allowed: float
) -> int:
    """Largest m such that the m most confident samples may leave (ties kept together):
    the cumulative net loss plus MARGIN_Z standard deviations stays within ``allowed``."""
    within = lost + MARGIN_Z * np.sqrt(discordant) <= allowed
    boundary = np.append(conf[:-1] > conf[1:], True)  # m = i + 1 splits no tie
    ok = np.flatnonzero(boundary & within)
    return int(ok[-1]) + 1 if len(ok) else 0


def calibrate_thresholds(logits: np.ndarray, labels: np.ndarray, max_drop: float) -> list[float]:
    """Per-exit thresholds keeping accuracy within ``max_drop`` of the last exit's (greedy,
    earliest exit first; see the module docstring). The last exit gets 0 (always answers).

    The budget holds with a margin: a sample leaving early is a loss when only the last
    exit was right, a gain when only the early one was (a discordant pair, as in
    McNemar's test); the net loss plus MARGIN_Z times its standard deviation under no
    difference (sqrt of the discordant count) must stay within ``max_drop`` of the
    samples. Measured why: without it, a digits seed met 1 point on its 180 calibration
    samples and lost 5 on the evaluation half.
    """
    labels = np.asarray(labels)
    correct = (np.argmax(logits, axis=-1) == labels).astype(np.int64)
    conf = max_softmax(logits)
    allowed = max_drop * len(labels) + 1e-9
    remaining = np.ones(len(labels), dtype=bool)
    thresholds = [NEVER_EXIT] * (len(logits) - 1) + [0.0]
    lost, discordant = 0, 0
    for k in range(len(logits) - 1):
        idx = np.flatnonzero(remaining)
        order = idx[np.argsort(-conf[k, idx], kind="stable")]
        loss = correct[-1, order] - correct[k, order]  # +1 lost, -1 gained, 0 the same
        cum_lost = lost + np.cumsum(loss)
        cum_discordant = discordant + np.cumsum(loss != 0)
        m = _leaving_prefix(conf[k, order], cum_lost, cum_discordant, allowed)
        if m == 0:
            continue
        thresholds[k] = float(conf[k, order[m - 1]])
        lost, discordant = int(cum_lost[m - 1]), int(cum_discordant[m - 1])
        remaining[order[:m]] = False
    return thresholds


def with_thresholds(manifest: ExitManifest, thresholds: list[float]) -> ExitManifest:
    stages = tuple(
        replace(s, threshold=t) for s, t in zip(manifest.stages, thresholds, strict=True)
    )
    return replace(manifest, stages=stages)


def held_out_halves(data: Dataset, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(calibration, evaluation) halves of the test split, stratified and seeded."""
    x_cal, x_eval, y_cal, y_eval = train_test_split(
        data.x_test, data.y_test, test_size=0.5, stratify=data.y_test, random_state=seed
    )
    return (x_cal, y_cal), (x_eval, y_eval)


# --------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class ExitConfig:
    """``crosslevel compress MODEL --data NAME --exits SPEC``: the early-exit pass."""

    model: str
    data: str
    exits: str = "auto"
    max_drop: float = 0.01  # accuracy (fraction) the early exits may cost on calibration data
    epochs: int | None = None  # head training epochs; None: the baseline's recipe
    baseline_epochs: int | None = None
    seeds: int = 3
    latency_passes: int = 5  # passes over the evaluation half; the median pass mean counts

    def validate(self) -> list[int]:
        """The exit block indices; UsageError (exit 2) for any bad knob, before any work."""
        if self.model not in zoo.ZOO:
            raise UsageError(f"unknown zoo model {self.model!r}; known: {', '.join(zoo.ZOO)}")
        entry = check_pair(self.model, get_dataset(self.data, 0))
        if not 0.0 <= self.max_drop <= 1.0:
            raise UsageError(f"--max-drop must be in [0, 100] points, got {100 * self.max_drop}")
        if self.seeds < 1 or self.latency_passes < 1:
            raise UsageError("--seeds and latency passes must be >= 1")
        if (self.epochs is not None and self.epochs < 0) or (
            self.baseline_epochs is not None and self.baseline_epochs < 1
        ):
            raise UsageError("--epochs must be >= 0 and --baseline-epochs >= 1")
        blocks, _ = backbone_blocks(zoo.build(self.model), entry.input_shape)
        return parse_exits(self.exits, len(blocks))

    def head_epochs(self) -> int:
        """--epochs, else the baseline's recipe. Measured on digits (3 seeds): 10 epochs
        left the heads under-confident (average MACs 45-50 % of the full model's), 20 gave
        34-46 % at the same accuracy."""
        return self.epochs if self.epochs is not None else recipe(self.model, 0).epochs


@dataclass
class _SeedRun:
    """One seed's multi-exit model measured on its evaluation half."""

    manifest: ExitManifest
    exit_accuracy: list[float]  # each exit's head on every evaluation sample
    shares: list[float]  # fraction of samples the runtime answered at each exit
    full_accuracy: float  # the full model's ONNX export in ONNX Runtime
    early_accuracy: float  # the early-exit runtime's answers
    avg_macs: float
    full_macs: int
    chain_max_abs_diff: float  # last exit through the segment chain vs the full model
    latency_ms: tuple[float, float] | None  # (full, early): mean per sample, measured


def _mean_latency_ms(
    run: Callable[[np.ndarray], Any], samples: list[np.ndarray], passes: int
) -> float:
    """Median over ``passes`` of the mean wall time per sample (after a warm-up)."""
    for sample in samples[:20]:
        run(sample)
    means = []
    for _ in range(passes):
        start = time.perf_counter()
        for sample in samples:
            run(sample)
        means.append((time.perf_counter() - start) * 1e3 / len(samples))
    return statistics.median(means)


def _evaluate(
    runner: EarlyExitRunner, full_onnx: bytes, x: np.ndarray, y: np.ndarray, passes: int
) -> _SeedRun:
    """Accuracy, exit shares and MACs of the runtime on (x, y); latency when passes > 0."""
    logits = exit_logits(runner, x)
    session = make_session(full_onnx)
    name = session.get_inputs()[0].name
    samples = [np.ascontiguousarray(s[None], dtype=np.float32) for s in x]
    full_logits = np.concatenate([session.run(None, {name: s})[0] for s in samples])
    answers = [runner.run(s) for s in samples]
    chosen = np.array([a.exit_index for a in answers])
    predicted = np.array([int(np.argmax(a.logits)) for a in answers])
    stages = len(runner.manifest.stages)
    latency = None
    if passes > 0:
        full_ms = _mean_latency_ms(lambda s: session.run(None, {name: s}), samples, passes)
        latency = (full_ms, _mean_latency_ms(runner.run, samples, passes))
    return _SeedRun(
        manifest=runner.manifest,
        exit_accuracy=[float(np.mean(np.argmax(z, axis=1) == y)) for z in logits],
        shares=[float(np.mean(chosen == k)) for k in range(stages)],
        full_accuracy=float(np.mean(np.argmax(full_logits, axis=1) == y)),
        early_accuracy=float(np.mean(predicted == y)),
        avg_macs=float(np.mean(np.asarray(runner.manifest.macs_to_exit())[chosen])),
        full_macs=onnx_macs(full_onnx),
        chain_max_abs_diff=float(np.max(np.abs(logits[-1] - full_logits))),
        latency_ms=latency,
    )


def _run_seed(
    cfg: ExitConfig, seed: int, folder: Path, cache_dir: Path | None, progress: bool
) -> _SeedRun:
    base = trained_baseline(
        cfg.model, cfg.data, seed, cache_dir, epochs=cfg.baseline_epochs, progress=progress
    )
    data = base.data
    torch.manual_seed(seed)  # the heads' initial weights
    multi = build_multi_exit(base.module, data.input_shape, data.num_classes, cfg.exits)
    train_exit_heads(multi, data, TrainConfig(epochs=cfg.head_epochs(), seed=seed), progress)
    save_exit_heads(
        multi, folder / HEADS_FILE, {"model": cfg.model, "data": cfg.data, "seed": seed}
    )
    manifest = export_multi_exit(multi, cfg.model, data.input_shape, data.num_classes, folder)
    full_onnx = export_torch_onnx(base.module, (1, *data.input_shape))
    (folder / "model.onnx").write_bytes(full_onnx)
    (x_cal, y_cal), (x_eval, y_eval) = held_out_halves(data, seed)
    thresholds = calibrate_thresholds(
        exit_logits(EarlyExitRunner(manifest), x_cal), y_cal, cfg.max_drop
    )
    write_manifest(with_thresholds(manifest, thresholds), folder / MANIFEST_NAME)
    runner = EarlyExitRunner(load_manifest(folder))  # measure what was written
    return _evaluate(runner, full_onnx, x_eval, y_eval, cfg.latency_passes if seed == 0 else 0)


@dataclass
class ExitFigures:
    """One exit over seeds (accuracy and share on the evaluation half)."""

    index: int
    after_block: int
    macs_to_exit: int  # segments and heads run by a sample leaving here
    threshold: float  # seed 0's, as written to exits.json
    accuracy: SeedStats  # this exit's head on every evaluation sample
    share: SeedStats  # fraction of samples answered here


@dataclass
class ExitsResult:
    config: ExitConfig
    exits: list[ExitFigures]
    full_accuracy: SeedStats
    early_accuracy: SeedStats
    full_macs: int
    avg_macs: SeedStats
    full_latency_ms: float  # seed 0, mean per sample over the evaluation half, ORT 1 thread
    early_latency_ms: float
    chain_max_abs_diff: float  # worst over seeds
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT,
            "model": self.config.model,
            "data": self.config.data,
            "config": asdict(self.config),
            "exits": [
                {**asdict(e), "accuracy": e.accuracy.to_dict(), "share": e.share.to_dict()}
                for e in self.exits
            ],
            "full": {"accuracy": self.full_accuracy.to_dict(), "macs": self.full_macs,
                     "latency_ms": self.full_latency_ms},
            "early_exit": {"accuracy": self.early_accuracy.to_dict(),
                           "avg_macs": self.avg_macs.to_dict(),
                           "latency_ms": self.early_latency_ms},
            "chain_max_abs_diff": self.chain_max_abs_diff,
            "files": self.files,
            "notes": self.notes,
        }  # fmt: skip


def _aggregate(cfg: ExitConfig, runs: list[_SeedRun]) -> ExitsResult:
    first = runs[0]
    assert first.latency_ms is not None
    spent = first.manifest.macs_to_exit()
    exits = [
        ExitFigures(
            index=k,
            after_block=stage.after_block,
            macs_to_exit=spent[k],
            threshold=stage.threshold,
            accuracy=SeedStats.of([r.exit_accuracy[k] for r in runs]),
            share=SeedStats.of([r.shares[k] for r in runs]),
        )  # fmt: skip
        for k, stage in enumerate(first.manifest.stages)
    ]
    return ExitsResult(
        config=cfg,
        exits=exits,
        full_accuracy=SeedStats.of([r.full_accuracy for r in runs]),
        early_accuracy=SeedStats.of([r.early_accuracy for r in runs]),
        full_macs=first.full_macs,
        avg_macs=SeedStats.of([r.avg_macs for r in runs]),
        full_latency_ms=first.latency_ms[0],
        early_latency_ms=first.latency_ms[1],
        chain_max_abs_diff=max(r.chain_max_abs_diff for r in runs),
    )


def compress_exits(
    cfg: ExitConfig, out: Path, cache_dir: Path | None = None, progress: bool = False,
    log: Log | None = None,
) -> ExitsResult:  # fmt: skip
    """Early exits on ``cfg.seeds`` seeds; seed 0's multi-exit model is written to ``out``."""
    cfg.validate()
    runs = []
    for seed in range(cfg.seeds):
        if log:
            log(f"seed {seed}: {cfg.model} on {cfg.data}, early exits {cfg.exits}")
        if seed == 0:
            runs.append(_run_seed(cfg, seed, out, cache_dir, progress))
            continue
        with tempfile.TemporaryDirectory(prefix="crosslevel-exits-") as tmp:
            runs.append(_run_seed(cfg, seed, Path(tmp), cache_dir, progress))
    result = _aggregate(cfg, runs)
    stages = len(result.exits)
    result.files = [MANIFEST_NAME, HEADS_FILE, "model.onnx"]
    result.files += [f"{kind}_{k}.onnx" for k in range(stages) for kind in ("segment", "exit")]
    result.notes.append(
        f"thresholds calibrated on half of the held-out split (max drop {100 * cfg.max_drop:g} "
        f"points); accuracy, shares and MACs on the other half, mean ± sample std over "
        f"{cfg.seeds} seed(s); latency measured here on seed 0 (ONNX Runtime, 1 thread, mean "
        f"per sample, median of {cfg.latency_passes} passes); files of seed 0"
    )
    if cfg.seeds < 3:
        result.notes.append(f"only {cfg.seeds} seed(s): DESIGN.md asks for at least 3")
    return result
