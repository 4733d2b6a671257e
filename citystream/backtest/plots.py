"""``--plots DIR``: the report's plots as PNG files, one per series, for slides and tickets.

Why matplotlib here when the HTML report draws its own SVG: a PNG needs a
rasteriser with fonts, which is what matplotlib is; it is imported only when
PNGs are asked for (the Agg backend, no display needed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from citystream.backtest import svg
from citystream.backtest.report import SeriesFn, plot_specs
from citystream.backtest.runner import RunResult
from citystream.errors import UserError


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def write_pngs(directory: Path, results: Sequence[RunResult], series: SeriesFn | None = None) -> list[Path]:
    """One PNG per series with a label or a detection; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {directory}: {exc.strerror}") from None
    rng = results[0].range
    written = []
    for spec in plot_specs(results):
        data = series(spec.domain, spec.key) if series is not None else None
        fig, ax = plt.subplots(figsize=(10, 3), dpi=100)
        try:
            if data:
                pts = svg.thin(data[1], data[2])
                ax.plot([_when(t) for t, _ in pts], [v for _, v in pts], color="#333", linewidth=0.8)
                ax.set_ylabel(data[0])
            for _lid, a, b in spec.marks.labels:
                ax.axvspan(_when(a), _when(b), color="#f4a582", alpha=0.45, linewidth=0)
            for i, (r, lane) in enumerate(zip(results, spec.marks.detections, strict=True)):
                colour = svg.PALETTE[i % len(svg.PALETTE)]
                for n, (_did, t) in enumerate(lane):
                    ax.axvline(
                        _when(t),
                        color=colour,
                        linestyle="--",
                        linewidth=1,
                        label=r.config if n == 0 else None,
                    )
            ax.set_xlim(_when(rng.from_ms), _when(rng.to_ms))
            ax.set_title(f"{spec.domain} {spec.key}", fontsize=10)
            if any(spec.marks.detections):
                ax.legend(loc="upper right", fontsize=8)
            fig.autofmt_xdate()
            path = directory / (re.sub(r"[^A-Za-z0-9._-]+", "_", f"{spec.domain}_{spec.key}") + ".png")
            fig.savefig(path, bbox_inches="tight")
            written.append(path)
        finally:
            plt.close(fig)
    return written
