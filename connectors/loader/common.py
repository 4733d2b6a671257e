"""What every part of the loader shares: its counters, how it gives up, how it waits between retries."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from citystream.store.client import error_message


@dataclass
class LoadStats:
    loaded: int = 0
    batches: int = 0
    undecodable: int = 0
    #: Records the store refused alone (proven bad on their own): dead-lettered with the reason.
    rejected: int = 0
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
    #: Bytes (Kafka values) of the largest batch collected: batches are bounded in bytes too.
    largest_batch_bytes: int = 0


@dataclass
class Throughput:
    """What the writer measured since the metrics were last recorded (the metrics reset it)."""

    rows_since_metrics: int = 0
    last_batch_ms: float = 0.0


class Abandoned(Exception):
    """Stop was requested while a batch could not be written: it is left uncommitted."""


class BadData(Exception):
    """The store refused a batch for its content (parse error, type mismatch): retrying cannot help.

    ``code``: the ClickHouse error code (None: a conversion in the client, without a code).
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def sleep(seconds: float, stop: Callable[[], bool]) -> None:
    """Sleep, but wake within 50 ms of ``stop()`` turning true."""
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


class Backoff:
    """Exponential waits between retries: 0.5 s, doubling up to ``max_s``; cut short by ``stop``."""

    def __init__(self, max_s: float, stop: Callable[[], bool]) -> None:
        self.delay = 0.5
        self._max = max_s
        self._stop = stop

    def wait(self) -> None:
        sleep(self.delay, self._stop)
        self.delay = min(self.delay * 2, self._max)


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse error code of a failure (None: not a ClickHouse error, e.g. connection-level)."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = re.search(r"Code: (\d+)\.", str(exc))
    return int(match.group(1)) if match else None


def is_unreachable(exc: BaseException) -> bool:
    """A lost or refused connection (no ClickHouse error code): the store is down, not refusing."""
    from clickhouse_connect.driver.exceptions import OperationalError

    return error_code(exc) is None and isinstance(exc, OperationalError | OSError | ConnectionError)


def one_line(exc: BaseException) -> str:
    return error_message(exc)[:300]
