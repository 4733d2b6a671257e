"""Each kind of sensor's default channels: the reading fields it reports, units, types, ranges.

Why here and not in the jobs: the domain jobs used to check physical ranges against
constants in their SQL (``jobs/traffic.py`` ... ``checks=``); they now take them from the
registry, so a sensor registered without explicit channels must get exactly the ranges
the jobs enforced before, or simulated and imported data that was valid yesterday would
become dead letters today. ``tests/test_registry.py`` compares both.

Channels are the measured value fields of each domain's reading record in avro/. The
identity attributes of a reading (traffic ``lane`` and ``direction``, water
``sensor_type`` and ``dma_id``, grid ``phase``) describe the device, not a measurement,
and have no range, so they are not channels.
"""

from __future__ import annotations

from collections.abc import Iterable

from citystream.catalog import CONTINUOUS, COUNTER, SETPOINT, STATUS
from citystream.registry.model import SensorChannel

#: Longest counting interval a traffic report may cover, seconds (the job's ``interval_s <= 3600``).
MAX_INTERVAL_S = 3600
#: Vehicles per second a loop may count: the job checks ``vehicle_count <= 10 * interval_s``.
MAX_VEHICLES_PER_S = 10

#: Every channel of every domain, in the reading record's field order.
_CHANNELS: dict[str, tuple[SensorChannel, ...]] = {
    "traffic": (
        # the report's own length, set in the device's configuration; an int, so the job's
        # "interval_s > 0" is min 1
        SensorChannel("interval_s", "s", SETPOINT, 1.0, float(MAX_INTERVAL_S)),
        # The job's bound is relative (10 vehicles a second of the report's interval); a
        # channel range is absolute, so its max is that bound at the longest interval the job
        # accepts (3600 s): it never refuses a count the job accepts. A lane carries at most
        # ~2,400 vehicles an hour, so the relative check stays the sharper one for short reports.
        SensorChannel("vehicle_count", "vehicles", COUNTER, 0.0, float(MAX_VEHICLES_PER_S * MAX_INTERVAL_S)),
        SensorChannel("mean_speed_kmh", "km/h", CONTINUOUS, 0.0, 300.0),
        SensorChannel("occupancy_pct", "%", CONTINUOUS, 0.0, 100.0),
    ),
    "water": (
        # a negative flow is a reversed one, not an impossible one: the job checks |flow| <= 100 m3/s
        SensorChannel("flow_lps", "L/s", CONTINUOUS, -100_000.0, 100_000.0),
        SensorChannel("pressure_bar", "bar", CONTINUOUS, -1.0, 40.0),
        SensorChannel("tank_level_m", "m", CONTINUOUS, 0.0, 100.0),
        # false/true as 0/1
        SensorChannel("pump_on", "on/off", STATUS, 0.0, 1.0),
        SensorChannel("ph", "pH", CONTINUOUS, 0.0, 14.0),
        SensorChannel("turbidity_ntu", "NTU", CONTINUOUS, 0.0, 10_000.0),
        SensorChannel("chlorine_mgl", "mg/L", CONTINUOUS, 0.0, 100.0),
    ),
    "grid": (
        SensorChannel("voltage_v", "V", CONTINUOUS, 0.0, 500_000.0),
        SensorChannel("current_a", "A", CONTINUOUS, 0.0, 100_000.0),
        SensorChannel("frequency_hz", "Hz", CONTINUOUS, 40.0, 70.0),
        # signed: negative active power is export (e.g. rooftop solar)
        SensorChannel("active_power_kw", "kW", CONTINUOUS, -1_000_000.0, 1_000_000.0),
        SensorChannel("reactive_power_kvar", "kvar", CONTINUOUS, -1_000_000.0, 1_000_000.0),
        SensorChannel("power_factor", "1", CONTINUOUS, -1.0, 1.0),
    ),
}

_GRID_ALL = tuple(c.name for c in _CHANNELS["grid"])
#: The kinds of sensor each domain knows, and the reading fields each reports (as the simulator
#: sets them: citystream/simulator/signals.py; a pump sensor also meters its flow).
KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "traffic": {"loop_detector": ("interval_s", "vehicle_count", "mean_speed_kmh", "occupancy_pct")},
    "water": {
        "flow": ("flow_lps",),
        "pressure": ("pressure_bar",),
        "level": ("tank_level_m",),
        "pump": ("pump_on", "flow_lps"),
        "quality": ("ph", "turbidity_ntu", "chlorine_mgl"),
    },
    # a substation's three-phase bus meter and the per-phase meters at a feeder head report alike
    "grid": {"bus_meter": _GRID_ALL, "feeder_meter": _GRID_ALL},
}


def all_channels(domain: str) -> tuple[SensorChannel, ...]:
    """Every channel ``domain``'s readings carry, with the ranges the jobs checked."""
    try:
        return _CHANNELS[domain]
    except KeyError:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(_CHANNELS)}") from None


def channels_for_fields(domain: str, fields: Iterable[str]) -> tuple[SensorChannel, ...]:
    """The default channels of the named reading fields, in record order."""
    wanted = set(fields)
    known = all_channels(domain)
    unknown = sorted(wanted - {c.name for c in known})
    if unknown:
        raise ValueError(
            f"{domain} readings have no channel {', '.join(unknown)}; "
            f"channels: {', '.join(c.name for c in known)}"
        )
    return tuple(c for c in known if c.name in wanted)


def default_channels(domain: str, kind: str) -> tuple[SensorChannel, ...]:
    """The channels a ``kind`` sensor of ``domain`` reports, with units, types and physical ranges.

    Why an unknown kind is refused rather than given every channel: a typo ("presure")
    would otherwise register a sensor that checks fields it never sends.
    """
    kinds = KINDS.get(domain)
    if kinds is None:
        raise ValueError(f"unknown domain {domain!r}; known: {', '.join(KINDS)}")
    if kind not in kinds:
        raise ValueError(f"unknown {domain} kind {kind!r}; known: {', '.join(kinds)}")
    return channels_for_fields(domain, kinds[kind])
