"""What an import produces before it is encoded: sensors' series and their labels.

Why a model of its own: every format (CSV, NAB, BATADAL) maps onto these same
few shapes and the same value fields, so encoding, delivery and the summary are
written once; the helpers here are the naming and labelling rules all formats
share, so an imported sensor id or label looks like a simulated one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from citystream.catalog import DOMAIN_NAMES
from citystream.errors import UserError

#: Value fields a column may be mapped to, per domain.
FIELDS: dict[str, tuple[str, ...]] = {
    "traffic": ("vehicle_count", "mean_speed_kmh", "occupancy_pct"),
    "water": ("flow_lps", "pressure_bar", "tank_level_m", "pump_on", "ph", "turbidity_ntu", "chlorine_mgl"),
    "grid": (
        "voltage_v",
        "current_a",
        "frequency_hz",
        "active_power_kw",
        "reactive_power_kvar",
        "power_factor",
    ),
}
#: Neutral values for required fields the data does not provide.
REQUIRED_DEFAULTS: dict[str, dict[str, float]] = {
    "traffic": {"vehicle_count": 0, "occupancy_pct": 0.0},
    "water": {},
    "grid": {"voltage_v": 230.0, "current_a": 0.0, "frequency_hz": 50.0, "active_power_kw": 0.0},
}
INT_FIELDS = {"vehicle_count"}
BOOL_FIELDS = {"pump_on"}
#: Water sensor type implied by the first mapped field found in this order.
WATER_TYPE = (
    ("pump_on", "pump"),
    ("flow_lps", "flow"),
    ("pressure_bar", "pressure"),
    ("tank_level_m", "level"),
    ("ph", "quality"),
    ("turbidity_ntu", "quality"),
    ("chlorine_mgl", "quality"),
)


@dataclass
class Series:
    """One sensor's readings, time-sorted; values keyed by schema field (NaN = missing)."""

    sensor_id: str
    domain: str
    zone_id: str
    times: np.ndarray
    values: dict[str, np.ndarray]
    site_id: str = ""

    def __post_init__(self) -> None:
        self.site_id = self.site_id or self.sensor_id


@dataclass
class Dataset:
    """Everything one import sends: series, labels and what was left out."""

    source: str
    series: list[Series] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    skipped_rows: int = 0


def check_field(domain: str, name: str) -> None:
    """Refuse a field the domain's readings do not have, listing the ones they do."""
    if name not in FIELDS[domain]:
        raise UserError(f"unknown {domain} field {name!r}: choose from {', '.join(FIELDS[domain])}")


def check_domain(domain: str) -> str:
    """The catalog name of ``domain`` (any case), or a one-line refusal."""
    d = domain.strip().lower()
    if d not in DOMAIN_NAMES:
        raise UserError(f"unknown domain {domain!r}: choose from {', '.join(DOMAIN_NAMES)}")
    return d


def sensor_name(domain: str, raw: str) -> str:
    """A sensor id in the platform's ``DOMAIN-...`` shape, from whatever the data calls it."""
    text = "-".join(str(raw).strip().split())
    return text if text.startswith(f"{domain}-") else f"{domain}-{text}"


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index pairs of consecutive True values."""
    padded = np.concatenate([[False], flags.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def step_ms(times: np.ndarray) -> int:
    """Typical sampling interval (median spacing), at least 1 ms."""
    if times.size < 2:
        return 1000
    return max(1, int(np.median(np.diff(np.sort(times)))))


def make_label(
    label_id: str,
    domain: str,
    kind: str,
    sensors: Sequence[str],
    start: int,
    end: int,
    source: str,
    details: str,
) -> dict[str, Any]:
    """A ``citystream.Label`` record, as the simulator writes them."""
    return {
        "label_id": label_id,
        "domain": domain,
        "kind": kind,
        "sensor_ids": sorted(sensors),
        "start_time": int(start),
        "end_time": int(end),
        "source": source,
        "details": details,
    }
