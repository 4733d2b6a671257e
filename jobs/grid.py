"""Grid job: per meter and per substation, 1-minute (and 5-minute hopping) electrical statistics.

The job is :data:`GRID` (what to check and aggregate) run through the shared
machinery in jobs/common.py; ``grid_job`` is the pure function, ``main`` the
thin Kafka wiring. Substation = the reading's ``site_id`` (Envelope: the
physical site a grid meter belongs to is its substation).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pyflink.table import Table, TableEnvironment

from citystream.jobs.common import Domain, Metric, Outputs, Windows, process
from citystream.jobs.kafka_io import main_for

#: Nominal system frequency, Hz (European grid); deviation metrics are relative to it.
NOMINAL_HZ = 50.0

GRID = Domain(
    name="grid",
    record="citystream.GridReading",
    topic="readings.grid",
    zone_kind="substation",
    zone="`site_id`",
    checks=(
        ("voltage_v >= 0 AND voltage_v <= 500000", "voltage_v outside [0, 500 kV]"),
        ("current_a >= 0 AND current_a <= 100000", "current_a outside [0, 100 kA]"),
        ("frequency_hz >= 40 AND frequency_hz <= 70", "frequency_hz outside [40, 70] Hz"),
        ("ABS(active_power_kw) <= 1000000", "active_power_kw beyond 1 GW"),
        ("ABS(reactive_power_kvar) <= 1000000", "reactive_power_kvar beyond 1 Gvar"),
        ("power_factor >= -1 AND power_factor <= 1", "power_factor outside [-1, 1]"),
    ),
    metrics=(
        Metric("voltage_v", value="voltage_v"),
        Metric("current_a", value="current_a"),
        Metric("frequency_hz", value="frequency_hz"),
        # max = the largest deviation from nominal in the window.
        Metric("frequency_deviation_hz", value=f"ABS(frequency_hz - {NOMINAL_HZ})"),
        # mean = mean power, max = peak power.
        Metric("active_power_kw", value="active_power_kw"),
        Metric("reactive_power_kvar", value="reactive_power_kvar"),
        Metric("power_factor", value="power_factor"),
        # Mean power x window length, summed over the meters (for a meter: one meter).
        Metric("energy_kwh", mean="p_mean * meters * {window_s} / 3600.0"),
    ),
    aggregates=(
        ("p_mean", "AVG(active_power_kw) FILTER (WHERE {nd})"),
        ("meters", "COUNT(DISTINCT sensor_id) FILTER (WHERE {nd})"),
    ),
    out_of_order_s=5,
)


def grid_job(t_env: TableEnvironment, raw: Table, windows: Windows | None = None) -> Outputs:
    """Raw grid readings -> (aggregates, late events, dead letters); see jobs.common.process."""
    return process(t_env, GRID, raw, windows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run against Kafka from settings; ``--bounded`` stops at the offsets current at start."""
    return main_for(GRID, argv)


if __name__ == "__main__":
    sys.exit(main())
