"""Kafka -> Flink -> Kafka -> ClickHouse with the real broker, a MiniCluster and the real store.

Proves the pinned Flink connector reads what the producer writes (raw Avro
from the contracts in avro/) and the grid job writes what the loader
decodes, and that loading the same topic range twice changes nothing visible.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

import pytest
from kafka import KafkaConsumer

from citystream import contracts
from citystream.catalog import GRID as GRID_SPEC
from citystream.connectors.loader import load
from citystream.connectors.producer import ReadingProducer
from citystream.jobs.common import Windows, process, window_options
from citystream.jobs.grid import GRID
from citystream.jobs.kafka_io import build, insert_all
from citystream.jobs.runtime import table_environment
from citystream.store.client import connect

pytestmark = pytest.mark.integration

T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
STEP_MS = 5_000
#: Metrics checked against the independent averages below (plain means of a reading column).
CHECKED = ("voltage_v", "frequency_hz", "active_power_kw")


@dataclass(frozen=True)
class Expected:
    samples: int
    mean: float
    min: float
    max: float


def readings(sensors: int, minutes: int) -> list[dict]:
    """Deterministic grid readings: each sensor has its own level, a ripple and no noise."""
    out = []
    per_minute = 60_000 // STEP_MS
    for s in range(sensors):
        for i in range(minutes * per_minute):
            phase = 2 * math.pi * i / (per_minute * 7)
            out.append(
                {
                    "envelope": {
                        "sensor_id": f"demo-grid-{s + 1:02d}", "site_id": f"demo-ss{s // 2 + 1:02d}",
                        "zone_id": "demo-z01", "domain": "grid", "event_time": T0_MS + i * STEP_MS, "seq": i,
                        "lat": 52.52 + 0.01 * s, "lon": 13.40, "quality": 0,
                    },
                    "phase": "abc"[s % 3],
                    "voltage_v": round(230.0 + 2.0 * s + 1.5 * math.sin(phase), 3),
                    "current_a": 40.0 + s,
                    "frequency_hz": round(50.0 + 0.02 * math.cos(phase), 4),
                    "active_power_kw": round(8.0 + s + 0.5 * math.sin(phase + 1.0), 3),
                    "reactive_power_kvar": 1.0,
                    "power_factor": 0.97,
                }
            )  # fmt: skip
    return out


def expected(rows: list[dict], window_ms: int = 60_000) -> dict[tuple, Expected]:
    """(sensor, metric, window_start_ms) -> the statistics Flink must produce, computed independently."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        start = r["envelope"]["event_time"] // window_ms * window_ms
        for m in CHECKED:
            groups[(r["envelope"]["sensor_id"], m, start)].append(r[m])
    return {k: Expected(len(v), math.fsum(v) / len(v), min(v), max(v)) for k, v in groups.items()}


def compare(want: dict[tuple, Expected], got: dict[tuple, Expected]) -> list[str]:
    problems = []
    for key, w in sorted(want.items()):
        g = got.get(key)
        if g is None:
            problems.append(f"{key}: missing")
        elif g.samples != w.samples or any(
            not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            for a, b in ((g.mean, w.mean), (g.min, w.min), (g.max, w.max))
        ):
            problems.append(f"{key}: got {g}, expected {w}")
    problems += [f"{key}: unexpected row" for key in sorted(set(got) - set(want))]
    return problems


@pytest.fixture(scope="module")
def produced(kafka) -> tuple[object, list[dict]]:
    settings = kafka.settings_.replace(topic_prefix="pipeline.")
    rows = readings(sensors=3, minutes=3)
    # In event-time order across sensors, then out of order within the watermark bound (5 s =
    # one step): swap neighbours.
    shuffled = sorted(rows, key=lambda r: (r["envelope"]["event_time"], r["envelope"]["sensor_id"]))
    rng = random.Random(7)
    for i in range(0, len(shuffled) - 1, 2):
        if rng.random() < 0.5:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        for r in shuffled:
            producer.send(settings.topic("readings.grid"), "citystream.GridReading", r)
        producer.flush()
    return settings, rows


def _consume_all(settings, topic: str) -> list[dict]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, isolation_level="read_committed",
    )  # fmt: skip
    try:
        return [contracts.decode("citystream.WindowAggregate", m.value) for m in consumer]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def aggregates(produced) -> list[dict]:
    """The grid job at parallelism 2, bounded, Kafka in and out (its other outputs stay empty)."""
    settings, _ = produced
    windows = Windows()
    t_env = table_environment(
        settings, job="pipeline", parallelism=2, checkpoint_interval="2 s", overrides=window_options(windows)
    )
    sinks = build(t_env, settings, GRID, windows, bounded=True)
    insert_all(t_env, process(t_env, GRID, t_env.from_path("grid_raw"), windows), sinks).wait()
    return _consume_all(settings, settings.topic("aggregates"))


def test_flink_reads_producer_avro_and_writes_contract_avro(produced, aggregates) -> None:
    _, rows = produced
    want = expected(rows)
    minutes = [
        a for a in aggregates if a["key_kind"] == "sensor" and a["window_end"] - a["window_start"] == 60_000
    ]
    got = {
        (a["key_id"], a["metric"], a["window_start"]): Expected(a["samples"], a["mean"], a["min"], a["max"])
        for a in minutes
        if a["metric"] in CHECKED
    }
    assert len(got) == len(want) == 3 * 3 * len(CHECKED)
    assert compare(want, got) == []
    # Every metric of the grid job, once per sensor and minute, and nothing revised.
    assert len(minutes) == 3 * 3 * len(GRID_SPEC.metrics)
    assert {a["revision"] for a in aggregates} == {0}


def test_loading_twice_changes_nothing_visible(produced, aggregates, store) -> None:
    settings = produced[0].replace(store_port=store.settings.store_port)
    query = (
        "SELECT domain, key_kind, key_id, metric, window_start, window_end, samples, mean "
        "FROM window_aggregates FINAL WHERE key_id LIKE 'demo-%' "
        "ORDER BY domain, key_kind, key_id, metric, window_start, window_end"
    )
    first = load(settings, until_end=True, group_id="loader-once")
    assert first.loaded == len(aggregates) and first.undecodable == 0
    client = connect(settings, readonly=True)
    try:
        once = client.query(query).result_rows
        # A second consumer group re-delivers the whole range, as after a crash before commit.
        again = load(settings, until_end=True, group_id="loader-twice")
        assert again.loaded == len(aggregates)
        assert client.query(query).result_rows == once
        assert len(once) == len(aggregates)
    finally:
        client.close()
