"""The loader's loop: Kafka batches in, store inserts out, offsets committed only after the ack.

Kafka and the store work at the same time: while the writer thread inserts
batch k, the consuming thread collects batch k+1. Every consumer call
(polls, commits) stays on the consuming thread. Order per batch: k+1's plan
is committed (together with k's end offsets) only after k was acknowledged,
then k+1 goes to the writer; a batch that was never acknowledged is never
committed.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from citystream import contracts
from citystream.connectors.avroframe import container
from citystream.connectors.loader.common import Abandoned, LoadStats, Throughput, sleep
from citystream.connectors.loader.deadletters import DeadLetters
from citystream.connectors.loader.judge import Judge
from citystream.connectors.loader.kafka import KafkaSource
from citystream.connectors.loader.offsets import Key, OffsetPlanner
from citystream.connectors.loader.routes import DEAD_LETTER, routes
from citystream.connectors.loader.stall import ALERTS, RECORD, StallAlerts, store_insert
from citystream.connectors.loader.storelink import StoreLink
from citystream.connectors.loader.upkeep import Metrics, Sealer
from citystream.connectors.loader.writer import Prepared, Writer
from citystream.settings import Settings
from citystream.store.client import connect

log = logging.getLogger("citystream.connectors.loader")

#: Rows per batch at most. Each insert costs a fixed ~0.1-0.4 s (a part, its dedup entry, the
#: offset commit) beside ~2-5 us a row: 200,000 loaded ~1.9x faster than 50,000 (benchmarks/store.py).
BATCH_ROWS = 200_000

Batch = dict[Key, list[Any]]


class _InFlight:
    """The writer thread and the one batch sent to it but not yet acknowledged."""

    def __init__(self, write: Callable[[list[Prepared], Callable[[], bool]], None], stop: Callable[[], bool]):
        self.halted = threading.Event()
        self.batch: Batch | None = None
        self._write = write
        self._stop = stop
        self._work: queue.Queue[list[Prepared] | None] = queue.Queue(maxsize=1)
        self._acked: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="loader-writer", daemon=True)

    def stopping(self) -> bool:
        """Stop was requested, or the writer failed."""
        return self.halted.is_set() or self._stop()

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while (prepared := self._work.get()) is not None:
            try:
                self._write(prepared, self.stopping)
                self._acked.put(None)
            except BaseException as exc:
                self.halted.set()
                self._acked.put(exc)

    def send(self, prepared: list[Prepared], batch: Batch) -> None:
        self._work.put(prepared)
        self.batch = batch

    def take(self) -> Batch | None:
        """The acknowledged batch, no longer in flight."""
        done, self.batch = self.batch, None
        return done

    def settle(self, block: bool) -> bool:
        """Wait for (or check) the in-flight batch's ack; True once it is acknowledged."""
        if self.batch is None:
            return True
        while True:
            try:
                error = self._acked.get(timeout=0.2 if block else 0)
                break
            except queue.Empty:
                if not block or (self._stop() and not self._thread.is_alive()):
                    return False
        if error is not None:
            self.batch = None
            raise error
        return True

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self.halted.set()
            with contextlib.suppress(queue.Full):
                self._work.put_nowait(None)
            self._thread.join()


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
        topic_suffix: str = "",
        batch_bytes: int | None = None,
        check_every_s: float = 30.0,
        unreachable_alert_s: float = 60.0,
    ) -> None:
        """``topic_suffix``: load a replay's result topics (``<topic><suffix>``), e.g. into a shadow store.

        ``batch_bytes``: bytes of record values per batch at most (None: ``settings.loader_batch_bytes``);
        ``check_every_s``: how often each table is checked against its contract (judge.py);
        ``unreachable_alert_s``: how long the store may be unreachable before a stall alert (stall.py).
        """
        batch_bytes = settings.loader_batch_bytes if batch_bytes is None else batch_bytes
        if batch_rows < 1 or batch_ms < 1 or batch_bytes < 1:
            raise ValueError("batch_rows, batch_ms and batch_bytes must be at least 1")
        self.settings = settings
        self.group_id = group_id
        self.routes = {r.topic: r for r in routes(settings, topic_suffix)}
        self.stats = LoadStats()
        self.planner = OffsetPlanner()
        db = settings.clickhouse_database
        throughput = Throughput()
        self.link = StoreLink(client_factory or (lambda: connect(settings)), self.stats, max_backoff_s)
        self.kafka = KafkaSource(
            settings, group_id, self.routes, self.planner, self.stats,
            batch_rows=batch_rows, batch_ms=batch_ms, max_backoff_s=max_backoff_s, batch_bytes=batch_bytes,
        )  # fmt: skip
        self.dead_letters = DeadLetters(
            settings, settings.topic(DEAD_LETTER) + topic_suffix, self.stats, max_backoff_s
        )
        alerts_table = next(r.table for r in self.routes.values() if r.record == RECORD)
        self.stalls = StallAlerts(
            settings, settings.topic(ALERTS) + topic_suffix, group_id,
            store_insert(self.link, db, alerts_table), unreachable_alert_s=unreachable_alert_s,
        )  # fmt: skip
        self.writer = Writer(
            self.routes, db, self.link, self.dead_letters, self.stats, throughput, max_backoff_s,
            self.stalls, Judge(self.link, db, check_every_s),
        )  # fmt: skip
        self.metrics = Metrics(
            self.link, db, group_id, self.stats, throughput, self.kafka.lag, metrics_every_s
        )
        self.sealer = Sealer(self.link, self.stats, seal_every_s, seal_grace_s, seal_max_hours)
        self._throughput = throughput

    def run(
        self,
        *,
        until_end: bool = True,
        stop: Callable[[], bool] = lambda: False,
        progress: Callable[[LoadStats], None] | None = None,
    ) -> LoadStats:
        """Load until ``stop()`` (or, with ``until_end``, until the ends of the topics at start are in)."""
        pipe = _InFlight(self.writer.write_batch, stop)
        self.kafka.open()
        try:
            tables = {r.table for r in self.routes.values()} | {"pipeline_metrics"}
            self.link.wait_for_schema(self.settings.clickhouse_database, tables, pipe.stopping)
            self.kafka.refresh_assignment(until_end, pipe.stopping)
            pipe.start()
            while not pipe.stopping() and self._turn(pipe, until_end, progress):
                pass
            if pipe.halted.is_set():
                pipe.settle(block=True)  # the writer's failure, raised here
            elif not stop():
                if pipe.settle(block=True):
                    self._finish(pipe, progress)
            elif pipe.batch is not None and pipe.settle(block=False):
                self._finish(pipe, progress)  # stopping: an acknowledged batch is still committed
        except Abandoned as exc:
            log.info("loader stopped without committing its last batch: %s", exc)
        finally:
            pipe.shutdown()
            with contextlib.suppress(Exception):
                self.metrics.record(force=True)
            self.close()
        return self.stats

    def _turn(self, pipe: _InFlight, until_end: bool, progress: Callable[[LoadStats], None] | None) -> bool:
        """One batch collected and handed to the writer (or an idle turn); False ends the loop."""
        stopping, planner = pipe.stopping, self.planner
        if not until_end and time.monotonic() - self.kafka.last_refresh > 10:
            self.kafka.refresh_assignment(until_end, stopping)
        if until_end and not planner.carry and (planner.done() or not planner.assigned):
            if not planner.assigned:
                log.info("none of the result topics exists yet: nothing to load")
            return False
        if not planner.assigned:
            sleep(1.0, stopping)
            return True
        replay = bool(planner.plans)
        if not self.stats.first_collect:
            self.stats.first_collect = time.monotonic()
        batch = self.kafka.collect(until_end, stopping)
        if stopping():
            return False  # abandon the batch being collected: nothing of it is committed
        if not batch:
            self._idle(pipe, progress)
            return True
        prepared = self.writer.prepare(batch)
        if not pipe.settle(block=True):
            return False
        done = pipe.take()
        # A replayed batch's plan is already committed; re-committing it would be harmless.
        self._commit(done, None if replay else batch, stopping)
        if done is not None:
            self._after_batch(progress)
        self.sealer.maybe_seal(stopping)  # nothing of ours in flight: `done` was acknowledged
        pipe.send(prepared, batch)
        return True

    def _idle(self, pipe: _InFlight, progress: Callable[[LoadStats], None] | None) -> None:
        """No new records: commit the acknowledged batch, seal, record that the loader caught up."""
        if pipe.batch is not None and pipe.settle(block=False):
            self._finish(pipe, progress)
        if pipe.batch is None:
            self.sealer.maybe_seal(pipe.stopping)
        # Caught up after loading: record it now, not up to metrics_every_s later.
        self.metrics.record(force=self._throughput.rows_since_metrics > 0 and pipe.batch is None)

    def _finish(self, pipe: _InFlight, progress: Callable[[LoadStats], None] | None) -> None:
        """Commit the acknowledged in-flight batch on its own (idle, or the end)."""
        if pipe.batch is not None:
            self._commit(pipe.batch, None, pipe.stopping)
            pipe.batch = None
            self._after_batch(progress)

    def _commit(self, done: Batch | None, planned: Batch | None, stop: Callable[[], bool]) -> None:
        """One offset commit: ``done``'s ends and ``planned``'s plan, in one request (a round trip saved)."""
        commits = self.planner.commits(done, planned)
        if commits:
            self.kafka.commit(commits, stop)
        if done:
            self.planner.acknowledged(done)
            self.stats.batches += 1
            self.stats.last_commit = time.monotonic()

    def _after_batch(self, progress: Callable[[LoadStats], None] | None) -> None:
        self.metrics.record()
        if progress:
            progress(self.stats)

    def close(self) -> None:
        self.kafka.close()
        self.dead_letters.close()
        self.stalls.close()
        self.link.drop()


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
    topic_suffix: str = "",
) -> LoadStats:
    """Move result records into the store.

    With ``until_end`` it stops once the offsets that were current at start are loaded.
    ``topic_suffix`` loads a replay's result topics (see :class:`Loader`).
    """
    loader = Loader(
        settings,
        group_id=group_id,
        batch_rows=batch_rows,
        batch_ms=batch_ms,
        max_backoff_s=max_backoff_s,
        metrics_every_s=metrics_every_s,
        seal_every_s=seal_every_s,
        topic_suffix=topic_suffix,
    )
    return loader.run(until_end=until_end, stop=stop, progress=progress)


def container_for(record: str, values: list[bytes]) -> bytes:
    """The Avro container the loader would send for ``values`` (benchmarks compare against it)."""
    return container(contracts.schema(record), values)
