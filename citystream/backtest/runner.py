"""One backtest run: a detection configuration over a dataset, scored.

Why detection runs here window by window rather than through
``Detection.run``: the same calls in the same order (``Detection.window`` per
window end, ascending, as the job's event-time timers fire), with a progress
callback between windows so the command line can show how far it is.
A replay run will produce its detections in Flink instead; it then calls
:func:`citystream.backtest.events.score_run` on them directly (see
:func:`result_of`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citystream.backtest.events import Detection, Label, Scores, TimeRange, score_run
from citystream.backtest.sources import Dataset
from citystream.detection import Detection as Detector
from citystream.detection import DetectionConfig

#: progress(done, total) between windows.
Progress = Callable[[int, int], None]


@dataclass
class RunResult:
    """A run of one configuration: what it detected and how that scored."""

    run_id: str
    config: str
    config_path: str
    source: str
    range: TimeRange
    started_ms: int
    finished_ms: int
    detections: list[Detection]
    labels: list[Label]
    scores: Scores


def detect(
    rows: list[dict[str, Any]], config: DetectionConfig, progress: Progress | None = None
) -> list[Detection]:
    """The detect job's two stages over ``rows``; its alerts as detections."""
    det = Detector(config)
    by_window: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_window.setdefault(int(row["window_end"]), []).append(row)
    alerts: list[dict[str, Any]] = []
    ends = sorted(by_window)
    for n, w in enumerate(ends, start=1):
        alerts += det.window(by_window[w])["alerts"]
        if progress is not None:
            progress(n, len(ends))
    return Detection.from_alerts(alerts)


def result_of(
    detections: list[Detection],
    labels: list[Label],
    rng: TimeRange,
    *,
    config: str,
    config_path: str = "",
    source: str = "",
    started_ms: int | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Score detections from any source (in-process detection here, a replay's shadow tables later)."""
    now = int(time.time() * 1000)
    return RunResult(
        run_id or uuid.uuid4().hex[:16],
        config,
        config_path,
        source,
        rng,
        started_ms if started_ms is not None else now,
        now,
        detections,
        labels,
        score_run(detections, labels, rng),
    )


def run_config(
    data: Dataset, name: str, config: DetectionConfig, path: Path | None, progress: Progress | None = None
) -> RunResult:
    """Detect over ``data`` with ``config`` and score against its labels."""
    started = int(time.time() * 1000)
    dets = detect(data.rows, config, progress)
    return result_of(
        dets,
        data.labels,
        data.range,
        config=name,
        config_path=str(path or ""),
        source=data.source,
        started_ms=started,
    )
