"""A loader that cannot write a table says so: a log line, and a citystream Alert on the alerts topic.

Why: a table that refuses the loader's batches (a migration renamed or
retyped a column, the table is gone, the store is read-only or refuses the
loader's user) must stop the loading of that table's topic without losing or
diverting anything - nothing is committed, nothing dead-lettered - and an
operator must learn of it before the topic's retention runs out. The stall
is one incident per (loader group, table) with a stable ``alert_id``, so the
compacted alerts topic holds its current state: ``open`` at once when the
store refused with an error code (it answered, so this is no blip), or once
the store has been unreachable for ``unreachable_alert_s``; ``update`` when
the error changes or every ``update_every_s``; ``resolve`` when the batch
finally goes in.

Fields (avro/citystream.Alert.avsc): domain ``pipeline``, kind
``loader_stalled``, key_kind ``table``, affected_keys ``[table]``, severity
``critical``, first_seen when the stall began and last_seen the latest
attempt (wall clock), explanation "loader GROUP stalled on TABLE: ...". The
same record is also inserted straight into the store's ``alerts`` table
(best effort): the loader cannot load the alerts topic while it is stalled
(batches go one after the other), and the Pipeline health dashboard reads
the store. When the loader catches up it loads the topic's copy too, which
is the same row (the table keeps one).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from citystream import contracts, kafkaconf
from citystream.connectors.clickhouse import AvroSink
from citystream.settings import Settings

log = logging.getLogger("citystream.connectors.loader")

RECORD = "citystream.Alert"
#: The suffix (infra/topics.toml) of the topic the loader's own alerts go to.
ALERTS = "alerts"
DOMAIN = "pipeline"
#: ClickHouse codes of a busy or briefly failing store (timeouts, too many queries, memory, network):
#: alerted like an unreachable store, after ``unreachable_alert_s``, not at once.
TRANSIENT = frozenset({159, 160, 202, 209, 210, 241, 319, 425, 439, 1002})
KIND = "loader_stalled"


@dataclass
class _Stall:
    table: str
    topic: str
    since_ms: int
    since: float
    attempts: int = 0
    error: str = ""
    opened: bool = False
    sent_at: float = 0.0
    sent_error: str = ""


def alert_id(group_id: str, table: str) -> str:
    """The incident's stable id: one per (loader group, table), so compaction keeps its latest state."""
    return f"{DOMAIN}:{KIND}:{group_id}:{table}"


class StallAlerts:
    """Stalls of one loader, per table, and their alerts (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        group_id: str,
        insert: Callable[[bytes, str], None] | None = None,
        *,
        unreachable_alert_s: float = 60.0,
        update_every_s: float = 300.0,
    ) -> None:
        """``insert(value, token)`` writes an encoded Alert into the store's alerts table (best effort)."""
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.unreachable_alert_s = unreachable_alert_s
        self.update_every_s = update_every_s
        self._insert = insert
        self._stalls: dict[str, _Stall] = {}
        self._producer: Any = None
        #: Alerts published (any state), for tests and metrics.
        self.published = 0

    @property
    def stalled(self) -> list[str]:
        """Tables the loader is stalled on now."""
        return sorted(self._stalls)

    def failed(self, table: str, topic: str, code: int | None, message: str, *, reason: str = "") -> None:
        """One failed attempt to write ``table``: log it, and open or update the incident when due."""
        now = time.monotonic()
        stall = self._stalls.get(table)
        if stall is None:
            stall = _Stall(table, topic, int(time.time() * 1000), now)
            self._stalls[table] = stall
        stall.attempts += 1
        what = f"code {code}" if code is not None else "no error code"
        stall.error = f"{reason + ': ' if reason else ''}{what}: {message}"
        log.error(
            "loader stalled on table %s (topic %s), attempt %d: %s; nothing committed or dead-lettered",
            table, topic, stall.attempts, stall.error,
        )  # fmt: skip
        # A refusal (an error code, or a judged fault) is no blip: alert at once. An unreachable or
        # busy store (no code, or a code that passes by itself) only once it has lasted a while.
        refusal = (code is not None and code not in TRANSIENT) or bool(reason)
        due = refusal or now - stall.since >= self.unreachable_alert_s
        if not due:
            return
        if not stall.opened:
            self._publish(stall, "open")
        elif stall.error != stall.sent_error or now - stall.sent_at >= self.update_every_s:
            self._publish(stall, "update")

    def recovered(self, table: str) -> None:
        """``table`` took its batch: resolve the incident if one was opened."""
        stall = self._stalls.pop(table, None)
        if stall is None:
            return
        waited = time.monotonic() - stall.since
        log.warning(
            "loader resumed on table %s (topic %s) after %d failed attempt(s) in %.0fs; nothing lost",
            table, stall.topic, stall.attempts, waited,
        )  # fmt: skip
        if stall.opened:
            stall.error = (
                f"resumed after {stall.attempts} failed attempt(s) in {waited:.0f}s; last: {stall.error}"
            )
            self._publish(stall, "resolve")

    def record(self, stall: _Stall, state: str) -> dict[str, Any]:
        """The Alert record of ``stall`` in lifecycle ``state``."""
        verb = "resumed" if state == "resolve" else "stalled"
        return {
            "alert_id": alert_id(self.group_id, stall.table),
            "state": state,
            "domain": DOMAIN,
            "kind": KIND,
            "key_kind": "table",
            "affected_keys": [stall.table],
            "first_seen": stall.since_ms,
            "last_seen": max(int(time.time() * 1000), stall.since_ms),
            "severity": "critical",
            "anomaly_count": 0,
            "explanation": (
                f"loader {self.group_id} {verb} on {stall.table} (topic {stall.topic}): {stall.error}"
            )[:2000],
        }

    def _publish(self, stall: _Stall, state: str) -> None:
        record = self.record(stall, state)
        value = contracts.encode(RECORD, record)
        stall.opened, stall.sent_at, stall.sent_error = True, time.monotonic(), stall.error
        try:
            producer = self._alerts()
            producer.produce(self.topic, key=record["alert_id"].encode(), value=value)
            left = producer.flush(10)
            if left:
                raise RuntimeError(f"{left} alert(s) not delivered within 10 s")
            self.published += 1
        except Exception as exc:  # the alert must not stop the retries; the next attempt re-sends it
            stall.sent_error = ""
            log.warning("could not publish the loader's %s alert for %s: %s", state, stall.table, exc)
        if self._insert is not None:
            token = f"{record['alert_id']}|{state}|{record['last_seen']}"
            try:
                self._insert(value, token)
            except Exception as exc:  # the table may be the broken one
                log.info("could not write the loader's alert into the store: %s", exc)

    def _alerts(self) -> Any:
        if self._producer is None:
            self._producer = Producer(
                {
                    **kafkaconf.confluent(self.settings, "loader"),
                    "client.id": "citystream-loader-alerts",
                    "enable.idempotence": True,
                    "acks": "all",
                    "message.timeout.ms": 10_000,
                    "logger": logging.getLogger("citystream.loader.kafka"),
                }
            )
        return self._producer

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.flush(5)


def store_insert(link: Any, database: str, table: str) -> Callable[[bytes, str], None]:
    """``insert(value, token)`` for :class:`StallAlerts`: one Alert into ``table``, without retries."""
    schema = contracts.schema(RECORD)
    columns = [f["name"] for f in schema["fields"]]

    def insert(value: bytes, token: str) -> None:
        client = link.client
        if client is None:
            raise RuntimeError("no store connection")
        sink = AvroSink(client, table, columns, schema, database=database)
        sink.add(value)
        sink.token = token
        sink.flush()

    return insert
