"""The grid dashboard: voltage against 230 V +-10 %, frequency against its nominal band, active power."""

from __future__ import annotations

from typing import Any

from citystream.catalog import GRID
from citystream.dashboards import queries as q
from citystream.dashboards.department import department_dashboard, not_ok_stat, per_sensor, spread
from citystream.dashboards.factories import Band, Section, stat_panel, timeseries_panel

D = GRID.name
#: The metrics its sensor picker offers sensors of.
METRICS = ("voltage_v", "frequency_hz", "active_power_kw")

# Bands: the colour a value takes from each step upwards.
#: EN 50160: 230 V +-10 %.
VOLTAGE_BAND = Band("red", ((207.0, "green"), (253.0, "red")))
#: 50 Hz: +-0.2 Hz normal operation, +-0.5 Hz alert, beyond that emergency.
FREQUENCY_BAND = Band("red", ((49.5, "orange"), (49.8, "green"), (50.2, "orange"), (50.5, "red")))


def build() -> dict[str, Any]:
    """Voltage against 230 V +-10 %, frequency against its nominal band, active power."""
    return department_dashboard(
        GRID,
        description="Electric grid: voltage, frequency and active power per meter.",
        metrics=METRICS,
        sections=[
            Section(
                "Now", [_mean_voltage(), _system_frequency(), _active_power_now(), not_ok_stat(D, "meters")]
            ),
            Section(
                "Voltage",
                [
                    spread("Voltage: min / mean / max", D, "voltage_v", "volt", "RMS voltage", VOLTAGE_BAND),
                    per_sensor("Voltage per meter", D, "voltage_v", "volt", "RMS voltage", VOLTAGE_BAND),
                ],
            ),
            Section("Frequency", [_frequency_band()]),
            Section(
                "Active power",
                [
                    _total_active_power(),
                    per_sensor("Active power per meter", D, "active_power_kw", "kwatt", "Active power"),
                ],
            ),
        ],
    )


def _mean_voltage() -> Any:
    return stat_panel(
        "Mean voltage",
        q.latest_value(D, "voltage_v"),
        unit="volt",
        description="Average over the selected meters of their latest window mean.",
        band=VOLTAGE_BAND,
    )


def _system_frequency() -> Any:
    return stat_panel(
        "System frequency",
        q.latest_value(D, "frequency_hz"),
        unit="hertz",
        description="Average over the selected meters of their latest window mean; "
        "green within 50 +- 0.2 Hz.",
        band=FREQUENCY_BAND,
    ).decimals(3)


def _active_power_now() -> Any:
    return stat_panel(
        "Active power",
        q.latest_value(D, "active_power_kw", how="sum"),
        unit="kwatt",
        description="Sum over the selected meters of their latest window mean.",
    )


def _frequency_band() -> Any:
    return timeseries_panel(
        "Frequency against the nominal band",
        q.spread(D, "frequency_hz"),
        unit="hertz",
        description="System frequency over the selected meters (min / mean / max); "
        "shaded: 50 +- 0.2 Hz normal (green), +- 0.5 Hz alert (orange).",
        band=FREQUENCY_BAND,
        soft_min=49.7,
        soft_max=50.3,
        width=24,
    ).decimals(3)


def _total_active_power() -> Any:
    return timeseries_panel(
        "Total active power",
        q.total_over_sensors(D, "active_power_kw"),
        unit="kwatt",
        description="Sum over the selected meters of each meter's mean active power.",
    )
