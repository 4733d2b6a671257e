"""Records that cannot be loaded: counted, and produced to the dead-letter topic with the reason.

A record of the dead-letter topic itself that cannot be read is never sent
back there (a loop): it is stored directly as a DeadLetter row instead.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from citystream import contracts, kafkaconf
from citystream.connectors.loader.common import Abandoned, Backoff, LoadStats
from citystream.settings import Settings

log = logging.getLogger("citystream.connectors.loader")

#: (message, reason, error): one record on its way to the dead-letter topic.
Dead = tuple[Any, str, str]


def dead_letter(msg: Any, reason: str, error: str) -> dict[str, Any]:
    """The DeadLetter record for Kafka message ``msg``."""
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


class DeadLetters:
    """The dead-letter topic as the loader writes it: idempotent producer, retried until delivered."""

    def __init__(self, settings: Settings, topic: str, stats: LoadStats, max_backoff_s: float) -> None:
        self.settings = settings
        self.topic = topic
        self.stats = stats
        self.max_backoff_s = max_backoff_s
        self._producer: Any = None

    def bad(self, topic: str, msg: Any, error: str, dead: list[Dead]) -> dict[str, Any] | None:
        """Count an undecodable record and queue it for the dead-letter topic.

        From the dead-letter topic itself it cannot go back (a loop): the
        DeadLetter record to store directly is returned instead.
        """
        self.stats.undecodable += 1
        log.warning("undecodable record %s[%d]@%d: %s", topic, msg.partition(), msg.offset(), error)
        if topic != self.topic:
            dead.append((msg, "undecodable", error))
            return None
        return dead_letter(msg, "undecodable", error)

    def produce(self, dead: list[Dead], stop: Callable[[], bool]) -> None:
        """Deliver every record of ``dead``; an unknown outcome is sent again (keyed by offset)."""
        producer = self._dlq()
        backoff = Backoff(self.max_backoff_s, stop)
        todo = dead
        while todo:
            failed: list[Dead] = []

            def report(err: Any, _msg: Any, item: Dead, failed: list = failed) -> None:
                if err is not None:
                    failed.append(item)

            for item in todo:
                msg, reason, error = item
                value = contracts.encode("citystream.DeadLetter", dead_letter(msg, reason, error))
                producer.produce(
                    self.topic,
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
                backoff.wait()

    def _dlq(self) -> Any:
        if self._producer is None:
            self._producer = Producer(
                {
                    **kafkaconf.confluent(self.settings, "loader"),
                    "client.id": "citystream-loader-dlq",
                    "enable.idempotence": True,
                    "acks": "all",
                    "compression.type": "zstd",
                    "linger.ms": 5,
                    "logger": logging.getLogger("citystream.loader.kafka"),
                }
            )
        return self._producer

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.flush(10)
