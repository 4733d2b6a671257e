"""Where a backtest's window aggregates and labels come from.

Why a ``Dataset`` value: detection runs over 1-minute WindowAggregate rows
whatever produced them - a seeded simulator run (aggregated here exactly as the
domain jobs define windows), the store's ``window_aggregates`` over a range, or
later a replay's shadow tables - and the scorer needs only the labels and the
range. One value carries the three, so each source is one small function.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from citystream.backtest.events import Detection, Label, TimeRange
from citystream.errors import UserError


@dataclass(frozen=True)
class Dataset:
    """Aggregate rows in window order, the labels for their range, and where they came from."""

    source: str
    rows: list[dict[str, Any]]
    labels: list[Label]
    range: TimeRange

    def series(self, domain: str, key: str) -> tuple[str, list[int], list[float]] | None:
        """(metric, window ends, means) of the sensor's metric that its labels show best, for the plots.

        The metric whose mean moves most (in its own standard deviations) between
        the sensor's labelled windows and the rest; the first by name without labels.
        """
        per_metric = self._by_series.get((domain, key))
        if not per_metric:
            return None
        spans = [(lb.start_ms, lb.end_ms) for lb in self.labels if lb.domain == domain and key in lb.keys]
        metric = max(sorted(per_metric), key=lambda m: _contrast(*per_metric[m], spans))
        return metric, *per_metric[metric]

    @cached_property
    def _by_series(self) -> dict[tuple[str, str], dict[str, tuple[list[int], list[float]]]]:
        """Window ends and means per sensor and metric, built once for every plot."""
        out: dict[tuple[str, str], dict[str, tuple[list[int], list[float]]]] = {}
        for r in self.rows:
            if (
                r["key_kind"] != "sensor"
                or int(r["window_end"]) - int(r["window_start"]) != self.range.window_ms
            ):
                continue
            t, v = out.setdefault((r["domain"], r["key_id"]), {}).setdefault(r["metric"], ([], []))
            t.append(int(r["window_end"]))
            v.append(float(r["mean"]))
        return out


def _contrast(times: list[int], values: list[float], spans: list[tuple[int, int]]) -> float:
    """|mean inside the spans - mean outside| / standard deviation; 0 when either side is empty."""
    inside = [v for t, v in zip(times, values, strict=True) if any(a < t <= b for a, b in spans)]
    outside = [v for t, v in zip(times, values, strict=True) if not any(a < t <= b for a, b in spans)]
    if not inside or len(outside) < 2:
        return 0.0
    sd = statistics.pstdev(values) or 1.0
    return abs(statistics.fmean(inside) - statistics.fmean(outside)) / sd


def simulated(seed: int, hours: float, sensors: int, anomalies_per_hour: float) -> Dataset:
    """A seeded simulator run: its readings aggregated per minute, and the labels it injected."""
    from citystream.evaluation.simulator import SimSlice, simulator_aggregates, simulator_run

    records, labels = simulator_run(SimSlice(seed, hours, anomalies_per_hour, sensors))
    rows = simulator_aggregates(records)
    if not rows:
        raise UserError("the simulator run produced no aggregates: give it more --hours or --sensors")
    start = min(int(r["window_start"]) for r in rows)
    end = max(int(r["window_end"]) for r in rows)
    return Dataset(
        f"simulator seed {seed}", rows, [Label.from_record(lb) for lb in labels], TimeRange(start, end)
    )


def read_labels(path: Path) -> list[Label]:
    """citystream.Label records, one JSON object a line (``citystream simulate --labels-file``)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"cannot read labels {path}: {exc.strerror}") from None
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Label.from_record(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{n}: not a citystream.Label record ({exc})") from None
    return out


def from_store(
    client: Any, rng: TimeRange, labels: Sequence[Label] | None = None, database: str | None = None
) -> Dataset:
    """The stored 1-minute sensor windows in ``rng`` (latest revisions) and its labels.

    Labels are the ``labels`` table overlapping the range unless given.
    ``database``: another database of the same schema (a replay's shadow database).
    """
    params = {"a": _dt(rng.from_ms), "b": _dt(rng.to_ms), "w": rng.window_ms // 1000}
    params["db"] = database or client.database
    result = client.query(
        """
        SELECT domain, key_kind, key_id, metric,
               toUnixTimestamp64Milli(window_start) AS start_ms,
               toUnixTimestamp64Milli(window_end) AS end_ms,
               samples, mean, min, max, late, duplicates, revision
        FROM {db:Identifier}.window_aggregates FINAL
        WHERE key_kind = 'sensor' AND window_start >= {a:DateTime64(3)} AND window_end <= {b:DateTime64(3)}
          AND dateDiff('second', window_start, window_end) = {w:UInt32}
        ORDER BY window_end, domain, key_id, metric""",
        parameters=params,
    )
    # aliases differ from the columns: ClickHouse would otherwise read them in WHERE
    names = [_RENAMED.get(c, c) for c in result.column_names]
    rows = [dict(zip(names, r, strict=True)) for r in result.result_rows]
    if labels is None:
        lab = client.query(
            """
            SELECT label_id, domain, kind, sensor_ids,
                   toUnixTimestamp64Milli(start_time) AS start_ms,
                   toUnixTimestamp64Milli(end_time) AS end_ms, source
            FROM {db:Identifier}.labels FINAL
            WHERE end_time >= {a:DateTime64(3)} AND start_time < {b:DateTime64(3)}
            ORDER BY label_id""",
            parameters=params,
        )
        names = [{"start_ms": "start_time", "end_ms": "end_time"}.get(c, c) for c in lab.column_names]
        labels = [Label.from_record(dict(zip(names, r, strict=True))) for r in lab.result_rows]
    return Dataset("store", rows, list(labels), rng)


def stored_detections(client: Any, rng: TimeRange, database: str | None = None) -> list[Detection]:
    """The alerts raised in ``rng`` in a database of the store's schema, as detections.

    How a replay is scored: its detect job's alerts land in its shadow database
    (``ReplayResult.database``); every message of an alert raised in the range is read.
    """
    result = client.query(
        """
        SELECT alert_id, state, domain, kind, affected_keys,
               toUnixTimestamp64Milli(first_seen) AS first_ms, toUnixTimestamp64Milli(last_seen) AS last_ms
        FROM {db:Identifier}.alerts FINAL
        WHERE alert_id IN (
            SELECT alert_id FROM {db:Identifier}.alerts
            GROUP BY alert_id
            HAVING min(last_seen) >= {a:DateTime64(3)} AND min(last_seen) < {b:DateTime64(3)})""",
        parameters={"db": database or client.database, "a": _dt(rng.from_ms), "b": _dt(rng.to_ms)},
    )
    names = [{"first_ms": "first_seen", "last_ms": "last_seen"}.get(c, c) for c in result.column_names]
    return Detection.from_alerts(dict(zip(names, r, strict=True)) for r in result.result_rows)


_RENAMED = {"start_ms": "window_start", "end_ms": "window_end"}


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)
