"""Events/s of the grid, traffic and water jobs against plain Flink SQL tumbling windows, same run.

A benchmark, not a test: numbers depend on the machine and on what else runs.
What it does: starts a private Kafka broker on free 127.0.0.1 ports, writes
``--events`` readings per domain (``--sensors`` sensors, 1 s apart, slightly
out of order, 0.1 % duplicates), then runs each job bounded on a local
MiniCluster with blackhole sinks (Kafka sink cost is not what is compared).
The baseline is plain Flink SQL defined here (Flink's ``avro`` format + one
tumbling window of the mean/min/max of three metrics per sensor, no dedup, no
lateness, no dead letters) over the grid topic.

Job start-up (planning, MiniCluster, first checkpoint) is measured with an
empty topic and subtracted, so the rate is the steady-state processing rate::

    events/s = events / (wall time with events - wall time with an empty topic)

Usage: ``python -m benchmarks.jobs [--events 500000] [--sensors 500] [--parallelism 1]``

Measured 2026-11-24 on the 2-core dev machine, parallelism 1, load average 6-9
from other work (so absolute numbers are low; compare the ratios)::

    job                                  events/s  vs baseline
    baseline (SQL tumble, avro format)     44,955        1.00x
    grid job                               16,232        0.36x
    traffic job                             8,172        0.18x
    water job                              17,595        0.39x

What each job does per event that the baseline does not: raw read + JVM Avro
decode and validation (dead letters), CURRENT_WATERMARK classification (late
events), a keyed OVER count per (sensor, seq) for duplicates (state per
reading), three group windows instead of one (1-min sensor, 5-min hop,
1-min zone) each with allowed lateness, and the sensor-silence timer function.
No Python runs per event (Python only plans the job).

Where the time goes (grid, 300k events, same machine, wall time incl. ~5 s
start-up; by pruning outputs/stages of the same job):

    decode + validate + dead letters only     7.1 s
    + late-event classification               9.4 s
    sensor-silence timer function only        8.4 s
    dedup + 3 windows (aggregates only)      23.6-33.3 s (machine load varied)
    no dedup, 3 windows                      24.7 s
    dedup, 1-min sensor tumble only          18.6 s
    no dedup, 1-min sensor tumble only       14.0 s

So the JVM decode/validation is cheap (~140k/s net); the cost is the legacy
group windows (~50k events/s each; the 5-minute hop updates five windows per
reading) and the keyed de-duplication state (~40-60k/s). Next steps measured
as worth it: derive the hop window from the 1-minute panes, and a per-sensor
de-duplication (one state entry per sensor, not per reading).
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic
from pyflink.table import Schema, Table, TableDescriptor, TableEnvironment

from citystream.catalog import DOMAIN_NAMES
from citystream.catalog import DOMAINS as CATALOG
from citystream.connectors.producer import ReadingProducer, encode
from citystream.jobs.common import Windows, process, window_options
from citystream.jobs.kafka_io import raw_kafka_table
from citystream.jobs.runtime import table_environment
from citystream.jobs.sql import kafka_table
from citystream.proc import free_port
from citystream.settings import Settings
from citystream.stack import Kafka

T0_MS = 1_767_571_200_000  # 2026-01-05 00:00 UTC
DOMAINS = DOMAIN_NAMES
#: Short, so that waiting for the final checkpoint of a bounded run does not dominate the timing.
CHECKPOINT = "2 s"
RECORDS = {d.name: d.record for d in CATALOG}


def _reading(domain: str, sensor: int, t_ms: int, seq: int, rng: random.Random) -> dict:
    env = {
        "sensor_id": f"{domain}-{sensor}", "site_id": f"site{sensor // 10}", "zone_id": f"zone{sensor // 50}",
        "domain": domain, "event_time": t_ms, "seq": seq, "lat": None, "lon": None, "quality": 0,
    }  # fmt: skip
    if domain == "grid":
        return {"envelope": env, "phase": "a", "voltage_v": 230 + rng.random(), "current_a": 10.0,
                "frequency_hz": 50 + rng.random() / 10, "active_power_kw": 5 + rng.random(),
                "reactive_power_kvar": 1.0, "power_factor": 0.95}  # fmt: skip
    if domain == "traffic":
        n = rng.randint(0, 10)
        speed = None if n == 0 else 30 + 40 * rng.random()
        return {"envelope": env, "lane": 1, "direction": "N", "interval_s": 1, "vehicle_count": n,
                "mean_speed_kmh": speed, "occupancy_pct": 50 * rng.random()}  # fmt: skip
    return {"envelope": env, "sensor_type": "level", "dma_id": f"dma{sensor // 50}",
            "flow_lps": 10 * rng.random(), "pressure_bar": 3 + rng.random(), "tank_level_m": 4 + rng.random(),
            "pump_on": None, "ph": 7.0, "turbidity_ntu": 0.5, "chlorine_mgl": 0.5}  # fmt: skip


def produce(settings: Settings, events: int, sensors: int) -> None:
    """``events`` readings per domain in near event-time order (jitter below the watermark bound)."""
    rng = random.Random(42)
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        for domain in DOMAINS:
            topic = settings.topic(f"readings.{domain}")
            keys, values = [], []
            for i in range(events):
                sensor, step = i % sensors, i // sensors
                t_ms = T0_MS + step * 1000 + rng.randint(0, 900)
                rec = _reading(domain, sensor, t_ms, step + 1, rng)
                value = encode(RECORDS[domain], rec)
                keys.append(rec["envelope"]["sensor_id"].encode())
                values.append(value)
                if rng.random() < 0.001:
                    keys.append(keys[-1])
                    values.append(value)
            producer.send_many(topic, keys, values)
        producer.flush()


def _blackhole(t_env, name: str, like) -> None:
    """A sink that discards rows, with ``like``'s columns: measures the job, not Kafka writes."""
    schema = Schema.new_builder().from_row_data_type(like.get_schema().to_row_data_type()).build()
    t_env.create_temporary_table(name, TableDescriptor.for_connector("blackhole").schema(schema).build())


def run_domain(settings: Settings, domain_name: str, parallelism: int) -> float:
    """Wall seconds of one bounded run of the domain job (blackhole sinks)."""
    domain = getattr(importlib.import_module(f"citystream.jobs.{domain_name}"), domain_name.upper())
    windows = Windows()
    t_env = table_environment(
        settings, job=f"bench-{domain_name}", parallelism=parallelism, checkpoint_interval=CHECKPOINT,
        overrides=window_options(windows),
    )  # fmt: skip
    t_env.execute_sql(
        raw_kafka_table(
            "raw", domain, windows, topic=settings.topic(f"readings.{domain_name}"),
            bootstrap=settings.kafka_bootstrap, bounded=True, group_id=f"bench-{domain_name}",
        )
    )  # fmt: skip
    out = process(t_env, domain, t_env.from_path("raw"), windows)
    stmt = t_env.create_statement_set()
    for what in ("aggregates", "late_events", "dead_letters", "sensor_health"):
        table = getattr(out, what)
        _blackhole(t_env, f"bh_{what}", table)
        stmt.add_insert(f"bh_{what}", table)
    start = time.perf_counter()
    stmt.execute().wait()
    return time.perf_counter() - start


#: What the baseline averages per grid sensor and minute.
METRICS = ("voltage_v", "frequency_hz", "active_power_kw")


def baseline(t_env: TableEnvironment, table: str, window_s: int = 60) -> Table:
    """Plain Flink SQL: one tumbling window of mean/min/max per sensor, as WindowAggregate-like rows."""
    stats = ", ".join(f"AVG({m}) AS avg_{m}, MIN({m}) AS min_{m}, MAX({m}) AS max_{m}" for m in METRICS)
    t_env.create_temporary_view(
        "bench_windowed",
        t_env.sql_query(f"""
        SELECT envelope.sensor_id AS sensor_id, window_start, window_end, COUNT(*) AS samples, {stats}
        FROM TABLE(TUMBLE(TABLE {table}, DESCRIPTOR(ts), INTERVAL '{int(window_s)}' SECOND))
        GROUP BY envelope.sensor_id, window_start, window_end"""),
    )
    return t_env.sql_query(
        "\nUNION ALL\n".join(
            f"""SELECT 'grid' AS domain, 'sensor' AS key_kind, sensor_id AS key_id, '{m}' AS metric,
                   window_start, window_end, samples, avg_{m} AS `mean`, min_{m} AS `min`, max_{m} AS `max`
                FROM bench_windowed"""
            for m in METRICS
        )
    )


def run_baseline(settings: Settings, parallelism: int) -> float:
    """Wall seconds of :func:`baseline` (avro format, one tumbling window) into a blackhole."""
    t_env = table_environment(
        settings, job="bench-baseline", parallelism=parallelism, checkpoint_interval=CHECKPOINT
    )
    t_env.execute_sql(
        kafka_table(
            "grid_readings", "citystream.GridReading", topic=settings.topic("readings.grid"),
            bootstrap=settings.kafka_bootstrap, bounded=True, group_id="bench-baseline",
            extra_columns="ts AS envelope.event_time, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND",
        )
    )  # fmt: skip
    result = baseline(t_env, "grid_readings")
    _blackhole(t_env, "bh_base", result)
    start = time.perf_counter()
    result.execute_insert("bh_base").wait()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="readings per domain")
    parser.add_argument("--sensors", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=1)
    args = parser.parse_args(argv)

    run_dir = Path(tempfile.mkdtemp(prefix="citystream-bench-"))
    base = Settings(run_dir=run_dir, kafka_port=free_port(), kafka_controller_port=free_port(),
                    flink_rest_port=free_port(), store_port=free_port())  # fmt: skip
    broker = Kafka(base)
    broker.start()
    try:
        empty = base.replace(topic_prefix="bench-empty.")
        full = base.replace(topic_prefix="bench.")
        t = time.perf_counter()
        produce(full, args.events, args.sensors)
        print(f"produced {3 * args.events:,} readings in {time.perf_counter() - t:.1f} s", flush=True)
        admin = AdminClient({"bootstrap.servers": base.kafka_bootstrap})
        for f in admin.create_topics(
            [NewTopic(empty.topic(f"readings.{d}"), 2, 1) for d in DOMAINS]
        ).values():
            f.result()
        runs: list[tuple[str, Callable[[Settings], float]]] = [
            ("baseline (SQL tumble, avro format)", lambda s: run_baseline(s, args.parallelism)),
            *((f"{d} job", lambda s, d=d: run_domain(s, d, args.parallelism)) for d in DOMAINS),
        ]
        print(f"parallelism {args.parallelism}, {args.events:,} events per run")
        print(f"{'job':38} {'start-up s':>10} {'run s':>8} {'events/s':>10} {'vs baseline':>11}")
        baseline_rate = None
        run_baseline(empty, args.parallelism)  # warm-up: the first job of a process pays JVM start-up and JIT
        for label, run in runs:
            startup = run(empty)
            total = run(full)
            rate = args.events / max(total - startup, 1e-3)
            baseline_rate = baseline_rate or rate
            print(
                f"{label:38} {startup:10.1f} {total:8.1f} {rate:10,.0f} {rate / baseline_rate:10.2f}x",
                flush=True,
            )
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
