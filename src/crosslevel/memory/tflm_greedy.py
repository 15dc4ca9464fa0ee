"""TensorFlow Lite Micro's GreedyMemoryPlanner, restated from its published algorithm.

TFLM sorts buffers by size, largest first (equal sizes: the later-listed buffer first),
then places each at the lowest offset where it
fits between the already placed buffers that are live at the same time, walking those in
offset order. The head arena is the highest end offset. This is the baseline every plan of
ours is compared against, so it must reproduce TFLM's numbers exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crosslevel.memory.lifetimes import Buffer


@dataclass(frozen=True)
class ArenaPlan:
    """Offsets per buffer name and the arena size they need."""

    offsets: dict[str, int]
    arena_bytes: int


def _size_order(buffers: Sequence[Buffer]) -> list[int]:
    # Largest first; among equal sizes the buffer listed later goes first. That is the
    # order TFLM's sort leaves them in, and the one that reproduces its measured head
    # arena on every MLPerf Tiny model (vww_96_int8: 73,728; the other tie order 64,512).
    return sorted(range(len(buffers)), key=lambda i: (-buffers[i].size_bytes, -i))


def _first_fit(buf: Buffer, placed: list[tuple[int, Buffer]]) -> int:
    """Lowest offset where ``buf`` fits among time-overlapping placed buffers."""
    candidate = 0
    for offset, other in placed:  # placed is kept sorted by offset
        if not buf.overlaps(other):
            continue
        if offset - candidate >= buf.size_bytes:
            break
        candidate = max(candidate, offset + other.size_bytes)
    return candidate


def plan_tflm_greedy(buffers: Sequence[Buffer]) -> ArenaPlan:
    """Offsets exactly as TFLM's greedy planner would choose them."""
    placed: list[tuple[int, Buffer]] = []
    offsets: dict[str, int] = {}
    for i in _size_order(buffers):
        buf = buffers[i]
        offset = _first_fit(buf, placed)
        offsets[buf.name] = offset
        # Insert after every entry with offset <= ours, as TFLM's linked list does.
        pos = 0
        while pos < len(placed) and placed[pos][0] <= offset:
            pos += 1
        placed.insert(pos, (offset, buf))
    arena = max((off + b.size_bytes for off, b in placed), default=0)
    return ArenaPlan(offsets, arena)
