"""The traffic dashboard: speed, flow and occupancy of the loop detectors."""

from __future__ import annotations

from typing import Any

from citystream.catalog import TRAFFIC
from citystream.dashboards import queries as q
from citystream.dashboards.department import department_dashboard, not_ok_stat, per_sensor, spread
from citystream.dashboards.factories import Band, Section, stat_panel, timeseries_panel

D = TRAFFIC.name
#: The metrics its sensor picker offers sensors of.
METRICS = ("mean_speed_kmh", "vehicle_count", "occupancy_pct")

#: Loop occupancy: above ~20 % traffic is dense, above ~35 % it is stop-and-go.
OCCUPANCY_BAND = Band("green", ((20.0, "orange"), (35.0, "red")))


def build() -> dict[str, Any]:
    """Speed, flow and occupancy of the loop detectors."""
    return department_dashboard(
        TRAFFIC,
        description="Road traffic: speed, flow and occupancy per loop detector (one lane each).",
        metrics=METRICS,
        sections=[
            Section(
                "Now", [_mean_speed(), _mean_occupancy(), _vehicles_in_range(), not_ok_stat(D, "detectors")]
            ),
            Section(
                "Speed",
                [
                    spread("Speed: min / mean / max", D, "mean_speed_kmh", "velocitykmh", "Spot speed"),
                    per_sensor("Speed per detector", D, "mean_speed_kmh", "velocitykmh", "Mean spot speed"),
                ],
            ),
            Section(
                "Flow and occupancy",
                [
                    _flow_per_detector(),
                    per_sensor(
                        "Occupancy per detector",
                        D,
                        "occupancy_pct",
                        "percent",
                        "Loop occupancy",
                        OCCUPANCY_BAND,
                    ),
                ],
            ),
        ],
    )


def _mean_speed() -> Any:
    return stat_panel(
        "Mean speed",
        q.latest_value(D, "mean_speed_kmh"),
        unit="velocitykmh",
        description="Average over the selected detectors of their latest window mean speed.",
    )


def _mean_occupancy() -> Any:
    return stat_panel(
        "Mean occupancy",
        q.latest_value(D, "occupancy_pct"),
        unit="percent",
        description="Average over the selected detectors of their latest window occupancy.",
        band=OCCUPANCY_BAND,
    )


def _vehicles_in_range() -> Any:
    return stat_panel(
        "Vehicles in range",
        f"""
SELECT toUInt64(round(sum(total))) AS vehicles
FROM ({q.selected_windows(D, "vehicle_count")}
)""",
        unit="short",
        description="Vehicles counted by the selected detectors in the time range.",
    )


def _flow_per_detector() -> Any:
    return timeseries_panel(
        "Flow per detector",
        q.per_sensor_rate(D, "vehicle_count"),
        unit="suffix:veh/h",
        description="Vehicles counted per interval, as vehicles per hour, per detector.",
    ).display_name("${__field.labels.sensor}")
