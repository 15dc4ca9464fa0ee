"""Planning speed of the operator-ordering search against issue 3's targets.

Targets (wall clock, everything ``best_order`` does included):

* exact ordering (``optimal=True``) within 10 s on random DAGs of up to 20 operators;
* exact ordering within 10 s on graphs of up to 100 operators made of branching cells
  joined by single tensors (RandWire / NASNet-like stages);
* any graph of up to 1,000 operators: an order with its gap to the lower bound within 10 s.

The graphs are generated here from fixed seeds (``tests/test_planning_scale.py`` imports
these generators, so the test and the benchmark plan the same graphs). Each row shows
the case, its operators, whether the order is proven optimal, its peak, the lower bound,
the gap, the seconds spent and the peak of the file's order.

    python benchmarks/planning_scale.py [--json] [--time-limit 10]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial

from rich.console import Console
from rich.table import Table

from crosslevel.ir.graph import Graph, Node, Tensor
from crosslevel.memory.ordering import best_order

TIME_LIMIT_S = 10.0


# ----------------------------------------------------------------------------------
# graph generators (seeded, deterministic)
# ----------------------------------------------------------------------------------
def _tensor(tensors: dict[str, Tensor], name: str, rng: random.Random, lo: int, hi: int) -> str:
    tensors[name] = Tensor(name, (rng.randint(lo, hi),), "int8")
    return name


def random_dag(n_ops: int, seed: int) -> Graph:
    """A layered random DAG: layers of 1-4 operators reading 1-3 earlier tensors.

    Each operator first reads a tensor of the last two layers nobody has read yet (so few
    branches dangle), then more from the last two layers and a couple of older ones (skip
    connections); a few operators have two outputs. The tensors nobody reads are
    concatenated by one final operator (one graph output, as in real networks). The file
    order is layer by layer, which is topological but rarely the best.
    """
    rng = random.Random(seed)
    tensors: dict[str, Tensor] = {}
    _tensor(tensors, "x", rng, 16, 256)
    layers: list[list[str]] = [["x"]]
    nodes: list[Node] = []
    read: set[str] = set()
    while len(nodes) < n_ops - 1:
        width = min(rng.randint(1, 4), n_ops - 1 - len(nodes))
        layer: list[str] = []
        recent = [t for lay in layers[-2:] for t in lay]
        older = [t for lay in layers[:-2] for t in lay]
        for _ in range(width):
            k = len(nodes)
            pool = recent + (rng.sample(older, min(2, len(older))) if older else [])
            fresh = [t for t in recent if t not in read]
            reads = [rng.choice(fresh)] if fresh else []
            more = rng.sample(pool, min(len(pool), rng.choice([0, 1, 1, 2])))
            reads = list(dict.fromkeys(reads + more)) or [rng.choice(pool)]
            read.update(reads)
            outs = [
                _tensor(tensors, f"t{k}_{j}", rng, 16, 4096)
                for j in range(rng.choice([1, 1, 1, 2]))
            ]
            nodes.append(Node(f"n{k}", "ADD", reads, outs))
            layer.extend(outs)
        layers.append(layer)
    ends = [o for node in nodes for o in node.outputs if o not in read]
    y = _tensor(tensors, "y", rng, 16, 256)
    nodes.append(Node("join", "CONCATENATION", ends, [y]))
    return _finish(f"dag{n_ops}_s{seed}", tensors, nodes, ["x"])


def _finish(name: str, tensors: dict[str, Tensor], nodes: list[Node], inputs: list[str]) -> Graph:
    """Make every unread produced tensor a graph output; validate."""
    read = {t for node in nodes for t in node.inputs}
    outputs = [o for node in nodes for o in node.outputs if o not in read]
    graph = Graph(name, tensors, nodes, inputs, outputs, "NHWC")
    graph.validate(check_shapes=False)
    return graph


def _cell(
    tensors: dict[str, Tensor], nodes: list[Node], rng: random.Random, src: str, c: int, size: int
) -> str:
    """One RandWire-like cell: a random DAG over ``size - 1`` operators reading ``src``.

    Operator ``k`` reads 1-3 of the earlier ones (or the cell input); operators nobody
    reads are joined by a final concatenation whose single output feeds the next cell.
    """
    made: list[str] = []
    read: set[str] = set()
    for k in range(size - 1):
        pool = [src, *made[-4:]] if made else [src]
        reads = rng.sample(pool, min(len(pool), rng.choice([1, 1, 2, 3])))
        out = _tensor(tensors, f"c{c}_{k}", rng, 64, 8192)
        nodes.append(Node(f"c{c}_op{k}", "ADD", reads, [out]))
        read.update(reads)
        made.append(out)
    join = _tensor(tensors, f"cell{c}", rng, 64, 2048)
    nodes.append(Node(f"c{c}_join", "CONCATENATION", [t for t in made if t not in read], [join]))
    return join


def celled_graph(n_ops: int, seed: int, cell_ops: tuple[int, int] = (8, 20)) -> Graph:
    """``n_ops`` operators in branching cells of ``cell_ops`` operators, in sequence.

    Each cell is joined to the next by one tensor, as NASNet/RandWire stages are when a
    cell reads only the previous cell's output; the last cell takes what is left.
    """
    rng = random.Random(seed)
    tensors: dict[str, Tensor] = {}
    src = _tensor(tensors, "x", rng, 64, 1024)
    nodes: list[Node] = []
    c = 0
    while len(nodes) < n_ops:
        size = rng.randint(*cell_ops)
        if n_ops - len(nodes) - size < cell_ops[0]:
            size = n_ops - len(nodes)
        src = _cell(tensors, nodes, rng, src, c, size)
        c += 1
    return _finish(f"cells{len(nodes)}_s{seed}", tensors, nodes, ["x"])


def wide_chains(chains: int, length: int, seed: int) -> Graph:
    """Parallel chains from one input, concatenated at the end: no cut inside.

    The file order interleaves the chains at random, the worst shape for a file order.
    """
    rng = random.Random(seed)
    tensors: dict[str, Tensor] = {}
    _tensor(tensors, "x", rng, 64, 64)
    nodes: list[Node] = []
    ends = []
    for c in range(chains):
        prev = "x"
        for k in range(length):
            out = _tensor(tensors, f"ch{c}_{k}", rng, 16, 4096)
            nodes.append(Node(f"ch{c}_op{k}", "RELU", [prev], [out]))
            prev = out
        ends.append(prev)
    nodes.append(Node("join", "CONCATENATION", ends, [_tensor(tensors, "y", rng, 64, 64)]))
    graph = Graph(f"chains{len(nodes)}_s{seed}", tensors, nodes, ["x"], ["y"], "NHWC")
    rng.shuffle(graph.nodes)
    graph.nodes = graph.topological_order()
    graph.validate(check_shapes=False)
    return graph


def cases() -> list[tuple[str, str, Callable[[], Graph]]]:
    """(group, case name, graph factory): the benchmark's spread of sizes and shapes.

    Besides the random DAGs, the exact groups hold the shapes hardest for the search:
    parallel chains (the widest sets of ready operators at 19-20 operators) and cells of
    20-34 operators.
    """
    out: list[tuple[str, str, Callable[[], Graph]]] = []
    for seed in range(10):
        out.append(("dag20", f"dag20 seed {seed}", partial(random_dag, 20, seed)))
    for chains, length in ((19, 1), (9, 2), (6, 3)):
        name = f"chains {chains}x{length} seed 0"
        out.append(("dag20", name, partial(wide_chains, chains, length, 0)))
    for seed in range(5):
        out.append(("cells100", f"cells seed {seed}", partial(celled_graph, 100, seed)))
    for seed in range(2):
        name = f"cells 20-34 ops seed {seed}"
        out.append(("cells100", name, partial(celled_graph, 100, seed, (20, 34))))
    out.append(("any1000", "dag1000 seed 0", partial(random_dag, 1000, 0)))
    out.append(("any1000", "dag1000 seed 1", partial(random_dag, 1000, 1)))
    out.append(("any1000", "cells1000 seed 0", partial(celled_graph, 1000, 0)))
    out.append(("any1000", "chains 40x25 seed 0", partial(wide_chains, 40, 25, 0)))
    return out


# ----------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    group: str
    case: str
    operators: int
    optimal: bool
    peak_bytes: int
    lower_bound_bytes: int
    gap_pct: float
    seconds: float
    file_order_peak_bytes: int
    method: str


def measure(group: str, case: str, graph: Graph, time_limit_s: float = TIME_LIMIT_S) -> Row:
    """Plan one graph; the seconds are wall clock around the whole ``best_order`` call."""
    start = time.perf_counter()
    result = best_order(graph, time_limit_s=time_limit_s)
    seconds = time.perf_counter() - start
    return Row(
        group,
        case,
        len(graph.nodes),
        result.optimal,
        result.peak_bytes,
        result.lower_bound_bytes,
        result.gap_pct,
        seconds,
        result.file_order_peak_bytes,
        result.method,
    )


def meets_target(row: Row, time_limit_s: float = TIME_LIMIT_S) -> bool:
    """Exact groups must be optimal; every row within the time limit, never above file."""
    in_time = row.seconds <= time_limit_s and row.peak_bytes <= row.file_order_peak_bytes
    return in_time and (row.optimal or row.group == "any1000")


def _table(rows: list[Row]) -> Table:
    table = Table(title="best_order: planning scale (issue 3 targets: exact <= 10 s, any <= 10 s)")
    for col in ("case", "ops", "optimal?", "peak B", "lower bound B", "gap %", "seconds"):
        table.add_column(col, justify="left" if col == "case" else "right")
    table.add_column("file-order peak B", justify="right")
    table.add_column("method")
    for r in rows:
        table.add_row(
            r.case,
            str(r.operators),
            "yes" if r.optimal else "no",
            f"{r.peak_bytes:,}",
            f"{r.lower_bound_bytes:,}",
            f"{r.gap_pct:.1f}",
            f"{r.seconds:.2f}",
            f"{r.file_order_peak_bytes:,}",
            r.method,
        )
    return table


def _summary(rows: list[Row], time_limit_s: float) -> list[str]:
    lines = []
    for group, goal in (
        ("dag20", "exact within the limit"),
        ("cells100", "exact within the limit"),
        ("any1000", "an order with its gap within the limit"),
    ):
        mine = [r for r in rows if r.group == group]
        ok = sum(meets_target(r, time_limit_s) for r in mine)
        worst = max((r.seconds for r in mine), default=0.0)
        lines.append(
            f"{group}: {ok}/{len(mine)} meet '{goal}' ({time_limit_s:g} s); "
            f"slowest {worst:.2f} s; optimal {sum(r.optimal for r in mine)}/{len(mine)}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S)
    args = parser.parse_args()
    rows = [measure(g, c, make(), args.time_limit) for g, c, make in cases()]
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    console = Console(width=150)
    console.print(_table(rows))
    for line in _summary(rows, args.time_limit):
        console.print(line)
    met = all(meets_target(r, args.time_limit) for r in rows)
    console.print(f"all targets met: {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
