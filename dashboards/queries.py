"""The SQL the dashboards run, written once against the store's tables and views.

Why a module of its own: every panel must read windows through the same
rules, and they are easy to get subtly wrong by hand —

* **Latest revision only.** ``window_aggregates`` is a ReplacingMergeTree
  (revision): a corrected window and an unmerged re-delivery are extra rows
  until a merge. Panels read windows through ``window_aggregates_latest``
  (migration 0001: ``FINAL``) or the sealed rollups (0005: rows of a seal
  that read the latest revisions), and the other result tables through their
  ``*_latest`` views or ``FINAL`` — never the bare table where a duplicate
  would count.
* **Sealed where sealed, windows where not.** Rollup rows are only valid for
  hours sealed after their last window arrived (clean hours, with the version
  of their seal); for the others (dirty hours) the same rows are computed from
  the windows in the query. :func:`resolution` builds both branches, so a
  panel's answer does not depend on when the sealer last ran — only its cost.
* **Resolution follows the time range** (:data:`GRAINS`): up to 6 hours
  1-minute rows, up to 2 days 10-minute rows, up to 62 days hourly rows,
  beyond that daily rows; a bucket is ``$__interval_s`` but never finer than
  the grain, and a range covers the grain's units that start within it. The
  grain is one constant expression: unused grains are never read (the rows'
  first sorting key is the grain).
* **Panels over every sensor read rows over every sensor.** Rows with
  key_id '' sum all keys of a metric, and department rows count readings
  once (the largest samples among a sensor's metrics in each 1-minute
  window): the fleet-wide panels read a few rows per bucket, not one per
  sensor.
* **Tumbling windows only.** The jobs write, per sensor, 1-minute tumbling
  windows *and* 5-minute hopping windows sliding by a minute (jobs/common.py),
  both with key_kind 'sensor'. Hopping windows overlap, so summing them would
  count every reading five times: panels keep windows :data:`TUMBLE_S` long.

Each branch yields the same columns (``t`` the panel's time bucket, the key
columns, the values and ``bucket_s``, the seconds a bucket stands for), so
the outer query aggregates them the same way whatever the resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from citystream.dashboards.factories import in_filter, selected

#: Length of the tumbling windows the jobs emit (jobs.common.Windows.tumble_s and zone_s; a test pins it).
TUMBLE_S = 60
#: The filter that keeps tumbling windows and drops the overlapping hopping ones.
TUMBLING = f"dateDiff('second', window_start, window_end) = {TUMBLE_S}"

#: Resolutions, finest first: (grain in seconds, longest range in seconds read at it). Up to
#: 6 h: 1-minute rows (360 per key); up to 2 days: 10-minute rows (288); up to 62 days:
#: hourly rows (1,488); beyond: daily rows. A bucket is never finer than the grain.
GRAINS: tuple[tuple[int, int | None], ...] = (
    (60, 6 * 3600),
    (600, 2 * 86400),
    (3600, 62 * 86400),
    (86400, None),
)
DAY_S = 86400

_RANGE_S = "dateDiff('second', $__fromTime, $__toTime)"

#: The hours' state (migration 0005), read once per branch as constants: clean hours (hour as
#: UInt32) with the version of their rows (microseconds), and dirty hours - windows inserted
#: since their last seal - whose rows are read from window_aggregates itself.
HOURS = (
    "(SELECT (groupArrayIf(h, s > m), groupArrayIf(s, s > m), groupArrayIf(h, s <= m)) FROM "
    "(SELECT toUInt32(hour) AS h, toUnixTimestamp64Micro(max(marked_at)) AS m, "
    "toUnixTimestamp64Micro(max(sealed_at)) AS s FROM window_aggregates_hours GROUP BY hour))"
)
#: Days (as UInt16) whose hours are all clean and whose daily rows are of the hours' latest seal,
#: with that version.
DAYS = (
    "(SELECT (groupArray(toUInt16(day)), groupArray(toUnixTimestamp64Micro(v))) FROM "
    "(SELECT toDate(hour) AS day, max(s) AS v FROM "
    "(SELECT hour, max(marked_at) AS m, max(sealed_at) AS s FROM window_aggregates_hours GROUP BY hour) "
    "GROUP BY day HAVING countIf(s <= m) = 0) "
    "WHERE (day, v) IN (SELECT day, max(version) FROM window_aggregates_days GROUP BY day))"
)
_RAW_HOUR = "toUInt32(toStartOfHour(toDateTime(window_start, 'UTC')))"
#: Sealed rows of the hour's (day's) latest seal; a hash lookup per row (``transform``). Sealed
#: rows are read as ``r``, and their own time as ``r.t``: the bare ``t`` is the panel's bucket
#: (an alias in the same SELECT, which ClickHouse resolves before the column).
_CLEAN_HOUR = (
    "toUnixTimestamp64Micro(r.version) = transform(toUInt32(toStartOfHour(r.t)), _hours.1, _hours.2, -1)"
)
_CLEAN_DAY = "toUnixTimestamp64Micro(r.version) = transform(toUInt16(toDate(r.t)), _days.1, _days.2, -1)"
#: Where the dirty hours begin and end: constants the engine prunes granules with (1970 if none).
_DIRTY_FIRST = "toDateTime(arrayMin(_hours.3), 'UTC')"
_DIRTY_END = "toDateTime(arrayMax(_hours.3) + 3600, 'UTC')"


@dataclass(frozen=True)
class Level:
    """One family of sealed rows and how to compute the same rows from the windows themselves.

    ``raw`` selects ``unit`` (the window's minute), the key columns and the
    value columns from ``window_aggregates_latest`` restricted by ``{filter}``;
    its rows are summed over buckets like the sealed ones.
    """

    table: str
    keys: str
    values: str
    raw: str


#: Per key and metric.
KEYS = Level(
    table="window_aggregates_sealed",
    keys="domain, key_kind, key_id, metric",
    values="samples, total, min AS lo, max AS hi, late, duplicates, revised",
    raw="""
        SELECT window_start AS unit, domain, key_kind, key_id, metric,
               samples, if(samples = 0, 0, samples * mean) AS total, min AS lo, max AS hi, late, duplicates,
               toUInt32(revision > 0) AS revised
        FROM window_aggregates_latest
        WHERE {filter}""",
)
#: Per department and key kind: readings, late and duplicates counted once per reading.
DOMAINS = Level(
    table="window_aggregates_sealed_domains",
    keys="domain, key_kind",
    values="readings, late, duplicates, revised",
    raw="""
        SELECT unit, domain, key_kind, sum(r) AS readings, sum(l) AS late, sum(d) AS duplicates,
               sum(v) AS revised
        FROM
        (
            SELECT window_start AS unit, domain, key_kind, key_id, max(samples) AS r, max(late) AS l,
                   max(duplicates) AS d, sum(toUInt32(revision > 0)) AS v
            FROM window_aggregates_latest
            WHERE {filter}
            GROUP BY unit, domain, key_kind, key_id
        )
        GROUP BY unit, domain, key_kind""",
)


def grain() -> str:
    """SQL for the grain (seconds) the panel's range is read at."""
    cases = ", ".join(
        f"{_RANGE_S} <= {longest}, {seconds}" for seconds, longest in GRAINS if longest is not None
    )
    return f"multiIf({cases}, {GRAINS[-1][0]})"


def _with() -> str:
    """Names for one branch: the hours' and days' state, ``_g`` the grain, ``[_lo, _hi)`` the range.

    ``[_lo, _hi)`` holds the starts of the grain's units that start within the
    range; at 1 minute windows that start before ``$__fromTime`` stay out, as
    with ``$__timeFilter``.
    """
    return (
        f"WITH {HOURS} AS _hours, {DAYS} AS _days, {grain()} AS _g,\n"
        f"        if(_g = {TUMBLE_S}, $__fromTime,"
        " toStartOfInterval($__fromTime, INTERVAL _g second)) AS _lo,\n"
        "        toStartOfInterval($__toTime, INTERVAL _g second) + INTERVAL _g second AS _hi"
    )


def _bucket(column: str) -> str:
    """The panel's bucket of ``column``: Grafana's interval, but never finer than the grain ``_g``."""
    coarse = f"toStartOfInterval(toDateTime({column}, 'UTC'), INTERVAL greatest($__interval_s, _g) second)"
    return f"if(_g = {TUMBLE_S}, $__timeInterval({column}), {coarse})"


def resolution(level: Level, where: str, sealed: str | None = None) -> str:
    """Rows of ``level`` for the panel's range at the resolution it calls for, with the same columns.

    Columns: ``t`` (the panel's bucket), the level's keys and values, and
    ``bucket_s`` (seconds a bucket stands for). ``where`` may only use the
    level's key columns; ``sealed`` replaces it for the sealed rows. Two
    branches: sealed rows (of clean hours; for a range read by the day, daily
    rows of clean days and hourly rows of the other days' clean hours), and
    the same rows computed from the windows of dirty hours, so the answer does
    not depend on when sealing last ran.
    """
    # The outer if folds (``_g`` is a constant): below a day only the hour check runs per row.
    valid = (
        f"if(_g = {DAY_S},\n"
        f"            if(grain = {DAY_S}, {_CLEAN_DAY},"
        f" {_CLEAN_HOUR} AND NOT has(_days.1, toUInt16(toDate(r.t)))),\n"
        f"            {_CLEAN_HOUR})"
    )
    raw_values = level.values.replace("min AS lo", "lo").replace("max AS hi", "hi")
    raw_filter = (
        f"{where}\n            AND window_start >= greatest(_lo, {_DIRTY_FIRST})"
        f" AND window_start < least(_hi, {_DIRTY_END})"
        f"\n            AND {TUMBLING}\n            AND has(_hours.3, {_RAW_HOUR})"
    )
    return f"""
    {_with()}
    SELECT {_bucket("r.t")} AS t, {level.keys}, {level.values}, greatest($__interval_s, _g) AS bucket_s
    FROM {level.table} AS r
    WHERE grain IN (_g, if(_g = {DAY_S}, 3600, _g)) AND {where if sealed is None else sealed}
        AND r.t >= _lo AND r.t < _hi
        AND {valid}
    UNION ALL
    {_with()}
    SELECT {_bucket("unit")} AS t, {level.keys}, {raw_values}, greatest($__interval_s, _g) AS bucket_s
    FROM ({level.raw.replace("{filter}", raw_filter)}
    )"""


def windows(where: str) -> str:
    """Per key and metric statistics at the range's resolution; ``where`` filters key columns only.

    Columns ``t``, domain, key_kind, key_id, metric, samples, ``total``
    (samples x mean), ``lo``, ``hi``, late, duplicates, ``revised`` (windows
    corrected by late data) and ``bucket_s``.
    """
    return resolution(KEYS, where, sealed=f"{where} AND key_id != ''")


def load_lag(where: str) -> str:
    """(t, domain, lags) at the range's resolution: ``lags`` maps lag in ms -> windows.

    The lag of a window is the time from its end to its first row in the
    store; every window counts (hopping and zone windows too). Sealed
    histograms of clean hours (hourly ones for ranges read by the day), the
    windows themselves for dirty hours; :func:`lag_quantile` turns a merged
    histogram into a quantile.
    """
    return f"""
    {_with()}
    SELECT {_bucket("r.t")} AS t, domain, lags
    FROM window_aggregates_sealed_lag AS r
    WHERE grain = least(_g, 3600) AND {where}
        AND r.t >= _lo AND r.t < _hi
        AND {_CLEAN_HOUR}
    UNION ALL
    SELECT t, domain, map(lag_ms, toUInt64(1)) AS lags
    FROM
    (
        {_with()}
        SELECT {_bucket("window_start")} AS t, domain,
               dateDiff('millisecond', window_end, min(loaded_at)) AS lag_ms
        FROM window_aggregates
        WHERE {where}
            AND window_start >= greatest(_lo, {_DIRTY_FIRST}) AND window_start < least(_hi, {_DIRTY_END})
            AND has(_hours.3, {_RAW_HOUR})
        GROUP BY t, domain, key_kind, key_id, metric, window_start, window_end
    )"""


def lag_quantile(histogram: str, level: float = 0.95) -> str:
    """Seconds at ``level`` of a merged lag histogram (a Map ms -> windows), NaN when empty.

    Linear interpolation between the two closest ranks, as ClickHouse's
    ``quantile`` does on fewer than 8,192 values (beyond that it samples):
    the ranks come from the cumulative counts of the sorted lags.
    """
    keys, cum = f"mapKeys({histogram})", f"arrayCumSum(mapValues({histogram}))"
    n = f"arraySum(mapValues({histogram}))"
    p = f"({level} * ({n} - 1))"
    low = f"{keys}[arrayFirstIndex(c -> c > floor({p}), {cum})]"
    high = f"{keys}[arrayFirstIndex(c -> c > ceil({p}), {cum})]"
    return f"if({n} = 0, nan, ({low} + ({high} - {low}) * ({p} - floor({p}))) / 1000)"


#: SQL true when both $sensor and $zone are "All": a panel may then read the rows over all keys.
EVERY_SENSOR = "$__conditionalAll(0 = 1, $sensor) AND $__conditionalAll(0 = 1, $zone)"


def selected_windows(domain: str, metric: str) -> str:
    """:func:`windows` of one metric of ``domain``'s selected sensors.

    With every sensor selected the sealed part reads the rows over all keys
    (key_id '', a few per bucket) instead of one row per sensor: the same
    sums, minimums and maximums. Columns as :func:`windows` (key_id '' or not).
    """
    metric_rows = f"domain = '{domain}' AND key_kind = 'sensor' AND metric = '{metric}'"
    some = f"key_id != '' AND {sensor_where(domain, metric)}"
    sealed = f"{metric_rows}\n        AND if({EVERY_SENSOR}, key_id = '', {some})"
    return resolution(KEYS, sensor_where(domain, metric), sealed=sealed)


def zone_sensors(domain: str) -> str:
    """Sensor ids of ``domain`` in the selected zones (``$zone``).

    Windows are keyed by sensor and carry no zone, so the zone comes from the
    sensors' own records: their health verdicts (every sensor, kept forever)
    and, for sensors that never had one, their recent raw readings.
    """
    zones = f"zone_id IN {selected('zone')}"
    return (
        f"SELECT sensor_id FROM sensor_health_latest WHERE domain = '{domain}' AND {zones} "
        f"UNION ALL SELECT sensor_id FROM readings WHERE domain = '{domain}' AND {zones}"
    )


def anomaly_keys(domain: str) -> str:
    """``$sensor`` and ``$zone`` for verdicts, whose key is a sensor or a zone-level id."""
    zone = f"(key_id IN {selected('zone')} OR key_id IN ({zone_sensors(domain)}))"
    return f"{in_filter('key_id', 'sensor')}\n    AND $__conditionalAll({zone}, $zone)"


def sensor_where(domain: str, metric: str, column: str = "key_id") -> str:
    """Rows of one metric of ``domain``'s sensors, narrowed by ``$zone`` and ``$sensor`` unless "All"."""
    return (
        f"domain = '{domain}' AND key_kind = 'sensor' AND metric = '{metric}'"
        f"\n        AND {in_filter(column, 'sensor')}"
        f"\n        AND $__conditionalAll({column} IN ({zone_sensors(domain)}), $zone)"
    )


def per_sensor(domain: str, metric: str) -> str:
    """Sample-weighted mean per sensor and bucket: one series per sensor.

    Ordered by time only: Grafana turns the long result into one series per
    sensor and needs the times ascending, not the sensors ordered (it sorts
    its legend itself); sorting tens of thousands of points by sensor as well
    measured 10-20 % of these panels' time over all sensors.
    """
    return f"""
SELECT t AS time, key_id AS sensor, sum(total) / nullIf(sum(samples), 0) AS value
FROM ({windows(sensor_where(domain, metric))}
)
GROUP BY time, sensor
ORDER BY time"""


def per_sensor_rate(domain: str, metric: str, per_s: int = 3600) -> str:
    """Counted quantity per sensor as a rate: sum over the bucket / bucket length x ``per_s``.

    For counts such as vehicles per report, where the mean is meaningless and
    the total per hour is what traffic engineers call flow.
    """
    return f"""
SELECT t AS time, key_id AS sensor, sum(total) * {per_s} / max(bucket_s) AS value
FROM ({windows(sensor_where(domain, metric))}
)
GROUP BY time, sensor
ORDER BY time"""


def spread(domain: str, metric: str) -> str:
    """Lowest minimum, sample-weighted mean and highest maximum over the selected sensors.

    Three series whatever the number of sensors, so it stays readable for a
    whole department, and a single bad sensor still shows in min or max.
    """
    return f"""
SELECT t AS time, min(lo) AS min, sum(total) / nullIf(sum(samples), 0) AS mean, max(hi) AS max
FROM ({selected_windows(domain, metric)}
)
GROUP BY time
ORDER BY time"""


def total_over_sensors(domain: str, metric: str) -> str:
    """Sum over sensors of each sensor's mean (e.g. total active power), per bucket."""
    return f"""
SELECT time, sum(value) AS total
FROM
(
    SELECT t AS time, key_id, sum(total) / nullIf(sum(samples), 0) AS value
    FROM ({windows(sensor_where(domain, metric))}
    )
    GROUP BY time, key_id
)
GROUP BY time
ORDER BY time"""


def latest_value(domain: str, metric: str, how: str = "avg") -> str:
    """One number: ``how`` (avg, sum, min) over sensors of their newest window's mean.

    Only the last hour of the range counts: a sensor silent for longer has no
    "now", and the stat stays cheap however long the range is.
    """
    return f"""
SELECT {how}(value) AS value
FROM
(
    SELECT key_id, argMax(mean, window_start) AS value
    FROM window_aggregates_latest
    WHERE {sensor_where(domain, metric)}
        AND $__timeFilter(window_start)
        AND window_start >= $__toTime - INTERVAL 1 HOUR
        AND {TUMBLING}
    GROUP BY key_id
)"""


def alerts_annotation(domains_sql: str) -> str:
    """Incidents overlapping the range, drawn as regions from first to last seen.

    Overlap (last_seen after the start, first_seen before the end) rather than
    ``$__timeFilter(first_seen)``: an incident that began before the range and is
    still going on must show.
    """
    return f"""
SELECT
    first_seen AS time,
    last_seen AS timeEnd,
    concat(upper(severity), ' ', kind, ' (', state, '): ', explanation,
           ' [', arrayStringConcat(affected_keys, ' '), ']') AS text,
    [domain, kind, severity, state] AS tags
FROM alerts_latest
WHERE last_seen >= $__fromTime AND first_seen <= $__toTime
    AND {domains_sql}
ORDER BY first_seen
LIMIT 500"""


def anomalies_annotation(domain: str) -> str:
    """Warning and critical detector verdicts as point annotations (off by default: they can be many)."""
    return f"""
SELECT
    event_time AS time,
    concat(upper(severity), ' ', key_id, ' ', metric, ' (', detector, '): ', explanation) AS text,
    [domain, metric, detector, severity] AS tags
FROM anomalies FINAL
WHERE domain = '{domain}' AND severity IN ('warning', 'critical')
    AND $__timeFilter(event_time)
    AND {anomaly_keys(domain)}
ORDER BY event_time
LIMIT 500"""


def unhealthy_sensors(domain: str) -> str:
    """Sensors of one department whose current health is not 'ok', longest-standing first."""
    return f"""
SELECT sensor_id, site_id, zone_id, status, since, details
FROM sensor_health_latest
WHERE domain = '{domain}' AND status != 'ok'
    AND {in_filter("zone_id", "zone")}
    AND {in_filter("sensor_id", "sensor")}
ORDER BY since
LIMIT 200"""


def zone_variable(domain: str) -> str:
    """Zones that have sensors of ``domain`` (health records, or readings in range)."""
    return f"""
SELECT DISTINCT zone_id FROM
(
    SELECT zone_id FROM sensor_health_latest WHERE domain = '{domain}'
    UNION ALL
    SELECT zone_id FROM readings WHERE domain = '{domain}' AND $__timeFilter(event_time)
)
ORDER BY zone_id"""


def sensor_variable(domain: str, metrics: tuple[str, ...]) -> str:
    """Sensors of ``domain`` with windows of the dashboard's metrics in range, within the chosen zones.

    Reads the bare table: DISTINCT does not care about unmerged duplicates, and
    skipping FINAL keeps the picker fast.
    """
    names = ", ".join(f"'{m}'" for m in metrics)
    return f"""
SELECT DISTINCT key_id
FROM window_aggregates
WHERE domain = '{domain}' AND key_kind = 'sensor' AND metric IN ({names})
    AND $__timeFilter(window_start)
    AND $__conditionalAll(key_id IN ({zone_sensors(domain)}), $zone)
ORDER BY key_id"""
