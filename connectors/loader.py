"""Kafka result topics -> ClickHouse, in batches, committing offsets only after the store acknowledged.

Contract:
* every result topic lands in its table (:data:`ROUTES`, the one mapping;
  columns are the Avro field names, as the migrations define them);
* at-least-once delivery into idempotent tables, so the visible result is
  exactly-once. Each table insert carries an ``insert_deduplication_token``
  built from the offsets and bytes it covers, and before inserting a batch
  the loader commits its *plan* (the end offset of every partition in it) as
  offset metadata, without moving the offsets. A loader restarted after a
  crash between insert and commit re-reads exactly the planned range, so the
  re-sent insert has the same token and ClickHouse drops it: the tables do
  not even hold duplicates awaiting a merge. (A range re-read by another
  consumer group, or a planned range that compaction thinned meanwhile, is
  cut into other batches: its copies are rows with the same key, which
  ReplacingMergeTree merges away and FINAL / the *_latest views never show);
* batches are bounded by size and time; a store that is slow or down is
  retried with exponential backoff, nothing is committed (so nothing is
  lost) until it answers, and records of one partition are written in
  offset order, one batch after the other;
* reads only committed Kafka transactions (the jobs write transactionally);
* a record that is not one well-formed Avro record of its topic's schema is
  counted and produced to the dead-letter topic with the reason (from the
  dead-letter topic itself it goes straight into ``dead_letters``, never in
  a loop), before the batch's offsets are committed: never silently dropped.
  Tombstones (null values on the compacted topics) delete nothing in
  ClickHouse; they are counted and skipped;
* records are not decoded in Python: bare Avro records are wrapped in an
  Avro container and ClickHouse decodes them (see connectors/avroframe.py),
  after a vectorised framing check. A batch ClickHouse still rejects as bad
  data falls back to decoding record by record in Python;
* Kafka and the store work at the same time: a writer thread inserts batch
  k while the consuming thread collects batch k+1; every consumer call stays
  on the consuming thread, which commits k's end together with k+1's plan
  once k is acknowledged;
* progress is recorded in ``pipeline_metrics`` (component ``loader``,
  instance = consumer group) after the first batch, when the loader catches
  up, at most every ``metrics_every_s`` seconds otherwise, and at the end:
  rows_per_s, lag_records (records behind the end of the topics after the
  last commit), batch_ms, rows_total, undecodable_total, retries_total;
* the rollups of window_aggregates are sealed here (citystream/store/rollups.py,
  migration 0005): at most every ``seal_every_s`` seconds, between two
  inserts of this loader (the sealer will not run beside an insert), a pass
  seals at most ``seal_max_hours`` hours whose last window arrived over
  ``seal_grace_s`` ago. Sealing only makes dashboards cheaper - they are
  exact without it - so a failing pass is logged and loading goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from typing import Any

from citystream.connectors.avroframe import Framer, container
from citystream.connectors.clickhouse import AvroSink, ClickHouseSink

from citystream.settings import Settings

log = logging.getLogger(__name__)

#: Result topic (suffix in infra/topics.toml) -> (Avro record, table). The one routing table.
ROUTES: dict[str, tuple[str, str]] = {
    "aggregates": ("citystream.WindowAggregate", "window_aggregates"),
    "anomalies": ("citystream.Anomaly", "anomalies"),
    "alerts": ("citystream.Alert", "alerts"),
    "sensor-health": ("citystream.SensorHealth", "sensor_health"),
    "late-events": ("citystream.LateEvent", "late_events"),
    "dead-letter": ("citystream.DeadLetter", "dead_letters"),
    "labels": ("citystream.Label", "labels"),
}
DEAD_LETTER = "dead-letter"
#: Prefix of the offset metadata that carries a batch's plan ("<prefix><end offset>").
PLAN = "citystream-loader:plan="

#: Rows per batch at most. Each insert costs a fixed ~0.1-0.4 s (a part, its dedup entry, the
#: offset commit) beside ~2-5 us a row: 200,000 loaded ~1.9x faster than 50,000 (benchmarks/store.py).
BATCH_ROWS = 200_000
#: Longest single wait for records: short, so a loader that has reached the ends of the topics
#: (``until_end``) or its batch deadline stops waiting at once, not after ``batch_ms``.
POLL_S = 0.1
_FIRST, _SECOND = itemgetter(0), itemgetter(1)

#: ClickHouse error codes that mean "this data cannot go in", as opposed to "try again later".
DATA_ERRORS = frozenset({6, 26, 27, 32, 33, 38, 41, 43, 44, 53, 62, 69, 70, 72, 117, 130, 190, 321, 395})


@dataclass(frozen=True)
class Route:
    """Which topic lands in which table, decoded with which Avro record."""

    topic: str
    record: str
    table: str
    columns: tuple[str, ...]
    timestamp_columns: tuple[str, ...] = ()


def routes(settings: Settings) -> list[Route]:
    """The result topics the loader moves, by settings' topic prefix; columns from the Avro schemas."""
    from citystream import contracts

    out = []
    for suffix, (record, table) in ROUTES.items():
        fields = contracts.schema(record)["fields"]
        out.append(
            Route(
                topic=settings.topic(suffix),
                record=record,
                table=table,
                columns=tuple(f["name"] for f in fields),
                timestamp_columns=tuple(f["name"] for f in fields if _is_timestamp(f["type"])),
            )
        )
    return out


def _is_timestamp(node: Any) -> bool:
    if isinstance(node, list):
        return any(_is_timestamp(b) for b in node)
    return isinstance(node, dict) and node.get("logicalType") == "timestamp-millis"


@dataclass
class LoadStats:
    loaded: int = 0
    batches: int = 0
    undecodable: int = 0
    tombstones: int = 0
    retries: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    #: Records behind the end of the topics after the last commit (-1: unknown).
    lag_records: int = -1
    #: Whether the first batch replayed a plan left by a loader that died before committing.
    replayed: bool = False
    #: time.monotonic() when the first batch began to be collected, and of the last commit:
    #: the steady-state rate without connecting and partition assignment (benchmarks).
    first_collect: float = 0.0
    last_commit: float = 0.0
    #: Hours sealed by this loader, and the seconds its sealing passes took.
    sealed_hours: int = 0
    seal_s: float = 0.0


class Abandoned(Exception):
    """Stop was requested while a batch could not be written: it is left uncommitted."""


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    import re

    match = re.search(r"Code: (\d+)\.", str(exc))
    return int(match.group(1)) if match else None


class Loader:
    """One consumer of all result topics writing to one store; :meth:`run` is the loop."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str = "citystream-loader",
        batch_rows: int = BATCH_ROWS,
        batch_ms: int = 1000,
        max_backoff_s: float = 30.0,
        metrics_every_s: float = 10.0,
        seal_every_s: float = 10.0,
        seal_grace_s: float = 60.0,
        seal_max_hours: int = 6,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        from citystream import contracts

        if batch_rows < 1 or batch_ms < 1:
            raise ValueError("batch_rows and batch_ms must be at least 1")
        self.settings = settings
        self.group_id = group_id
        self.batch_rows = batch_rows
        self.batch_ms = batch_ms
        self.max_backoff_s = max_backoff_s
        self.metrics_every_s = metrics_every_s
        self.seal_every_s = seal_every_s
        self.seal_grace_s = seal_grace_s
        self.seal_max_hours = seal_max_hours
        self._last_seal = time.monotonic()
        self.routes = {r.topic: r for r in routes(settings)}
        self.schemas = {t: contracts.schema(r.record) for t, r in self.routes.items()}
        self.framers = {t: Framer(s) for t, s in self.schemas.items()}
        self.dead_letter_topic = settings.topic(DEAD_LETTER)
        self.stats = LoadStats()
        self._client_factory = client_factory or self._connect
        self._client: Any = None
        self._consumer: Any = None
        self._producer: Any = None
        self._carry: list[Any] = []
        self._assigned: dict[tuple[str, int], Any] = {}
        self._plans: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}
        self._eof: set[tuple[str, int]] = set()
        self._end_offsets: dict[tuple[str, int], int] = {}
        self._last_metrics = time.monotonic()
        self._rows_since_metrics = 0
        self._metrics_recorded = False
        self._last_batch_ms = 0.0
        self._last_refresh = 0.0

    # ------------------------------------------------------------------ connections

    def _connect(self) -> Any:
        from citystream.store.client import connect

        return connect(self.settings)

    def _store(self, stop: Callable[[], bool]) -> Any:
        """The ClickHouse client, (re)connecting with backoff while the store is down."""
        backoff = 0.5
        while self._client is None:
            try:
                self._client = self._client_factory()
            except Exception as exc:
                if stop():
                    raise Abandoned("stop requested while the store was unreachable") from exc
                self.stats.retries += 1
                log.warning("store unreachable (%s); retrying in %.1fs", exc, backoff)
                _sleep(backoff, stop)
                backoff = min(backoff * 2, self.max_backoff_s)
        return self._client

    def _wait_for_schema(self, stop: Callable[[], bool]) -> None:
        """Consume nothing before every target table exists (the store may start before `store migrate`)."""
        tables = sorted({r.table for r in self.routes.values()} | {"pipeline_metrics"})
        told = False
        while True:
            client = self._store(stop)
            try:
                found = client.query(
                    "SELECT count() FROM system.tables "
                    "WHERE database = {db:String} AND has({names:Array(String)}, name)",
                    parameters={"db": self.settings.clickhouse_database, "names": tables},
                ).result_rows[0][0]
                if int(found) == len(tables):
                    return
                if not told:
                    log.info("waiting for the schema (`citystream store migrate`) before loading")
                    told = True
            except Exception as exc:
                log.warning("cannot check the schema (%s); retrying", _one_line(exc))
                self._drop_client()
            if stop():
                raise Abandoned("stop requested while waiting for the schema")
            _sleep(1.0, stop)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _open_consumer(self) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": self.group_id,
                "client.id": "citystream-loader",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "allow.auto.create.topics": False,
                "fetch.max.bytes": 64 << 20,
                "max.partition.fetch.bytes": 8 << 20,
                # Prefetch far ahead while a batch is being inserted: librdkafka's default
                # (100,000 messages) halved the consuming rate (measured: 257k -> 509k records/s).
                "queued.min.messages": 1_000_000,
                "queued.max.messages.kbytes": 256 << 10,
                "logger": logging.getLogger("citystream.loader.kafka"),
            }
        )

    def _dlq(self) -> Any:
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(
                {
                    "bootstrap.servers": self.settings.kafka_bootstrap,
                    "client.id": "citystream-loader-dlq",
                    "enable.idempotence": True,
                    "acks": "all",
                    "compression.type": "zstd",
                    "linger.ms": 5,
                    "logger": logging.getLogger("citystream.loader.kafka"),
                }
            )
        return self._producer

    # ------------------------------------------------------------------ partitions

    def _refresh_assignment(self, until_end: bool, stop: Callable[[], bool]) -> None:
        """Assign every partition of the route topics that exists; Kafka errors are retried with backoff."""
        backoff = 0.5
        while True:
            try:
                self._assign_new(until_end)
                return
            except Exception as exc:
                if stop():
                    raise Abandoned("stop requested while Kafka was unavailable") from exc
                log.warning("Kafka not ready (%s); retrying in %.1fs", exc, backoff)
                _sleep(backoff, stop)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _assign_new(self, until_end: bool) -> None:
        """Assign partitions not assigned yet, resuming at the committed offsets (and plans)."""
        from confluent_kafka import TopicPartition

        self._last_refresh = time.monotonic()
        metadata = self._consumer.list_topics(timeout=10)
        new = []
        for topic in self.routes:
            info = metadata.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for p in sorted(info.partitions):
                if (topic, p) not in self._assigned:
                    new.append(TopicPartition(topic, p))
        if not new:
            return
        committed = self._consumer.committed(new, timeout=30)
        ends = {}
        if until_end:
            for tp in committed:
                ends[(tp.topic, tp.partition)] = self._consumer.get_watermark_offsets(tp, timeout=30)[1]
        for tp in committed:
            key = (tp.topic, tp.partition)
            self._assigned[key] = tp
            if tp.offset >= 0:
                self._committed[key] = tp.offset
                meta = tp.metadata or ""
                if meta.startswith(PLAN):
                    with contextlib.suppress(ValueError):
                        end = int(meta[len(PLAN) :])
                        if end > tp.offset:
                            self._plans[key] = end
            if until_end:
                high = ends[key]
                self._end_offsets[key] = high
                if tp.offset >= high or high <= 0:
                    self._eof.add(key)
        if self._plans:
            self.stats.replayed = True
            log.info("replaying the uncommitted batch a previous loader planned: %s", self._plans)
        self._consumer.incremental_assign(committed)
        log.info("loading %d new partition(s): %s", len(committed), sorted(self._assigned))

    def _done(self) -> bool:
        return bool(self._assigned) and all(key in self._eof for key in self._assigned)

    # ------------------------------------------------------------------ batches

    def _collect(self, until_end: bool, stop: Callable[[], bool]) -> dict[tuple[str, int], list[Any]]:
        """The next batch by partition, in offset order: the pending plan, else up to batch_rows/batch_ms."""
        from confluent_kafka import KafkaError, Message

        planned = dict(self._plans)
        pending = self._carry
        self._carry = []
        batch: dict[tuple[str, int], list[Any]] = defaultdict(list)
        count = 0
        deadline = time.monotonic() + self.batch_ms / 1000

        def take(msg: Any) -> None:
            nonlocal count
            key = (msg.topic(), msg.partition())
            if planned:
                end = planned.get(key)
                if end is None or msg.offset() >= end:
                    self._carry.append(msg)
                    return
            batch[key].append(msg)
            count += 1

        for msg in pending:
            take(msg)

        def plan_complete() -> bool:
            return all(
                (batch[key] and batch[key][-1].offset() + 1 >= end) or key in self._eof
                for key, end in planned.items()
            )

        while not stop():
            if planned:
                if plan_complete():
                    break
                timeout = 1.0
            else:
                if count >= self.batch_rows or (until_end and self._done()):
                    break
                timeout = min(deadline - time.monotonic(), POLL_S)
                if timeout <= 0:
                    break
            want = max(1, min(self.batch_rows - count, 100_000)) if not planned else 10_000
            msgs = self._consumer.consume(num_messages=want, timeout=timeout)
            if not planned and not any(map(Message.error, msgs)):
                # The common case: no plan, no errors or partition ends. Iterating in C
                # (map, groupby) instead of a Python loop per record measured ~1 us a
                # record less, a fifth of the consuming thread's work.
                keys = zip(map(Message.topic, msgs), map(Message.partition, msgs), strict=True)
                for key, run in groupby(zip(keys, msgs, strict=True), key=_FIRST):
                    batch[key].extend(map(_SECOND, run))
                count += len(msgs)
                continue
            for msg in msgs:
                err = msg.error()
                if err is None:
                    if planned:
                        take(msg)
                    else:
                        batch[(msg.topic(), msg.partition())].append(msg)
                        count += 1
                elif err.code() == KafkaError._PARTITION_EOF:
                    self._eof.add((msg.topic(), msg.partition()))
                else:
                    log.warning("Kafka: %s", err)
        if planned:
            self._plans.clear()
        return {k: v for k, v in batch.items() if v}

    def _step(
        self,
        done: dict[tuple[str, int], list[Any]] | None,
        planned: dict[tuple[str, int], list[Any]] | None,
        stop: Callable[[], bool],
    ) -> None:
        """One offset commit: ``done``'s ends, and ``planned``'s plan (its start, its end as metadata).

        Committing the next batch's plan with the previous batch's offsets in
        one request saves a round trip per batch; a partition in both gets the
        plan (its start is the previous batch's end).
        """
        from confluent_kafka import TopicPartition

        offsets: dict[tuple[str, int], Any] = {}
        for (t, p), msgs in (done or {}).items():
            offsets[(t, p)] = TopicPartition(t, p, msgs[-1].offset() + 1, "")
        for (t, p), msgs in (planned or {}).items():
            offsets[(t, p)] = TopicPartition(t, p, msgs[0].offset(), f"{PLAN}{msgs[-1].offset() + 1}")
        if offsets:
            self._commit(list(offsets.values()), stop)
        if done:
            for (t, p), msgs in done.items():
                self._committed[(t, p)] = msgs[-1].offset() + 1
            self.stats.batches += 1
            self.stats.last_commit = time.monotonic()

    def _prepare(self, batch: dict[tuple[str, int], list[Any]]) -> list[_Prepared]:
        """Each table's insert of ``batch``, ready to send: CPU work only, no store or consumer calls.

        Runs on the consuming thread while the writer thread waits for the
        store with the previous batch: the per-record Python work (framing
        check, join, digest) then overlaps the insert instead of following it.
        """
        by_topic: dict[str, list[tuple[int, list[Any]]]] = defaultdict(list)
        for (t, p), msgs in sorted(batch.items()):
            by_topic[t].append((p, msgs))
        return [self._prepare_topic(topic, parts) for topic, parts in by_topic.items()]

    def _write_batch(self, prepared: list[_Prepared], stop: Callable[[], bool]) -> None:
        """Insert a prepared batch (one insert per table), produce its dead letters; no consumer calls."""
        started = time.monotonic()
        dead: list[tuple[Any, str, str]] = []  # (message, reason, error) to the dead-letter topic
        for item in prepared:
            dead += item.dead
            written = self._send(item, dead, stop)
            self.stats.loaded += written
            self.stats.per_topic[item.topic] = self.stats.per_topic.get(item.topic, 0) + written
            self._rows_since_metrics += written
        if dead:
            self._produce_dead_letters(dead, stop)
        self._last_batch_ms = (time.monotonic() - started) * 1000

    def _commit(self, offsets: list[Any], stop: Callable[[], bool]) -> None:
        backoff = 0.5
        while True:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                return
            except Exception as exc:
                if stop():
                    raise Abandoned("stop requested while Kafka refused the commit") from exc
                self.stats.retries += 1
                log.warning("offset commit failed (%s); retrying in %.1fs", exc, backoff)
                _sleep(backoff, stop)
                backoff = min(backoff * 2, self.max_backoff_s)

    # ------------------------------------------------------------------ one table

    def _prepare_topic(self, topic: str, parts: list[tuple[int, list[Any]]]) -> _Prepared:
        from confluent_kafka import Message

        from citystream import contracts

        route = self.routes[topic]
        item = _Prepared(topic=topic, kept=[m for _, msgs in parts for m in msgs])
        values = list(map(Message.value, item.kept))
        if None in values:
            self.stats.tombstones += values.count(None)
            item.kept = [m for m, v in zip(item.kept, values, strict=True) if v is not None]
            values = [v for v in values if v is not None]
        item.values = values
        if not values:
            return item
        joined = b"".join(values)
        # Offsets and bytes: a recreated topic reuses offsets, and must not look like a re-sent batch.
        spans = ",".join(f"{p}:{msgs[0].offset()}-{msgs[-1].offset()}" for p, msgs in parts)
        digest = hashlib.blake2b(joined, digest_size=12).hexdigest()
        item.token = f"{route.table}|{topic}|{spans}|{len(values)}|{digest}"
        ok = self.framers[topic].check(values, joined)
        item.good, item.body = values, joined
        if not ok.all():
            item.good, item.body = [], None
            for m, v, fine in zip(item.kept, values, ok, strict=True):
                if not fine:
                    try:
                        # fastavro is laxer than the framing check (a union index of -1, say):
                        # what it can read goes in, re-encoded canonically.
                        v = contracts.encode(route.record, contracts.decode(route.record, v))
                    except ValueError as exc:
                        wrapped = self._bad(topic, m, str(exc), item.dead)
                        if wrapped is not None:
                            item.good.append(contracts.encode("citystream.DeadLetter", wrapped))
                        continue
                item.good.append(v)
        return item

    def _send(self, item: _Prepared, dead: list[tuple[Any, str, str]], stop: Callable[[], bool]) -> int:
        from citystream import contracts

        if not item.good:
            return 0
        route = self.routes[item.topic]
        db = self.settings.clickhouse_database
        sink = AvroSink(self._store(stop), route.table, route.columns, self.schemas[item.topic], database=db)
        for v in item.good:
            sink.add(v)
        sink.token = item.token
        try:
            return self._write(sink, stop, body=item.body)
        except _BadData as exc:
            log.warning(
                "%s rejected a batch as bad data (%s); decoding it record by record", route.table, exc
            )
        rows = ClickHouseSink(
            self._store(stop),
            route.table,
            route.columns,
            timestamp_columns=route.timestamp_columns,
            database=db,
        )
        for m, v in zip(item.kept, item.values, strict=True):
            try:
                rows.add(contracts.decode(route.record, v))
            except ValueError as exc:
                wrapped = self._bad(item.topic, m, str(exc), dead)
                if wrapped is not None:
                    rows.add(wrapped)
        rows.token = item.token + "#rows"
        try:
            return self._write(rows, stop)
        except _BadData as exc:
            for m in item.kept:
                dead.append((m, "invalid_value", f"{route.table} rejected the batch: {exc}"))
            self.stats.undecodable += len(item.kept)
            return 0

    def _bad(self, topic: str, msg: Any, error: str, dead: list) -> dict[str, Any] | None:
        """Count an undecodable record and queue it for the dead-letter topic.

        From the dead-letter topic itself it cannot go back (a loop): the
        DeadLetter record to store directly is returned instead.
        """
        self.stats.undecodable += 1
        log.warning("undecodable record %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), error)
        if topic != self.dead_letter_topic:
            dead.append((msg, "undecodable", error))
            return None
        return self._dead_letter(msg, "undecodable", error)

    @staticmethod
    def _dead_letter(msg: Any, reason: str, error: str) -> dict[str, Any]:
        return {
            "source_topic": msg.topic(),
            "source_partition": msg.partition(),
            "source_offset": msg.offset(),
            "original_key": msg.key(),
            "original_value": msg.value(),
            "reason": reason,
            "error": error[:2000],
            "received_at": int(time.time() * 1000),
        }

    def _write(self, sink: Any, stop: Callable[[], bool], body: bytes | None = None) -> int:
        """Flush ``sink`` until the store acknowledges; transient failures back off, bad data raises."""
        backoff = 0.5
        while True:
            try:
                if body is not None and isinstance(sink, AvroSink):
                    return sink.flush(body=body)
                return sink.flush()
            except Exception as exc:
                code = _code(exc)
                if code in DATA_ERRORS:
                    raise _BadData(_one_line(exc)) from exc
                if stop():
                    raise Abandoned(f"stop requested while {sink.table} was failing") from exc
                self.stats.retries += 1
                log.warning(
                    "store write to %s failed (%s); retrying in %.1fs", sink.table, _one_line(exc), backoff
                )
                if code is None:  # connection-level: a fresh client next time
                    self._drop_client()
                    sink.client = self._store(stop)
                _sleep(backoff, stop)
                backoff = min(backoff * 2, self.max_backoff_s)

    def _produce_dead_letters(self, dead: list[tuple[Any, str, str]], stop: Callable[[], bool]) -> None:
        from citystream import contracts

        producer = self._dlq()
        backoff = 0.5
        todo = dead
        while todo:
            failed: list[tuple[Any, str, str]] = []

            def report(err: Any, _msg: Any, item: tuple[Any, str, str], failed: list = failed) -> None:
                if err is not None:
                    failed.append(item)

            for item in todo:
                msg, reason, error = item
                value = contracts.encode("citystream.DeadLetter", self._dead_letter(msg, reason, error))
                producer.produce(
                    self.dead_letter_topic,
                    key=msg.key(),
                    value=value,
                    on_delivery=lambda err, m, item=item: report(err, m, item),
                )
            remaining = producer.flush(60)
            if remaining:
                failed = todo  # unknown outcome: send again (the table is keyed by source offset)
            todo = failed
            if todo:
                if stop():
                    raise Abandoned("stop requested while the dead-letter topic was failing")
                self.stats.retries += 1
                log.warning("dead-letter produce failed for %d record(s); retrying", len(todo))
                _sleep(backoff, stop)
                backoff = min(backoff * 2, self.max_backoff_s)

    # ------------------------------------------------------------------ metrics

    def _lag(self) -> int:
        from confluent_kafka import TopicPartition

        total = 0
        for (t, p), _tp in self._assigned.items():
            try:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(t, p), cached=True)
            except Exception:
                return -1
            if high < 0:
                return -1
            total += max(0, high - self._committed.get((t, p), 0))
        return total

    def _record_metrics(self, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self._last_metrics
        # The first batch is recorded at once, so `store status` has something to show early.
        first = not self._metrics_recorded and self.stats.batches > 0
        if not force and not first and elapsed < self.metrics_every_s:
            return
        self._metrics_recorded = self._metrics_recorded or self.stats.batches > 0
        self.stats.lag_records = self._lag()
        rate = self._rows_since_metrics / elapsed if elapsed > 0 else 0.0
        self._last_metrics, self._rows_since_metrics = now, 0
        if self._client is None:
            return
        ts = dt.datetime.now(dt.UTC)
        values = {
            "rows_per_s": rate,
            "lag_records": float(self.stats.lag_records),
            "batch_ms": self._last_batch_ms,
            "rows_total": float(self.stats.loaded),
            "undecodable_total": float(self.stats.undecodable),
            "retries_total": float(self.stats.retries),
        }
        rows = [[ts, "loader", self.group_id, name, value, {}] for name, value in values.items()]
        try:
            self._client.insert(
                f"`{self.settings.clickhouse_database}`.`pipeline_metrics`",
                rows,
                column_names=["ts", "component", "instance", "metric", "value", "labels"],
            )
        except Exception as exc:  # metrics must never stop the loading
            log.warning("could not record loader metrics: %s", _one_line(exc))

    # ------------------------------------------------------------------ rollups

    def _maybe_seal(self, stop: Callable[[], bool]) -> None:
        """A sealing pass if one is due; call only while no insert of this loader is in flight."""
        if self.seal_every_s <= 0 or time.monotonic() - self._last_seal < self.seal_every_s or stop():
            return
        from citystream.store.rollups import seal

        self._last_seal = time.monotonic()
        try:
            result = seal(self._store(stop), grace_s=self.seal_grace_s, max_hours=self.seal_max_hours)
        except Abandoned:
            raise
        except Exception as exc:  # sealing must never stop the loading
            if _code(exc) == 60:  # UNKNOWN_TABLE: a schema before migration 0005
                log.info("the store has no sealed rollups (migration 0005); not sealing")
                self.seal_every_s = 0
            else:
                log.warning("sealing rollups failed (%s); loading goes on", _one_line(exc))
            return
        self.stats.sealed_hours += result.hours
        self.stats.seal_s += result.seconds
        if result.hours:
            log.info(
                "sealed %d hour(s) and %d day(s) in %.1fs (%d more waiting)",
                result.hours, result.days, result.seconds, result.remaining,
            )  # fmt: skip

    # ------------------------------------------------------------------ the loop

    def run(
        self,
        *,
        until_end: bool = True,
        stop: Callable[[], bool] = lambda: False,
        progress: Callable[[LoadStats], None] | None = None,
    ) -> LoadStats:
        """Load until ``stop()`` (or, with ``until_end``, until the ends of the topics at start are in).

        Kafka and the store work at the same time: while a writer thread
        inserts batch k, this thread collects batch k+1. Every consumer call
        (polls, commits) stays on this thread. Order per batch: k+1's plan is
        committed (together with k's end offsets) only after k was
        acknowledged, then k+1 goes to the writer; a batch that was never
        acknowledged is never committed.
        """
        halted = threading.Event()

        def stopping() -> bool:
            return halted.is_set() or stop()

        work: queue.Queue[list[_Prepared] | None] = queue.Queue(maxsize=1)
        acked: queue.Queue[BaseException | None] = queue.Queue()

        def write() -> None:
            while (prepared := work.get()) is not None:
                try:
                    self._write_batch(prepared, stopping)
                    acked.put(None)
                except BaseException as exc:
                    halted.set()
                    acked.put(exc)

        writer = threading.Thread(target=write, name="loader-writer", daemon=True)
        inflight: dict | None = None  # sent to the writer, not yet acknowledged

        def settle(block: bool) -> bool:
            """Wait for (or check) the in-flight batch's ack; True once it is acknowledged."""
            nonlocal inflight
            if inflight is None:
                return True
            while True:
                try:
                    error = acked.get(timeout=0.2 if block else 0)
                    break
                except queue.Empty:
                    if not block or (stop() and not writer.is_alive()):
                        return False
            if error is not None:
                inflight = None
                raise error
            return True

        def finish() -> None:
            """Commit the acknowledged in-flight batch on its own (idle, or the end)."""
            nonlocal inflight
            if inflight is not None:
                self._step(inflight, None, stopping)
                inflight = None
                self._after_batch(progress)

        self._open_consumer()
        try:
            self._wait_for_schema(stopping)
            self._refresh_assignment(until_end, stopping)
            writer.start()
            while not stopping():
                if not until_end and time.monotonic() - self._last_refresh > 10:
                    self._refresh_assignment(until_end, stopping)
                if until_end and not self._carry and (self._done() or not self._assigned):
                    if not self._assigned:
                        log.info("none of the result topics exists yet: nothing to load")
                    break
                if not self._assigned:
                    _sleep(1.0, stopping)
                    continue
                replay = bool(self._plans)
                if not self.stats.first_collect:
                    self.stats.first_collect = time.monotonic()
                batch = self._collect(until_end, stopping)
                if stopping():
                    break  # abandon the batch being collected: nothing of it is committed
                if not batch:
                    if inflight is not None and settle(block=False):
                        finish()
                    if inflight is None:
                        self._maybe_seal(stopping)
                    # Caught up after loading: record it now, not up to metrics_every_s later.
                    self._record_metrics(force=self._rows_since_metrics > 0 and inflight is None)
                    continue
                prepared = self._prepare(batch)
                if not settle(block=True):
                    break
                done, inflight = inflight, None
                # A replayed batch's plan is already committed; re-committing it would be harmless.
                self._step(done, None if replay else batch, stopping)
                if done is not None:
                    self._after_batch(progress)
                self._maybe_seal(stopping)  # nothing of ours in flight: `done` was acknowledged
                work.put(prepared)
                inflight = batch
            if halted.is_set():
                settle(block=True)  # the writer's failure, raised here
            elif not stop():
                if settle(block=True):
                    finish()
            elif inflight is not None and settle(block=False):
                finish()  # stopping: an acknowledged batch is still committed
        except Abandoned as exc:
            log.info("loader stopped without committing its last batch: %s", exc)
        finally:
            if writer.is_alive():
                halted.set()
                with contextlib.suppress(queue.Full):
                    work.put_nowait(None)
                writer.join()
            with contextlib.suppress(Exception):
                self._record_metrics(force=True)
            self.close()
        return self.stats

    def _after_batch(self, progress: Callable[[LoadStats], None] | None) -> None:
        self._record_metrics()
        if progress:
            progress(self.stats)

    def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.flush(10)
            self._producer = None
        self._drop_client()


@dataclass
class _Prepared:
    """One table's share of a batch, ready to insert (see :meth:`Loader._prepare`)."""

    topic: str
    kept: list[Any]
    values: list[bytes] = field(default_factory=list)
    good: list[bytes] = field(default_factory=list)
    body: bytes | None = None
    token: str = ""
    dead: list[tuple[Any, str, str]] = field(default_factory=list)


class _BadData(Exception):
    """The store refused a batch for its content (parse error, type mismatch): retrying cannot help."""


def _one_line(exc: BaseException) -> str:
    from citystream.store.client import error_message

    return error_message(exc)[:300]


def load(
    settings: Settings,
    *,
    until_end: bool = True,
    batch_rows: int = BATCH_ROWS,
    batch_ms: int = 1000,
    group_id: str = "citystream-loader",
    stop: Callable[[], bool] = lambda: False,
    progress: Callable[[LoadStats], None] | None = None,
    max_backoff_s: float = 30.0,
    metrics_every_s: float = 10.0,
    seal_every_s: float = 10.0,
) -> LoadStats:
    """Move result records into the store.

    With ``until_end`` it stops once the offsets that were current at start are loaded.
    """
    loader = Loader(
        settings,
        group_id=group_id,
        batch_rows=batch_rows,
        batch_ms=batch_ms,
        max_backoff_s=max_backoff_s,
        metrics_every_s=metrics_every_s,
        seal_every_s=seal_every_s,
    )
    return loader.run(until_end=until_end, stop=stop, progress=progress)


def container_for(record: str, values: list[bytes]) -> bytes:
    """The Avro container the loader would send for ``values`` (benchmarks compare against it)."""
    from citystream import contracts

    return container(contracts.schema(record), values)
