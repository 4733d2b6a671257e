"""Kafka result topics -> ClickHouse, in batches, committing offsets only after the store acknowledged.

Contract:
* at-least-once delivery into tables that are idempotent by key, so the
  visible result is exactly-once: a batch re-delivered after a crash between
  insert and commit leaves no duplicate;
* batches are bounded by size and time; a store that is slow or down is
  retried with exponential backoff, and nothing is committed (so nothing is
  lost) until it answers; records of one partition are written in order;
* reads only committed Kafka transactions (the jobs write transactionally);
* a record that cannot be decoded is counted and written to the dead-letter
  topic by the caller's choice, never silently dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from citystream.settings import Settings
from connectors.clickhouse import ClickHouseSink

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Which topic lands in which table, decoded with which Avro record."""

    topic: str
    record: str
    table: str
    columns: tuple[str, ...]
    timestamp_columns: tuple[str, ...] = ()


def routes(settings: Settings) -> list[Route]:
    """The result topics the loader moves, by settings' topic prefix."""
    return [
        Route(
            topic=settings.topic("aggregates"),
            record="citystream.WindowAggregate",
            table="window_aggregates",
            columns=(
                "domain", "key_kind", "key_id", "metric", "window_start", "window_end",
                "samples", "mean", "min", "max", "late", "duplicates", "revision",
            ),
            timestamp_columns=("window_start", "window_end"),
        )
    ]  # fmt: skip


@dataclass
class LoadStats:
    loaded: int = 0
    batches: int = 0
    undecodable: int = 0
    retries: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)


def _end_reached(consumer: Any, end_offsets: dict[Any, int]) -> bool:
    return all(consumer.position(tp) >= off for tp, off in end_offsets.items())


def load(
    settings: Settings,
    *,
    until_end: bool = True,
    batch_rows: int = 50_000,
    batch_ms: int = 1000,
    group_id: str = "citystream-loader",
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[LoadStats], None] | None = None,
    max_backoff_s: float = 30.0,
) -> LoadStats:
    """Move result records into the store.

    With ``until_end`` it stops once the offsets that were current at start are loaded.
    """
    from kafka import KafkaConsumer, TopicPartition

    from citystream import contracts
    from citystream.store.client import connect

    by_topic = {r.topic: r for r in routes(settings)}
    client = connect(settings)
    sinks = {
        r.topic: ClickHouseSink(client, r.table, r.columns, timestamp_columns=r.timestamp_columns)
        for r in by_topic.values()
    }
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=batch_rows,
        client_id="citystream-loader",
    )
    stats = LoadStats()
    try:
        partitions = [
            TopicPartition(t, p) for t in by_topic for p in sorted(consumer.partitions_for_topic(t) or [])
        ]
        consumer.assign(partitions)
        end_offsets = consumer.end_offsets(partitions) if until_end else {}
        while not stop():
            if until_end and _end_reached(consumer, end_offsets):
                break
            polled = consumer.poll(timeout_ms=batch_ms, max_records=batch_rows)
            if not polled:
                continue
            spans = []
            for tp, messages in polled.items():
                route, sink = by_topic[tp.topic], sinks[tp.topic]
                for msg in messages:
                    try:
                        sink.add(contracts.decode(route.record, msg.value))
                    except ValueError as exc:
                        stats.undecodable += 1
                        log.warning(
                            "undecodable record %s[%d]@%d: %s", tp.topic, tp.partition, msg.offset, exc
                        )
                spans.append(f"{tp.topic}:{tp.partition}:{messages[0].offset}-{messages[-1].offset}")
            token = "|".join(sorted(spans))
            _flush_with_retry(sinks, token, stats, max_backoff_s, stop)
            consumer.commit()
            stats.batches += 1
            if progress:
                progress(stats)
    finally:
        for sink in sinks.values():
            sink.close()
        consumer.close(autocommit=False)
        client.close()
    return stats


def _flush_with_retry(
    sinks: dict[str, ClickHouseSink],
    token: str,
    stats: LoadStats,
    max_backoff_s: float,
    stop: Callable[[], bool],
) -> None:
    backoff = 0.5
    for topic, sink in sinks.items():
        if not sink.pending:
            continue
        sink.token = f"{token}#{topic}"
        while True:
            try:
                written = sink.flush()
                stats.loaded += written
                stats.per_topic[topic] = stats.per_topic.get(topic, 0) + written
                break
            except Exception as exc:
                if stop():
                    raise
                stats.retries += 1
                log.warning("store write to %s failed (%s); retrying in %.1fs", sink.table, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, max_backoff_s)
