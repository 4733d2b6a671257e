"""The city overview: which department needs attention, for the control room.

Open incidents, unhealthy sensors and anomaly rates side by side per department,
alerts as annotations; a department dashboard then says where and since when.
"""

from __future__ import annotations

from typing import Any

from citystream.catalog import DOMAIN_NAMES
from citystream.dashboards import queries as q
from citystream.dashboards import registry_sql
from citystream.dashboards.factories import (
    Band,
    Section,
    dashboard,
    domain_variable,
    geomap_panel,
    in_filter,
    sql_annotation,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "citystream-overview"
TITLE = "citystream · City overview"


def build() -> dict[str, Any]:
    """Which department needs attention: open incidents, unhealthy sensors, anomaly rates."""
    dom = in_filter("domain", "domain")
    return dashboard(
        uid=UID,
        title=TITLE,
        description="The whole city: alerts as annotations, counts per department.",
        tags=["citystream", "overview"],
        variables=[domain_variable()],
        annotations=[sql_annotation("Alerts", q.alerts_annotation(dom), color="red")],
        sections=[
            Section("Per department now", [_open_incidents(), _critical_incidents(), _sensors_not_ok()]),
            Section("The city now", [_sensor_map()]),
            Section("Activity", [_anomalies_per_department(dom), _readings_per_department(dom)]),
            Section("Incidents", [_open_incidents_table(dom), _incidents_in_range(dom)]),
        ],
    )


def _open_incidents() -> Any:
    return stat_panel(
        "Open incidents",
        per_domain_counts("alerts_latest", "state != 'resolve'"),
        unit="none",
        description="Incidents whose latest lifecycle step is not 'resolve', per department "
        "('cross' spans departments).",
        band=Band("green", ((1.0, "orange"), (5.0, "red"))),
        width=8,
    )


def _critical_incidents() -> Any:
    return stat_panel(
        "Critical open incidents",
        per_domain_counts("alerts_latest", "state != 'resolve' AND severity = 'critical'"),
        unit="none",
        description="Open incidents of severity 'critical', per department.",
        band=Band("green", ((1.0, "red"),)),
        width=8,
    )


def _sensors_not_ok() -> Any:
    return stat_panel(
        "Sensors not ok",
        per_domain_counts("sensor_health_latest", "status != 'ok'", cross=False),
        unit="none",
        description="Sensors whose current health status is not 'ok', per department.",
        band=Band("green", ((1.0, "orange"),)),
        width=8,
    )


def _anomalies_per_department(dom: str) -> Any:
    return timeseries_panel(
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
    ).display_name("${__field.labels.domain}")


def _readings_per_department(dom: str) -> Any:
    return timeseries_panel(
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
    ).display_name("${__field.labels.domain}")


def _open_incidents_table(dom: str) -> Any:
    return table_panel(
        "Open incidents",
        registry_sql.alerts_table(
            f"state != 'resolve' AND {dom}",
            "multiIf(severity = 'critical', 0, severity = 'warning', 1, 2), last_seen DESC",
        ),
        description="Every incident not yet resolved, critical first, most recently active first, with the "
        "site and zone names of the keys it affects (from the sensor registry).",
        width=24,
        height=10,
    )


def _sensor_map() -> Any:
    return geomap_panel(
        "Sensors on the map",
        registry_sql.sensor_states(in_filter("s.domain", "domain")),
        description="Every registered sensor at its coordinates, coloured by its state at the end of the "
        "time range, worst first: "
        + "; ".join(f"{state} ({colour}): {why}" for state, colour, why in registry_sql.STATES)
        + ". A point links to its department's dashboard for that sensor.",
        colour_field="state",
        colours=[(state, colour) for state, colour, _ in registry_sql.STATES],
        link=(
            "Open ${__data.fields.sensor_id} on its department's dashboard",
            "/d/citystream-${__data.fields.domain}?var-sensor=${__data.fields.sensor_id}&${__url_time_range}",
        ),
    )


def _incidents_in_range(dom: str) -> Any:
    return table_panel(
        "Incidents in range",
        f"""
SELECT domain, kind, severity, count() AS incidents, sum(anomaly_count) AS anomalies
FROM alerts_latest
WHERE last_seen >= $__fromTime AND first_seen <= $__toTime AND {dom}
GROUP BY domain, kind, severity
ORDER BY domain, incidents DESC""",
        description="Incidents active at some point of the time range, by department, kind and severity.",
        width=24,
        height=8,
    )


def per_domain_counts(table: str, condition: str, *, cross: bool = True) -> str:
    """One row, one column per department: stat panels show one big number per column.

    ``cross``: add a column for incidents that span departments (alerts only).
    """
    domains = (*DOMAIN_NAMES, "cross") if cross else DOMAIN_NAMES
    columns = ", ".join(f"countIf(domain = '{d}') AS {d}" for d in domains)
    return f"""
SELECT {columns}
FROM {table}
WHERE {condition}"""
