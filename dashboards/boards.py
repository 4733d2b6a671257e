"""The citystream dashboards: one per department, a city overview and pipeline health.

Why these panels: each department dashboard answers "is my network inside its
operating band, where not, and since when" (spread over all sensors first,
then per sensor, then the incidents); the overview answers "which department
needs attention" for the control room; pipeline health answers "can the
numbers on the other dashboards be trusted right now" (late and duplicate
data, dead letters, load lag).

Metric names are the reading fields with their unit (WindowAggregate.metric,
as jobs/windows.py writes them for the grid). Uids are fixed: links, bookmarks
and provisioning depend on them.
"""

from __future__ import annotations

from typing import Any

from citystream.dashboards import queries as q
from citystream.dashboards.factories import (
    Band,
    Section,
    dashboard,
    domain_variable,
    in_filter,
    query_variable,
    sql_annotation,
    stat_panel,
    table_panel,
    timeseries_panel,
)

#: uid -> title; tests pin this so a uid never changes by accident.
UIDS: dict[str, str] = {
    "citystream-overview": "citystream · City overview",
    "citystream-grid": "citystream · Grid",
    "citystream-traffic": "citystream · Traffic",
    "citystream-water": "citystream · Water",
    "citystream-pipeline": "citystream · Pipeline health",
}

GRID_METRICS = ("voltage_v", "frequency_hz", "active_power_kw")
TRAFFIC_METRICS = ("mean_speed_kmh", "vehicle_count", "occupancy_pct")
WATER_METRICS = ("pressure_bar", "flow_lps", "tank_level_m")

# Bands: the colour a value takes from each step upwards.
#: EN 50160: 230 V +-10 %.
VOLTAGE_BAND = Band("red", ((207.0, "green"), (253.0, "red")))
#: 50 Hz: +-0.2 Hz normal operation, +-0.5 Hz alert, beyond that emergency.
FREQUENCY_BAND = Band("red", ((49.5, "orange"), (49.8, "green"), (50.2, "orange"), (50.5, "red")))
#: Loop occupancy: above ~20 % traffic is dense, above ~35 % it is stop-and-go.
OCCUPANCY_BAND = Band("green", ((20.0, "orange"), (35.0, "red")))
#: Service pressure: below 1.5 bar customers complain, 2 bar is the usual minimum.
PRESSURE_BAND = Band("red", ((1.5, "orange"), (2.0, "green")))
#: Tank level: pumps start below 1.5 m and stop above 4.8 m (simulator and typical hysteresis).
TANK_BAND = Band("red", ((1.0, "orange"), (1.5, "green"), (4.8, "orange")))


def all_dashboards() -> list[dict[str, Any]]:
    """Every dashboard model, in :data:`UIDS` order."""
    return [overview(), grid(), traffic(), water(), pipeline()]


# --------------------------------------------------------------------------- shared pieces


def _department_variables(domain: str, metrics: tuple[str, ...]) -> list[Any]:
    return [
        query_variable("zone", "Zone", q.zone_variable(domain)),
        query_variable("sensor", "Sensor", q.sensor_variable(domain, metrics)),
    ]


def _department_annotations(domain: str) -> list[Any]:
    return [
        sql_annotation(
            "Alerts",
            q.alerts_annotation(f"domain IN ('{domain}', 'cross')"),
            color="red",
        ),
        sql_annotation(
            "Anomalies (warning, critical)", q.anomalies_annotation(domain), color="orange", enable=False
        ),
    ]


def _incidents(domain: str) -> Section:
    return Section(
        "Incidents and sensor health",
        [
            table_panel(
                "Anomalies",
                q.anomalies_table(domain),
                description="Detector verdicts in the time range, newest first (at most 200).",
                width=14,
                height=9,
            ),
            table_panel(
                "Sensors not ok",
                q.unhealthy_sensors(domain),
                description="Current health of every sensor whose status is not 'ok' "
                "(stuck, gap, out_of_range ...), longest-standing first.",
                width=10,
                height=9,
            ),
        ],
    )


def _per_sensor(title: str, domain: str, metric: str, unit: str, what: str, band: Band | None = None) -> Any:
    return timeseries_panel(
        title,
        q.per_sensor(domain, metric),
        unit=unit,
        description=f"{what}: sample-weighted mean per sensor and interval "
        "(latest revision of every window).",
        band=band,
    ).display_name("${__field.labels.sensor}")


def _spread(title: str, domain: str, metric: str, unit: str, what: str, band: Band | None = None) -> Any:
    return timeseries_panel(
        title,
        q.spread(domain, metric),
        unit=unit,
        description=f"{what} over the selected sensors: lowest minimum, sample-weighted mean, "
        "highest maximum.",
        band=band,
    )


# --------------------------------------------------------------------------- departments


def grid() -> dict[str, Any]:
    """Voltage against 230 V +-10 %, frequency against its nominal band, active power."""
    d = "grid"
    return dashboard(
        uid="citystream-grid",
        title=UIDS["citystream-grid"],
        description="Electric grid: voltage, frequency and active power per meter.",
        tags=["citystream", d],
        variables=_department_variables(d, GRID_METRICS),
        annotations=_department_annotations(d),
        sections=[
            Section(
                "Now",
                [
                    stat_panel(
                        "Mean voltage",
                        q.latest_value(d, "voltage_v"),
                        unit="volt",
                        description="Average over the selected meters of their latest window mean.",
                        band=VOLTAGE_BAND,
                    ),
                    stat_panel(
                        "System frequency",
                        q.latest_value(d, "frequency_hz"),
                        unit="hertz",
                        description="Average over the selected meters of their latest window mean; "
                        "green within 50 +- 0.2 Hz.",
                        band=FREQUENCY_BAND,
                    ).decimals(3),
                    stat_panel(
                        "Active power",
                        q.latest_value(d, "active_power_kw", how="sum"),
                        unit="kwatt",
                        description="Sum over the selected meters of their latest window mean.",
                    ),
                    stat_panel(
                        "Meters not ok",
                        _not_ok_count(d),
                        unit="none",
                        description="Selected meters whose current health status is not 'ok'.",
                        band=Band("green", ((1.0, "orange"),)),
                    ),
                ],
            ),
            Section(
                "Voltage",
                [
                    _spread("Voltage: min / mean / max", d, "voltage_v", "volt", "RMS voltage", VOLTAGE_BAND),
                    _per_sensor("Voltage per meter", d, "voltage_v", "volt", "RMS voltage", VOLTAGE_BAND),
                ],
            ),
            Section(
                "Frequency",
                [
                    timeseries_panel(
                        "Frequency against the nominal band",
                        q.spread(d, "frequency_hz"),
                        unit="hertz",
                        description="System frequency over the selected meters (min / mean / max); "
                        "shaded: 50 +- 0.2 Hz normal (green), +- 0.5 Hz alert (orange).",
                        band=FREQUENCY_BAND,
                        soft_min=49.7,
                        soft_max=50.3,
                        width=24,
                    ).decimals(3),
                ],
            ),
            Section(
                "Active power",
                [
                    timeseries_panel(
                        "Total active power",
                        q.total_over_sensors(d, "active_power_kw"),
                        unit="kwatt",
                        description="Sum over the selected meters of each meter's mean active power.",
                    ),
                    _per_sensor("Active power per meter", d, "active_power_kw", "kwatt", "Active power"),
                ],
            ),
            _incidents(d),
        ],
    )


def traffic() -> dict[str, Any]:
    """Speed, flow and occupancy of the loop detectors."""
    d = "traffic"
    return dashboard(
        uid="citystream-traffic",
        title=UIDS["citystream-traffic"],
        description="Road traffic: speed, flow and occupancy per loop detector (one lane each).",
        tags=["citystream", d],
        variables=_department_variables(d, TRAFFIC_METRICS),
        annotations=_department_annotations(d),
        sections=[
            Section(
                "Now",
                [
                    stat_panel(
                        "Mean speed",
                        q.latest_value(d, "mean_speed_kmh"),
                        unit="velocitykmh",
                        description="Average over the selected detectors of their latest window mean speed.",
                    ),
                    stat_panel(
                        "Mean occupancy",
                        q.latest_value(d, "occupancy_pct"),
                        unit="percent",
                        description="Average over the selected detectors of their latest window occupancy.",
                        band=OCCUPANCY_BAND,
                    ),
                    stat_panel(
                        "Vehicles in range",
                        _vehicles_in_range(),
                        unit="short",
                        description="Vehicles counted by the selected detectors in the time range.",
                    ),
                    stat_panel(
                        "Detectors not ok",
                        _not_ok_count(d),
                        unit="none",
                        description="Selected detectors whose current health status is not 'ok'.",
                        band=Band("green", ((1.0, "orange"),)),
                    ),
                ],
            ),
            Section(
                "Speed",
                [
                    _spread("Speed: min / mean / max", d, "mean_speed_kmh", "velocitykmh", "Spot speed"),
                    _per_sensor("Speed per detector", d, "mean_speed_kmh", "velocitykmh", "Mean spot speed"),
                ],
            ),
            Section(
                "Flow and occupancy",
                [
                    timeseries_panel(
                        "Flow per detector",
                        q.per_sensor_rate(d, "vehicle_count"),
                        unit="suffix:veh/h",
                        description="Vehicles counted per interval, as vehicles per hour, per detector.",
                    ).display_name("${__field.labels.sensor}"),
                    _per_sensor(
                        "Occupancy per detector",
                        d,
                        "occupancy_pct",
                        "percent",
                        "Loop occupancy",
                        OCCUPANCY_BAND,
                    ),
                ],
            ),
            _incidents(d),
        ],
    )


def water() -> dict[str, Any]:
    """Pressure, inlet flow and tank levels of the district-metered areas."""
    d = "water"
    return dashboard(
        uid="citystream-water",
        title=UIDS["citystream-water"],
        description="Water network: pressure, flow and tank level per sensor (zones are DMAs).",
        tags=["citystream", d],
        variables=_department_variables(d, WATER_METRICS),
        annotations=_department_annotations(d),
        sections=[
            Section(
                "Now",
                [
                    stat_panel(
                        "Lowest pressure",
                        q.latest_value(d, "pressure_bar", how="min"),
                        unit="pressurebar",
                        description="Lowest latest window mean pressure over the selected sensors.",
                        band=PRESSURE_BAND,
                    ).decimals(2),
                    stat_panel(
                        "Total inlet flow",
                        q.latest_value(d, "flow_lps", how="sum"),
                        unit="suffix:L/s",
                        description="Sum of the latest window mean flow over the selected flow meters.",
                    ),
                    stat_panel(
                        "Lowest tank level",
                        q.latest_value(d, "tank_level_m", how="min"),
                        unit="lengthm",
                        description="Lowest latest window mean tank level over the selected level sensors.",
                        band=TANK_BAND,
                    ).decimals(2),
                    stat_panel(
                        "Sensors not ok",
                        _not_ok_count(d),
                        unit="none",
                        description="Selected sensors whose current health status is not 'ok'.",
                        band=Band("green", ((1.0, "orange"),)),
                    ),
                ],
            ),
            Section(
                "Pressure",
                [
                    _spread(
                        "Pressure: min / mean / max",
                        d,
                        "pressure_bar",
                        "pressurebar",
                        "Gauge pressure",
                        PRESSURE_BAND,
                    ),
                    _per_sensor(
                        "Pressure per sensor",
                        d,
                        "pressure_bar",
                        "pressurebar",
                        "Gauge pressure",
                        PRESSURE_BAND,
                    ),
                ],
            ),
            Section(
                "Flow and storage",
                [
                    _per_sensor("Flow per meter", d, "flow_lps", "suffix:L/s", "Volumetric flow"),
                    _per_sensor(
                        "Tank level", d, "tank_level_m", "lengthm", "Water level above tank floor", TANK_BAND
                    ),
                ],
            ),
            _incidents(d),
        ],
    )


def _not_ok_count(domain: str) -> str:
    return f"""
SELECT count() AS sensors
FROM sensor_health_latest
WHERE domain = '{domain}' AND status != 'ok'
    AND {in_filter("zone_id", "zone")}
    AND {in_filter("sensor_id", "sensor")}"""


def _vehicles_in_range() -> str:
    return f"""
SELECT toUInt64(round(sum(total))) AS vehicles
FROM ({q.selected_windows("traffic", "vehicle_count")}
)"""


# --------------------------------------------------------------------------- overview


def overview() -> dict[str, Any]:
    """Which department needs attention: open incidents, unhealthy sensors, anomaly rates."""
    dom = in_filter("domain", "domain")
    return dashboard(
        uid="citystream-overview",
        title=UIDS["citystream-overview"],
        description="The whole city: alerts as annotations, counts per department.",
        tags=["citystream", "overview"],
        variables=[domain_variable()],
        annotations=[sql_annotation("Alerts", q.alerts_annotation(dom), color="red")],
        sections=[
            Section(
                "Per department now",
                [
                    stat_panel(
                        "Open incidents",
                        _per_domain_counts("alerts_latest", "state != 'resolve'"),
                        unit="none",
                        description="Incidents whose latest lifecycle step is not 'resolve', per department "
                        "('cross' spans departments).",
                        band=Band("green", ((1.0, "orange"), (5.0, "red"))),
                        width=8,
                    ),
                    stat_panel(
                        "Critical open incidents",
                        _per_domain_counts("alerts_latest", "state != 'resolve' AND severity = 'critical'"),
                        unit="none",
                        description="Open incidents of severity 'critical', per department.",
                        band=Band("green", ((1.0, "red"),)),
                        width=8,
                    ),
                    stat_panel(
                        "Sensors not ok",
                        _per_domain_counts("sensor_health_latest", "status != 'ok'", cross=False),
                        unit="none",
                        description="Sensors whose current health status is not 'ok', per department.",
                        band=Band("green", ((1.0, "orange"),)),
                        width=8,
                    ),
                ],
            ),
            Section(
                "Activity",
                [
                    timeseries_panel(
                        "Anomalies per department",
                        f"""
SELECT $__timeInterval(event_time) AS time, domain, count() AS anomalies
FROM anomalies FINAL
WHERE $__timeFilter(event_time) AND {dom}
GROUP BY time, domain
ORDER BY time, domain""",
                        unit="short",
                        description="Detector verdicts per interval and department (all severities).",
                        bars=True,
                    ).display_name("${__field.labels.domain}"),
                    timeseries_panel(
                        "Readings per department",
                        f"""
SELECT t AS time, domain, sum(readings) / max(bucket_s) AS value
FROM ({q.resolution(q.DOMAINS, f"key_kind = 'sensor' AND {dom}")}
)
GROUP BY time, domain
ORDER BY time, domain""",
                        unit="suffix: readings/s",
                        description="Readings per second that made it into windows, per department "
                        "(a reading counts once however many metrics it carries).",
                    ).display_name("${__field.labels.domain}"),
                ],
            ),
            Section(
                "Incidents",
                [
                    table_panel(
                        "Open incidents",
                        f"""
SELECT
    last_seen, first_seen, domain, severity, kind, state, anomaly_count,
    arrayStringConcat(affected_keys, ' ') AS affected, explanation, alert_id
FROM alerts_latest
WHERE state != 'resolve' AND {dom}
ORDER BY multiIf(severity = 'critical', 0, severity = 'warning', 1, 2), last_seen DESC
LIMIT 200""",
                        description="Every incident not yet resolved, critical first, "
                        "most recently active first.",
                        width=24,
                        height=10,
                    ),
                    table_panel(
                        "Incidents in range",
                        f"""
SELECT domain, kind, severity, count() AS incidents, sum(anomaly_count) AS anomalies
FROM alerts_latest
WHERE last_seen >= $__fromTime AND first_seen <= $__toTime AND {dom}
GROUP BY domain, kind, severity
ORDER BY domain, incidents DESC""",
                        description="Incidents active at some point of the time range, by department, kind "
                        "and severity.",
                        width=24,
                        height=8,
                    ),
                ],
            ),
        ],
    )


def _per_domain_counts(table: str, condition: str, *, cross: bool = True) -> str:
    """One row, one column per department: stat panels show one big number per column.

    ``cross``: add a column for incidents that span departments (alerts only).
    """
    domains = ("traffic", "water", "grid", "cross") if cross else ("traffic", "water", "grid")
    columns = ", ".join(f"countIf(domain = '{d}') AS {d}" for d in domains)
    return f"""
SELECT {columns}
FROM {table}
WHERE {condition}"""


# --------------------------------------------------------------------------- pipeline health


def pipeline() -> dict[str, Any]:
    """Late and duplicate data, dead letters, revisions and load lag: can the other dashboards be trusted?"""
    dom = in_filter("domain", "domain")
    sensors = f"key_kind = 'sensor' AND {dom}"
    per_domain = f"({q.resolution(q.DOMAINS, sensors)}\n)"
    lag_per_bucket = f"""
    SELECT t, domain, sumMap(lags) AS histogram
    FROM ({q.load_lag(dom)}
    )
    GROUP BY t, domain"""
    return dashboard(
        uid="citystream-pipeline",
        title=UIDS["citystream-pipeline"],
        description="Pipeline health: late and duplicate readings, dead letters, revisions, load lag.",
        tags=["citystream", "pipeline"],
        variables=[domain_variable()],
        annotations=[sql_annotation("Alerts", q.alerts_annotation(dom), color="red", enable=False)],
        sections=[
            Section(
                "In the time range",
                [
                    stat_panel(
                        "Late readings absorbed",
                        f"SELECT sum(late) AS late FROM {per_domain}",
                        unit="short",
                        description="Readings behind the watermark that still corrected their window "
                        "(within allowed lateness).",
                        width=4,
                    ),
                    stat_panel(
                        "Duplicates dropped",
                        f"SELECT sum(duplicates) AS duplicates FROM {per_domain}",
                        unit="short",
                        description="Duplicate deliveries (same sensor and sequence number) "
                        "the jobs dropped.",
                        width=4,
                    ),
                    stat_panel(
                        "Too late (dropped)",
                        """
SELECT count() AS late_events
FROM late_events FINAL
WHERE $__timeFilter(event_time)""",
                        unit="short",
                        description="Readings that arrived after their window had closed for good "
                        "(late_events; kept 14 days).",
                        band=Band("green", ((1.0, "orange"),)),
                        width=4,
                    ),
                    stat_panel(
                        "Dead letters",
                        """
SELECT count() AS dead_letters
FROM dead_letters FINAL
WHERE $__timeFilter(received_at)""",
                        unit="short",
                        description="Records no job could process (kept byte for byte, 30 days).",
                        band=Band("green", ((1.0, "red"),)),
                        width=4,
                    ),
                    stat_panel(
                        "Windows revised",
                        f"SELECT sum(revised) AS revised FROM ({q.resolution(q.DOMAINS, dom)}\n)",
                        unit="short",
                        description="1-minute windows whose stored value is a correction by late data "
                        "(revision > 0).",
                        width=4,
                    ),
                    stat_panel(
                        "Load lag p95",
                        f"""
SELECT {q.lag_quantile("histogram")} AS p95
FROM (SELECT sumMap(histogram) AS histogram FROM ({lag_per_bucket}\n))""",
                        unit="s",
                        description="95th percentile of the time from a window's end to its first row "
                        "in the store.",
                        band=Band("green", ((120.0, "orange"), (600.0, "red"))),
                        width=4,
                    ),
                ],
            ),
            Section(
                "Late and duplicate data",
                [
                    timeseries_panel(
                        "Late readings absorbed per department",
                        f"""
SELECT t AS time, domain, sum(late) AS late
FROM {per_domain}
GROUP BY time, domain
ORDER BY time, domain""",
                        unit="short",
                        description="Readings per interval that arrived behind the watermark but within "
                        "allowed lateness, by department (counted once per reading, not per metric).",
                        bars=True,
                    ).display_name("${__field.labels.domain}"),
                    timeseries_panel(
                        "Duplicates dropped per department",
                        f"""
SELECT t AS time, domain, sum(duplicates) AS duplicates
FROM {per_domain}
GROUP BY time, domain
ORDER BY time, domain""",
                        unit="short",
                        description="Duplicate deliveries dropped per interval, by department.",
                        bars=True,
                    ).display_name("${__field.labels.domain}"),
                    timeseries_panel(
                        "Too-late readings per topic",
                        """
SELECT $__timeInterval(event_time) AS time, source_topic AS topic, count() AS readings
FROM late_events FINAL
WHERE $__timeFilter(event_time)
GROUP BY time, topic
ORDER BY time, topic""",
                        unit="short",
                        description="Readings dropped as too late, per interval of their event time "
                        "and topic.",
                        bars=True,
                    ).display_name("${__field.labels.topic}"),
                    timeseries_panel(
                        "Lateness of dropped readings",
                        """
SELECT $__timeInterval(event_time) AS time,
       quantile(0.5)(lateness_ms) / 1000 AS p50,
       quantile(0.95)(lateness_ms) / 1000 AS p95,
       max(lateness_ms) / 1000 AS max
FROM late_events FINAL
WHERE $__timeFilter(event_time)
GROUP BY time
ORDER BY time""",
                        unit="s",
                        description="How far behind the watermark dropped readings were "
                        "(watermark - event time).",
                    ),
                ],
            ),
            Section(
                "Dead letters",
                [
                    timeseries_panel(
                        "Dead letters per reason",
                        """
SELECT $__timeInterval(received_at) AS time, reason, count() AS records
FROM dead_letters FINAL
WHERE $__timeFilter(received_at)
GROUP BY time, reason
ORDER BY time, reason""",
                        unit="short",
                        description="Records dead-lettered per interval, by reason "
                        "(undecodable, schema_mismatch, invalid_value, missing_key).",
                        bars=True,
                    ).display_name("${__field.labels.reason}"),
                    table_panel(
                        "Latest dead letters",
                        """
SELECT received_at, source_topic, source_partition, source_offset, reason, error,
       length(ifNull(original_value, '')) AS value_bytes
FROM dead_letters FINAL
WHERE $__timeFilter(received_at)
ORDER BY received_at DESC
LIMIT 100""",
                        description="The newest dead-lettered records with where they came from and why.",
                    ),
                ],
            ),
            Section(
                "Load lag",
                [
                    timeseries_panel(
                        "Load lag per department",
                        f"""
SELECT t AS time, domain, {q.lag_quantile("histogram")} AS p95
FROM ({lag_per_bucket}
)
ORDER BY time, domain""",
                        unit="s",
                        description="95th percentile per interval of window end -> first row in the store "
                        "(Flink windowing + Kafka + loader), by department.",
                        band=Band("green", ((120.0, "orange"), (600.0, "red"))),
                    ).display_name("${__field.labels.domain}"),
                    timeseries_panel(
                        "Reported lag",
                        """
SELECT $__timeInterval(ts) AS time, concat(component, ' ', instance, ' ', metric) AS series,
       max(value) AS value
FROM pipeline_metrics
WHERE $__timeFilter(ts) AND positionCaseInsensitive(metric, 'lag') > 0
GROUP BY time, series
ORDER BY time, series""",
                        unit="short",
                        description="Lag gauges the components report about themselves (pipeline_metrics, "
                        "any metric whose name contains 'lag', e.g. consumer lag in records).",
                    ).display_name("${__field.labels.series}"),
                ],
            ),
        ],
    )
