"""The grid job's 1-minute windows on a real Flink MiniCluster, at parallelism 1 and 2, by hand.

A short, hand-checkable input (one reading delivered out of order, within
the watermark's bound) through ``jobs.grid``'s Kafka source and
``jobs.common.process``: the per-sensor 1-minute rows must be exactly the
expected list computed by hand below. Also: ``process`` is pure and names
what it registers after the domain, key and window kind only, so the plan
(and the savepoint state uids) does not depend on what the process planned before.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer

from citystream import contracts
from citystream.catalog import GRID as GRID_SPEC
from citystream.connectors.producer import ReadingProducer
from citystream.jobs.common import Windows, process, window_options
from citystream.jobs.grid import GRID
from citystream.jobs.kafka_io import build, insert_all, raw_kafka_table
from citystream.jobs.runtime import table_environment
from citystream.jobs.traffic import TRAFFIC
from citystream.jobs.water import WATER
from citystream.settings import Settings

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 5, 0, 0, 0, tzinfo=dt.UTC)  # fixed epoch
T0_MS = int(T0.timestamp() * 1000)
#: The watermark's bound here: the out-of-order reading below is within it, so nothing is late.
OUT_OF_ORDER_S = 30


def reading(sensor: str, second: int, voltage: float, seq: int) -> dict:
    return {
        "envelope": {"sensor_id": sensor, "site_id": "ss1", "zone_id": "z1", "domain": "grid",
                     "event_time": T0_MS + second * 1000, "seq": seq, "lat": None, "lon": None, "quality": 0},
        "phase": "a", "voltage_v": voltage, "current_a": 10.0, "frequency_hz": 50.0,
        "active_power_kw": 2.0, "reactive_power_kvar": 0.0, "power_factor": 1.0,
    }  # fmt: skip


# Delivery order as a broker would hand them over: g1@80s arrives after g1@100s.
READINGS = [
    reading("g1", 0, 230.0, 1),
    reading("g2", 5, 220.0, 1),
    reading("g1", 20, 232.0, 2),
    reading("g2", 35, 224.0, 2),
    reading("g1", 40, 234.0, 3),
    reading("g1", 60, 240.0, 4),
    reading("g1", 100, 242.0, 6),
    reading("g1", 80, 241.0, 5),
    reading("g2", 130, 210.0, 3),
]

# (sensor, metric, window_start, window_end, samples, mean, min, max)
EXPECTED_VOLTAGE = [
    ("g1", "voltage_v", "00:00", "00:01", 3, 232.0, 230.0, 234.0),
    ("g1", "voltage_v", "00:01", "00:02", 3, 241.0, 240.0, 242.0),
    ("g2", "voltage_v", "00:00", "00:01", 2, 222.0, 220.0, 224.0),
    ("g2", "voltage_v", "00:02", "00:03", 1, 210.0, 210.0, 210.0),
]


@pytest.fixture(scope="module")
def produced(kafka) -> dict[int, Settings]:
    """READINGS on a one-partition grid topic per parallelism (the topic's order is the delivery order)."""
    out = {}
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for p in (1, 2):
        settings = kafka.settings_.replace(topic_prefix=f"windows{p}.")
        for f in admin.create_topics([NewTopic(settings.topic("readings.grid"), 1, 1)]).values():
            f.result()
        with ReadingProducer(settings.kafka_bootstrap) as producer:
            for r in READINGS:
                producer.send(settings.topic("readings.grid"), "citystream.GridReading", r)
            producer.flush()
        out[p] = settings
    return out


def _sensor_minutes(settings: Settings, parallelism: int) -> list[tuple]:
    """The grid job (Kafka in, Kafka out) run bounded; its final per-sensor 1-minute rows."""
    domain = dataclasses.replace(GRID, out_of_order_s=OUT_OF_ORDER_S)
    windows = Windows()
    t_env = table_environment(
        settings, job="windows", parallelism=parallelism, checkpoint_interval="2 s",
        overrides=window_options(windows),
    )  # fmt: skip
    sinks = build(t_env, settings, domain, windows, bounded=True, watermark_on_event=True)
    insert_all(t_env, process(t_env, domain, t_env.from_path("grid_raw"), windows), sinks).wait()
    consumer = KafkaConsumer(
        settings.topic("aggregates"), bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest", consumer_timeout_ms=4000, isolation_level="read_committed",
    )  # fmt: skip
    try:
        rows = [contracts.decode("citystream.WindowAggregate", m.value) for m in consumer]
    finally:
        consumer.close()
    assert {r["revision"] for r in rows} == {0} and {r["late"] for r in rows} == {0}
    return sorted(
        (
            r["key_id"], r["metric"],
            dt.datetime.fromtimestamp(r["window_start"] / 1000, dt.UTC).strftime("%H:%M"),
            dt.datetime.fromtimestamp(r["window_end"] / 1000, dt.UTC).strftime("%H:%M"),
            r["samples"], r["mean"], r["min"], r["max"],
        )
        for r in rows
        if r["key_kind"] == "sensor" and r["window_end"] - r["window_start"] == 60_000
    )  # fmt: skip


@pytest.fixture(scope="module", params=[1, 2], ids=["p1", "p2"])
def sensor_minutes(request, produced) -> list[tuple]:
    return _sensor_minutes(produced[request.param], request.param)


def test_tumbling_averages_per_sensor(sensor_minutes: list[tuple]) -> None:
    assert [r for r in sensor_minutes if r[1] == "voltage_v"] == EXPECTED_VOLTAGE


def test_one_row_per_sensor_metric_and_window(sensor_minutes: list[tuple]) -> None:
    keys = [(r[0], r[1], r[2]) for r in sensor_minutes]
    assert len(keys) == len(set(keys)) == len(EXPECTED_VOLTAGE) * len(GRID_SPEC.metrics)
    frequency = [r for r in sensor_minutes if r[1] == "frequency_hz"]
    assert {r[5] for r in frequency} == {50.0}
    assert [r[4] for r in frequency] == [3, 3, 2, 1]


def _plan_names(domains: list) -> tuple[list[str], list[str], dict[str, str]]:
    """Process ``domains`` in order in a fresh environment: (grid's views, grid's state uids, options)."""

    w = Windows()
    t_env = table_environment(Settings(), job="names", overrides=window_options(w))
    before = t_env.get_config().get_configuration().to_dict()
    grid = None
    for d in domains:
        t_env.execute_sql(raw_kafka_table(f"{d.name}_raw", d, w, topic="unused", bootstrap="127.0.0.1:9"))
        out = process(t_env, d, t_env.from_path(f"{d.name}_raw"), w)
        grid = out if d.name == "grid" else grid
    assert t_env.get_config().get_configuration().to_dict() == before  # process changes no option
    views = sorted(v for v in t_env.list_temporary_views() if v.startswith("_cs_grid"))
    plan = grid.aggregates.explain() + grid.sensor_health.explain()
    return views, sorted(set(re.findall(r"'(_cs_grid_\w+)'", plan))), before


def test_views_and_state_uids_depend_on_domain_key_and_window_kind_only() -> None:
    alone, uids, _ = _plan_names([GRID])
    assert uids == [
        "_cs_grid_sensor_hop", "_cs_grid_sensor_tumble", "_cs_grid_silence", "_cs_grid_substation_tumble"
    ]  # fmt: skip
    # The same job planned after others (which used to advance a counter) names everything alike.
    assert _plan_names([TRAFFIC, WATER, GRID])[:2] == (alone, uids)
    assert _plan_names([WATER, GRID, TRAFFIC])[:2] == (alone, uids)


def test_process_refuses_an_environment_without_window_options() -> None:
    t_env = table_environment(Settings(), job="bare")
    t_env.execute_sql(raw_kafka_table("grid_raw", GRID, Windows(), topic="unused", bootstrap="127.0.0.1:9"))
    with pytest.raises(ValueError, match="window options"):
        process(t_env, GRID, t_env.from_path("grid_raw"), Windows())
