"""The loader's offset bookkeeping: where each partition resumes, what a batch covers, what to commit.

Pure bookkeeping, no Kafka calls, so the rules that make loading crash-safe
are unit-tested without a broker (tests/test_loader_offsets.py). Messages are
anything with ``topic()``, ``partition()`` and ``offset()``.

The rules:

* a partition resumes at its committed offset; if the commit carries a
  *plan* (metadata ``PLAN<end>``, written before a batch is inserted) beyond
  that offset, the first batch re-reads exactly ``[committed, end)``, so a
  batch a crashed loader inserted but did not commit is re-sent identically
  and the store drops it by its deduplication token;
* while a plan is replayed, records outside it are carried to the next batch;
* one commit holds the ends of the acknowledged batch and the plan of the
  next (its start as offset, its end as metadata); for a partition in both,
  the plan wins (its start is the previous batch's end);
* with ``until_end`` a partition is done once its end offset at assignment
  (or a partition-EOF event) is reached;
* a batch holds at most ``max_bytes`` of record values (a record larger than
  that is a batch of its own): what does not fit is carried, in order, to the
  next batch. A replayed plan is taken whole (it was bounded when planned).
"""

from __future__ import annotations

import contextlib
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate, groupby
from operator import itemgetter, methodcaller
from typing import Any

#: Prefix of the offset metadata that carries a batch's plan ("<prefix><end offset>").
PLAN = "citystream-loader:plan="

Key = tuple[str, int]
_FIRST, _SECOND = itemgetter(0), itemgetter(1)
_TOPIC, _PARTITION = methodcaller("topic"), methodcaller("partition")
#: A batch: each partition's messages in offset order.
Parts = Mapping[Key, list[Any]]


@dataclass(frozen=True)
class Commit:
    """One partition's entry of an offset commit."""

    topic: str
    partition: int
    offset: int
    metadata: str = ""


def plan_end(metadata: str | None) -> int | None:
    """The end offset a committed plan names, or None when the metadata is no plan."""
    meta = metadata or ""
    if not meta.startswith(PLAN):
        return None
    with contextlib.suppress(ValueError):
        return int(meta[len(PLAN) :])
    return None


class OffsetPlanner:
    """Partitions assigned, their committed offsets, pending plans and ends; records held for later."""

    def __init__(self) -> None:
        self.assigned: set[Key] = set()
        self.committed: dict[Key, int] = {}
        #: Plans left by a previous loader, replayed by the next batch.
        self.plans: dict[Key, int] = {}
        self.eof: set[Key] = set()
        self.end_offsets: dict[Key, int] = {}
        #: Records read but outside the plan being replayed: the next batch starts with them.
        self.carry: list[Any] = []

    def resume(self, key: Key, offset: int, metadata: str | None, high: int | None = None) -> None:
        """Take over a partition whose committed offset is ``offset`` (<0: none); ``high``: its end now."""
        self.assigned.add(key)
        if offset >= 0:
            self.committed[key] = offset
            end = plan_end(metadata)
            if end is not None and end > offset:
                self.plans[key] = end
        if high is not None:
            self.end_offsets[key] = high
            if offset >= high or high <= 0:
                self.eof.add(key)

    def reached_end(self, key: Key) -> None:
        self.eof.add(key)

    def done(self) -> bool:
        """Every assigned partition is at its end (with ``until_end``)."""
        return bool(self.assigned) and all(key in self.eof for key in self.assigned)

    def start_batch(self, max_bytes: int | None = None) -> Batch:
        return Batch(self, max_bytes)

    def commits(self, done: Parts | None, planned: Parts | None) -> list[Commit]:
        """One commit: ``done``'s ends, and ``planned``'s plan (its start, its end as metadata)."""
        offsets: dict[Key, Commit] = {}
        for (t, p), msgs in (done or {}).items():
            offsets[(t, p)] = Commit(t, p, msgs[-1].offset() + 1)
        for (t, p), msgs in (planned or {}).items():
            offsets[(t, p)] = Commit(t, p, msgs[0].offset(), f"{PLAN}{msgs[-1].offset() + 1}")
        return list(offsets.values())

    def acknowledged(self, done: Parts) -> None:
        """``done`` was committed: its ends are the partitions' committed offsets now."""
        for key, msgs in done.items():
            self.committed[key] = msgs[-1].offset() + 1

    def lag(self, high: Callable[[Key], int]) -> int:
        """Records between the committed offsets and ``high(key)``, the partitions' ends (-1: unknown)."""
        total = 0
        for key in self.assigned:
            end = high(key)
            if end < 0:
                return -1
            total += max(0, end - self.committed.get(key, 0))
        return total


class Batch:
    """One batch being collected, by partition in offset order.

    While a plan is replayed (``planned``), only the plan's ranges are taken
    and everything else goes to the planner's carry for the next batch.
    """

    def __init__(self, planner: OffsetPlanner, max_bytes: int | None = None) -> None:
        self._planner = planner
        self.planned = dict(planner.plans)
        self.parts: dict[Key, list[Any]] = defaultdict(list)
        self.count = 0
        #: Bytes of the values taken, and the bound (None: none); ``full`` once something was carried.
        self.bytes = 0
        self.max_bytes = None if self.planned else max_bytes
        self.full = False
        pending, planner.carry = planner.carry, []
        for msg in pending:
            self.take(msg)

    def take(self, msg: Any) -> None:
        key = (msg.topic(), msg.partition())
        if self.planned:
            end = self.planned.get(key)
            if end is None or msg.offset() >= end:
                self._planner.carry.append(msg)
                return
        size = len(msg) if self.max_bytes is not None else 0
        if self.max_bytes is not None and (self.full or (self.count and self.bytes + size > self.max_bytes)):
            self.full = True
            self._planner.carry.append(msg)
            return
        self.parts[key].append(msg)
        self.count += 1
        self.bytes += size

    def fill(self, msgs: list[Any]) -> None:
        """Take a run of records (no plan, no errors) as far as the byte bound allows; carry the rest.

        Iterates in C (map, accumulate, groupby) rather than a Python loop per record: the
        consuming thread's hot path.
        """
        if self.full:
            self._planner.carry.extend(msgs)
            return
        cut = len(msgs)
        sizes = list(accumulate(map(len, msgs))) if self.max_bytes is not None else [0] * cut
        if self.max_bytes is not None and sizes and sizes[-1] + self.bytes > self.max_bytes:
            cut = bisect_right(sizes, self.max_bytes - self.bytes)
            cut = 1 if cut == 0 and self.count == 0 else cut  # a record over the bound goes alone
            self.full = True
            self._planner.carry.extend(msgs[cut:])
        taken = msgs[:cut]
        keys = zip(map(_TOPIC, taken), map(_PARTITION, taken), strict=True)
        for key, run in groupby(zip(keys, taken, strict=True), key=_FIRST):
            self.parts[key].extend(map(_SECOND, run))
        self.count += cut
        self.bytes += sizes[cut - 1] if cut else 0

    def plan_complete(self) -> bool:
        """Every planned partition reached its plan's end (or the end of the partition)."""
        return all(
            (self.parts[key] and self.parts[key][-1].offset() + 1 >= end) or key in self._planner.eof
            for key, end in self.planned.items()
        )

    def close(self) -> dict[Key, list[Any]]:
        """The batch's non-empty partitions; a replayed plan is used up."""
        if self.planned:
            self._planner.plans.clear()
        return {k: v for k, v in self.parts.items() if v}
