"""The SQL that puts the sensor registry beside results: names of places, each sensor's state now.

Why joins and not ``dictGet``: the store's read-only user (Grafana) may not
call dictionary functions (citystream/chserver/policy.py refuses the whole
family), so the names come from ``sensors_current`` (migration 0007: the
registry's current entries, ``sensors FINAL`` without deletions). The names
are read once per query as two maps (a scalar subquery over a few thousand
entries), which keeps every alert and anomaly table a plain scan of its own
table.

"Now" is the end of the dashboard's time range (``$__toTime``), so a range in
the past shows the city as it was then, and the tests can use fixed epochs.
"""

from __future__ import annotations

from citystream.dashboards.queries import anomaly_keys

#: The registry's current entries (deleted ones excluded).
SENSORS = "sensors_current"

#: Minutes without a window after which a sensor counts as silent, and an anomaly as recent.
SILENT_MIN = 10
RECENT_ANOMALY_MIN = 15

#: Sensor states, worst first, with their map colours. A sensor is in the first state that holds.
STATES: tuple[tuple[str, str, str], ...] = (
    ("alert", "red", "an open incident names the sensor, its site or its zone"),
    ("sensor fault", "purple", "its health is neither 'ok' nor 'silent' (stuck, gap, out_of_range, drift)"),
    ("anomaly", "orange", f"a warning or critical verdict on it in the last {RECENT_ANOMALY_MIN} minutes"),
    ("silent", "text", f"health 'silent', or no tumbling window ended in the last {SILENT_MIN} minutes"),
    ("ok", "green", "none of the above"),
)

#: ``_places``: (site name by "kind:id", zone name by "kind:id") for sensor, site and zone keys.
PLACES = f"""(
    SELECT (mapFromArrays(groupArray(k), groupArray(site)), mapFromArrays(groupArray(k), groupArray(zone)))
    FROM
    (
        SELECT concat('sensor:', sensor_id) AS k, site_name AS site, zone_name AS zone FROM {SENSORS}
        UNION ALL
        SELECT concat('site:', site_id), any(site_name), any(zone_name) FROM {SENSORS} GROUP BY site_id
        UNION ALL
        SELECT concat('zone:', zone_id), '', any(zone_name) FROM {SENSORS} GROUP BY zone_id
    )
) AS _places"""


def site_of(kind: str, key: str) -> str:
    """The site name of a result's key (empty when the registry does not know it); needs :data:`PLACES`."""
    return f"_places.1[concat({kind}, ':', {key})]"


def zone_of(kind: str, key: str) -> str:
    """The zone name of a result's key (empty when the registry does not know it); needs :data:`PLACES`."""
    return f"_places.2[concat({kind}, ':', {key})]"


def names_of_keys(kind: str, keys: str, which: int) -> str:
    """Distinct site (``which`` 1) or zone (2) names of an array of keys, comma-separated."""
    return (
        f"arrayStringConcat(arrayDistinct(arrayFilter(x -> x != '',"
        f" arrayMap(k -> _places.{which}[concat({kind}, ':', k)], {keys}))), ', ')"
    )


def sensor_states(where: str) -> str:
    """Every registered sensor matching ``where`` (on the registry's columns) with its state now.

    Columns: sensor_id, domain, kind, status, site, zone, latitude, longitude,
    state (:data:`STATES`), health, health_since, last_reading (end of its
    newest tumbling window ever, migration 0007's window_aggregates_last_seen;
    NULL if none), channels
    (``name unit [min, max]``), installed_at, retired_at, owner, tags.
    """
    faults = "h.status NOT IN ('', 'ok', 'silent')"
    silent = f"h.status = 'silent' OR w.last IS NULL OR w.last < _now - INTERVAL {SILENT_MIN} MINUTE"
    return f"""
WITH $__toTime AS _now,
    (SELECT groupUniqArrayArray(affected_keys) FROM alerts_latest
     WHERE state != 'resolve' AND first_seen <= _now) AS _alerted,
    (SELECT groupUniqArray(key_id) FROM anomalies FINAL
     WHERE key_kind = 'sensor' AND severity IN ('warning', 'critical')
         AND event_time > _now - INTERVAL {RECENT_ANOMALY_MIN} MINUTE AND event_time <= _now) AS _anomalous
SELECT
    s.sensor_id AS sensor_id, s.domain AS domain, s.kind AS kind, s.status AS status,
    s.site_name AS site, s.zone_name AS zone, s.lat AS latitude, s.lon AS longitude,
    multiIf(
        hasAny(_alerted, [s.sensor_id, s.site_id, s.zone_id]), 'alert',
        {faults}, 'sensor fault',
        has(_anomalous, s.sensor_id), 'anomaly',
        {silent}, 'silent',
        'ok') AS state,
    if(h.status = '', 'unknown', h.status) AS health, if(h.status = '', NULL, h.since) AS health_since,
    w.last AS last_reading,
    arrayStringConcat(arrayMap(c -> concat(c.name, ' ', c.unit, ' [', ifNull(toString(c.min), ''), ', ',
        ifNull(toString(c.max), ''), ']'), s.channels), '; ') AS channels,
    s.installed_at AS installed_at, s.retired_at AS retired_at, s.owner AS owner,
    arrayStringConcat(s.tags, ' ') AS tags
FROM {SENSORS} AS s
LEFT JOIN sensor_health_latest AS h ON h.sensor_id = s.sensor_id
LEFT JOIN
(
    SELECT sensor_id, toNullable(max(last_window_end)) AS last
    FROM window_aggregates_last_seen
    GROUP BY sensor_id
) AS w ON w.sensor_id = s.sensor_id
WHERE {where}
ORDER BY s.domain, s.sensor_id"""


def anomalies_table(domain: str) -> str:
    """The most recent verdicts in range for one department, newest first, with the key's site and zone."""
    return f"""
WITH {PLACES}
SELECT
    event_time AS time, severity, key_kind, key_id,
    {site_of("key_kind", "key_id")} AS site, {zone_of("key_kind", "key_id")} AS zone,
    metric, detector, round(score, 3) AS score, observed, expected, explanation
FROM anomalies FINAL
WHERE domain = '{domain}'
    AND $__timeFilter(event_time)
    AND {anomaly_keys(domain)}
ORDER BY event_time DESC
LIMIT 200"""


def alerts_table(where: str, order: str) -> str:
    """Incidents (current state) matching ``where`` with the site and zone names of their keys.

    Columns: last_seen, first_seen, domain, severity, kind, state,
    anomaly_count, sites, zones, affected (the keys), explanation, alert_id.
    """
    return f"""
WITH {PLACES}
SELECT
    last_seen, first_seen, domain, severity, kind, state, anomaly_count,
    {names_of_keys("key_kind", "affected_keys", 1)} AS sites,
    {names_of_keys("key_kind", "affected_keys", 2)} AS zones,
    arrayStringConcat(affected_keys, ' ') AS affected, explanation, alert_id
FROM alerts_latest
WHERE {where}
ORDER BY {order}
LIMIT 200"""
