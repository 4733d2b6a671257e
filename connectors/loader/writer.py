"""The loader's store side: a batch's inserts, one per table, each with its deduplication token.

:meth:`Writer.prepare` is CPU work only (framing check, join, digest) and
runs on the consuming thread; :meth:`Writer.write_batch` talks to the store
and runs on the writer thread, so the two overlap. A transient failure is
retried with backoff (nothing is committed meanwhile); data the store
rejects falls back to decoding record by record, and what still cannot go in
becomes a dead letter.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message

from citystream import contracts
from citystream.connectors.avroframe import Framer
from citystream.connectors.clickhouse import AvroSink, ClickHouseSink
from citystream.connectors.loader.common import (
    Abandoned,
    Backoff,
    BadData,
    LoadStats,
    Throughput,
    error_code,
    one_line,
)
from citystream.connectors.loader.deadletters import Dead, DeadLetters
from citystream.connectors.loader.offsets import Key
from citystream.connectors.loader.routes import Route
from citystream.connectors.loader.storelink import StoreLink

log = logging.getLogger("citystream.connectors.loader")

#: ClickHouse error codes that mean "this data cannot go in", as opposed to "try again later".
DATA_ERRORS = frozenset({6, 26, 27, 32, 33, 38, 41, 43, 44, 53, 62, 69, 70, 72, 117, 130, 190, 321, 395})


@dataclass
class Prepared:
    """One table's share of a batch, ready to insert (see :meth:`Writer.prepare`)."""

    topic: str
    kept: list[Any]
    values: list[bytes] = field(default_factory=list)
    good: list[bytes] = field(default_factory=list)
    body: bytes | None = None
    token: str = ""
    dead: list[Dead] = field(default_factory=list)


def dedup_token(table: str, topic: str, parts: list[tuple[int, list[Any]]], count: int, joined: bytes) -> str:
    """The insert's deduplication token: the same offsets and bytes give the same token.

    Offsets and bytes: a recreated topic reuses offsets, and must not look like a re-sent batch.
    """
    spans = ",".join(f"{p}:{msgs[0].offset()}-{msgs[-1].offset()}" for p, msgs in parts)
    digest = hashlib.blake2b(joined, digest_size=12).hexdigest()
    return f"{table}|{topic}|{spans}|{count}|{digest}"


class Writer:
    """Inserts prepared batches into the route tables; counts what it loaded."""

    def __init__(
        self,
        routes: Mapping[str, Route],
        database: str,
        link: StoreLink,
        dead_letters: DeadLetters,
        stats: LoadStats,
        throughput: Throughput,
        max_backoff_s: float,
    ) -> None:
        self.routes = routes
        self.database = database
        self.schemas = {t: contracts.schema(r.record) for t, r in routes.items()}
        self.framers = {t: Framer(s) for t, s in self.schemas.items()}
        self.link = link
        self.dead_letters = dead_letters
        self.stats = stats
        self.throughput = throughput
        self.max_backoff_s = max_backoff_s

    # ------------------------------------------------------------------ consuming thread

    def prepare(self, batch: Mapping[Key, list[Any]]) -> list[Prepared]:
        """Each table's insert of ``batch``, ready to send: CPU work only, no store or consumer calls.

        Runs on the consuming thread while the writer thread waits for the
        store with the previous batch: the per-record Python work (framing
        check, join, digest) then overlaps the insert instead of following it.
        """
        by_topic: dict[str, list[tuple[int, list[Any]]]] = defaultdict(list)
        for (t, p), msgs in sorted(batch.items()):
            by_topic[t].append((p, msgs))
        return [self._prepare_topic(topic, parts) for topic, parts in by_topic.items()]

    def _prepare_topic(self, topic: str, parts: list[tuple[int, list[Any]]]) -> Prepared:
        route = self.routes[topic]
        item = Prepared(topic=topic, kept=[m for _, msgs in parts for m in msgs])
        values = list(map(Message.value, item.kept))
        if None in values:
            self.stats.tombstones += values.count(None)
            item.kept = [m for m, v in zip(item.kept, values, strict=True) if v is not None]
            values = [v for v in values if v is not None]
        item.values = values
        if not values:
            return item
        joined = b"".join(values)
        item.token = dedup_token(route.table, topic, parts, len(values), joined)
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
                        wrapped = self.dead_letters.bad(topic, m, str(exc), item.dead)
                        if wrapped is not None:
                            item.good.append(contracts.encode("citystream.DeadLetter", wrapped))
                        continue
                item.good.append(v)
        return item

    # ------------------------------------------------------------------ writer thread

    def write_batch(self, prepared: list[Prepared], stop: Callable[[], bool]) -> None:
        """Insert a prepared batch (one insert per table), produce its dead letters; no consumer calls."""
        started = time.monotonic()
        dead: list[Dead] = []  # to the dead-letter topic
        for item in prepared:
            dead += item.dead
            written = self._send(item, dead, stop)
            self.stats.loaded += written
            self.stats.per_topic[item.topic] = self.stats.per_topic.get(item.topic, 0) + written
            self.throughput.rows_since_metrics += written
        if dead:
            self.dead_letters.produce(dead, stop)
        self.throughput.last_batch_ms = (time.monotonic() - started) * 1000

    def _send(self, item: Prepared, dead: list[Dead], stop: Callable[[], bool]) -> int:
        if not item.good:
            return 0
        route = self.routes[item.topic]
        sink = AvroSink(
            self.link.get(stop), route.table, route.columns, self.schemas[item.topic], database=self.database
        )
        for v in item.good:
            sink.add(v)
        sink.token = item.token
        try:
            return self._flush(sink, stop, body=item.body)
        except BadData as exc:
            log.warning(
                "%s rejected a batch as bad data (%s); decoding it record by record", route.table, exc
            )
        return self._send_rows(item, route, dead, stop)

    def _send_rows(self, item: Prepared, route: Route, dead: list[Dead], stop: Callable[[], bool]) -> int:
        """The fallback: decode record by record in Python; a batch still refused becomes dead letters."""
        rows = ClickHouseSink(
            self.link.get(stop),
            route.table,
            route.columns,
            timestamp_columns=route.timestamp_columns,
            database=self.database,
        )
        for m, v in zip(item.kept, item.values, strict=True):
            try:
                rows.add(contracts.decode(route.record, v))
            except ValueError as exc:
                wrapped = self.dead_letters.bad(item.topic, m, str(exc), dead)
                if wrapped is not None:
                    rows.add(wrapped)
        rows.token = item.token + "#rows"
        try:
            return self._flush(rows, stop)
        except BadData as exc:
            for m in item.kept:
                dead.append((m, "invalid_value", f"{route.table} rejected the batch: {exc}"))
            self.stats.undecodable += len(item.kept)
            return 0

    def _flush(self, sink: Any, stop: Callable[[], bool], body: bytes | None = None) -> int:
        """Flush ``sink`` until the store acknowledges; transient failures back off, bad data raises."""
        backoff = Backoff(self.max_backoff_s, stop)
        while True:
            try:
                if body is not None and isinstance(sink, AvroSink):
                    return sink.flush(body=body)
                return sink.flush()
            except Exception as exc:
                code = error_code(exc)
                if code in DATA_ERRORS:
                    raise BadData(one_line(exc)) from exc
                if stop():
                    raise Abandoned(f"stop requested while {sink.table} was failing") from exc
                self.stats.retries += 1
                log.warning(
                    "store write to %s failed (%s); retrying in %.1fs",
                    sink.table,
                    one_line(exc),
                    backoff.delay,
                )
                if code is None:  # connection-level: a fresh client next time
                    self.link.drop()
                    sink.client = self.link.get(stop)
                backoff.wait()
