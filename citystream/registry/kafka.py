"""The registry's source of truth: the compacted ``sensors`` topic, read and written from Python.

Why a topic and not a table: the jobs join readings against the registry as a changelog,
so a sensor registered while they run counts from then on without a restart; compaction
keeps the latest message per sensor id forever (``infra/topics.toml``), a tombstone removes
an entry registered by mistake, and the store's copy is loaded from the same topic.

Framing is the same as every other topic: key = sensor id (UTF-8), value = raw Avro
``citystream.Sensor`` (no registry header), zstd. Writers are idempotent with acks=all and
flush before returning, so "published" means the broker has it. Clients connect through
:mod:`citystream.kafkaconf`, as the ``producer`` user on a secured stack (its ACLs let the
sources write and read ``sensors``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from citystream import kafkaconf
from citystream.errors import UserError
from citystream.registry.model import RETIRED, Sensor, sensors_by_id
from citystream.settings import Settings

#: Topic suffix under the settings' prefix.
TOPIC = "sensors"
#: The component user registry clients connect as on a secured stack.
USER = "producer"
_LOG = logging.getLogger("citystream.kafka")
_STALL_S = 30.0


def topic(settings: Settings) -> str:
    """The full name of the sensors topic, e.g. ``citystream.sensors``."""
    return settings.topic(TOPIC)


def ensure_topic(settings: Settings) -> None:
    """Create the declared topics (the sensors topic among them) if missing.

    Why: producing to a missing topic would let a PLAINTEXT broker auto-create it with
    delete-after-7-days retention instead of compaction, losing the registry silently.
    """
    from citystream.topics import ensure_topics  # kafka-python: only when publishing

    ensure_topics(
        settings.kafka_bootstrap,
        settings.topic_prefix,
        settings.topics_spec,
        security=kafkaconf.kafka_python(settings, "admin"),
    )


class _Writer:
    """An idempotent, zstd, acks=all producer that knows which of its messages failed."""

    def __init__(self, settings: Settings) -> None:
        self.topic = topic(settings)
        self.failed: list[str] = []
        config = {
            **kafkaconf.confluent(settings, USER),
            "client.id": "citystream-registry",
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": "zstd",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "message.timeout.ms": 30_000,
            "logger": _LOG,
        }
        try:
            self.producer = Producer(config)
        except KafkaException as exc:
            raise UserError(f"cannot create a Kafka producer for {settings.kafka_bootstrap}: {exc}") from None
        self.settings = settings

    def _report(self, err: Any, msg: Any) -> None:
        if err is not None:
            key = msg.key().decode("utf-8", "replace") if msg.key() else "?"
            self.failed.append(f"{key}: {err}")

    def send(self, key: str, value: bytes | None) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value, key.encode("utf-8"), on_delivery=self._report)
                return
            except BufferError:
                self.producer.poll(0.05)

    def finish(self, what: str) -> None:
        left = self.producer.flush(60.0)
        if left or self.failed:
            detail = "; ".join(self.failed[:3]) or f"{left} not acknowledged within 60 s"
            raise UserError(
                kafkaconf.redact(f"{what} did not reach Kafka topic {self.topic} ({detail})", self.settings)
            )


def publish(settings: Settings, sensors: Iterable[Sensor], *, ensure: bool = True) -> int:
    """Upsert ``sensors`` (each becomes its id's current entry); how many were acknowledged.

    ``ensure`` creates the topic first when missing (callers that already did pass False).
    """
    entries = list(sensors_by_id(sensors).values())
    if not entries:
        return 0
    if ensure:
        ensure_topic(settings)
    writer = _Writer(settings)
    for sensor in entries:
        writer.send(sensor.sensor_id, sensor.encode())
    writer.finish(f"{len(entries)} registry entr{'y' if len(entries) == 1 else 'ies'}")
    return len(entries)


def remove(settings: Settings, sensor_id: str, *, ensure: bool = True) -> None:
    """Tombstone ``sensor_id``: its entry disappears (a sensor registered by mistake, not a retired one)."""
    if ensure:
        ensure_topic(settings)
    writer = _Writer(settings)
    writer.send(sensor_id, None)
    writer.finish(f"the tombstone of {sensor_id}")


def current(settings: Settings) -> dict[str, Sensor]:
    """Every current entry: the topic read from its start to its end offsets, latest per id.

    A tombstone deletes its id; a message that does not decode or validate (written by
    something else) is skipped with a warning rather than hiding every other sensor.
    An absent topic is an empty registry.
    """
    consumer = Consumer(
        {
            **kafkaconf.confluent(settings, USER),
            # librdkafka wants a group id; nothing is subscribed or committed with it
            "group.id": "citystream-registry-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
            "logger": _LOG,
        }
    )
    name = topic(settings)
    try:
        try:
            meta = consumer.list_topics(name, timeout=_STALL_S)
        except KafkaException as exc:
            text = f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}"
            raise UserError(kafkaconf.redact(text, settings)) from None
        info = meta.topics.get(name)
        if info is None or info.error is not None or not info.partitions:
            return {}
        out: dict[str, Sensor] = {}
        for p in sorted(info.partitions):
            _read_partition(consumer, name, p, out)
        return out
    finally:
        consumer.close()


def _read_partition(consumer: Consumer, name: str, partition: int, out: dict[str, Sensor]) -> None:
    low, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=_STALL_S)
    if high <= low:
        return
    consumer.assign([TopicPartition(name, partition, low)])
    deadline = time.monotonic() + _STALL_S
    offset = low
    while offset < high:
        msg = consumer.poll(1.0)
        if msg is None:
            if time.monotonic() > deadline:
                raise UserError(f"reading {name}[{partition}] stalled at offset {offset} of {high}")
            continue
        if msg.error() is not None:
            raise UserError(f"reading {name}[{partition}]: {msg.error()}")
        deadline = time.monotonic() + _STALL_S
        offset = msg.offset() + 1
        key = (msg.key() or b"").decode("utf-8", "replace")
        if msg.value() is None:
            out.pop(key, None)
            continue
        try:
            out[key] = Sensor.decode(msg.value())
        except (ValueError, UserError) as exc:
            _LOG.warning("skipping %s offset %d (key %r): %s", name, msg.offset(), key, exc)


def register(settings: Settings, sensors: Iterable[Sensor], *, ensure: bool = True) -> int:
    """Make sure each of ``sensors`` is registered, as sources do; how many entries were written.

    Why not a plain :func:`publish`: a source re-run (the simulator with another start, an
    import of the next month) must not move a sensor's installation later, or readings of
    the earlier run would join no version. So an entry already there keeps the earlier
    ``installed_at``, an unchanged one is not written again, and a sensor an operator retired
    stays retired (its readings are dead-lettered, as the operator decided).
    """
    wanted = sensors_by_id(sensors)
    if not wanted:
        return 0
    if ensure:
        ensure_topic(settings)
    have = current(settings)
    changed = [s for s in (merge(have.get(i), s) for i, s in wanted.items()) if s is not None]
    return publish(settings, changed, ensure=False)


def merge(existing: Sensor | None, new: Sensor) -> Sensor | None:
    """What a source's registration of ``new`` writes over ``existing``; None = nothing to write."""
    if existing is None:
        return new
    if existing.status == RETIRED:
        return None
    installed = min(existing.installed_at, new.installed_at)
    candidate = replace(new, installed_at=installed, valid_from=installed)
    return None if candidate == existing else candidate
