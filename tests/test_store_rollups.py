"""Sealing the rollups of window_aggregates (citystream/store/rollups.py, migration 0005).

What must hold whatever happens to a sealing pass: readers see every window
exactly once at its latest revision. Checked here against the real engine:
a pass never runs beside an INSERT, a pass that dies half-way leaves its
hours dirty (read from the windows) rather than wrong, a day's rows written
twice count once, recent hours wait for the grace period, and the CLI.
Whether every panel answers the same from sealed rows as from the windows is
tests/test_dashboards.py's job. Fixed epochs, a database per test; no timings.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from citystream.settings import Settings
from citystream.store import rollups

HOUR = dt.datetime(2002, 3, 4, 5, tzinfo=dt.UTC)
COLUMNS = [
    "domain", "key_kind", "key_id", "metric", "window_start", "window_end",
    "samples", "mean", "min", "max", "late", "duplicates", "revision",
]  # fmt: skip
GUARD_S = 60  # a wait longer than this is a hang, not a slow machine


def _window(key: str, minute: int, revision: int = 0, samples: int = 10, mean: float = 1.0) -> list[Any]:
    start = HOUR + dt.timedelta(minutes=minute)
    end = start + dt.timedelta(minutes=1)
    return ["grid", "sensor", key, "voltage_v", start, end, samples, mean, mean, mean, revision, 0, revision]


@pytest.fixture
def db(store, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A client of a freshly migrated database of this test's own, dropped afterwards."""
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings: Settings = store.settings.replace(clickhouse_database=f"rollups_{request.node.name[5:40]}")
    migrate(settings)
    client = connect(settings)
    client.settings_ = settings  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database} SYNC")
        client.close()


def _hourly(client: Any) -> list[tuple]:
    return client.query(
        "SELECT key_id, hour, windows, samples, round(mean, 9) FROM window_aggregates_hourly ORDER BY ALL"
    ).result_rows


def _daily(client: Any) -> list[tuple]:
    return client.query(
        "SELECT key_id, day, windows, samples, round(mean, 9) FROM window_aggregates_daily ORDER BY ALL"
    ).result_rows


def _load(client: Any, rows: list[list[Any]]) -> None:
    client.insert("window_aggregates", rows, column_names=COLUMNS)


@pytest.mark.integration
def test_a_pass_seals_dirty_hours_and_answers_stay_the_same(db: Any) -> None:
    _load(db, [_window("a", m, mean=float(m)) for m in range(0, 60, 7)] + [_window("b", 61)])
    _load(db, [_window("a", 7, revision=1, samples=20, mean=100.0)])  # a correction
    _load(db, [_window("a", 7, revision=0, samples=10, mean=7.0)])  # an old revision re-delivered
    before = _hourly(db), _daily(db)
    assert rollups.dirty_hours(db) == ["2002-03-04 05:00:00", "2002-03-04 06:00:00"]
    result = rollups.seal(db, grace_s=0)
    assert (result.hours, result.days, result.busy) == (2, 1, False)
    assert rollups.dirty_hours(db) == [] and rollups.stale_days(db) == []
    assert (_hourly(db), _daily(db)) == before
    assert before[0][0][:4] == (
        "a",
        HOUR.replace(tzinfo=None),
        9,
        100,
    )  # 9 windows, the correction's 20 samples
    assert rollups.seal(db, grace_s=0).hours == 0  # nothing left to do


@pytest.mark.integration
def test_recent_hours_wait_for_the_grace_period(db: Any) -> None:
    _load(db, [_window("a", 1)])
    assert rollups.seal(db, grace_s=3600).hours == 0
    assert rollups.dirty_hours(db) == ["2002-03-04 05:00:00"]
    assert rollups.seal(db, grace_s=0).hours == 1


@pytest.mark.integration
def test_no_pass_beside_a_running_insert(db: Any) -> None:
    """An INSERT still running could add rows the pass does not read: it waits, or gives up busy."""
    from citystream.store.client import connect

    _load(db, [_window("a", 1)])
    slow = connect(db.settings_, send_receive_timeout=GUARD_S)
    failures: list[BaseException] = []

    def insert() -> None:
        try:  # ~4 s: 40 blocks of 100 rows, 1 ms each
            slow.command(
                f"INSERT INTO window_aggregates ({', '.join(COLUMNS)}) "
                "SELECT 'grid', 'sensor', concat('slow', toString(number)), 'voltage_v', "
                "toDateTime64('2002-03-04 05:10:00', 3, 'UTC'), "
                "toDateTime64('2002-03-04 05:11:00', 3, 'UTC'), 1, 1, 1, 1, 0, 0, 0 "
                "FROM numbers(4000) WHERE sleepEachRow(0.001) = 0",
                settings={"max_block_size": 100, "max_insert_block_size": 100},
            )
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    thread = threading.Thread(target=insert)
    thread.start()
    try:
        deadline = time.monotonic() + GUARD_S
        while not rollups.inserts_running(db):
            assert thread.is_alive() and time.monotonic() < deadline, "the slow INSERT never showed"
            time.sleep(0.01)
        assert rollups.seal(db, grace_s=0).busy
        assert rollups.dirty_hours(db) == ["2002-03-04 05:00:00"]
    finally:
        thread.join(GUARD_S)
        slow.close()
    assert not failures, failures
    result = rollups.seal(db, grace_s=0)
    assert (result.hours, result.busy) == (1, False)
    assert db.command("SELECT count() FROM window_aggregates_hourly WHERE startsWith(key_id, 'slow')") == 4000


class _DiesAt:
    """A client that raises on the first statement containing ``marker`` (a sealer killed there)."""

    def __init__(self, client: Any, marker: str) -> None:
        self._client, self._marker, self.died = client, marker, False

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if not self.died and self._marker in sql:
            self.died = True
            raise ConnectionError("killed")
        return self._client.command(sql, *args, **kwargs)

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self._client.query(*args, **kwargs)


@pytest.mark.integration
@pytest.mark.parametrize(
    "marker",
    [
        "INSERT INTO window_aggregates_sealed_lag",  # some rows written, none recorded
        "INSERT INTO window_aggregates_hours",  # every row written, the seal not recorded
        "INSERT INTO window_aggregates_days",  # hours recorded, the day's rows not
    ],
)
def test_a_pass_that_dies_leaves_answers_exact(db: Any, marker: str) -> None:
    _load(db, [_window(key, m, mean=float(m)) for key in ("a", "b") for m in range(0, 60, 5)])
    exact = _hourly(db), _daily(db)
    dying = _DiesAt(db, marker)
    with pytest.raises(ConnectionError):
        rollups.seal(dying, grace_s=0)
    assert dying.died
    assert (_hourly(db), _daily(db)) == exact  # orphan rows of the dead pass are not read
    rollups.seal(db, grace_s=0)  # the next pass finishes the work ...
    assert rollups.dirty_hours(db) == [] and rollups.stale_days(db) == []
    assert (_hourly(db), _daily(db)) == exact  # ... and a day's rows written twice count once
    panel = (
        "SELECT sum(samples) FROM window_aggregates_sealed "
        "WHERE grain = 86400 AND key_id != '' AND (t, version) IN "
        "(SELECT toDateTime(day), max(version) FROM window_aggregates_days GROUP BY day)"
    )
    assert db.command(panel) == 2 * 12 * 10


@pytest.mark.integration
def test_the_loader_seals_between_its_inserts(kafka, store) -> None:
    from confluent_kafka import Producer

    from citystream import contracts
    from citystream.connectors.loader import Loader
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings: Settings = kafka.settings_.replace(
        topic_prefix=f"seal{time.monotonic_ns()}.",
        clickhouse_database="rollups_loader",
        store_port=store.settings.store_port,
    )
    from citystream.topics import ensure_topics

    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)
    migrate(settings)
    start = int(HOUR.timestamp() * 1000)
    records = [
        {
            "domain": "grid", "key_kind": "sensor", "key_id": f"g{i % 5}", "metric": "voltage_v",
            "window_start": start + (i // 5) * 60_000, "window_end": start + (i // 5) * 60_000 + 60_000,
            "samples": 10, "mean": 230.0, "min": 229.0, "max": 231.0, "late": 0, "duplicates": 0,
            "revision": 0,
        }
        for i in range(600)  # 2 hours of 5 sensors
    ]  # fmt: skip
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for record, value in zip(
        records, contracts.encode_many("citystream.WindowAggregate", records), strict=True
    ):
        producer.produce(settings.topic("aggregates"), key=record["key_id"].encode(), value=value)
    assert producer.flush(GUARD_S) == 0
    loader = Loader(settings, group_id="sealing", batch_rows=100, seal_every_s=0.001, seal_grace_s=0)
    stats = loader.run(until_end=True)
    assert stats.loaded == 600 and stats.sealed_hours >= 1
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT hour, sum(windows), sum(samples) FROM window_aggregates_hourly "
            "GROUP BY hour ORDER BY hour"
        ).result_rows
        assert [(w, s) for _, w, s in rows] == [(300, 3000), (300, 3000)]
    finally:
        client.command("DROP DATABASE IF EXISTS rollups_loader SYNC")
        client.close()


@pytest.mark.integration
def test_cli_seals_everything(
    db: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main

    _load(db, [_window("a", m) for m in (1, 65, 130)])
    for var, value in db.settings_.to_env().items():
        monkeypatch.setenv(var, value)
    assert main(["store", "seal"]) == 0
    assert "sealed 3 hour(s) and 1 day(s)" in capsys.readouterr().out
    assert rollups.dirty_hours(db) == []
