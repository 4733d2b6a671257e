"""The SQL the dashboards run, written once against the store's tables and views.

Why a module of its own: every panel must read windows through the same two
rules, and they are easy to get subtly wrong by hand —

* **Latest revision only.** ``window_aggregates`` is a ReplacingMergeTree
  (revision): a corrected window and an unmerged re-delivery are extra rows
  until a merge. Panels read ``window_aggregates_latest`` (migration 0001:
  ``FINAL``), the hourly/daily rollup views (0004: the highest revision of
  every window folded in), and for the other result tables their ``*_latest``
  views or ``FINAL`` — never the bare table where a duplicate would count.
* **Resolution follows the time range.** A range up to :data:`RAW_MAX_S` reads
  the 1-minute windows, up to :data:`HOURLY_MAX_S` the hourly rollup, beyond
  that the daily one. The three branches are a ``UNION ALL``; an inactive
  branch's time bounds fold to the epoch, which holds no data. Not a bare
  ``WHERE 0``, nor bounds that contradict each other: ClickHouse folds those to
  a constant-false filter that it does not push through the rollup views'
  GROUP BY, and would aggregate a whole rollup table only to discard it,
  whereas a range on the sorting key is pushed down and selects no granules.

* **Tumbling windows only.** The jobs write, per sensor, 1-minute tumbling
  windows *and* 5-minute hopping windows sliding by a minute (jobs/common.py),
  both with key_kind 'sensor'. Hopping windows overlap, so summing them would
  count every reading five times: panels keep windows :data:`TUMBLE_S` long.

Each branch yields the same columns (``t`` the panel's time bucket, the key
columns, ``samples``, ``total`` = samples x mean, ``lo``, ``hi``, ``late``,
``duplicates`` and ``bucket_s``, the seconds a bucket stands for), so the
outer query aggregates them the same way whatever the resolution.
"""

from __future__ import annotations

from dashboards.factories import in_filter

#: Length of the tumbling windows the jobs emit (jobs.common.Windows.tumble_s and zone_s; a test pins it).
TUMBLE_S = 60
#: The filter that keeps tumbling windows and drops the overlapping hopping ones.
TUMBLING = f"dateDiff('second', window_start, window_end) = {TUMBLE_S}"

#: Longest range (seconds) read from 1-minute windows; 2 days ~ 2,900 windows per key.
RAW_MAX_S = 2 * 86400
#: Longest range read from the hourly rollup; beyond it the daily rollup.
HOURLY_MAX_S = 62 * 86400

_RANGE_S = "dateDiff('second', $__fromTime, $__toTime)"


def windows(where: str) -> str:
    """Window statistics at the resolution the range calls for; ``where`` filters key columns only.

    ``where`` may use domain, key_kind, key_id and metric: the columns the raw
    table and both rollups share.
    """
    raw = f"{_RANGE_S} <= {RAW_MAX_S}"
    hourly = f"{_RANGE_S} > {RAW_MAX_S} AND {_RANGE_S} <= {HOURLY_MAX_S}"
    daily = f"{_RANGE_S} > {HOURLY_MAX_S}"
    return f"""
    SELECT
        $__timeInterval(window_start) AS t, domain, key_kind, key_id, metric,
        samples, samples * mean AS total, min AS lo, max AS hi, late, duplicates,
        greatest($__interval_s, dateDiff('second', window_start, window_end)) AS bucket_s
    FROM window_aggregates_latest
    WHERE {where}
        AND $__timeFilter(window_start)
        AND window_start <= if({raw}, $__toTime, toDateTime(0))
        AND {TUMBLING}
    UNION ALL
    SELECT
        toStartOfInterval(hour, INTERVAL greatest($__interval_s, 3600) second) AS t,
        domain, key_kind, key_id, metric,
        samples, if(samples = 0, 0, samples * mean) AS total, min AS lo, max AS hi, late, duplicates,
        greatest($__interval_s, 3600) AS bucket_s
    FROM window_aggregates_hourly
    WHERE {where}
        AND hour >= if({hourly}, toStartOfHour($__fromTime), toDateTime(0))
        AND hour <= if({hourly}, $__toTime, toDateTime(0))
    UNION ALL
    SELECT
        toStartOfInterval(toDateTime(day, 'UTC'), INTERVAL greatest($__interval_s, 86400) second) AS t,
        domain, key_kind, key_id, metric,
        samples, if(samples = 0, 0, samples * mean) AS total, min AS lo, max AS hi, late, duplicates,
        greatest($__interval_s, 86400) AS bucket_s
    FROM window_aggregates_daily
    WHERE {where}
        AND day >= if({daily}, toDate($__fromTime), toDate(0))
        AND day <= if({daily}, toDate($__toTime), toDate(0))"""


def zone_sensors(domain: str) -> str:
    """Sensor ids of ``domain`` in the selected zones (``$zone``).

    Windows are keyed by sensor and carry no zone, so the zone comes from the
    sensors' own records: their health verdicts (every sensor, kept forever)
    and, for sensors that never had one, their recent raw readings.
    """
    zones = "zone_id IN (${zone:singlequote})"
    return (
        f"SELECT sensor_id FROM sensor_health_latest WHERE domain = '{domain}' AND {zones} "
        f"UNION ALL SELECT sensor_id FROM readings WHERE domain = '{domain}' AND {zones}"
    )


def anomaly_keys(domain: str) -> str:
    """``$sensor`` and ``$zone`` for verdicts, whose key is a sensor or a zone-level id."""
    zone = f"(key_id IN (${{zone:singlequote}}) OR key_id IN ({zone_sensors(domain)}))"
    return f"{in_filter('key_id', 'sensor')}\n    AND $__conditionalAll({zone}, $zone)"


def sensor_where(domain: str, metric: str, column: str = "key_id") -> str:
    """Rows of one metric of ``domain``'s sensors, narrowed by ``$zone`` and ``$sensor`` unless "All"."""
    return (
        f"domain = '{domain}' AND key_kind = 'sensor' AND metric = '{metric}'"
        f"\n        AND {in_filter(column, 'sensor')}"
        f"\n        AND $__conditionalAll({column} IN ({zone_sensors(domain)}), $zone)"
    )


def per_sensor(domain: str, metric: str) -> str:
    """Sample-weighted mean per sensor and bucket: one series per sensor."""
    return f"""
SELECT t AS time, key_id AS sensor, sum(total) / nullIf(sum(samples), 0) AS value
FROM ({windows(sensor_where(domain, metric))}
)
GROUP BY time, sensor
ORDER BY time, sensor"""


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
ORDER BY time, sensor"""


def spread(domain: str, metric: str) -> str:
    """Lowest minimum, sample-weighted mean and highest maximum over the selected sensors.

    Three series whatever the number of sensors, so it stays readable for a
    whole department, and a single bad sensor still shows in min or max.
    """
    return f"""
SELECT t AS time, min(lo) AS min, sum(total) / nullIf(sum(samples), 0) AS mean, max(hi) AS max
FROM ({windows(sensor_where(domain, metric))}
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


def anomalies_table(domain: str) -> str:
    """The most recent verdicts in range for one department, newest first."""
    return f"""
SELECT
    event_time AS time, severity, key_kind, key_id, metric, detector,
    round(score, 3) AS score, observed, expected, explanation
FROM anomalies FINAL
WHERE domain = '{domain}'
    AND $__timeFilter(event_time)
    AND {anomaly_keys(domain)}
ORDER BY event_time DESC
LIMIT 200"""


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
