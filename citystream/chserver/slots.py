"""Query slots: a bounded number of statements run at once, some kept for the read-write users.

Why: a flood of dashboard reads must never starve ingestion. Readers (read-only
users) may hold at most ``total - reserved`` slots; read-write users may take
any free slot, so the loader always finds one that no reader can occupy. A slot
is taken once a request's statement has been read in full (see
:func:`~citystream.chserver.request.read_statement`), so a slow client holds a
connection, never a slot, while it sends its query.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from citystream.chserver.errors import TOO_MANY_SIMULTANEOUS_QUERIES, StoreError


class Slots:
    def __init__(self, total: int, reserved: int) -> None:
        if total < 1 or not 0 <= reserved < total:
            raise ValueError("need total >= 1 and 0 <= reserved < total")
        self.total = total
        self.reader_limit = total - reserved
        self._busy = 0
        self._readers = 0
        self._cv = threading.Condition()
        #: How long a reader waits at each checkpoint while a writer's request is served.
        self.reader_yield_s = 0.05
        self._writing = 0

    def acquire(self, reader: bool, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for a slot; TOO_MANY_SIMULTANEOUS_QUERIES after that."""
        deadline = time.monotonic() + timeout
        if reader:
            self.yield_to_writers()
        with self._cv:
            while self._busy >= self.total or (reader and self._readers >= self.reader_limit):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    limit = self.reader_limit if reader else self.total
                    raise StoreError(
                        TOO_MANY_SIMULTANEOUS_QUERIES, f"Too many simultaneous queries. Maximum: {limit}"
                    )
                self._cv.wait(remaining)
            self._busy += 1
            self._readers += reader

    def release(self, reader: bool) -> None:
        with self._cv:
            self._busy -= 1
            self._readers -= reader
            self._cv.notify_all()

    def yield_to_writers(self) -> None:
        """A reader's checkpoint: while a writer's request is served, wait a little (bounded) first.

        Why: request threads share one interpreter lock; a reader doing Python
        work makes the loader's request wait at each of its many hand-overs.
        The wait is bounded, so readers are slowed while ingestion runs, never
        starved.
        """
        with self._cv:
            if self._writing:
                self._cv.wait_for(lambda: not self._writing, self.reader_yield_s)

    def writing(self, delta: int) -> None:
        """A read-write user's request starts (+1) or ends (-1): readers yield meanwhile."""
        with self._cv:
            self._writing += delta
            if not self._writing:
                self._cv.notify_all()

    @property
    def busy(self) -> int:
        return self._busy


class ReaderWork:
    """A read-only user's request body is decoded by at most ``limit`` threads at once.

    Why: each body chunk of a compression bomb or junk query costs Python work
    under the GIL before any query slot is taken; with many such requests in
    parallel, every GIL hand-over of the loader's request queued behind them.
    The permit is held only while a chunk is processed, never while the
    client's next bytes are awaited, and given back once the statement is read.
    """

    def __init__(self, limit: int, slots: Slots) -> None:
        self._permits = threading.BoundedSemaphore(limit)
        self._slots = slots

    def gated(self, raw: Iterator[bytes]) -> GatedChunks:
        return GatedChunks(raw, self._permits, self._slots)


class GatedChunks:
    """``raw`` chunks, each handed out with a permit that is given back on the next pull or ``release``."""

    def __init__(self, raw: Iterator[bytes], permits: threading.BoundedSemaphore, slots: Slots) -> None:
        self._raw = raw
        self._permits = permits
        self._slots = slots
        self._held = False

    def __iter__(self) -> GatedChunks:
        return self

    def __next__(self) -> bytes:
        self.release()
        chunk = next(self._raw)  # the client's pace: no permit held
        self._slots.yield_to_writers()
        self._permits.acquire()
        self._held = True
        return chunk

    def release(self) -> None:
        if self._held:
            self._held = False
            self._permits.release()
