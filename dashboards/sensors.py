"""Sensors: the registry as the operators see it, with each sensor's health and last reading.

Why a dashboard of its own: the department dashboards plot what sensors
measure; this one answers "what is installed where, is it in service, and is
it reporting" across departments, including sensors that report without being
registered (their readings are refused by the jobs and go to dead letters).
"""

from __future__ import annotations

from typing import Any

from citystream.catalog import DOMAIN_NAMES
from citystream.dashboards import registry_sql
from citystream.dashboards.factories import (
    Band,
    Section,
    dashboard,
    domain_variable,
    in_filter,
    stat_panel,
    table_panel,
)
from citystream.dashboards.overview import per_domain_counts

#: One count per department, as the other per-department stats.
_COUNTS = ", ".join(f"countIf(domain = '{d}') AS {d}" for d in DOMAIN_NAMES)

UID = "citystream-sensors"
TITLE = "citystream · Sensors"


def build() -> dict[str, Any]:
    """The registry with health and last reading, counts per department, unregistered senders."""
    return dashboard(
        uid=UID,
        title=TITLE,
        description="The sensor registry across departments: what is installed where, whether it is in "
        "service and whether it reports.",
        tags=["citystream", "sensors", "registry"],
        variables=[domain_variable()],
        sections=[
            Section("Per department", [_in_service(), _not_in_service(), _not_ok_now()]),
            Section("Registry", [_registry_table()]),
            Section("Unregistered", [_unregistered()]),
        ],
    )


def _in_service() -> Any:
    return stat_panel(
        "Sensors in service",
        per_domain_counts(registry_sql.SENSORS, "status = 'active'", cross=False),
        unit="none",
        description="Registered sensors whose current registry status is 'active', per department.",
        width=8,
    )


def _not_in_service() -> Any:
    return stat_panel(
        "In maintenance or retired",
        per_domain_counts(registry_sql.SENSORS, "status != 'active'", cross=False),
        unit="none",
        description="Registered sensors with status 'maintenance' or 'retired', per department.",
        band=Band("green", ((1.0, "blue"),)),
        width=8,
    )


def _not_ok_now() -> Any:
    return stat_panel(
        "Sensors not ok now",
        f"""
SELECT {_COUNTS}
FROM ({registry_sql.sensor_states(in_filter("s.domain", "domain"))}
)
WHERE state != 'ok' AND status = 'active'""",
        unit="none",
        description="Sensors in service whose state at the end of the range is not 'ok' (alert, sensor "
        "fault, anomaly or silent), per department.",
        band=Band("green", ((1.0, "orange"),)),
        width=8,
    )


def _registry_table() -> Any:
    return table_panel(
        "Registered sensors",
        registry_sql.sensor_states(in_filter("s.domain", "domain")),
        description="Every sensor's current registry entry, its state at the end of the range (as on the "
        "City overview's map), its health verdict and the end of its newest 1-minute window (empty: it "
        "never reported).",
        width=24,
        height=14,
    )


def _unregistered() -> Any:
    return table_panel(
        "Reporting but not registered",
        f"""
SELECT DISTINCT key_id AS sensor_id, domain
FROM window_aggregates
WHERE key_kind = 'sensor' AND $__timeFilter(window_start) AND {in_filter("domain", "domain")}
    AND key_id NOT IN (SELECT sensor_id FROM {registry_sql.SENSORS})
ORDER BY domain, sensor_id
LIMIT 200""",
        description="Sensors with windows in the range but no registry entry (loaded before the registry "
        "checked them, or accepted while registered and since deleted).",
        width=24,
        height=6,
    )
