"""The backtest report: one self-contained HTML file (no network, no scripts) with the
score table and, per series that has a label or a detection, its plot.

Why per series: an operator judging a configuration looks at the sensor where
it cried wolf or missed the main break, not at a corpus average. The plots are
inline SVG (:mod:`citystream.backtest.svg`), so the file opens anywhere and a
browser test can count what rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from citystream.backtest import svg
from citystream.backtest.compare import table_rows
from citystream.backtest.runner import RunResult
from citystream.errors import UserError

#: series(domain, key) -> (metric, window ends ms, values), or None when there is no data.
SeriesFn = Callable[[str, str], tuple[str, Sequence[int], Sequence[float]] | None]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
svg.plot text { font-size: 11px; fill: #444; }
svg.plot text.title { font-size: 12px; font-weight: 600; fill: #222; }
figure { margin: 0 0 1.2em 0; }
.swatch { display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }
"""


@dataclass(frozen=True)
class PlotSpec:
    """One series to plot and everything drawn on it."""

    domain: str
    key: str
    marks: svg.Marks


def plot_specs(results: Sequence[RunResult]) -> list[PlotSpec]:
    """Every (domain, sensor) named by a label or by any run's detection in range, in name order."""
    if not results:
        return []
    rng = results[0].range
    labels: dict[tuple[str, str], list[tuple[str, int, int]]] = {}
    for lb in results[0].labels:
        if lb.end_ms >= rng.from_ms and lb.start_ms < rng.to_ms:
            for k in lb.keys:
                labels.setdefault((lb.domain, k), []).append((lb.label_id, lb.start_ms, lb.end_ms))
    dets: dict[tuple[str, str], list[list[tuple[str, int]]]] = {}
    for i, r in enumerate(results):
        for d in r.detections:
            if rng.from_ms <= d.time_ms < rng.to_ms:
                for k in d.keys:
                    lanes = dets.setdefault((d.domain, k), [[] for _ in results])
                    lanes[i].append((d.detection_id, d.time_ms))
    out = []
    for s in sorted(set(labels) | set(dets)):
        lanes = dets.get(s, [[] for _ in results])
        out.append(PlotSpec(s[0], s[1], svg.Marks(labels.get(s, []), lanes)))
    return out


def render(results: Sequence[RunResult], series: SeriesFn | None = None, title: str = "Backtest") -> str:
    """The report's HTML text."""
    if not results:
        raise UserError("nothing to report: no backtest run")
    rng = results[0].range
    configs = [r.config for r in results]
    headers, rows = table_rows(results)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    legend = "".join(
        f'<span class="swatch" style="background:{svg.PALETTE[i % len(svg.PALETTE)]}"></span>{escape(c)}'
        for i, c in enumerate(configs)
    )
    figures = []
    for spec in plot_specs(results):
        data = series(spec.domain, spec.key) if series is not None else None
        metric = data[0] if data else "no data"
        points = svg.thin(data[1], data[2]) if data else []
        name = f"{spec.domain} {spec.key} ({metric})"
        figures.append(
            f'<figure data-series="{escape(spec.domain)}/{escape(spec.key)}">'
            + svg.plot(name, (rng.from_ms, rng.to_ms), points, spec.marks, configs)
            + "</figure>"
        )
    when = datetime.fromtimestamp(rng.from_ms / 1000, tz=UTC).isoformat()
    until = datetime.fromtimestamp(rng.to_ms / 1000, tz=UTC).isoformat()
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{escape(title)}</h1>\n<p>Source: {escape(results[0].source)}; range {when} to {until}; "
        f"{len(results[0].labels)} labels. Time to detect in seconds; FA/day = false alerts per day.</p>\n"
        f'<table class="scores"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n'
        f"<p>Shaded: labelled windows. Triangles: detections, one lane per configuration:{legend}</p>\n"
        f"<h2>{len(figures)} series with a label or a detection</h2>\n"
        + "\n".join(figures)
        + "\n</body></html>\n"
    )


def write(
    path: Path, results: Sequence[RunResult], series: SeriesFn | None = None, title: str = "Backtest"
) -> None:
    """Write the report to ``path`` (its folder created)."""
    text = render(results, series, title)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the report to {path}: {exc.strerror}") from None
