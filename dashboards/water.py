"""The water dashboard: pressure, inlet flow and tank levels of the district-metered areas."""

from __future__ import annotations

from typing import Any

from citystream.catalog import WATER
from citystream.dashboards import queries as q
from citystream.dashboards.department import department_dashboard, not_ok_stat, per_sensor, spread
from citystream.dashboards.factories import Band, Section, stat_panel

D = WATER.name
#: The metrics its sensor picker offers sensors of.
METRICS = ("pressure_bar", "flow_lps", "tank_level_m")

#: Service pressure: below 1.5 bar customers complain, 2 bar is the usual minimum.
PRESSURE_BAND = Band("red", ((1.5, "orange"), (2.0, "green")))
#: Tank level: pumps start below 1.5 m and stop above 4.8 m (simulator and typical hysteresis).
TANK_BAND = Band("red", ((1.0, "orange"), (1.5, "green"), (4.8, "orange")))


def build() -> dict[str, Any]:
    """Pressure, inlet flow and tank levels of the district-metered areas."""
    return department_dashboard(
        WATER,
        description="Water network: pressure, flow and tank level per sensor (zones are DMAs).",
        metrics=METRICS,
        sections=[
            Section("Now", [_lowest_pressure(), _inlet_flow(), _lowest_tank(), not_ok_stat(D, "sensors")]),
            Section(
                "Pressure",
                [
                    spread(
                        "Pressure: min / mean / max",
                        D,
                        "pressure_bar",
                        "pressurebar",
                        "Gauge pressure",
                        PRESSURE_BAND,
                    ),
                    per_sensor(
                        "Pressure per sensor",
                        D,
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
                    per_sensor("Flow per meter", D, "flow_lps", "suffix:L/s", "Volumetric flow"),
                    per_sensor(
                        "Tank level", D, "tank_level_m", "lengthm", "Water level above tank floor", TANK_BAND
                    ),
                ],
            ),
        ],
    )


def _lowest_pressure() -> Any:
    return stat_panel(
        "Lowest pressure",
        q.latest_value(D, "pressure_bar", how="min"),
        unit="pressurebar",
        description="Lowest latest window mean pressure over the selected sensors.",
        band=PRESSURE_BAND,
    ).decimals(2)


def _inlet_flow() -> Any:
    return stat_panel(
        "Total inlet flow",
        q.latest_value(D, "flow_lps", how="sum"),
        unit="suffix:L/s",
        description="Sum of the latest window mean flow over the selected flow meters.",
    )


def _lowest_tank() -> Any:
    return stat_panel(
        "Lowest tank level",
        q.latest_value(D, "tank_level_m", how="min"),
        unit="lengthm",
        description="Lowest latest window mean tank level over the selected level sensors.",
        band=TANK_BAND,
    ).decimals(2)
