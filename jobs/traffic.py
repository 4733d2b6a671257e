"""Traffic job: per loop detector and per road zone, 1-minute (and 5-minute hopping) traffic statistics.

:data:`TRAFFIC` says what to check and aggregate; the shared machinery is in
jobs/common.py; ``traffic_job`` is the pure function, ``main`` the thin
Kafka wiring. Conventions traffic engineers use:

* flow = vehicles per hour over the window (count x 3600 / window seconds);
* mean speed = time-mean speed, each report's mean weighted by its vehicles;
* harmonic mean speed = space-mean speed estimate, vehicles / sum(vehicles / speed);
* congestion level from mean occupancy: 0 free (<15 %), 1 moderate (<25 %),
  2 heavy (<40 %), 3 jammed (>=40 %) - occupancy, unlike speed, is defined
  when no vehicle passes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pyflink.table import Table, TableEnvironment

from citystream.jobs.common import Domain, Metric, Outputs, Windows, process
from citystream.jobs.kafka_io import main_for

#: Occupancy thresholds (percent) of congestion levels 1, 2 and 3.
CONGESTION_OCCUPANCY = (15.0, 25.0, 40.0)

_SPEED_OK = "mean_speed_kmh > 0 AND vehicle_count > 0"

TRAFFIC = Domain(
    name="traffic",
    record="citystream.TrafficReading",
    topic="readings.traffic",
    zone_kind="zone",
    zone="`zone_id`",
    checks=(
        ("interval_s > 0 AND interval_s <= 3600", "interval_s outside (0, 3600] s"),
        (
            "vehicle_count >= 0 AND vehicle_count <= 10 * interval_s",
            "vehicle_count negative or above 10 per second",
        ),
        (
            "mean_speed_kmh IS NULL OR (mean_speed_kmh >= 0 AND mean_speed_kmh <= 300)",
            "mean_speed_kmh outside [0, 300]",
        ),
        ("occupancy_pct >= 0 AND occupancy_pct <= 100", "occupancy_pct outside [0, 100]"),
    ),
    metrics=(
        Metric("vehicle_count", value="CAST(vehicle_count AS DOUBLE)"),
        Metric("vehicles", mean="vehicles"),
        Metric("flow_vph", mean="vehicles * 3600.0 / {window_s}"),
        Metric("mean_speed_kmh", value="mean_speed_kmh", mean="speed_x_veh / speed_veh"),
        Metric("harmonic_mean_speed_kmh", mean="speed_veh / veh_per_speed", samples="speed_reports"),
        Metric("occupancy_pct", value="occupancy_pct"),
        Metric(
            "congestion_level",
            mean=(
                f"CASE WHEN occupancy >= {CONGESTION_OCCUPANCY[2]} THEN 3 "
                f"WHEN occupancy >= {CONGESTION_OCCUPANCY[1]} THEN 2 "
                f"WHEN occupancy >= {CONGESTION_OCCUPANCY[0]} THEN 1 ELSE 0 END"
            ),
        ),
    ),
    aggregates=(
        ("vehicles", "SUM(CAST(vehicle_count AS DOUBLE)) FILTER (WHERE {nd})"),
        ("occupancy", "AVG(occupancy_pct) FILTER (WHERE {nd})"),
        ("speed_x_veh", f"SUM(vehicle_count * mean_speed_kmh) FILTER (WHERE {{nd}} AND {_SPEED_OK})"),
        ("speed_veh", f"SUM(CAST(vehicle_count AS DOUBLE)) FILTER (WHERE {{nd}} AND {_SPEED_OK})"),
        ("veh_per_speed", f"SUM(vehicle_count / mean_speed_kmh) FILTER (WHERE {{nd}} AND {_SPEED_OK})"),
        ("speed_reports", f"COUNT(*) FILTER (WHERE {{nd}} AND {_SPEED_OK})"),
    ),
    out_of_order_s=10,
)


def traffic_job(t_env: TableEnvironment, raw: Table, windows: Windows | None = None) -> Outputs:
    """Raw traffic readings -> (aggregates, late events, dead letters); see jobs.common.process."""
    return process(t_env, TRAFFIC, raw, windows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run against Kafka from settings; ``--bounded`` stops at the offsets current at start."""
    return main_for(TRAFFIC, argv)


if __name__ == "__main__":
    sys.exit(main())
