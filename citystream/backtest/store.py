"""Backtest runs into the store (``backtest_runs``, ``backtest_detections``; migration 0006).

Why store them at all: the Backtests dashboard compares runs over weeks
("did last Tuesday's config change lose the main break?"), which a report file
on someone's laptop cannot do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from citystream import __version__
from citystream.backtest.runner import RunResult

#: backtest_runs (migrations 0003 and 0006): dataset is the data source, detector the
#: configuration's name, batadal the S score; NaN where a score does not apply.
RUN_COLUMNS = [
    "run_id", "batch_id", "dataset", "detector", "status", "started_at", "finished_at", "range_from",
    "range_to", "code_version", "params", "nab", "nab_low_fp", "nab_low_fn", "batadal", "s_ttd", "s_cm",
    "labels", "true_positives", "false_negatives", "false_positives", "repeats", "precision", "recall",
    "f1", "median_ttd_s", "ttd_p90_s", "false_alerts_per_day", "alarms", "seconds", "note",
]  # fmt: skip
DETECTION_COLUMNS = [
    "run_id", "outcome", "detection_id", "domain", "kind", "keys", "detected_at", "label_id",
    "label_kind", "label_start", "label_end", "ttd_s",
]  # fmt: skip


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def run_row(r: RunResult, batch_id: str) -> list[Any]:
    s, b = r.scores, r.scores.batadal
    return [
        r.run_id, batch_id, r.source, r.config, "done", _dt(r.started_ms), _dt(r.finished_ms),
        _dt(r.range.from_ms), _dt(r.range.to_ms), __version__, r.config_path,
        _nan(s.nab.get("standard")), _nan(s.nab.get("low_fp")), _nan(s.nab.get("low_fn")),
        _nan(b.s if b else None), _nan(b.s_ttd if b else None), _nan(b.s_cm if b else None),
        s.labels, s.detected, s.labels - s.detected, s.false_alerts, s.repeats, s.precision, s.recall,
        s.f1, s.ttd_median_s, s.ttd_p90_s, s.false_alerts_per_day, s.detections,
        (r.finished_ms - r.started_ms) / 1000.0, "",
    ]  # fmt: skip


def detection_rows(r: RunResult) -> list[list[Any]]:
    rows = []
    for o in r.scores.outcomes:
        d, lb = o.detection, o.label
        what = d if d is not None else lb
        assert what is not None  # an outcome is about a detection, a label or both
        rows.append(
            [
                r.run_id,
                o.outcome,
                d.detection_id if d else "",
                what.domain,
                d.kind if d else "",
                list(what.keys),
                _dt(d.time_ms if d else what.start_ms),  # type: ignore[union-attr]
                lb.label_id if lb else "",
                lb.kind if lb else "",
                _dt(lb.start_ms if lb else None),
                _dt(lb.end_ms if lb else None),
                None if o.ttd_ms is None else o.ttd_ms / 1000.0,
            ]
        )
    return rows


def save(client: Any, results: Sequence[RunResult], batch_id: str) -> None:
    """One row per run and one per detection or missed label; the run row goes last, so a run
    listed on the dashboard always has its detections."""
    for r in results:
        rows = detection_rows(r)
        if rows:
            client.insert("backtest_detections", rows, column_names=DETECTION_COLUMNS)
    client.insert("backtest_runs", [run_row(r, batch_id) for r in results], column_names=RUN_COLUMNS)
