"""Sealing: turn dirty hours of window_aggregates into the plain rollup rows dashboards read.

Why sealing and not materialized views: see migration 0005. In short, a view
that keeps rollups exact under revisions and re-deliveries has to remember
every window, which made inserts ~5x slower and fleet-wide reads take
seconds. Here a tiny view only marks which hours got windows; this module
recomputes such hours from ``window_aggregates FINAL`` when asked,
and readers combine sealed rows (clean hours) with the windows themselves
(dirty hours), so answers are exact whether or not sealing has run.

Contract of :func:`seal`, one *pass*:

1. take the server's time ``T``;
2. refuse to go on while an INSERT that mentions window_aggregates is
   running (``system.processes``): everything inserted before is then
   visible, and anything inserted later marks its hours after ``T``, so they
   stay dirty - the pass can never declare an hour clean that misses a row;
3. pick dirty hours whose latest mark is older than ``grace_s`` (an hour
   still receiving windows would be sealed again a moment later);
4. write their rows at every grain with ``version = T``, then record
   ``sealed_at = T``. A failure leaves the hours dirty (their rows of
   version T are ignored and eventually replaced), never half-sealed;
5. write daily rows for days whose hours are all clean and whose daily rows
   do not match the hours' latest seal, then record the day.

The loader calls it between its own inserts (connectors/loader/upkeep.py);
``citystream store seal`` runs it by hand. It only uses an ordinary
ClickHouse client, like the rest of the store's users.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Sealed grains below a day, in seconds; days (86400) are sealed once all their hours are.
GRAINS: tuple[int, ...] = (60, 600, 3600)
DAY = 86400
#: The windows rolled up: 1-minute tumbling ones (hopping windows overlap them).
TUMBLING = "dateDiff('second', window_start, window_end) = 60"
#: How many hours one INSERT ... SELECT seals: bounds memory and statement size.
CHUNK_HOURS = 24

_VALUES = "windows, samples, total, min, max, late, duplicates, revised"
_SUMS = "sum(windows), sum(samples), sum(total), min(min), max(max), sum(late), sum(duplicates), sum(revised)"


@dataclass
class SealResult:
    """What one pass did; ``busy`` when it sealed nothing because an INSERT was running."""

    hours: int = 0
    days: int = 0
    busy: bool = False
    #: Dirty hours left for later passes (``max_hours``), not counting those within the grace period.
    remaining: int = 0
    seconds: float = 0.0


def _ts(value: str) -> str:
    return f"toDateTime64('{value}', 6, 'UTC')"


def _now(client: Any) -> str:
    return str(client.command("SELECT toString(now64(6, 'UTC'))"))


def inserts_running(client: Any) -> int:
    """INSERTs mentioning window_aggregates in flight (any database: conservative and cheap)."""
    return int(
        client.command(
            "SELECT count() FROM system.processes WHERE query_kind = 'Insert' "
            "AND positionCaseInsensitive(query, 'window_aggregates') > 0 AND query_id != queryID()"
        )
    )


def dirty_hours(client: Any, *, older_than_s: float | None = None, now: str | None = None) -> list[str]:
    """Hours with windows inserted after their last seal, oldest first ('YYYY-MM-DD hh:00:00')."""
    where = ""
    if older_than_s is not None and now is not None:
        where = f" AND max(marked_at) <= {_ts(now)} - toIntervalMillisecond({int(older_than_s * 1000)})"
    rows = client.query(
        "SELECT toString(hour) FROM window_aggregates_hours GROUP BY hour "
        f"HAVING max(marked_at) >= max(sealed_at){where} ORDER BY hour"
    ).result_rows
    return [str(r[0]) for r in rows]


def seal(
    client: Any,
    *,
    grace_s: float = 60.0,
    max_hours: int | None = None,
    busy_retries: int = 0,
    sleep: Callable[[float], None] = time.sleep,
) -> SealResult:
    """One sealing pass (see the module's contract); returns what it did.

    ``max_hours`` bounds the hours of this pass (oldest first), so a caller
    that must stay responsive - the loader - can spread a backlog over several
    passes. ``busy_retries``: how many times to look again, 0.2 s apart, while
    an INSERT is running, before giving up with ``busy``.
    """
    started = time.monotonic()
    result = SealResult()
    now = _now(client)
    attempts = 0
    while inserts_running(client):
        if attempts >= busy_retries:
            result.busy = True
            result.seconds = time.monotonic() - started
            return result
        attempts += 1
        sleep(0.2)
        now = _now(client)  # a later T is as safe: every insert before the check is visible
    todo = dirty_hours(client, older_than_s=grace_s, now=now)
    if max_hours is not None:
        result.remaining = max(0, len(todo) - max_hours)
        todo = todo[:max_hours]
    for i in range(0, len(todo), CHUNK_HOURS):
        chunk = todo[i : i + CHUNK_HOURS]
        _seal_hours(client, chunk, now)
        result.hours += len(chunk)
    result.days = _seal_days(client)
    result.seconds = time.monotonic() - started
    return result


def _seal_hours(client: Any, hours: Sequence[str], now: str) -> None:
    """Rows of ``hours`` at every grain with version ``now``, then their seal record.

    The latest revision of every 1-minute window of ``hours`` is read once
    (``FINAL``, as window_aggregates_latest does) into a private in-memory
    table; every sealed table is derived from it.
    """
    version = _ts(now)
    span = (
        f"BETWEEN toDateTime('{min(hours)}', 'UTC') "
        f"AND toDateTime('{max(hours)}', 'UTC') + INTERVAL 3599 SECOND"
    )
    listed = "(" + ", ".join(f"'{h}'" for h in hours) + ")"
    raw_hour = "toStartOfHour(toDateTime(window_start, 'UTC'))"
    mine = f"t {span} AND version = {version} AND toStartOfHour(t) IN {listed}"
    staging = f"window_aggregates_seal_{uuid.uuid4().hex[:16]}"
    client.command(
        f"""
        CREATE TABLE {staging} ENGINE = Memory AS
        SELECT domain, key_kind, key_id, metric, toDateTime(window_start, 'UTC') AS t, toUInt32(1) AS windows,
               samples, if(samples = 0, 0, samples * mean) AS total, min, max, late, duplicates,
               toUInt32(revision > 0) AS revised
        FROM window_aggregates FINAL
        WHERE window_start {span} AND {TUMBLING} AND {raw_hour} IN {listed}
        """
    )
    try:
        client.command(
            f"""
            INSERT INTO window_aggregates_sealed
                (grain, domain, key_kind, key_id, metric, t, {_VALUES}, version)
            SELECT 60, domain, key_kind, key_id, metric, t, {_VALUES}, {version}
            FROM {staging}
            """
        )
        client.command(
            f"""
            INSERT INTO window_aggregates_sealed
                (grain, domain, key_kind, key_id, metric, t, {_VALUES}, version)
            SELECT 600, domain, key_kind, key_id, metric, toStartOfInterval(t, INTERVAL 10 MINUTE) AS bucket,
                   {_SUMS}, {version}
            FROM {staging}
            GROUP BY domain, key_kind, key_id, metric, bucket
            """
        )
        _fleet_minutes(client, staging, version)
    finally:
        client.command(f"DROP TABLE IF EXISTS {staging} SYNC")
    client.command(
        f"""
        INSERT INTO window_aggregates_sealed
                (grain, domain, key_kind, key_id, metric, t, {_VALUES}, version)
        SELECT 3600, domain, key_kind, key_id, metric, toStartOfHour(t) AS bucket, {_SUMS}, {version}
        FROM window_aggregates_sealed
        WHERE grain = 600 AND {mine}
        GROUP BY domain, key_kind, key_id, metric, bucket
        """
    )
    for grain in GRAINS[1:]:
        _fleet_coarser(client, grain, f"grain = 60 AND {mine}", version)
    _seal_lag(client, span, f"{raw_hour} IN {listed}", mine, version)
    values = ", ".join(f"('{h}', toDateTime64(0, 6, 'UTC'), {version})" for h in hours)
    client.command(f"INSERT INTO window_aggregates_hours (hour, marked_at, sealed_at) VALUES {values}")


def _seal_lag(client: Any, span: str, in_hours: str, mine: str, version: str) -> None:
    """The sealed hours' load-lag histograms (window end to first load), at every grain."""
    # Load lag: every window (hopping and zone windows too), the first load of each. Grouped by a
    # 64-bit hash of the key columns: ~3x cheaper than the LowCardinality strings themselves, and a
    # collision among a few thousand keys (~1e-12) would only merge two windows' first loads.
    client.command(
        f"""
        INSERT INTO window_aggregates_sealed_lag (grain, domain, t, lags, version)
        SELECT 60, d, toStartOfMinute(toDateTime(window_start, 'UTC')) AS bucket,
               sumMap(map(lag_ms, toUInt64(1))), {version}
        FROM
        (
            SELECT any(domain) AS d, window_start,
                   dateDiff('millisecond', any(window_end), min(loaded_at)) AS lag_ms
            FROM window_aggregates
            WHERE window_start {span} AND {in_hours}
            GROUP BY cityHash64(domain, key_kind, key_id, metric), window_start, window_end
        )
        GROUP BY d, bucket
        """
    )
    for grain in GRAINS[1:]:
        client.command(
            f"""
            INSERT INTO window_aggregates_sealed_lag (grain, domain, t, lags, version)
            SELECT {grain}, domain, toStartOfInterval(t, INTERVAL {grain} SECOND) AS bucket, sumMap(lags),
                   {version}
            FROM window_aggregates_sealed_lag
            WHERE grain = 60 AND {mine}
            GROUP BY domain, bucket
            """
        )


_FLEET = {
    "domains": (
        "domain, key_kind",
        "readings, late, duplicates, revised",
        "sum(readings), sum(late), sum(duplicates), sum(revised)",
    ),
}


def _fleet_minutes(client: Any, staging: str, version: str) -> None:
    """Rows over all keys (key_id '') at 1 minute and 10 minutes, and department rows at 1 minute.

    A department's readings (late, duplicates) in a minute: the sum over its
    keys of the largest samples (late, duplicates) among a key's metrics - every
    metric of a reading has its own window, the reading counts once.
    """
    for grain in (60, 600):
        client.command(
            f"""
            INSERT INTO window_aggregates_sealed
                (grain, domain, key_kind, key_id, metric, t, {_VALUES}, version)
            SELECT {grain}, domain, key_kind, '', metric,
                   toStartOfInterval(t, INTERVAL {grain} SECOND) AS bucket,
                   {_SUMS}, {version}
            FROM {staging}
            GROUP BY domain, key_kind, metric, bucket
            """
        )
    client.command(
        f"""
        INSERT INTO window_aggregates_sealed_domains
            (grain, domain, key_kind, t, readings, late, duplicates, revised, version)
        SELECT 60, domain, key_kind, t, sum(readings), sum(late), sum(duplicates), sum(revised), {version}
        FROM
        (
            SELECT domain, key_kind, key_id, t, max(samples) AS readings, max(late) AS late,
                   max(duplicates) AS duplicates, sum(revised) AS revised
            FROM {staging}
            GROUP BY domain, key_kind, key_id, t
        )
        GROUP BY domain, key_kind, t
        """
    )


def _fleet_coarser(
    client: Any, grain: int, rows: str, version: str, settings: dict[str, Any] | None = None, at: str = ""
) -> None:
    """Department rows of ``grain``: sums of their finer rows selected by ``rows``."""
    for name, (keys, columns, sums) in _FLEET.items():
        bucket = at or f"toStartOfInterval(t, INTERVAL {grain} SECOND)"
        extra = dict(settings or {})
        if "insert_deduplication_token" in extra:
            extra["insert_deduplication_token"] += f"|{name}"
        client.command(
            f"""
            INSERT INTO window_aggregates_sealed_{name} (grain, {keys}, t, {columns}, version)
            SELECT {grain}, {keys}, {bucket} AS bucket, {sums}, {version}
            FROM window_aggregates_sealed_{name}
            WHERE {rows}
            GROUP BY {keys}, bucket
            """,
            settings=extra or None,
        )


#: Days whose hours are all clean, with the latest seal among them (the version of their daily rows).
CLEAN_DAYS = """
    SELECT toDate(hour) AS day, max(s) AS v
    FROM
    (
        SELECT hour, max(marked_at) AS m, max(sealed_at) AS s FROM window_aggregates_hours GROUP BY hour
    )
    GROUP BY day
    HAVING countIf(s <= m) = 0"""


def stale_days(client: Any) -> list[tuple[str, str]]:
    """(day, version) of days whose hours are all clean but whose daily rows are not of their latest seal."""
    rows = client.query(
        f"""
        SELECT toString(c.day), toString(c.v)
        FROM ({CLEAN_DAYS}) AS c
        LEFT JOIN (SELECT day, max(version) AS dv FROM window_aggregates_days GROUP BY day) AS d
            ON c.day = d.day
        WHERE d.dv != c.v
        ORDER BY c.day
        """
    ).result_rows
    return [(str(day), str(v)) for day, v in rows]


def _seal_days(client: Any) -> int:
    days = stale_days(client)
    for day, v in days:
        version = _ts(v)
        token = {"insert_deduplication_token": f"sealed-day|{day}|{v}"}
        hours = (
            f"t >= toDateTime('{day}', 'UTC') AND t < toDateTime('{day}', 'UTC') + INTERVAL 1 DAY "
            f"AND (t, version) IN (SELECT hour, max(sealed_at) FROM window_aggregates_hours "
            f"WHERE toDate(hour) = '{day}' GROUP BY hour)"
        )
        client.command(
            f"""
            INSERT INTO window_aggregates_sealed
                (grain, domain, key_kind, key_id, metric, t, {_VALUES}, version)
            SELECT {DAY}, domain, key_kind, key_id, metric, toDateTime('{day}', 'UTC'), {_SUMS}, {version}
            FROM window_aggregates_sealed
            WHERE grain = 3600 AND {hours}
            GROUP BY domain, key_kind, key_id, metric
            """,
            settings={"insert_deduplication_token": token["insert_deduplication_token"] + "|keys"},
        )
        _fleet_coarser(
            client, DAY, f"grain = 3600 AND {hours}", version, token, f"toDateTime('{day}', 'UTC')"
        )
        client.command(f"INSERT INTO window_aggregates_days (day, version) VALUES ('{day}', {version})")
    return len(days)
