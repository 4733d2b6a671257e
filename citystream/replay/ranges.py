"""Which records a replay reads: a time range resolved to offsets per partition, or exact offsets.

A replay is defined by offsets, never by times: ``[start, end)`` of every
partition of the input topic. Times (``--from``/``--to``) are only a way to
find offsets, with the broker's offsets-for-times, which looks at the Kafka
record timestamps - when a record was produced (the producer deliberately does
not stamp readings with their event time, see connectors/producer.py). The
offsets a replay used are written next to its results, so a replay can be
repeated exactly (``--offsets FILE``) whatever retention or new data did since.

:func:`plan` is the pure arithmetic; :func:`resolve_times` and
:func:`current_ranges` ask the broker for the numbers it needs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from citystream import kafkaconf
from citystream.errors import UserError
from citystream.jobs.cli import load_offsets
from citystream.settings import Settings

#: topic -> partition -> (start, end), end exclusive.
Ranges = dict[str, dict[int, tuple[int, int]]]
#: (topic, partition)
Key = tuple[str, int]

__all__ = [
    "Ranges",
    "current_ranges",
    "parse_time",
    "plan",
    "read_ranges",
    "record_count",
    "resolve_times",
    "write_ranges",
]


def parse_time(text: str) -> int:
    """An ISO 8601 time (``2026-01-05T10:00``, ``...Z``, ``...+01:00``) -> epoch ms; naive means UTC."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{text!r} is not an ISO 8601 time such as 2026-01-05T10:00:00Z") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def plan(
    bounds: Mapping[Key, tuple[int, int]],
    at_from: Mapping[Key, int | None],
    at_to: Mapping[Key, int | None],
) -> Ranges:
    """Per partition ``[start, end)`` from the broker's answers; pure, so it is tested on its own.

    ``bounds`` are the partitions' (log start, log end) offsets; ``at_from`` and
    ``at_to`` the offsets-for-times answers for the two times: the first offset
    whose timestamp is at or after the time, None when every record is older
    (then the log end). A start before the log start (retention deleted it)
    begins at the log start; an end never precedes the start, so a partition
    with nothing in the range gets an empty range and is still listed (the Flink
    source needs every partition named).
    """
    out: Ranges = {}
    for key in sorted(bounds):
        low, high = bounds[key]
        start_at, end_at = at_from.get(key), at_to.get(key)
        start = min(max(high if start_at is None or start_at < 0 else start_at, low), high)
        end = min(max(high if end_at is None or end_at < 0 else end_at, start), high)
        out.setdefault(key[0], {})[key[1]] = (start, end)
    return out


def record_count(ranges: Mapping[str, Mapping[int, tuple[int, int]]]) -> int:
    """Offsets covered (an upper bound on records: transaction markers take offsets too)."""
    return sum(e - s for parts in ranges.values() for s, e in parts.values())


def _consumer(settings: Settings) -> Consumer:
    # A group id is required by librdkafka, but nothing is ever committed or subscribed with it.
    return Consumer(
        {
            **kafkaconf.confluent(settings, "jobs"),
            "group.id": "citystream-replay-planner",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )


def _partitions(consumer: Consumer, topics: Iterable[str]) -> list[Key]:
    metadata = consumer.list_topics(timeout=10)
    keys = []
    for topic in topics:
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise UserError(f"topic {topic} does not exist on {metadata.orig_broker_name}")
        keys += [(topic, p) for p in sorted(info.partitions)]
    return keys


def _bounds(consumer: Consumer, keys: list[Key]) -> dict[Key, tuple[int, int]]:
    return {k: consumer.get_watermark_offsets(TopicPartition(*k), timeout=10) for k in keys}


def resolve_times(settings: Settings, topics: Iterable[str], from_ms: int, to_ms: int) -> Ranges:
    """The offsets of records produced in ``[from_ms, to_ms)`` in every partition of ``topics``."""
    if to_ms <= from_ms:
        raise UserError("--to must be after --from")
    consumer = _consumer(settings)
    try:
        keys = _partitions(consumer, topics)
        bounds = _bounds(consumer, keys)
        answers = []
        for at in (from_ms, to_ms):
            found = consumer.offsets_for_times([TopicPartition(t, p, at) for t, p in keys], timeout=10)
            answers.append({(tp.topic, tp.partition): tp.offset for tp in found})
    finally:
        consumer.close()
    return plan(bounds, answers[0], answers[1])


def current_ranges(settings: Settings, topics: Iterable[str], *, from_start: bool = True) -> Ranges:
    """Everything in ``topics`` now: ``[log start, log end)`` (or empty at the end, ``from_start=False``).

    What a live ``--bounded`` run reads, recorded before it starts.
    """
    consumer = _consumer(settings)
    try:
        bounds = _bounds(consumer, _partitions(consumer, topics))
    finally:
        consumer.close()
    return plan(bounds, {k: lo if from_start else hi for k, (lo, hi) in bounds.items()}, {})


def read_ranges(path: Path) -> Ranges:
    """An offsets file (JSON ``{topic: {partition: [start, end]}}``), the format the jobs read."""
    try:
        return load_offsets(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def write_ranges(ranges: Mapping[str, Mapping[int, tuple[int, int]]], path: Path) -> Path:
    """Write ``ranges`` as an offsets file (:func:`read_ranges` reads it back unchanged)."""
    body = {t: {str(p): [s, e] for p, (s, e) in sorted(parts.items())} for t, parts in sorted(ranges.items())}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path
