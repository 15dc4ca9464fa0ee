"""The arena as a picture: time (operator step) on x, offset on y, one box per tensor."""

from __future__ import annotations

from html import escape

from crosslevel.memory.plan import Plan

WIDTH, HEIGHT, MARGIN = 900, 480, 50


def arena_svg(plan: Plan, title: str) -> str:
    """A self-contained SVG of ``plan``; hover a box to see its tensor, size and lifetime."""
    steps = max(len(plan.order), 1)
    arena = max(plan.arena_bytes, 1)
    sx = (WIDTH - 2 * MARGIN) / steps
    sy = (HEIGHT - 2 * MARGIN) / arena
    boxes = []
    for i, buf in enumerate([*plan.tensors, *plan.scratch]):
        x = MARGIN + buf.first * sx
        y = HEIGHT - MARGIN - (buf.offset + buf.size_bytes) * sy
        w = (buf.last - buf.first + 1) * sx
        h = max(buf.size_bytes * sy, 1.0)
        hue = (i * 47) % 360
        tip = f"{buf.id}: {buf.size_bytes:,} B at {buf.offset:,}, steps {buf.first}-{buf.last}"
        boxes.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
            f'fill="hsl({hue},60%,70%)" stroke="#333" stroke-width="0.5">'
            f"<title>{escape(tip)}</title></rect>"
        )
    axis = (
        f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" '
        f'y2="{HEIGHT - MARGIN}" stroke="black"/>'
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" stroke="black"/>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 15}" text-anchor="middle">operator step</text>'
        f'<text x="{MARGIN - 5}" y="{MARGIN - 5}" text-anchor="end">{arena:,} B</text>'
        f'<text x="{MARGIN - 5}" y="{HEIGHT - MARGIN}" text-anchor="end">0</text>'
    )
    head = f'<text x="{WIDTH / 2}" y="25" text-anchor="middle">{escape(title)}</text>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'font-family="sans-serif" font-size="12">{head}{axis}{"".join(boxes)}</svg>\n'
    )
