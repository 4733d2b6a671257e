"""The departments citystream serves, declared once.

Why one catalog: the simulator, the importer, the jobs, detection, the loader and the
dashboards all need to agree on which domains exist, which Avro record each publishes,
on which topic, how its sensors group into places and which metrics its windows carry.
Each of them used to keep its own tuple; one missed edit made a department silently
disappear from one stage. Everything else (the SQL of a metric, a detector's thresholds,
a panel's query) stays with the stage that owns it and is checked against this table in
tests.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainSpec:
    """One department's contract with the rest of the platform."""

    #: Short name used in topic names, ids (``traffic-z03-s012-l1``) and table rows.
    name: str
    #: The Avro record its readings use (``avro/<record>.avsc``).
    record: str
    #: Topic suffix under the settings' prefix (``Settings.topic``).
    topic: str
    #: What a place of this department is called in aggregates' ``key_kind``.
    zone_kind: str
    #: Human title on dashboards and reports.
    title: str
    #: The window metrics its job emits, in the order dashboards list them.
    metrics: tuple[str, ...]


TRAFFIC = DomainSpec(
    name="traffic",
    record="citystream.TrafficReading",
    topic="readings.traffic",
    zone_kind="zone",
    title="Traffic",
    metrics=(
        "vehicle_count",
        "vehicles",
        "flow_vph",
        "mean_speed_kmh",
        "harmonic_mean_speed_kmh",
        "occupancy_pct",
        "congestion_level",
    ),
)

WATER = DomainSpec(
    name="water",
    record="citystream.WaterReading",
    topic="readings.water",
    zone_kind="dma",
    title="Water",
    metrics=(
        "pressure_bar",
        "flow_lps",
        "flow_volume_m3",
        "tank_level_m",
        "tank_level_rate_m_per_h",
        "ph",
        "turbidity_ntu",
        "chlorine_mgl",
    ),
)

GRID = DomainSpec(
    name="grid",
    record="citystream.GridReading",
    topic="readings.grid",
    zone_kind="substation",
    title="Grid",
    metrics=(
        "voltage_v",
        "current_a",
        "frequency_hz",
        "frequency_deviation_hz",
        "active_power_kw",
        "reactive_power_kvar",
        "power_factor",
        "energy_kwh",
    ),
)

#: Every department, in the order the platform lists them (simulator, dashboards, reports).
DOMAINS: tuple[DomainSpec, ...] = (TRAFFIC, WATER, GRID)
#: Their names, in the same order.
DOMAIN_NAMES: tuple[str, ...] = tuple(d.name for d in DOMAINS)
_BY_NAME = {d.name: d for d in DOMAINS}


def domain(name: str) -> DomainSpec:
    """The department called ``name``; a ``KeyError`` naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown domain {name!r}; known: {', '.join(DOMAIN_NAMES)}") from None


def domain_of_record(record: str) -> DomainSpec:
    """The department whose readings use the Avro record ``record`` (full name)."""
    for d in DOMAINS:
        if d.record == record:
            return d
    raise KeyError(f"no domain publishes {record!r}")
