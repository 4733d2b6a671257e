"""The loader's offset planner: what a batch covers and what is committed when, without Kafka.

Why without a broker: these rules are what make a crash between insert and
commit harmless (the replayed batch is byte-identical, so the store drops it
by its deduplication token). They are pure bookkeeping, so every case is
checked here in milliseconds; tests/test_loader.py checks them end to end
against a real broker and store.
"""

from __future__ import annotations

from dataclasses import dataclass

from citystream.connectors.loader.offsets import PLAN, Commit, OffsetPlanner, plan_end

A, B = ("t.aggregates", 0), ("t.alerts", 0)


@dataclass(frozen=True)
class Msg:
    """Just what the planner reads of a Kafka message."""

    t: str
    p: int
    o: int

    def topic(self) -> str:
        return self.t

    def partition(self) -> int:
        return self.p

    def offset(self) -> int:
        return self.o


def msgs(key: tuple[str, int], start: int, end: int) -> list[Msg]:
    return [Msg(key[0], key[1], o) for o in range(start, end)]


def test_plan_metadata_round_trip() -> None:
    assert plan_end(f"{PLAN}42") == 42
    assert plan_end("") is None and plan_end(None) is None
    assert plan_end("someone else's metadata") is None
    assert plan_end(f"{PLAN}not-a-number") is None


def test_resume_at_committed_offsets_and_plans_beyond_them() -> None:
    planner = OffsetPlanner()
    planner.resume(A, 10, f"{PLAN}25")
    planner.resume(B, 7, f"{PLAN}7")  # a plan that is no longer ahead: nothing to replay
    planner.resume(("t.labels", 0), -1001, "")  # nothing committed yet
    assert planner.committed == {A: 10, B: 7}
    assert planner.plans == {A: 25}
    assert planner.assigned == {A, B, ("t.labels", 0)}


def test_until_end_partitions_done_at_their_end_or_when_empty() -> None:
    planner = OffsetPlanner()
    planner.resume(A, 5, "", high=5)
    planner.resume(B, -1001, "", high=0)
    assert planner.done()
    planner.resume(("t.labels", 0), 3, "", high=9)
    assert not planner.done()
    planner.reached_end(("t.labels", 0))
    assert planner.done()
    assert not OffsetPlanner().done()  # nothing assigned is not "done"


def test_a_replayed_plan_takes_exactly_its_range_and_carries_the_rest() -> None:
    planner = OffsetPlanner()
    planner.resume(A, 10, f"{PLAN}13")
    planner.resume(B, 0, "")
    batch = planner.start_batch()
    for m in [*msgs(A, 10, 15), *msgs(B, 0, 2)]:
        batch.take(m)
    assert batch.plan_complete()
    parts = batch.close()
    assert parts == {A: msgs(A, 10, 13)}
    assert planner.plans == {}  # used up
    assert planner.carry == [*msgs(A, 13, 15), *msgs(B, 0, 2)]
    # The next batch starts with what was carried, in order.
    nxt = planner.start_batch()
    assert not nxt.planned and nxt.count == 4
    assert nxt.close() == {A: msgs(A, 13, 15), B: msgs(B, 0, 2)}
    assert planner.carry == []


def test_a_plan_is_complete_at_its_end_or_at_the_partition_end() -> None:
    planner = OffsetPlanner()
    planner.resume(A, 0, f"{PLAN}5")
    planner.resume(B, 0, f"{PLAN}3")
    batch = planner.start_batch()
    for m in msgs(A, 0, 5):
        batch.take(m)
    assert not batch.plan_complete()
    planner.reached_end(B)  # compaction thinned the planned range: its end never comes
    assert batch.plan_complete()


def test_one_commit_holds_the_done_ends_and_the_next_plan() -> None:
    planner = OffsetPlanner()
    done = {A: msgs(A, 0, 10), B: msgs(B, 0, 4)}
    planned = {A: msgs(A, 10, 20)}
    commits = planner.commits(done, planned)
    # For a partition in both, the plan wins: its start is the previous batch's end.
    assert sorted(commits, key=lambda c: c.topic) == [
        Commit("t.aggregates", 0, 10, f"{PLAN}20"),
        Commit("t.alerts", 0, 4, ""),
    ]
    assert planner.commits(None, None) == []
    planner.acknowledged(done)
    assert planner.committed == {A: 10, B: 4}


def test_lag_counts_records_behind_the_ends_or_is_unknown() -> None:
    planner = OffsetPlanner()
    planner.resume(A, 10, "")
    planner.resume(B, -1001, "")
    assert planner.lag({A: 15, B: 3}.__getitem__) == 5 + 3
    assert planner.lag({A: 15, B: -1}.__getitem__) == -1
