"""The loader never loses data quietly: a broken table stalls and alerts, only bad records are diverted.

Real broker and real store (the session fixtures), fixed epochs. A migration
that breaks a column must not turn good records into dead letters: the loader
stalls (nothing committed, nothing dead-lettered), says so on the alerts
topic, and after the fix the table holds exactly what was produced. A record
the table refuses on its own is the only thing that goes to dead letters.
Waits poll a condition under a hang guard; nothing asserts on durations.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Message

from citystream import contracts
from citystream.connectors.loader import Loader, LoadStats, routes
from citystream.connectors.loader.common import BadData
from citystream.connectors.loader.judge import PROOF, Isolation, Judge, TableFault, isolate
from citystream.connectors.loader.offsets import OffsetPlanner
from citystream.connectors.loader.stall import alert_id
from citystream.connectors.loader.tablecheck import drift, fits
from citystream.settings import Settings
from tests.test_loader import _aggregate, _late, _unique, produce, wait_for

GROUP = "citystream-loader-stall"
SELECT_WINDOWS = (
    "SELECT domain, key_kind, key_id, metric, toUnixTimestamp64Milli(window_start), "
    "toUnixTimestamp64Milli(window_end), samples, mean, min, max, late, duplicates, revision "
    "FROM window_aggregates FINAL ORDER BY ALL"
)
FIELDS = ("domain", "key_kind", "key_id", "metric", "window_start", "window_end", "samples", "mean")
FIELDS += ("min", "max", "late", "duplicates", "revision")


# --------------------------------------------------------------------------- unit: no servers


def test_contract_check_names_missing_and_lossy_columns() -> None:
    assert (
        fits("long", "UInt64")
        and fits("long", "Nullable(Int64)")
        and fits("string", "LowCardinality(String)")
    )
    assert fits({"type": "long", "logicalType": "timestamp-millis"}, "DateTime64(3, 'UTC')")
    assert fits(["null", "double"], "Nullable(Float64)") and fits(
        {"type": "array", "items": "string"}, "Array(String)"
    )
    assert not fits("double", "UInt8") and not fits("long", "Int8") and not fits("string", "Enum8('a' = 1)")
    assert not fits({"type": "long", "logicalType": "timestamp-millis"}, "DateTime('UTC')")
    assert not fits({"type": "array", "items": "string"}, "Array(FixedString(4))")
    assert not fits(["null", "double"], "Float64")  # the contract allows null: the column must too
    assert fits(["null", "bytes"], "Nullable(String)") and fits(
        ["null", "string"], "LowCardinality(Nullable(String))"
    )
    table = {name: "Float64" for name in ("mean", "min", "max")} | {"samples": "UInt64"}
    columns = ("samples", "mean", "min", "max", "revision")
    assert drift("citystream.WindowAggregate", columns, {**table, "revision": "UInt32"}) == []
    problems = drift("citystream.WindowAggregate", columns, {**table, "mean": "UInt8"})
    assert problems == [
        "column mean is UInt8, which cannot hold the contract's double without loss",
        "column revision is missing",
    ]


def _msg(i: int, size: int, topic: str = "t", partition: int = 0) -> Any:
    return Message(topic=topic, partition=partition, offset=i, value=bytes(size))


def test_batches_are_bounded_in_bytes_and_carry_the_rest_in_order() -> None:
    planner = OffsetPlanner()
    batch = planner.start_batch(max_bytes=1000)
    batch.fill([_msg(i, 300) for i in range(5)])
    assert batch.count == 3 and batch.bytes == 900 and batch.full
    assert [m.offset() for m in planner.carry] == [3, 4]
    batch.fill([_msg(5, 1)])  # once full, everything is carried, in order
    batch.take(_msg(6, 1))
    assert [m.offset() for m in planner.carry] == [3, 4, 5, 6]
    first = batch.close()
    assert [m.offset() for m in first[("t", 0)]] == [0, 1, 2]
    second = planner.start_batch(max_bytes=1000)  # starts with what was carried
    assert second.count == 4 and not second.full and second.bytes == 602
    # A record larger than the bound is a batch of its own, never a stall.
    planner = OffsetPlanner()
    alone = planner.start_batch(max_bytes=100)
    alone.fill([_msg(0, 5000), _msg(1, 10)])
    assert alone.count == 1 and alone.bytes == 5000 and [m.offset() for m in planner.carry] == [1]
    # Without a bound (a replayed plan is taken whole) nothing is carried.
    planner = OffsetPlanner()
    unbounded = planner.start_batch(None)
    unbounded.fill([_msg(i, 10_000) for i in range(3)])
    assert unbounded.count == 3 and not planner.carry


# --------------------------------------------------------------------------- helpers


def _windows(sensors: int, minutes: int) -> tuple[list[dict], list[tuple[bytes, bytes]]]:
    rows = [_aggregate(s, m) for m in range(minutes) for s in range(sensors)]
    values = contracts.encode_many("citystream.WindowAggregate", rows)
    return rows, [(r["key_id"].encode(), v) for r, v in zip(rows, values, strict=True)]


class Running:
    """A Loader in a thread (``until_end``), its result or failure kept for the assertions."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        options.setdefault("max_backoff_s", 0.5)
        self.loader = Loader(settings, group_id=GROUP, batch_ms=200, **options)
        self.result: dict[str, Any] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        STARTED.append(self)

    def _run(self) -> None:
        try:
            self.result["stats"] = self.loader.run(until_end=True, stop=self.stop.is_set)
        except BaseException as exc:  # surfaced by finish()
            self.result["error"] = exc

    def finish(self) -> LoadStats:
        wait_for(lambda: not self.thread.is_alive(), "the loader to finish")
        assert "error" not in self.result, self.result
        return self.result["stats"]


STARTED: list[Running] = []


@pytest.fixture(autouse=True)
def _stop_loaders() -> Iterator[None]:
    """A loader a failed test leaves stalled is stopped (by its own stop flag) and joined."""
    yield
    while STARTED:
        running = STARTED.pop()
        running.stop.set()
        running.thread.join(60)


def _committed(settings: Settings, suffix: str) -> tuple[int, int]:
    """(records the loader's group committed, records in the topic), over the topic's partitions."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(suffix)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": GROUP})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in committed]
        return sum(max(tp.offset, 0) for tp in committed), sum(ends)
    finally:
        consumer.close()


def _sql(settings: Settings, *statements: str) -> list[Any]:
    from citystream.store.client import connect

    client = connect(settings)
    try:
        out = []
        for statement in statements:
            if statement.lstrip().upper().startswith("SELECT"):
                out.append(client.query(statement).result_rows)
            else:
                client.command(statement)
        return out
    finally:
        client.close()


def _topic(settings: Settings, suffix: str, record: str) -> list[tuple[bytes | None, dict]]:
    """Every record of a one-partition topic, decoded, in order."""
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(suffix)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "stall-reader"})
    try:
        tp = TopicPartition(topic, 0, 0)
        high = consumer.get_watermark_offsets(tp, timeout=10)[1]
        out: list[tuple[bytes | None, dict]] = []
        if high == 0:
            return out
        consumer.assign([tp])
        while len(out) < high:
            for msg in consumer.consume(num_messages=1000, timeout=1.0):
                if msg.error() is None:
                    out.append((msg.key(), contracts.decode(record, msg.value())))
        return out
    finally:
        consumer.close()


def _alerts(settings: Settings, table: str) -> list[dict]:
    wanted = alert_id(GROUP, table)
    return [a for k, a in _topic(settings, "alerts", "citystream.Alert") if k == wanted.encode()]


def _stalled_without_loss(settings: Settings, running: Running, table: str, produced: int) -> dict:
    """Wait until the loader stalled and alerted; check nothing was committed, loaded or dead-lettered."""
    loader = running.loader
    wait_for(lambda: loader.stalls.stalled == [table] and loader.stats.retries >= 3, "the loader to stall")
    wait_for(lambda: bool(_alerts(settings, table)), "the stall alert on the alerts topic")
    assert running.thread.is_alive()
    # Nothing committed: no commit yet, or the first batch's plan (its start offsets, 0).
    assert _committed(settings, "aggregates") == (0, produced)
    assert _topic(settings, "dead-letter", "citystream.DeadLetter") == []  # nothing diverted
    assert _sql(settings, "SELECT count() FROM dead_letters") == [[(0,)]]
    assert _sql(settings, f"SELECT count() FROM {table}") == [[(0,)]]
    opened = _alerts(settings, table)[0]
    assert opened["state"] == "open" and opened["domain"] == "pipeline" and opened["kind"] == "loader_stalled"
    assert opened["key_kind"] == "table" and opened["affected_keys"] == [table]
    assert f"stalled on {table}" in opened["explanation"]
    assert settings.topic("aggregates") in opened["explanation"]
    return opened


def _resumed_exactly(settings: Settings, running: Running, rows: list[dict], table: str) -> None:
    """After the fix: the loader finished, the table holds exactly ``rows``, the alert is resolved."""
    stats = running.finish()
    # (It may also have loaded its own alerts from the alerts topic.)
    assert stats.per_topic[settings.topic("aggregates")] == len(rows)
    assert stats.rejected == 0 and stats.undecodable == 0
    want = sorted(tuple(r[f] for f in FIELDS) for r in rows)
    assert [tuple(r) for r in _sql(settings, SELECT_WINDOWS)[0]] == want
    assert _committed(settings, "aggregates") == (len(rows), len(rows))
    assert _topic(settings, "dead-letter", "citystream.DeadLetter") == []
    assert _sql(settings, "SELECT count() FROM dead_letters") == [[(0,)]]
    lifecycle = [a["state"] for a in _alerts(settings, table)]
    assert lifecycle[0] == "open" and lifecycle[-1] == "resolve", lifecycle
    assert running.loader.stalls.stalled == []
    # The dashboard's view of the store (the loader wrote its alert there too): resolved.
    latest = _sql(
        settings,
        f"SELECT state, domain, affected_keys FROM alerts_latest WHERE alert_id = '{alert_id(GROUP, table)}'",
    )[0]
    assert latest == [("resolve", "pipeline", [table])]


# --------------------------------------------------------------------------- integration


@pytest.mark.integration
@pytest.mark.parametrize(
    ("breaks", "fixes", "names"),
    [
        # The acceptance scenario: a migration renames a column the loader writes.
        ("RENAME COLUMN mean TO mean_value", "RENAME COLUMN mean_value TO mean", "column mean is missing"),
        # A retyped column ClickHouse would even accept, silently: 230.7 stored as 230.
        ("MODIFY COLUMN mean UInt8", "MODIFY COLUMN mean Float64", "column mean is UInt8"),
    ],
    ids=["renamed", "retyped"],
)
def test_a_migration_that_breaks_a_column_stalls_alerts_and_resumes_with_nothing_lost(
    kafka, store, breaks: str, fixes: str, names: str
) -> None:
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    rows, records = _windows(sensors=10, minutes=30)
    produce(settings, {"aggregates": records})
    migrate(settings)
    _sql(settings, f"ALTER TABLE window_aggregates {breaks}")
    running = Running(settings, batch_rows=100)
    opened = _stalled_without_loss(settings, running, "window_aggregates", len(rows))
    assert names in opened["explanation"], opened["explanation"]
    _sql(settings, f"ALTER TABLE window_aggregates {fixes}")
    _resumed_exactly(settings, running, rows, "window_aggregates")


@pytest.mark.integration
def test_only_a_record_the_loader_cannot_read_is_dead_lettered_the_rest_loads(kafka, store) -> None:
    """One record is not its contract's Avro: it alone goes to dead letters, with the reason; no stall."""
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    rows, records = _windows(sensors=6, minutes=30)
    bad_at = len(records) // 2
    records.insert(bad_at, (b"grid-0000", b"\x02\x04not a window"))
    produce(settings, {"aggregates": records})
    migrate(settings)
    stats = Running(settings, batch_rows=1000).finish()
    assert stats.undecodable == 1 and stats.per_topic[settings.topic("aggregates")] == len(rows)
    assert [tuple(r) for r in _sql(settings, SELECT_WINDOWS)[0]] == sorted(
        tuple(r[f] for f in FIELDS) for r in rows
    )
    assert _committed(settings, "aggregates") == (len(records), len(records))
    dead = [letter for _, letter in _topic(settings, "dead-letter", "citystream.DeadLetter")]
    assert [(d["reason"], d["original_value"]) for d in dead] == [("undecodable", records[bad_at][1])]
    assert "cannot decode" in dead[0]["error"]
    assert _alerts(settings, "window_aggregates") == []  # bad data is no stall


def _refusing(poisoned: set[int]) -> Any:
    """A table stand-in for the bisection's arithmetic: a range holding a poisoned index is refused."""

    def insert(a: int, b: int) -> int:
        if poisoned & set(range(a, b)):
            raise BadData("Code: 395. refused", 395)
        return b - a

    return insert


def test_bisection_finds_exactly_the_records_refused_alone() -> None:
    found = Isolation(300)
    isolate(found, 0, 300, BadData("Code: 395. refused", 395), _refusing({17, 150}), lambda _f: None)
    assert [i for i, _ in found.rejected] == [17, 150] and found.inserted == 298
    assert found.inserts <= 4 * 9  # about two inserts per level per refused record, not one per record


def test_every_record_refused_alone_is_the_tables_fault_and_stops_early() -> None:
    judge = Judge(link=None, database="db")  # type: ignore[arg-type]  # no definition known: no store asked
    route = next(r for r in routes(Settings()) if r.table == "window_aggregates")
    found = Isolation(100_000)
    refuse_all = _refusing(set(range(100_000)))
    with pytest.raises(TableFault, match=f"the first {PROOF} records each fail alone"):
        isolate(
            found, 0, 100_000, BadData("x", 395), refuse_all, lambda f: judge.early(route, f, lambda: False)
        )
    assert found.inserted == 0 and len(found.rejected) == PROOF and found.inserts < 4 * PROOF + 40
    small = Isolation(3)
    isolate(small, 0, 3, BadData("x", 395), _refusing({0, 1, 2}), lambda _f: None)
    with pytest.raises(TableFault, match="all 3 record"):
        judge.decide(route, small, lambda: False)
    some = Isolation(3)
    isolate(some, 0, 3, BadData("x", 395), _refusing({1}), lambda _f: None)
    judge.decide(route, some, lambda: False)  # others went in: the record's fault
    assert [i for i, _ in some.rejected] == [1] and some.inserted == 2


@pytest.mark.integration
def test_every_migrated_table_holds_its_contract(kafka, store) -> None:
    """The check must pass on the project's own schema, or a fresh stack would stall at once."""
    from citystream.connectors.loader.tablecheck import table_columns
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    migrate(settings)
    client = connect(settings)
    try:
        for route in routes(settings):
            columns = table_columns(client, settings.clickhouse_database, route.table)
            assert columns is not None, route.table
            assert drift(route.record, route.columns, columns) == [], route.table
    finally:
        client.close()


@pytest.mark.integration
def test_byte_bounded_batches_load_everything(kafka, store) -> None:
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    late = [dict(_late(i), original=bytes([i % 256]) * 1000) for i in range(40)]
    late.append(dict(_late(40), original=b"x" * 20_000))  # larger than a batch: loaded alone
    values = contracts.encode_many("citystream.LateEvent", late)
    produce(settings, {"late-events": [(b"s", v) for v in values]})
    migrate(settings)
    stats = Running(settings, batch_rows=1000, batch_bytes=5000).finish()
    assert stats.loaded == 41
    assert stats.batches >= 40 * 1000 // 5000 + 1
    assert stats.largest_batch_bytes == len(values[-1])  # only the lone large record is over the bound
    assert max(len(v) for v in values[:-1]) * 4 < 5000 < sum(len(v) for v in values[:-1])
    got = _sql(
        settings, "SELECT source_offset, length(original) FROM late_events FINAL ORDER BY source_offset"
    )
    assert got[0] == [(r["source_offset"], len(r["original"])) for r in late]


def test_settings_carry_the_byte_bound() -> None:
    from citystream.settings import load

    assert load({"CITYSTREAM_LOADER_BATCH_BYTES": "12345"}).loader_batch_bytes == 12345
    assert Settings().loader_batch_bytes == 64 << 20
    with pytest.raises(ValueError, match="CITYSTREAM_LOADER_BATCH_BYTES"):
        load({"CITYSTREAM_LOADER_BATCH_BYTES": "lots"})
