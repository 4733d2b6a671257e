"""ReadingProducer against a real broker: records arrive decodable, keyed, counted; losses raise."""

from __future__ import annotations

import pytest

from citystream import contracts
from citystream.connectors.producer import DeliveryError, ReadingProducer, record_key
from citystream.errors import UserError
from citystream.proc import free_port


def grid_record(i: int) -> dict:
    return {
        "envelope": {
            "sensor_id": f"grid-ss01-f1-{'abc'[i % 3]}",
            "site_id": "grid-ss01",
            "zone_id": "z01",
            "domain": "grid",
            "event_time": 1_767_571_200_000 + i * 20_000,
            "seq": i,
            "lat": 38.7,
            "lon": -9.1,
            "quality": 0,
        },
        "phase": "abc"[i % 3],
        "voltage_v": 230.0 + i / 10,
        "current_a": 100.0,
        "frequency_hz": 50.0,
        "active_power_kw": 20.0,
        "reactive_power_kvar": 5.0,
        "power_factor": 0.97,
    }


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` up to its current end, partition by partition."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"read-{topic}", "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=30)
        out: list[tuple[bytes | None, bytes]] = []
        for p in sorted(meta.topics[topic].partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            offset = low
            while offset < high:
                msg = consumer.poll(30)
                assert msg is not None, f"{topic}[{p}] stalled at offset {offset} of {high}"
                assert msg.error() is None, msg.error()
                out.append((msg.key(), msg.value()))
                offset = msg.offset() + 1
        return out
    finally:
        consumer.close()


def test_record_key_is_the_sensor_id() -> None:
    assert record_key(grid_record(0)) == b"grid-ss01-f1-a"
    assert record_key({"sensor_id": "x-1"}) == b"x-1"
    assert record_key({"other": 1}) is None


def test_unknown_schema_is_a_user_error() -> None:
    from citystream.connectors.producer import encode

    with pytest.raises(UserError):
        encode("citystream.NoSuchThing", {})


@pytest.mark.integration
def test_send_and_send_encoded_arrive_decodable_and_counted(kafka) -> None:
    topic = "producer-test.readings.grid"
    records = [grid_record(i) for i in range(30)]
    with ReadingProducer(kafka.bootstrap) as producer:
        for r in records[:20]:
            producer.send(topic, "citystream.GridReading", r)
        for r in records[20:]:
            producer.send_encoded(topic, record_key(r), contracts.encode("citystream.GridReading", r))
        producer.flush()
        assert producer.sent == 30
        assert producer.failed == 0
    got = read_topic(kafka.bootstrap, topic)
    assert len(got) == 30
    decoded = [contracts.decode("citystream.GridReading", v) for _, v in got]
    assert sorted(d["envelope"]["seq"] for d in decoded) == list(range(30))
    assert all(k == d["envelope"]["sensor_id"].encode() for (k, _), d in zip(got, decoded, strict=True))


@pytest.mark.integration
def test_send_many_keeps_per_key_order(kafka) -> None:
    topic = "producer-test.many"
    values = [contracts.encode("citystream.GridReading", grid_record(i)) for i in range(300)]
    keys = [record_key(grid_record(i)) for i in range(300)]
    with ReadingProducer(kafka.bootstrap, compression="zstd") as producer:
        producer.send_many(topic, keys, values)
    assert producer.sent == 300
    got = read_topic(kafka.bootstrap, topic)
    for key in set(keys):
        seqs = [contracts.decode("citystream.GridReading", v)["envelope"]["seq"] for k, v in got if k == key]
        assert seqs == sorted(seqs) and len(seqs) == 100


def test_unreachable_broker_raises_on_flush_and_counts_nothing() -> None:
    port = free_port()  # nothing listens there
    producer = ReadingProducer(f"127.0.0.1:{port}", delivery_timeout_ms=1500)
    producer.send("nowhere", "citystream.GridReading", grid_record(1))
    with pytest.raises(DeliveryError) as err:
        producer.flush()
    assert "1 record(s) were not delivered" in str(err.value)
    assert producer.sent == 0
    producer.close()


def test_context_manager_raises_delivery_error_on_exit() -> None:
    port = free_port()
    with pytest.raises(DeliveryError), ReadingProducer(f"127.0.0.1:{port}", delivery_timeout_ms=1500) as p:
        p.send("nowhere", "citystream.GridReading", grid_record(2))


def test_original_exception_wins_over_delivery_error() -> None:
    port = free_port()
    with pytest.raises(RuntimeError), ReadingProducer(f"127.0.0.1:{port}", delivery_timeout_ms=1500) as p:
        p.send("nowhere", "citystream.GridReading", grid_record(3))
        raise RuntimeError("boom")
