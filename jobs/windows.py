"""The thin end-to-end slice: 1-minute tumbling averages per grid sensor.

``window_aggregates`` is the whole job as a pure ``Table -> Table`` function
(tests feed it bounded tables with fixed timestamps); ``main`` only wires the
Kafka source and sink from settings. The heavy lifting is Flink SQL in the
JVM: no Python touches an individual reading.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pyflink.table import Table, TableEnvironment

from citystream.settings import Settings
from citystream.settings import load as load_settings

#: Grid metrics averaged by the slice, as (WindowAggregate.metric, reading column).
GRID_METRICS: tuple[str, ...] = ("voltage_v", "frequency_hz", "active_power_kw")


def window_aggregates(
    t_env: TableEnvironment, readings: Table, *, window_s: int = 60, metrics: Sequence[str] = GRID_METRICS
) -> Table:
    """Per sensor and tumbling window: count, mean, min and max of each metric.

    ``readings`` must have the GridReading columns plus a rowtime column ``ts``.
    Output rows follow avro/citystream.WindowAggregate.avsc, one per
    (sensor, metric, window).
    """
    t_env.create_temporary_view("_cs_readings", readings)
    windowed = t_env.sql_query(
        f"""
        SELECT envelope.sensor_id AS sensor_id, window_start, window_end, COUNT(*) AS samples,
               {", ".join(f"AVG({m}) AS avg_{m}, MIN({m}) AS min_{m}, MAX({m}) AS max_{m}" for m in metrics)}
        FROM TABLE(TUMBLE(TABLE _cs_readings, DESCRIPTOR(ts), INTERVAL '{int(window_s)}' SECOND))
        GROUP BY envelope.sensor_id, window_start, window_end
        """
    )
    t_env.create_temporary_view("_cs_windowed", windowed)
    per_metric = [
        f"""SELECT 'grid' AS domain, 'sensor' AS key_kind, sensor_id AS key_id, '{m}' AS metric,
                   window_start,
                   window_end,
                   samples, avg_{m} AS `mean`, min_{m} AS `min`, max_{m} AS `max`,
                   CAST(0 AS BIGINT) AS late, CAST(0 AS BIGINT) AS duplicates, 0 AS revision
            FROM _cs_windowed"""
        for m in metrics
    ]
    return t_env.sql_query("\nUNION ALL\n".join(per_metric))


def build(t_env: TableEnvironment, settings: Settings, *, bounded: bool, out_of_order_s: int = 5) -> None:
    """Register source and sink tables for ``settings`` (Kafka topics, Avro)."""
    from citystream.jobs.sql import kafka_table

    t_env.execute_sql(
        kafka_table(
            "grid_readings",
            "citystream.GridReading",
            topic=settings.topic("readings.grid"),
            bootstrap=settings.kafka_bootstrap,
            bounded=bounded,
            group_id="citystream-windows",
            extra_columns=(
                f"ts AS envelope.event_time, WATERMARK FOR ts AS ts - INTERVAL '{int(out_of_order_s)}' SECOND"
            ),
        )
    )
    t_env.execute_sql(
        kafka_table(
            "aggregates",
            "citystream.WindowAggregate",
            topic=settings.topic("aggregates"),
            bootstrap=settings.kafka_bootstrap,
            sink=True,
            transactional_id_prefix=f"{settings.topic_prefix}windows",
            key_field="key_id",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the slice: ``--bounded`` stops after the data present at start (demo, tests)."""
    from citystream.jobs.runtime import detached, table_environment

    parser = argparse.ArgumentParser(prog="citystream.jobs.windows", description=__doc__)
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets current at start")
    parser.add_argument("--window-s", type=int, default=60, help="tumbling window size in seconds")
    args = parser.parse_args(argv)
    settings = load_settings()
    t_env = table_environment(settings, bounded=args.bounded)
    build(t_env, settings, bounded=args.bounded)
    result = window_aggregates(t_env, t_env.from_path("grid_readings"), window_s=args.window_s)
    job = result.execute_insert("aggregates")
    if not detached():
        job.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
