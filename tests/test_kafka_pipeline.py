"""Kafka -> Flink -> Kafka -> ClickHouse with the real broker, a MiniCluster and the real store.

Proves the pinned Flink connector and Avro format read what the producer
writes (raw Avro from the contracts in avro/) and write what the loader
decodes, and that loading the same topic range twice changes nothing visible.
"""

from __future__ import annotations

import random

import pytest
from citystream.jobs.windows import GRID_METRICS

from citystream import contracts, demo

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def produced(kafka) -> tuple[object, list[dict]]:
    from citystream.connectors.producer import ReadingProducer

    settings = kafka.settings_.replace(topic_prefix="pipeline.")
    rows = demo.readings(sensors=3, minutes=3)
    shuffled = rows[:]
    # Out-of-order delivery within the watermark bound (5 s = one step): swap neighbours.
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
    from kafka import KafkaConsumer

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
    from citystream.jobs.runtime import table_environment
    from citystream.jobs.windows import build, window_aggregates

    settings, _ = produced
    t_env = table_environment(settings, parallelism=2)
    build(t_env, settings, bounded=True)
    window_aggregates(t_env, t_env.from_path("grid_readings")).execute_insert("aggregates").wait()
    return _consume_all(settings, settings.topic("aggregates"))


def test_flink_reads_producer_avro_and_writes_contract_avro(produced, aggregates) -> None:
    _, rows = produced
    want = demo.expected(rows, GRID_METRICS)
    got = {
        (a["key_id"], a["metric"], a["window_start"]): demo.Expected(
            a["samples"], a["mean"], a["min"], a["max"]
        )
        for a in aggregates
    }
    assert len(aggregates) == len(want) == 3 * 3 * len(GRID_METRICS)
    assert demo._compare(want, got) == []
    assert all(a["window_end"] - a["window_start"] == 60_000 for a in aggregates)


def test_loading_twice_changes_nothing_visible(produced, aggregates, store) -> None:
    from citystream.connectors.loader import load

    from citystream.store.client import connect

    settings = produced[0].replace(store_port=store.settings.store_port)
    query = (
        "SELECT key_id, metric, window_start, samples, mean FROM window_aggregates FINAL "
        "WHERE key_id LIKE 'demo-grid-%' ORDER BY key_id, metric, window_start"
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
