"""In-place execution: an operator's output grows over the part of its input already used.

TFLM never lets a tensor share bytes with a live one. But a kernel that walks its output
in raster order (row by row, pixel by pixel, element by element) is done with the early
part of its input before it writes the early part of its output, so the output may start
below the input's end and grow over the consumed part (TinyEngine's in-place depthwise,
MCUNet). For an output piece k, the bytes it writes must not reach input bytes that a later
piece still reads:

    offset(out) + out_end(k) <= offset(in) + in_needed_from(k + 1)   for every k,

so delta = offset(in) - offset(out) >= D = max_k (out_end(k) - in_needed_from(k + 1)).
With ``delta = max(D, 0)`` the pair spans max(in + delta, out) bytes instead of in + out;
a negative D (a shrinking output) lets the output start above the input instead. A
spatial kernel computes one piece into a small buffer
(``chunk_bytes``, planned as scratch) before writing it, so a piece never overwrites
input that it reads itself; an elementwise kernel reads each element before writing the
same position and needs none.

In the memory model (``lifetimes.py``) an in-place pair is one region at its node's step:
the input ends the step before, the output starts the step after, and at the step the pair
covers its span. ``pair_rectangles`` makes that literal, so the live-bytes bound and the
overlap check of ordinary plans serve in-place plans unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from crosslevel.ir.graph import DTYPE_BYTES, Graph, Node
from crosslevel.memory.lifetimes import Buffer, align_up
from crosslevel.memory.offsets import _key_orders, check_plan
from crosslevel.memory.tflm_greedy import ArenaPlan

SPATIAL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D"})
# Operators whose output row r reads a window of input rows (PAD: one row, or none).
WINDOW_OPS = SPATIAL_OPS | {"PAD"}
# Operators whose output element i depends only on input element i (same position).
ELEMENTWISE_OPS = frozenset(
    {"RELU", "RELU6", "LOGISTIC", "TANH", "HARD_SWISH", "LEAKY_RELU", "ADD", "SUB", "MUL",
     "RESHAPE", "QUANTIZE"}
)  # fmt: skip
_ORDERS_TRIED = 24


@dataclass(frozen=True)
class InplacePair:
    """``output`` of ``node`` placed ``delta_bytes`` below ``input`` (which ends there).

    Walking the output forward is safe for ``delta_bytes >= min_delta_bytes``, walking it
    backward for ``delta_bytes <= max_reverse_delta_bytes`` (negative: above the input).
    """

    node: str
    input: str
    output: str
    delta_bytes: int
    min_delta_bytes: int
    max_reverse_delta_bytes: int
    chunk_bytes: int
    granularity: str  # "element" | "pixel" | "row" | "column" | "stage"

    @property
    def reverse(self) -> bool:
        """Whether the kernel walks the output last piece first."""
        return self.delta_bytes < self.min_delta_bytes

    @property
    def safe(self) -> bool:
        return self.delta_bytes >= self.min_delta_bytes or (
            self.delta_bytes <= self.max_reverse_delta_bytes
        )


@dataclass(frozen=True)
class Pieces:
    """How a kernel walks its output: ``count`` pieces of ``out_piece_bytes`` each; piece k
    reads input bytes ``in_from[k]`` up to ``in_to[k]``."""

    granularity: str
    count: int
    out_piece_bytes: int
    in_from: list[int]
    in_to: list[int]


def _shape(graph: Graph, name: str) -> tuple[int, ...]:
    return tuple(graph.tensor(name).shape)


def _itemsize(graph: Graph, name: str) -> int:
    return DTYPE_BYTES[graph.tensor(name).dtype]


def _kernel(graph: Graph, node: Node) -> tuple[int, ...]:
    if node.op == "PAD":
        return (1, 1)
    if node.op in ("CONV_2D", "DEPTHWISE_CONV_2D"):  # OHWI / 1HW(C*M) weights
        weights = _shape(graph, node.inputs[1])
        return weights[1:3] if len(weights) == 4 else ()
    return tuple(int(k) for k in node.attrs.get("kernel", ()))


def is_pointwise(graph: Graph, node: Node) -> bool:
    """A 1x1, stride-1, unpadded spatial operator: output pixel p reads input pixel p."""
    if node.op == "PAD":
        return False
    kernel = _kernel(graph, node)
    strides = tuple(node.attrs.get("strides", (1, 1)))
    pads = tuple(node.attrs.get("pads", (0, 0, 0, 0)))
    return kernel == (1, 1) and strides == (1, 1) and not any(pads)


def pieces(graph: Graph, node: Node, index: int) -> Pieces | None:
    """The raster pieces of ``node`` relative to its input ``index``, or None when the
    operator cannot overwrite that input as it goes."""
    name = node.inputs[index]
    out = node.outputs[0]
    if node.op in ELEMENTWISE_OPS:
        return _elementwise_pieces(graph, node, name, out)
    if node.op in WINDOW_OPS and index == 0 and graph.layout == "NHWC":
        return _spatial_pieces(graph, node, name, out)
    return None


def _elementwise_pieces(graph: Graph, node: Node, name: str, out: str) -> Pieces | None:
    if node.op in ("ADD", "SUB", "MUL"):
        # Both operands walk with the output only when neither is broadcast.
        if any(_shape(graph, i) != _shape(graph, out) for i in node.inputs if i):
            return None
    size = _itemsize(graph, out)
    count = graph.tensor(out).num_elements
    if _itemsize(graph, name) != size or graph.tensor(name).num_elements != count:
        return None
    return Pieces("element", count, size, [], [])


def _spatial_pieces(graph: Graph, node: Node, name: str, out: str) -> Pieces | None:
    in_shape, out_shape = _shape(graph, name), _shape(graph, out)
    if len(in_shape) != 4 or len(out_shape) != 4 or in_shape[0] != 1:
        return None
    _, h, w, c = in_shape
    _, oh, ow, oc = out_shape
    bi, bo = _itemsize(graph, name), _itemsize(graph, out)
    if is_pointwise(graph, node) and (h, w) == (oh, ow):
        pixel = c * bi
        return Pieces(
            "pixel", h * w, oc * bo, [p * pixel for p in range(h * w)],
            [(p + 1) * pixel for p in range(h * w)],
        )  # fmt: skip
    axis = 1 if oh > 1 or h > 1 else 2  # a 1-D signal (H = 1) is walked along W
    granularity = "row" if axis == 1 else "column"
    in_piece = (w if axis == 1 else 1) * c * bi
    first, reach = window_rows(graph, node, axis)
    count, length = (oh, h) if axis == 1 else (ow, w)
    starts = [min(length, max(0, first(k))) * in_piece for k in range(count)]
    ends = [min(length, max(0, first(k) + reach)) * in_piece for k in range(count)]
    out_piece = (ow if axis == 1 else 1) * oc * bo
    return Pieces(granularity, count, out_piece, starts, ends)


def window_rows(graph: Graph, node: Node, axis: int) -> tuple[Callable[[int], int], int]:
    """Along ``axis`` (1: rows, 2: columns) of an NHWC windowed operator: the first input
    index read by output index k (negative in the padding) and how many it reads."""
    if node.op == "PAD":  # pads per dimension: ((before, after), ...)
        before = int(node.attrs["pads"][axis][0])
        return (lambda i: i - before), 1
    k = axis - 1
    stride = int(tuple(node.attrs.get("strides", (1, 1)))[k])
    before = int(tuple(node.attrs.get("pads", (0, 0, 0, 0)))[k])
    dilation = int(tuple(node.attrs.get("dilations", (1, 1)))[k])
    reach = dilation * (_kernel(graph, node)[k] - 1) + 1
    return (lambda i: i * stride - before), reach


def window_span(first: int, reach: int, length: int) -> tuple[int, int, int, int]:
    """The input indices [lo, hi) a window [first, first + reach) reads from an axis of
    ``length``, and how many of its cells fall in the padding before and after them."""
    lo = min(max(first, 0), length)
    hi = max(min(first + reach, length), lo)
    before = min(max(lo - first, 0), reach)
    return lo, hi, before, reach - before - (hi - lo)


_FAR = 1 << 62


def min_delta(p: Pieces) -> int:
    """D of the module docstring: the forward walk is safe for every delta >= D."""
    if p.granularity == "element":  # piece k+1 reads from (k+1)*size, piece k ends there
        return 0
    return max(
        ((k + 1) * p.out_piece_bytes - p.in_from[k + 1] for k in range(p.count - 1)),
        default=-_FAR,
    )


def max_reverse_delta(p: Pieces) -> int:
    """The mirror of D for the reverse walk (last piece first): writing piece k must stay
    above the input that pieces before k still read, so delta <= -max_k(in_to[k-1] -
    out_start(k)). A growing pointwise layer walked backwards starts where its input does."""
    if p.granularity == "element":
        return 0
    return -max((p.in_to[k - 1] - k * p.out_piece_bytes for k in range(1, p.count)), default=-_FAR)


def span_bytes(in_bytes: int, out_bytes: int, delta: int) -> int:
    """Bytes the pair covers at its step with the output ``delta`` below the input."""
    return max(in_bytes, out_bytes - delta) + max(delta, 0)


# ----------------------------------------------------------------------------------
# choosing pairs
# ----------------------------------------------------------------------------------
def find_pairs(
    graph: Graph, nodes: Sequence[Node], buffers: Sequence[Buffer], alignment: int
) -> list[InplacePair]:
    """For each node, the input it can overwrite that saves the most bytes (if any).

    The input must end at this node (its last consumer in ``nodes``), not be a graph
    output, and be read once by it; the saving counts the piece buffer.
    """
    size = {b.name: b.size_bytes for b in buffers if not b.is_scratch}
    last_use: dict[str, int] = {}
    for step, node in enumerate(nodes):
        for name in node.inputs:
            if name:
                last_use[name] = step
    pairs = []
    for step, node in enumerate(nodes):
        outs = [o for o in node.outputs if o]
        if len(outs) != 1 or outs[0] not in size:
            continue
        best: tuple[int, InplacePair] | None = None
        for index, name in enumerate(node.inputs):
            if (
                name not in size
                or name in graph.outputs
                or last_use.get(name) != step
                or node.inputs.count(name) != 1
            ):
                continue
            candidate = _pair(graph, node, index, size, alignment)
            if candidate and (best is None or candidate[0] > best[0]):
                best = candidate
        if best:
            pairs.append(best[1])
    return pairs


def _pair(
    graph: Graph, node: Node, index: int, size: dict[str, int], alignment: int
) -> tuple[int, InplacePair] | None:
    walk = pieces(graph, node, index)
    if walk is None:
        return None
    name, out = node.inputs[index], node.outputs[0]
    low = align_up(min_delta(walk), alignment)  # rounds towards +inf, also below 0
    high = -align_up(-max_reverse_delta(walk), alignment)  # rounds towards -inf
    delta = min((max(low, 0), min(high, 0)), key=lambda d: span_bytes(size[name], size[out], d))
    chunk = 0 if walk.granularity == "element" else walk.out_piece_bytes
    saving = size[name] + size[out] - span_bytes(size[name], size[out], delta)
    saving -= align_up(chunk, alignment)
    if saving <= 0:
        return None
    pair = InplacePair(node.name, name, out, delta, low, high, chunk, walk.granularity)
    return saving, pair


def chunk_buffers(
    pairs: Sequence[InplacePair], nodes: Sequence[Node], alignment: int
) -> list[Buffer]:
    """The piece buffers of ``pairs`` as scratch buffers live at their node's step."""
    step = {node.name: k for k, node in enumerate(nodes)}
    return [
        Buffer(f"chunk:{p.node}", align_up(p.chunk_bytes, alignment), step[p.node],
               step[p.node], True)
        for p in pairs
        if p.chunk_bytes
    ]  # fmt: skip


# ----------------------------------------------------------------------------------
# bounds and checks: pairs as rectangles
# ----------------------------------------------------------------------------------
def pair_rectangles(
    buffers: Sequence[Buffer], pairs: Sequence[InplacePair], offsets: dict[str, int] | None = None
) -> tuple[list[Buffer], dict[str, int]]:
    """The buffers with the steps each pair shares cut out of both tensors and replaced by
    one buffer covering the pair's span, and the offsets of all of them (when given).

    A pair shares the steps from the output's first to the input's last: one step for an
    operator, every step of a depth-first stage whose output overwrites its source.
    These rectangles must be pairwise disjoint in a valid in-place plan, and their peak
    live sum is the floor of any arena with these pairs.
    """
    by_name = {b.name: b for b in buffers}
    start_after = {p.output: by_name[p.input].last for p in pairs}
    end_before = {p.input: by_name[p.output].first for p in pairs}
    rects: list[Buffer] = []
    offs: dict[str, int] = {}
    for b in buffers:
        first = start_after[b.name] + 1 if b.name in start_after else b.first
        last = end_before[b.name] - 1 if b.name in end_before else b.last
        if first <= last:
            rects.append(Buffer(b.name, b.size_bytes, first, last, b.is_scratch))
            if offsets is not None:
                offs[b.name] = offsets[b.name]
    for p in pairs:
        src, dst = by_name[p.input], by_name[p.output]
        name = f"inplace:{p.node}"
        if -src.size_bytes < p.delta_bytes < dst.size_bytes:  # the two regions meet
            span = span_bytes(src.size_bytes, dst.size_bytes, p.delta_bytes)
            rects.append(Buffer(name, span, dst.first, src.last))
            if offsets is not None:
                offs[name] = min(offsets[p.input], offsets[p.output])
            continue
        for part, buf in ((":in", src), (":out", dst)):  # apart: the gap stays free
            rects.append(Buffer(name + part, buf.size_bytes, dst.first, src.last))
            if offsets is not None:
                offs[name + part] = offsets[buf.name]
    return rects, offs


def check_inplace_plan(
    buffers: Sequence[Buffer], pairs: Sequence[InplacePair], offsets: dict[str, int]
) -> None:
    """``check_plan`` for plans with pairs: each output sits ``delta`` below its input and
    the rectangles of ``pair_rectangles`` do not overlap."""
    from crosslevel.memory.offsets import PlanOverlapError

    for p in pairs:
        if offsets[p.input] - offsets[p.output] != p.delta_bytes or not p.safe:
            raise PlanOverlapError(
                f"in-place pair at node {p.node!r}: output {p.output!r} sits "
                f"{offsets[p.input] - offsets[p.output]} bytes below input {p.input!r}; "
                f"safe are >= {p.min_delta_bytes} or <= {p.max_reverse_delta_bytes}"
            )
    rects, offs = pair_rectangles(buffers, pairs, offsets)
    check_plan(rects, offs)


# ----------------------------------------------------------------------------------
# choosing deltas: a chain of pairs should not drift
# ----------------------------------------------------------------------------------
def spread_chains(
    pairs: Sequence[InplacePair], buffers: Sequence[Buffer], alignment: int
) -> list[InplacePair]:
    """The pairs with deltas that keep each chain (t1 -> t2 -> t3 ... each overwriting the
    last) inside the smallest band of bytes.

    With every delta at its own best, a chain of layers drifts by the sum of the
    expansions and its band grows with depth. Each pair allows delta >= D (forward walk)
    or delta <= R (backward walk); for a band S the offsets each tensor may take form a
    union of intervals, carried along the chain; S is the smallest band (by bisection over
    multiples of the alignment) that leaves every tensor some offset.
    """
    size = {b.name: b.size_bytes for b in buffers}
    chosen: dict[str, int] = {}
    for chain in _chains(pairs):
        sizes = [size[chain[0].input], *(size[p.output] for p in chain)]
        lo = max(sizes) // alignment
        hi = (sum(sizes) + sum(abs(p.delta_bytes) for p in chain)) // alignment + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if _band_offsets(mid * alignment, sizes, chain) is None:
                lo = mid + 1
            else:
                hi = mid
        rel = _band_offsets(lo * alignment, sizes, chain)
        assert rel is not None  # the upper end of the bisection is always feasible
        for k, p in enumerate(chain):
            chosen[p.node] = rel[k] - rel[k + 1]
    return [replace(p, delta_bytes=chosen.get(p.node, p.delta_bytes)) for p in pairs]


def _chains(pairs: Sequence[InplacePair]) -> list[list[InplacePair]]:
    """Pairs linked output-to-input, each chain in execution order."""
    by_input = {p.input: p for p in pairs}
    outputs = {p.output for p in pairs}
    chains = []
    for p in pairs:
        if p.input in outputs:
            continue
        chain = [p]
        while chain[-1].output in by_input:
            chain.append(by_input[chain[-1].output])
        chains.append(chain)
    return chains


Intervals = list[tuple[int, int]]


def _clip(spans: Intervals, low: int, high: int) -> Intervals:
    """Merge and clip closed intervals to [low, high]."""
    merged: Intervals = []
    for a, b in sorted((max(a, low), min(b, high)) for a, b in spans):
        if a > b:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _band_offsets(band: int, sizes: list[int], chain: list[InplacePair]) -> list[int] | None:
    """Offsets inside [0, band) for a chain's tensors that satisfy every pair, or None."""
    reach: list[Intervals] = [_clip([(0, band - sizes[0])], 0, band - sizes[0])]
    for k, p in enumerate(chain):  # rel_next <= rel - D  or  rel_next >= rel - R
        nxt = [(-_FAR, b - p.min_delta_bytes) for _, b in reach[-1]]
        nxt += [(a - p.max_reverse_delta_bytes, _FAR) for a, _ in reach[-1]]
        reach.append(_clip(nxt, 0, band - sizes[k + 1]))
        if not reach[-1]:
            return None
    rel = [reach[-1][-1][1]]
    for k in range(len(chain) - 1, -1, -1):  # back from the end: any consistent offset
        p, after = chain[k], rel[0]
        allowed = _clip(
            [(after + p.min_delta_bytes, _FAR), (-_FAR, after + p.max_reverse_delta_bytes)], 0, _FAR
        )
        choices = [
            (max(a, x), min(b, y)) for a, b in reach[k] for x, y in allowed
            if max(a, x) <= min(b, y)
        ]  # fmt: skip
        rel.insert(0, choices[-1][1])
    return rel


# ----------------------------------------------------------------------------------
# placing: a chain of pairs moves as one group
# ----------------------------------------------------------------------------------
def _groups(buffers: Sequence[Buffer], pairs: Sequence[InplacePair]) -> list[list[tuple[int, int]]]:
    """Buffers linked by pairs, each group as (buffer index, offset relative to the group)."""
    index = {b.name: i for i, b in enumerate(buffers)}
    links: dict[int, list[tuple[int, int]]] = {}
    for p in pairs:  # offset(out) = offset(in) - delta
        a, b = index[p.input], index[p.output]
        links.setdefault(a, []).append((b, -p.delta_bytes))
        links.setdefault(b, []).append((a, p.delta_bytes))
    seen: dict[int, int] = {}
    groups = []
    for root in range(len(buffers)):
        if root in seen:
            continue
        seen[root] = 0
        stack, members = [root], []
        while stack:
            i = stack.pop()
            members.append(i)
            for j, shift in links.get(i, []):
                if j not in seen:
                    seen[j] = seen[i] + shift
                    stack.append(j)
        low = min(seen[i] for i in members)
        groups.append([(i, seen[i] - low) for i in sorted(members)])
    return groups


def _lowest_base(
    buffers: Sequence[Buffer], members: list[tuple[int, int]], placed: list[tuple[int, int]]
) -> int:
    """The lowest group offset at which no member meets a placed, time-overlapping buffer."""
    base = 0
    moved = True
    while moved:
        moved = False
        for i, rel in members:
            buf, start = buffers[i], base + rel
            for off, j in placed:  # sorted by offset
                if off >= start + buf.size_bytes:
                    break
                other = buffers[j]
                if off + other.size_bytes > start and buf.overlaps(other):
                    base, moved = off + other.size_bytes - rel, True
                    break
            if moved:
                break
    return base


def place_pairs(
    buffers: Sequence[Buffer], pairs: Sequence[InplacePair], seed: int = 0
) -> ArenaPlan:
    """Lowest-fit placement of the pair groups over several orderings; keeps the best.

    Members of one group overlap only at their pair's step (a chain's tensors follow each
    other in time), so checking a group against placed buffers of other groups suffices;
    ``check_inplace_plan`` proves the result.
    """
    groups = _groups(buffers, pairs)
    proxies = [
        Buffer(
            str(k),
            max(rel + buffers[i].size_bytes for i, rel in g),
            min(buffers[i].first for i, _ in g),
            max(buffers[i].last for i, _ in g),
        )
        for k, g in enumerate(groups)
    ]
    orders = _key_orders(proxies)
    rng = random.Random(seed)
    for _ in range(_ORDERS_TRIED):
        order = list(orders[0])
        for _ in range(max(1, len(order) // 4)):
            a = rng.randrange(len(order))
            b = min(len(order) - 1, a + rng.randrange(1, 4))
            order[a], order[b] = order[b], order[a]
        orders.append(order)
    best: ArenaPlan | None = None
    for order in orders:
        plan = _place_groups(buffers, groups, order)
        if best is None or plan.arena_bytes < best.arena_bytes:
            best = plan
    assert best is not None
    return best


def _place_groups(
    buffers: Sequence[Buffer], groups: list[list[tuple[int, int]]], order: list[int]
) -> ArenaPlan:
    import bisect

    offsets: dict[str, int] = {}
    placed: list[tuple[int, int]] = []
    for k in order:
        base = _lowest_base(buffers, groups[k], placed)
        for i, rel in groups[k]:
            offsets[buffers[i].name] = base + rel
            bisect.insort(placed, (base + rel, i))
    arena = max((offsets[b.name] + b.size_bytes for b in buffers), default=0)
    return ArenaPlan(offsets, arena)
