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

#: Channel types, declared per metric because each needs a different model:
#: ``continuous`` - a physical level (pressure, speed, voltage): baseline and spread;
#: ``counter`` - an amount accumulated over the reading's interval (vehicles, m3, kWh):
#: never negative, zero is a normal value, it scales with the window length;
#: ``status`` - a discrete state (pump on/off, valve open/closed): a state model of
#: transitions and dwell times, never z-scores (``citystream.detection.status``);
#: ``setpoint`` - a value an operator or controller sets: constant for long spells, each
#: change an event.
CONTINUOUS, COUNTER, STATUS, SETPOINT = "continuous", "counter", "status", "setpoint"
CHANNEL_TYPES: tuple[str, ...] = (CONTINUOUS, COUNTER, STATUS, SETPOINT)


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
    #: Each metric's channel type (one of ``CHANNEL_TYPES``), as (metric, type) pairs.
    #: Why declared here: a detector cannot tell a pump's 0/1 status from a level that
    #: happened to be constant, and guessing from the data is what failed on new data.
    channels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        typed = dict(self.channels)
        bad = sorted(t for t in typed.values() if t not in CHANNEL_TYPES)
        untyped = [m for m in self.metrics if m not in typed]
        extra = sorted(set(typed) - set(self.metrics))
        if bad or untyped or extra or len(typed) != len(self.channels):
            raise ValueError(
                f"domain {self.name!r}: every metric needs exactly one channel type of "
                f"{CHANNEL_TYPES}; untyped {untyped}, unknown types {bad}, not metrics {extra}"
            )

    def channel_type(self, metric: str) -> str:
        """The declared type of ``metric``; a ``KeyError`` for a metric this domain lacks."""
        for name, kind in self.channels:
            if name == metric:
                return kind
        raise KeyError(f"domain {self.name!r} has no metric {metric!r}")


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
    channels=(
        ("vehicle_count", COUNTER),
        ("vehicles", COUNTER),
        ("flow_vph", CONTINUOUS),
        ("mean_speed_kmh", CONTINUOUS),
        ("harmonic_mean_speed_kmh", CONTINUOUS),
        ("occupancy_pct", CONTINUOUS),
        # a 0..3 band of the window's occupancy: ordinal and derived, so it moves with traffic
        # like a level, not a state an operator or controller sets
        ("congestion_level", CONTINUOUS),
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
    channels=(
        ("pressure_bar", CONTINUOUS),
        ("flow_lps", CONTINUOUS),
        ("flow_volume_m3", COUNTER),
        ("tank_level_m", CONTINUOUS),
        ("tank_level_rate_m_per_h", CONTINUOUS),
        ("ph", CONTINUOUS),
        ("turbidity_ntu", CONTINUOUS),
        ("chlorine_mgl", CONTINUOUS),
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
    channels=(
        ("voltage_v", CONTINUOUS),
        ("current_a", CONTINUOUS),
        ("frequency_hz", CONTINUOUS),
        ("frequency_deviation_hz", CONTINUOUS),
        ("active_power_kw", CONTINUOUS),
        ("reactive_power_kvar", CONTINUOUS),
        ("power_factor", CONTINUOUS),
        ("energy_kwh", COUNTER),
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


def channel_type(domain_name: str, metric: str) -> str:
    """The declared channel type of ``metric`` in department ``domain_name``."""
    return domain(domain_name).channel_type(metric)
