"""The loader's store side: a batch's inserts, one per table, each with its deduplication token.

:meth:`Writer.prepare` is CPU work only (framing check, join, digest) and
runs on the consuming thread; :meth:`Writer.write_batch` talks to the store
and runs on the writer thread, so the two overlap. A record the loader
itself cannot read goes to the dead letters with the reason. A store that is
down, or a table that refuses the batch (a missing or retyped column, gone,
read-only, ...), stalls the loader: retried with backoff, nothing committed,
nothing diverted, logged and alerted (:mod:`.stall`). A batch refused as bad
data is bisected; only records refused alone, while the table is shown not
to be at fault (:mod:`.judge`), become dead letters.
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
from citystream.connectors.clickhouse import AvroSink
from citystream.connectors.loader.common import (
    Abandoned,
    Backoff,
    BadData,
    LoadStats,
    Throughput,
    error_code,
    is_unreachable,
    one_line,
)
from citystream.connectors.loader.deadletters import Dead, DeadLetters
from citystream.connectors.loader.judge import Isolation, Judge, TableFault, isolate
from citystream.connectors.loader.offsets import Key
from citystream.connectors.loader.routes import Route
from citystream.connectors.loader.stall import StallAlerts
from citystream.connectors.loader.storelink import StoreLink

log = logging.getLogger("citystream.connectors.loader")

#: ClickHouse error codes that may mean "this data cannot go in" (the batch is then bisected and the
#: table checked: see judge.py). Every other code, and a lost connection, stalls the loader.
DATA_ERRORS = frozenset({6, 26, 27, 32, 33, 38, 41, 43, 44, 53, 62, 69, 70, 72, 117, 130, 190, 321, 395, 469})
#: Tries of an insert that failed without an error code (and not for a lost connection) before it is
#: judged as data: such a failure is the client converting a value, and retrying alone cannot help.
CONVERSION_TRIES = 3


@dataclass
class Prepared:
    """One table's share of a batch, ready to insert (see :meth:`Writer.prepare`)."""

    topic: str
    kept: list[Any]
    values: list[bytes] = field(default_factory=list)
    good: list[bytes] = field(default_factory=list)
    #: The Kafka message of each value in ``good``.
    sources: list[Any] = field(default_factory=list)
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
        stalls: StallAlerts,
        judge: Judge,
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
        self.stalls = stalls
        self.judge = judge

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
            if route.tombstone is not None:  # a deleting topic: the deletion row, in offset order
                values = [
                    v if v is not None else route.tombstone.value(m.key())
                    for m, v in zip(item.kept, values, strict=True)
                ]
            item.kept = [m for m, v in zip(item.kept, values, strict=True) if v is not None]
            values = [v for v in values if v is not None]
        item.values = values
        if not values:
            return item
        joined = b"".join(values)
        item.token = dedup_token(route.table, topic, parts, len(values), joined)
        ok = self.framers[topic].check(values, joined)
        item.good, item.body, item.sources = values, joined, item.kept
        if not ok.all():
            item.good, item.body, item.sources = [], None, []
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
                            item.sources.append(m)
                        continue
                item.good.append(v)
                item.sources.append(m)
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
        """Insert one table's share; a refusal that is the table's fault stalls here until it is fixed."""
        if not item.good:
            return 0
        route = self.routes[item.topic]
        backoff = Backoff(self.max_backoff_s, stop)
        while True:
            rejected: list[Dead] = []
            try:
                written = self._insert_checked(item, route, rejected, stop)
            except TableFault as fault:
                if stop():
                    raise Abandoned(f"stop requested while {route.table} was stalled") from fault
                self.stats.retries += 1
                self.stalls.failed(route.table, item.topic, fault.code, fault.message, reason=fault.reason)
                backoff.wait()
                continue
            if route.table in self.stalls.stalled:
                self.stalls.recovered(route.table)
                self.judge.forget(route.table)  # the table was changed: learn its definition anew
            self.judge.accepted(route.table, written, stop)
            dead += rejected
            return written

    def _insert_checked(
        self, item: Prepared, route: Route, rejected: list[Dead], stop: Callable[[], bool]
    ) -> int:
        """The whole share in one insert; refused as data, the table is checked, then the batch bisected."""
        self.judge.maybe_check(route, stop)
        try:
            return self._flush(route, item.topic, item.good, item.token, stop, body=item.body)
        except BadData as exc:
            first = exc
        self.judge.check_drift(route, first, stop)  # raises TableFault when the table left its contract
        log.warning(
            "%s refused a batch of %d from %s as bad data (%s); finding the records it refuses alone",
            route.table, len(item.good), item.topic, first,
        )  # fmt: skip
        found = Isolation(len(item.good))
        isolate(
            found, 0, len(item.good), first,
            lambda a, b: self._flush(route, item.topic, item.good[a:b], f"{item.token}#{a}-{b}", stop),
            lambda found: self.judge.early(route, found, stop),
        )  # fmt: skip
        self.judge.decide(route, found, stop)  # raises TableFault when the table, not the data, is at fault
        for index, error in found.rejected:
            msg = item.sources[index]
            try:
                contracts.decode(route.record, item.good[index])
            except ValueError as exc:  # the loader itself cannot read it
                self._reject(item.topic, msg, "undecodable", str(exc), rejected)
                continue
            self._reject(
                item.topic, msg, "rejected", f"{route.table} refused the record alone: {error}", rejected
            )
        return found.inserted

    def _reject(self, topic: str, msg: Any, reason: str, error: str, rejected: list[Dead]) -> None:
        """A record proven bad on its own: to the dead-letter topic (never back into it: a loop)."""
        self.stats.rejected += 1
        log.warning("%s %s[%d]@%d: %s", reason, topic, msg.partition(), msg.offset(), error)
        if topic == self.dead_letters.topic:
            log.error("a dead letter the store refuses alone is not re-sent (a loop); it stays in %s", topic)
            return
        rejected.append((msg, reason, error))

    def _flush(
        self,
        route: Route,
        topic: str,
        values: list[bytes],
        token: str,
        stop: Callable[[], bool],
        body: bytes | None = None,
    ) -> int:
        """One insert, retried until the store acknowledges; a data refusal raises :class:`BadData`.

        An unreachable store or a refusal that is the table's (a missing column, a
        read-only store, ...) stalls here, alerting; an error without a code that
        is not a lost connection (a conversion in the client) is tried
        ``CONVERSION_TRIES`` times and then judged as data.
        """
        sink = AvroSink(
            self.link.get(stop), route.table, route.columns, self.schemas[topic], database=self.database
        )
        for v in values:
            sink.add(v)
        sink.token = token
        backoff = Backoff(self.max_backoff_s, stop)
        uncoded = 0
        while True:
            try:
                return sink.flush(body=body)
            except Exception as exc:
                code, unreachable = error_code(exc), is_unreachable(exc)
                if code in DATA_ERRORS:
                    raise BadData(one_line(exc), code) from exc
                if code is None and not unreachable:
                    uncoded += 1
                    log.warning("insert into %s failed without an error code (%s), try %d of %d",
                                route.table, one_line(exc), uncoded, CONVERSION_TRIES)  # fmt: skip
                    if uncoded >= CONVERSION_TRIES:
                        raise BadData(f"{type(exc).__name__}: {one_line(exc)}", None) from exc
                if stop():
                    raise Abandoned(f"stop requested while {route.table} was failing") from exc
                self.stats.retries += 1
                if code is not None or unreachable:
                    self.stalls.failed(route.table, topic, code, one_line(exc))
                if unreachable:  # connection-level: a fresh client next time
                    self.link.drop()
                    sink.client = self.link.get(stop)
                backoff.wait()
