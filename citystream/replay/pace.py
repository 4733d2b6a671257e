"""``--speed``: feed a replay at the pace the records were produced (or N times it).

Why a copier and not a throttle in the job: the domain jobs are SQL over the
Flink Kafka source, which has no rate limit of its own; slowing the job
itself would change its code. So a paced replay copies the range, record by
record and partition by partition, into a topic of its own, sleeping so that
a record goes out ``(its Kafka timestamp - the first one's) / speed`` after
the start; the job reads that copy. The copy's offsets are known before it
is written (a plain idempotent producer gives record i of a partition offset
i), so the job is still bounded by exact offsets and ends where the copy ends.

Pacing follows the Kafka timestamps (when records were produced, see
:mod:`citystream.replay.ranges`), not the readings' event time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Producer, TopicPartition

from citystream import kafkaconf
from citystream.replay.ranges import Ranges
from citystream.settings import Settings


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        {
            **kafkaconf.confluent(settings, "jobs"),
            "group.id": "citystream-replay-pacer",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )


def read_range(settings: Settings, topic: str, parts: Mapping[int, tuple[int, int]]) -> list[tuple]:
    """Every committed record of ``[start, end)`` per partition: (timestamp, partition, key, value).

    Sorted by timestamp, then partition and offset: the order they were produced in.
    """
    todo = {p: (s, e) for p, (s, e) in parts.items() if e > s}
    out: list[tuple] = []
    if not todo:
        return out
    consumer = _consumer(settings)
    try:
        consumer.assign([TopicPartition(topic, p, s) for p, (s, _) in todo.items()])
        open_parts = set(todo)
        while open_parts:
            for msg in consumer.consume(num_messages=10_000, timeout=1.0):
                p = msg.partition()
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_parts.discard(p)
                    continue
                if p not in open_parts:
                    continue
                if msg.offset() >= todo[p][1]:
                    open_parts.discard(p)
                    consumer.incremental_unassign([TopicPartition(topic, p, OFFSET_END)])
                    continue
                out.append((msg.timestamp()[1], p, msg.offset(), msg.key(), msg.value()))
                if msg.offset() == todo[p][1] - 1:
                    open_parts.discard(p)
    finally:
        consumer.close()
    out.sort(key=lambda r: (r[0], r[1], r[2]))
    return [(ts, p, k, v) for ts, p, _, k, v in out]


def copy_ranges(records: list[tuple], dest: str, partitions: int) -> Ranges:
    """The offsets the copy will occupy in ``dest``: ``[0, n)`` per partition (all partitions listed)."""
    counts = dict.fromkeys(range(partitions), 0)
    for _, p, _, _ in records:
        counts[p] += 1
    return {dest: {p: (0, n) for p, n in counts.items()}}


class Pacer(threading.Thread):
    """Copies ``records`` to ``dest`` (same partition, key and value), paced by their timestamps."""

    def __init__(
        self,
        settings: Settings,
        records: list[tuple],
        dest: str,
        speed: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="replay-pacer", daemon=True)
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.settings = settings
        self.records = records
        self.dest = dest
        self.speed = speed
        self.clock = clock
        self.sent = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._copy()
        except BaseException as exc:  # reported by the replay, which waits for the job
            self.error = exc

    def _copy(self) -> None:
        producer = Producer(
            {**kafkaconf.confluent(self.settings, "admin"), "enable.idempotence": True, "linger.ms": 5}
        )
        began = self.clock()
        first = self.records[0][0] if self.records else 0
        for ts, p, key, value in self.records:
            due = began + (ts - first) / 1000 / self.speed
            while not self.stop.is_set() and (wait := due - self.clock()) > 0:
                producer.flush(min(wait, 0.5))
                time.sleep(min(max(due - self.clock(), 0), 0.5))
            if self.stop.is_set():
                break
            producer.produce(self.dest, value=value, key=key, partition=p)
            producer.poll(0)
            self.sent += 1
        if producer.flush(60) != 0:
            raise RuntimeError(f"the paced copy to {self.dest} left records undelivered")
