"""A labelled scatter plot as inline SVG, drawn on the server: the eval page's accuracy against tokens.

No script and nothing fetched: the SVG is text in the page, so it works offline, prints, and shows under the
view's CSP. Labels are escaped here (XML and HTML alike), so a strategy named `<script>` is drawn as text.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

PALETTE = ("#2f5bd3", "#d1495b", "#2e7d32", "#edae49", "#8e44ad", "#00798c", "#e07a1f", "#52606d")
CHAR_W, LINE_H = 7.0, 14.0  # a 12px sans-serif label's advance per character, and its line height: for placing
GAP = 8.0  # between a point and its label


@dataclass(frozen=True)
class Point:
    label: str
    x: float  # tokens: 0 and up
    y: float  # a fraction: 0..1


@dataclass(frozen=True)
class Frame:
    """Where the data go: values to pixels. The plot area is the box inside the margins."""

    x_max: float
    width: float = 760
    height: float = 420
    left: float = 64
    right: float = 24
    top: float = 20
    bottom: float = 56

    def px(self, x: float) -> float:
        return self.left + x / self.x_max * (self.width - self.left - self.right)

    def py(self, y: float) -> float:
        return self.top + (1 - y) * (self.height - self.top - self.bottom)


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1

    def inside(self, other: Box) -> bool:
        return other.x0 <= self.x0 and self.x1 <= other.x1 and other.y0 <= self.y0 and self.y1 <= other.y1


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """0 up to the first round value (1, 2, 2.5 or 5 times a power of ten per step) at or above `high`."""
    high = high if high > 0 else 1.0
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def frame_for(points: list[Point]) -> Frame:
    """A frame whose x axis ends on a round tick past the largest x, with room for the rightmost point."""
    high = max((p.x for p in points), default=0.0) * 1.05
    return Frame(x_max=nice_ticks(high)[-1])


def _tick_text(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,g}"


def label_box(x: float, y: float, anchor: str, label: str) -> Box:
    """Where a label's text would lie, `y` being its baseline."""
    w = len(label) * CHAR_W
    x0 = {"start": x, "end": x - w, "middle": x - w / 2}[anchor]
    return Box(x0, y - LINE_H + 3, x0 + w, y + 3)


def place_labels(points: list[Point], frame: Frame) -> list[tuple[float, float, str]]:
    """Each label's (x, y, text-anchor): beside its point where that overlaps no other label nor point and stays
    inside the axes (clear of them and their ticks), else the next candidate around it (right, left, above, below,
    then further up or down)."""
    area = Box(frame.px(0) + 2, 0, frame.width, frame.py(0) - 2)
    dots = [Box(frame.px(p.x) - 5, frame.py(p.y) - 5, frame.px(p.x) + 5, frame.py(p.y) + 5) for p in points]
    taken: list[Box] = []
    out = []
    for i, p in enumerate(points):
        cx, cy = frame.px(p.x), frame.py(p.y)
        candidates = [(cx + GAP, cy + 4, "start"), (cx - GAP, cy + 4, "end"), (cx, cy - GAP - 2, "middle"),
                      (cx, cy + GAP + LINE_H - 2, "middle")]
        for k in range(1, 6):
            candidates += [(cx + GAP, cy + 4 - k * LINE_H, "start"), (cx + GAP, cy + 4 + k * LINE_H, "start"),
                           (cx - GAP, cy + 4 - k * LINE_H, "end"), (cx - GAP, cy + 4 + k * LINE_H, "end")]
        others = [d for j, d in enumerate(dots) if j != i]
        chosen = candidates[0] if cx + GAP + len(p.label) * CHAR_W <= frame.width else candidates[1]
        for x, y, anchor in candidates:
            box = label_box(x, y, anchor, p.label)
            if box.inside(area) and not any(box.overlaps(b) for b in taken + others):
                chosen = (x, y, anchor)
                break
        taken.append(label_box(*chosen, p.label))
        out.append(chosen)
    return out


def _axes(frame: Frame, x_label: str, y_label: str) -> str:
    x0, x1 = frame.px(0), frame.px(frame.x_max)
    y0, y1 = frame.py(0), frame.py(1)
    parts = []
    for tick in nice_ticks(frame.x_max):
        x = frame.px(tick)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{y1:.1f}" x2="{x:.1f}" y2="{y0:.1f}" stroke="#e6e9ef"/>'
                     f'<text class="tick x-tick" x="{x:.1f}" y="{y0 + 18:.1f}" text-anchor="middle">'
                     f"{_tick_text(tick)}</text>")
    for pct in (0, 25, 50, 75, 100):
        y = frame.py(pct / 100)
        parts.append(f'<line class="grid" x1="{x0:.1f}" y1="{y:.1f}" x2="{x1:.1f}" y2="{y:.1f}" stroke="#e6e9ef"/>'
                     f'<text class="tick y-tick" x="{x0 - 8:.1f}" y="{y + 4:.1f}" text-anchor="end">{pct}%</text>')
    parts.append(f'<line class="axis" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y0:.1f}" stroke="#5f6b7d"/>'
                 f'<line class="axis" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x0:.1f}" y2="{y1:.1f}" stroke="#5f6b7d"/>')
    middle_x, middle_y = (x0 + x1) / 2, (y0 + y1) / 2
    parts.append(f'<text class="axis-label x-label" x="{middle_x:.1f}" y="{frame.height - 12:.1f}" '
                 f'text-anchor="middle" font-weight="600">{html.escape(x_label)}</text>'
                 f'<text class="axis-label y-label" x="16" y="{middle_y:.1f}" text-anchor="middle" font-weight="600" '
                 f'transform="rotate(-90 16 {middle_y:.1f})">{html.escape(y_label)}</text>')
    return "".join(parts)


def scatter_svg(points: list[Point], *, title: str, x_label: str, y_label: str) -> str:
    """An SVG element: y from 0 to 100 % (a fraction 0..1), x from 0 to a round value past the largest x,
    one circle (class `point`, with a tooltip) and one text label per point."""
    frame = frame_for(points)
    marks = []
    for i, (p, (lx, ly, anchor)) in enumerate(zip(points, place_labels(points, frame), strict=True)):
        colour = PALETTE[i % len(PALETTE)]
        name = html.escape(p.label, quote=True)
        marks.append(f'<g class="mark"><circle class="point" data-label="{name}" cx="{frame.px(p.x):.2f}" '
                     f'cy="{frame.py(p.y):.2f}" r="5" fill="{colour}" stroke="#fff" stroke-width="1.5">'
                     f"<title>{name}: {p.y:.1%} correct, {p.x:,.1f} tokens per task</title></circle>"
                     f'<text class="point-label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="#1d2330">'
                     f"{name}</text></g>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="scatter" viewBox="0 0 {frame.width:g} {frame.height:g}" '
            f'width="{frame.width:g}" height="{frame.height:g}" role="img" font-family="system-ui, sans-serif" '
            f'font-size="12" fill="#5f6b7d"><title>{html.escape(title)}</title>'
            f"{_axes(frame, x_label, y_label)}{''.join(marks)}</svg>")
