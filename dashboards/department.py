"""What every department dashboard (grid, traffic, water) is built from.

Why one frame for three dashboards: an operator who knows one department's
dashboard should find their way on another's without reading it. Each answers
"is my network inside its operating band, where not, and since when" in the
same order: a row of "now" numbers, spread over all sensors first, then per
sensor, then the incidents; the same zone and sensor pickers; the same alert
annotations. A department module only supplies its panels and bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from citystream.catalog import DomainSpec
from citystream.dashboards import queries as q
from citystream.dashboards import registry_sql
from citystream.dashboards.factories import (
    Band,
    Section,
    dashboard,
    in_filter,
    query_variable,
    sql_annotation,
    stat_panel,
    table_panel,
    timeseries_panel,
)

#: Any unhealthy sensor is worth a look, none is an emergency on its own.
NOT_OK_BAND = Band("green", ((1.0, "orange"),))


def title(spec: DomainSpec) -> str:
    """The dashboard title of a department, as bookmarks and the folder list show it."""
    return f"citystream · {spec.title}"


def uid(spec: DomainSpec) -> str:
    """The fixed uid of a department's dashboard."""
    return f"citystream-{spec.name}"


def department_dashboard(
    spec: DomainSpec,
    *,
    description: str,
    metrics: tuple[str, ...],
    sections: Sequence[Section],
) -> dict[str, Any]:
    """A department's dashboard: its sections, then incidents, with the shared pickers and annotations."""
    d = spec.name
    return dashboard(
        uid=uid(spec),
        title=title(spec),
        description=description,
        tags=["citystream", d],
        variables=_variables(d, metrics),
        annotations=_annotations(d),
        sections=[*sections, _incidents(d)],
    )


def _variables(domain: str, metrics: tuple[str, ...]) -> list[Any]:
    return [
        query_variable("zone", "Zone", q.zone_variable(domain)),
        query_variable("sensor", "Sensor", q.sensor_variable(domain, metrics)),
    ]


def _annotations(domain: str) -> list[Any]:
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
    return Section("Incidents and sensor health", [_anomalies_table(domain), _unhealthy_table(domain)])


def _anomalies_table(domain: str) -> Any:
    return table_panel(
        "Anomalies",
        registry_sql.anomalies_table(domain),
        description="Detector verdicts in the time range, newest first (at most 200), with the site and "
        "zone names the sensor registry gives their key.",
        width=14,
        height=9,
    )


def _unhealthy_table(domain: str) -> Any:
    return table_panel(
        "Sensors not ok",
        q.unhealthy_sensors(domain),
        description="Current health of every sensor whose status is not 'ok' "
        "(stuck, gap, out_of_range ...), longest-standing first.",
        width=10,
        height=9,
    )


def per_sensor(title: str, domain: str, metric: str, unit: str, what: str, band: Band | None = None) -> Any:
    """One line per selected sensor: where a spread looks wrong, which sensor it is."""
    return timeseries_panel(
        title,
        q.per_sensor(domain, metric),
        unit=unit,
        description=f"{what}: sample-weighted mean per sensor and interval "
        "(latest revision of every window).",
        band=band,
    ).display_name("${__field.labels.sensor}")


def spread(title: str, domain: str, metric: str, unit: str, what: str, band: Band | None = None) -> Any:
    """Lowest, mean and highest over the selected sensors: the whole network in three lines."""
    return timeseries_panel(
        title,
        q.spread(domain, metric),
        unit=unit,
        description=f"{what} over the selected sensors: lowest minimum, sample-weighted mean, "
        "highest maximum.",
        band=band,
    )


def not_ok_stat(domain: str, noun: str) -> Any:
    """How many selected sensors (``noun``: meters, detectors ...) are not healthy right now."""
    return stat_panel(
        f"{noun.capitalize()} not ok",
        _not_ok_count(domain),
        unit="none",
        description=f"Selected {noun} whose current health status is not 'ok'.",
        band=NOT_OK_BAND,
    )


def _not_ok_count(domain: str) -> str:
    return f"""
SELECT count() AS sensors
FROM sensor_health_latest
WHERE domain = '{domain}' AND status != 'ok'
    AND {in_filter("zone_id", "zone")}
    AND {in_filter("sensor_id", "sensor")}"""
