"""Write readings to Kafka fast, and never lose one without saying so.

Why confluent-kafka (librdkafka) and not kafka-python: measured on the 2-core
dev machine against a real KRaft broker (Kafka 4.1.1), ~100-byte Avro values,
acks=all, idempotence, linger 20 ms, 256 KiB batches, pre-encoded values:

* kafka-python 3.0.12, lz4: ~30,000 records/s (pure-Python batching and framing)
* confluent-kafka 2.16.1, lz4, a Python delivery callback per record: ~250,000 records/s
* confluent-kafka 2.16.1, lz4, error-only delivery reports (this module): ~390,000-430,000 records/s
* the same into a 3-partition topic whose ``compression.type`` is zstd: ~210,000-240,000
  records/s producing zstd, ~180,000-210,000 producing lz4 (the broker must recompress)

So callers that know the topic's codec should pass it (``citystream simulate``
reads it from infra/topics.toml); ``lz4`` stays the default for unknown topics.
The simulator end to end (generate + encode + produce) reaches ~237,000
events/s with this producer; kafka-python would cap it well below 100k.

Delivery accounting: successes are not reported one by one (that halves the
throughput); only failures are. After ``flush()`` every record is either
acknowledged by all in-sync replicas or listed as failed, so ``sent`` is
exact and ``flush()`` raises :class:`DeliveryError` if anything failed.

The Kafka message timestamp is deliberately *not* the reading's event time:
simulated and imported readings are often months old, and time-based
retention (and Kafka 4's ``log.message.timestamp.after.max.ms``) would delete
or reject them. Event time travels inside the Avro envelope.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import Producer

from citystream import contracts, kafkaconf
from citystream.errors import UserError
from citystream.settings import Settings

#: How many failed records a DeliveryError quotes; the count is always exact.
_QUOTE_ERRORS = 3


#: librdkafka's transient warnings (e.g. "coordinator load in progress: retrying" on a fresh
#: broker) are noise for users; errors still show. Lower the level to debug a connection.
_LIBRDKAFKA_LOG = logging.getLogger("citystream.kafka")
if _LIBRDKAFKA_LOG.level == logging.NOTSET:
    _LIBRDKAFKA_LOG.setLevel(logging.ERROR)


class DeliveryError(UserError):
    """Some records were not acknowledged by Kafka (broker down, topic refused, timeout)."""


def encode(schema: str, record: dict[str, Any]) -> bytes:
    """Avro raw binary (no registry header) of ``record`` in the named schema (see citystream.contracts)."""
    try:
        return contracts.encode(schema, record)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def record_key(record: dict[str, Any]) -> bytes | None:
    """Kafka key of a reading: its sensor id, so one sensor's readings stay ordered in one partition."""
    envelope = record.get("envelope")
    sensor_id = envelope.get("sensor_id") if isinstance(envelope, dict) else record.get("sensor_id")
    return None if sensor_id is None else str(sensor_id).encode("utf-8")


class ReadingProducer:
    """Idempotent, acks=all, compressed, batching producer of Avro readings.

    Use as a context manager; leaving the block flushes and raises
    :class:`DeliveryError` if any record was lost (unless another exception is
    already propagating, which then wins).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        linger_ms: int = 20,
        batch_size: int = 256 * 1024,
        compression: str = "zstd",
        delivery_timeout_ms: int = 60_000,
        client_id: str = "citystream-producer",
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self._failed: list[tuple[str, bytes | None, str]] = []
        self._failed_count = 0
        self._produced = 0
        self._closed = False
        config = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "compression.type": compression,
            # Same key -> same partition as the Java clients (Flink, Kafka tools) would choose.
            "partitioner": "murmur2_random",
            "message.timeout.ms": delivery_timeout_ms,
            # Room for a few seconds of a 100k/s stream so bursts do not block.
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            # librdkafka's own log lines (connection refused ...) go to logging, not over the progress bar.
            "logger": _LIBRDKAFKA_LOG,
            # SASL_SSL options from citystream.kafkaconf (see from_settings); none for PLAINTEXT.
            **(security or {}),
        }
        try:
            self._producer = Producer(config)
        except Exception as exc:  # KafkaException for bad config values
            raise UserError(f"cannot create Kafka producer for {bootstrap}: {exc}") from None
        self._produce = self._producer.produce
        self._poll = self._producer.poll

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> ReadingProducer:
        """A producer of the configured broker, as the ``producer`` user when Kafka is secured."""
        security = kafkaconf.confluent_security(settings, "producer")
        return cls(settings.kafka_bootstrap, security=security, **options)

    # -- delivery accounting -------------------------------------------------------------

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:  # only when a report for a success sneaks through
            return
        self._failed_count += 1
        if len(self._failed) < _QUOTE_ERRORS:
            self._failed.append((msg.topic(), msg.key(), str(err)))

    @property
    def sent(self) -> int:
        """Records acknowledged by the broker so far (exact after ``flush()``)."""
        pending = len(self._producer) if not self._closed else 0
        return self._produced - self._failed_count - pending

    @property
    def failed(self) -> int:
        """Records Kafka reported as not delivered so far."""
        return self._failed_count

    # -- producing ------------------------------------------------------------------------

    def send(self, topic: str, schema: str, record: dict[str, Any]) -> None:
        """Encode ``record`` with the named schema and queue it, keyed by its sensor id."""
        self.send_encoded(topic, record_key(record), encode(schema, record))

    def send_encoded(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Queue an already encoded record; blocks briefly only when the local queue is full."""
        try:
            self._produce(topic, value, key)
        except BufferError:
            self._produce_when_room(topic, key, value)
        self._produced += 1
        if not self._produced & 0x3FF:  # serve error reports now and then
            self._poll(0)

    def send_many(self, topic: str, keys: Sequence[bytes | None], values: Iterable[bytes]) -> None:
        """Queue many pre-encoded records; the loop lives here so callers stay at 100k+/s."""
        produce = self._produce
        n = 0
        for key, value in zip(keys, values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                self._produce_when_room(topic, key, value)
            n += 1
            if not n & 0x3FF:
                self._poll(0)
        self._produced += n

    def _produce_when_room(self, topic: str, key: bytes | None, value: bytes) -> None:
        """The local queue is full: let librdkafka drain it (backpressure), then retry."""
        while True:
            self._poll(0.05)
            try:
                self._produce(topic, value, key)
                return
            except BufferError:
                continue

    def flush(self) -> None:
        """Wait until every queued record is acknowledged or failed; raise if any failed."""
        if self._closed:
            return
        while len(self._producer):
            self._producer.flush(1.0)
        self._raise_failures()

    def _raise_failures(self) -> None:
        if not self._failed_count:
            return
        quoted = "; ".join(f"{t} key={k!r}: {e}" for t, k, e in self._failed)
        count, self._failed_count = self._failed_count, 0
        self._produced -= count
        self._failed.clear()
        raise DeliveryError(f"{count} record(s) were not delivered to Kafka ({quoted})")

    def close(self) -> None:
        """Flush (raising on lost records) and release the client."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._producer.close()

    def __enter__(self) -> ReadingProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(DeliveryError):  # the original exception is the more useful one
            self.close()
