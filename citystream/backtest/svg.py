"""One series plot as inline SVG: the values, labelled windows shaded, each configuration's detections.

Why our own SVG rather than a plotting library: the report must open anywhere
without a network and without a Python environment, stay small, and be
checkable (a test counts the ``series``, ``label`` and ``detection`` elements a
browser rendered); a few dozen lines of SVG do all three.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

#: One colour per configuration, in --config order (colour-blind safe palette).
PALETTE = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
WIDTH, PLOT_H, LANE_H, LEFT, RIGHT, TOP = 900, 150, 14, 64, 12, 22
MAX_POINTS = 500


@dataclass(frozen=True)
class Marks:
    """What one plot shows besides the values: label spans and detection times per configuration."""

    labels: Sequence[tuple[str, int, int]]  # (label id, start ms, end ms)
    detections: Sequence[Sequence[tuple[str, int]]]  # per configuration: (detection id, time ms)


def thin(times: Sequence[int], values: Sequence[float], limit: int = MAX_POINTS) -> list[tuple[int, float]]:
    """At most ~``limit`` points, each bucket's minimum and maximum kept so a spike stays visible."""
    pts = sorted(zip(times, values, strict=True))
    if len(pts) <= limit:
        return pts
    size = -(-len(pts) // (limit // 2))
    out: list[tuple[int, float]] = []
    for i in range(0, len(pts), size):
        chunk = pts[i : i + size]
        lo, hi = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out += sorted({lo, hi})
    return out


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def plot(
    title: str,
    span: tuple[int, int],
    points: Sequence[tuple[int, float]],
    marks: Marks,
    configs: Sequence[str],
) -> str:
    """The SVG element for one series over ``span`` (ms); detections in one lane per configuration."""
    t0, t1 = span
    lanes = len(configs)
    height = TOP + PLOT_H + lanes * LANE_H + 20
    inner = WIDTH - LEFT - RIGHT

    def x(t: int) -> float:
        return LEFT + inner * (min(max(t, t0), t1) - t0) / max(1, t1 - t0)

    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{LEFT}" y="14" class="title">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{inner}" height="{PLOT_H}" fill="#fafafa" stroke="#ccc"/>',
    ]
    for lid, a, b in marks.labels:
        parts.append(
            f'<rect class="label" data-label="{escape(lid)}" x="{x(a):.1f}" y="{TOP}" '
            f'width="{max(1.0, x(b) - x(a)):.1f}" height="{PLOT_H}" fill="#f4a582" fill-opacity="0.45">'
            f"<title>label {escape(lid)}: {_clock(a)} to {_clock(b)}</title></rect>"
        )
    parts += _values(points, x)
    for i, (name, dets) in enumerate(zip(configs, marks.detections, strict=True)):
        y = TOP + PLOT_H + i * LANE_H + LANE_H / 2 + 2
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" class="lane">{escape(name)}</text>'
        )
        for did, t in dets:
            xt = x(t)
            parts.append(
                f'<path class="detection" data-config="{escape(name)}" d="M{xt:.1f},{y - 5:.1f} '
                f'l5,9 h-10 z" fill="{colour}">'
                f"<title>{escape(name)}: {escape(did)} at {_clock(t)}</title></path>"
            )
            parts.append(
                f'<line x1="{xt:.1f}" x2="{xt:.1f}" y1="{TOP}" y2="{TOP + PLOT_H}" stroke="{colour}" '
                'stroke-dasharray="3,3" stroke-opacity="0.7"/>'
            )
    axis_y = height - 4
    parts.append(f'<text x="{LEFT}" y="{axis_y}" class="axis">{_clock(t0)}</text>')
    parts.append(f'<text x="{WIDTH - RIGHT}" y="{axis_y}" text-anchor="end" class="axis">{_clock(t1)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _values(points: Sequence[tuple[int, float]], x: Callable[[int], float]) -> list[str]:
    """The polyline of the values and the y-axis extremes; nothing when the series has no data."""
    if not points:
        return [f'<text x="{LEFT + 8}" y="{TOP + 20}" class="axis">no aggregates for this series</text>']
    lo = min(v for _, v in points)
    hi = max(v for _, v in points)
    pad = (hi - lo) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad

    def y(v: float) -> float:
        return TOP + PLOT_H * (hi - v) / (hi - lo)

    coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    return [
        f'<polyline class="series" points="{coords}" fill="none" stroke="#333" stroke-width="1"/>',
        f'<text x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end" class="axis">{hi - pad:.4g}</text>',
        f'<text x="{LEFT - 4}" y="{TOP + PLOT_H}" text-anchor="end" class="axis">{lo + pad:.4g}</text>',
    ]
