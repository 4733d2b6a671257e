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
  (or a partition-EOF event) is reached.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: Prefix of the offset metadata that carries a batch's plan ("<prefix><end offset>").
PLAN = "citystream-loader:plan="

Key = tuple[str, int]
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

    def start_batch(self) -> Batch:
        return Batch(self)

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

    def __init__(self, planner: OffsetPlanner) -> None:
        self._planner = planner
        self.planned = dict(planner.plans)
        self.parts: dict[Key, list[Any]] = defaultdict(list)
        self.count = 0
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
        self.parts[key].append(msg)
        self.count += 1

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
