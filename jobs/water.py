"""Water job: per sensor and per district-metered area (DMA), 1-minute (and 5-minute hopping) statistics.

:data:`WATER` says what to check and aggregate; the shared machinery is in
jobs/common.py; ``water_job`` is the pure function, ``main`` the thin Kafka
wiring. Which value fields a reading carries depends on its sensor type, so
every metric counts its own samples and is emitted only where it has any.

* flow: mean/min/max in L/s and the volume in m3 (mean flow x window length);
* tank level: mean/min/max and its rate of change in m/h, the least-squares
  slope over the window (order independent, unlike last minus first);
* quality: pH, turbidity and chlorine means and maxima (and minima).

The DMA is ``dma_id``, or the zone when a sensor carries no DMA.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pyflink.table import Table, TableEnvironment

from citystream.jobs.common import Domain, Metric, Outputs, Windows, process
from citystream.jobs.kafka_io import main_for

WATER = Domain(
    name="water",
    record="citystream.WaterReading",
    topic="readings.water",
    zone_kind="dma",
    zone="CASE WHEN `dma_id` = '' THEN `zone_id` ELSE `dma_id` END",
    checks=(
        ("flow_lps IS NULL OR ABS(flow_lps) <= 100000", "flow_lps beyond 100 m3/s"),
        (
            "pressure_bar IS NULL OR (pressure_bar >= -1 AND pressure_bar <= 40)",
            "pressure_bar outside [-1, 40]",
        ),
        (
            "tank_level_m IS NULL OR (tank_level_m >= 0 AND tank_level_m <= 100)",
            "tank_level_m outside [0, 100]",
        ),
        ("ph IS NULL OR (ph >= 0 AND ph <= 14)", "ph outside [0, 14]"),
        (
            "turbidity_ntu IS NULL OR (turbidity_ntu >= 0 AND turbidity_ntu <= 10000)",
            "turbidity_ntu outside [0, 10000]",
        ),
        (
            "chlorine_mgl IS NULL OR (chlorine_mgl >= 0 AND chlorine_mgl <= 100)",
            "chlorine_mgl outside [0, 100]",
        ),
    ),
    metrics=(
        Metric("pressure_bar", value="pressure_bar"),
        Metric("flow_lps", value="flow_lps"),
        Metric("flow_volume_m3", mean="flow_mean * {window_s} / 1000.0", samples="flow_n"),
        Metric("tank_level_m", value="tank_level_m"),
        Metric("tank_level_rate_m_per_h", mean="level_slope", samples="level_n"),
        Metric("ph", value="ph"),
        Metric("turbidity_ntu", value="turbidity_ntu"),
        Metric("chlorine_mgl", value="chlorine_mgl"),
    ),
    aggregates=(
        ("flow_mean", "AVG(flow_lps) FILTER (WHERE {nd})"),
        ("flow_n", "COUNT(flow_lps) FILTER (WHERE {nd})"),
        ("level_slope", "LINEAR_SLOPE(ts_ms, tank_level_m) FILTER (WHERE {nd} AND tank_level_m IS NOT NULL)"),
        ("level_n", "COUNT(tank_level_m) FILTER (WHERE {nd})"),
    ),
    out_of_order_s=10,
)


def water_job(t_env: TableEnvironment, raw: Table, windows: Windows | None = None) -> Outputs:
    """Raw water readings -> (aggregates, late events, dead letters); see jobs.common.process."""
    return process(t_env, WATER, raw, windows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run against Kafka from settings; ``--bounded`` stops at the offsets current at start."""
    return main_for(WATER, argv)


if __name__ == "__main__":
    sys.exit(main())
