"""Schema migrations: well-formed files, idempotent runs, upgrades from the previous version.

The integration tests use the session's real store (tests/conftest.py) and a
fresh database per test, so they cannot disturb each other or the
``citystream`` database other tests use. Window timestamps are fixed epochs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator

import pytest

from citystream.errors import UserError
from citystream.settings import ROOT, Settings
from citystream.store.migrate import Applied, Migration, check, discover, migrate

EPOCH_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z; windows below are minutes after the hour
HOUR_MS = EPOCH_MS - EPOCH_MS % 3_600_000


def test_migration_files_are_numbered_and_idempotent_by_construction() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for m in migrations:
        statements = m.statements()
        assert statements, m.path
        for statement in statements:
            head = " ".join(statement.split()[:6]).upper()
            if head.startswith("CREATE"):
                assert "IF NOT EXISTS" in head or "OR REPLACE" in head, f"{m.path.name}: {head}"
            elif head.startswith("DROP"):
                assert "IF EXISTS" in head, f"{m.path.name}: {head}"
            elif head.startswith("ALTER TABLE"):
                # 0006: only columns added, each IF NOT EXISTS
                clauses = re.split(r"\bADD\s+COLUMN\b", statement, flags=re.IGNORECASE)[1:]
                assert clauses and not re.search(r"\b(DROP|MODIFY|RENAME|DELETE|UPDATE)\b", statement.upper())
                assert all(c.split()[:3] == ["IF", "NOT", "EXISTS"] for c in clauses), m.path.name
            else:
                # The only data statements are the rollup backfills (0004: maxMap makes them
                # repeatable; 0005: marking an hour dirty again only makes it be sealed again).
                assert head.startswith("INSERT INTO WINDOW_AGGREGATES_"), f"{m.path.name}: {head}"


def test_check_refuses_a_newer_store_and_edited_migrations(tmp_path) -> None:
    one = Migration(1, "first", tmp_path / "0001_first.sql", "SELECT 1")
    check([one], {1: Applied(1, "first", one.checksum, None)})
    with pytest.raises(
        UserError, match="schema is at version 2 but this citystream only knows migrations up to 1"
    ):
        check([one], {1: Applied(1, "first", one.checksum, None), 2: Applied(2, "later", "x", None)})
    with pytest.raises(UserError, match="was changed after it was applied"):
        check([one], {1: Applied(1, "first", "0" * 64, None)})


def test_checksum_ignores_comments_and_layout_but_not_changes(tmp_path) -> None:
    base = Migration(1, "a", tmp_path / "0001_a.sql", "CREATE TABLE t (x UInt8) ENGINE = Memory;")
    same = "-- why this table\nCREATE TABLE t\n(\n    x UInt8 /* small */\n)\nENGINE = Memory;\n"
    assert Migration(1, "a", base.path, same).checksum == base.checksum
    changed = "CREATE TABLE t (x UInt16) ENGINE = Memory;"
    assert Migration(1, "a", base.path, changed).checksum != base.checksum


def test_discover_rejects_gaps_and_bad_names(tmp_path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_c.sql").write_text("SELECT 1")
    with pytest.raises(UserError, match="without gaps"):
        discover(tmp_path)
    (tmp_path / "0003_c.sql").unlink()
    (tmp_path / "2_b.sql").write_text("SELECT 1")
    with pytest.raises(UserError, match="NNNN_lowercase_name"):
        discover(tmp_path)


# --------------------------------------------------------------------------- against the real store


@pytest.fixture
def fresh_db(store, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings pointing at a database of its own, dropped afterwards."""
    from citystream.store.client import connect

    settings: Settings = store.settings.replace(clickhouse_database=f"mig_{request.node.name[5:40]}")
    yield settings
    client = connect(settings, database=None)
    try:
        client.command(f"DROP DATABASE IF EXISTS {settings.clickhouse_database} SYNC")
    finally:
        client.close()


def _client(settings: Settings, readonly: bool = False):  # type: ignore[no-untyped-def]
    from citystream.store.client import connect

    return connect(settings, readonly=readonly)


def _window(key: str, minute: int, revision: int, samples: int, mean: float, lo: float, hi: float) -> list:
    import datetime as dt

    start = dt.datetime.fromtimestamp((HOUR_MS + minute * 60_000) / 1000, tz=dt.UTC)
    end = start + dt.timedelta(minutes=1)
    return ["grid", "sensor", key, "voltage_v", start, end, samples, mean, lo, hi, revision, 0, revision]


WINDOW_COLUMNS = [
    "domain", "key_kind", "key_id", "metric", "window_start", "window_end",
    "samples", "mean", "min", "max", "late", "duplicates", "revision",
]  # fmt: skip


@pytest.mark.integration
def test_apply_on_an_empty_store_then_nothing_to_do(fresh_db: Settings) -> None:
    known = [m.version for m in discover()]
    lines: list[str] = []
    assert migrate(fresh_db, echo=lines.append) == known
    assert [line.split()[1] for line in lines] == [m.label for m in discover()]
    assert migrate(fresh_db) == []

    client = _client(fresh_db)
    try:
        tables = set(
            client.query(
                "SELECT name FROM system.tables WHERE database = {db:String}",
                parameters={"db": fresh_db.clickhouse_database},
            ).result_columns[0]
        )
        expected = {
            "schema_migrations", "window_aggregates", "window_aggregates_latest", "readings", "anomalies",
            "alerts", "alerts_latest", "sensor_health", "sensor_health_latest", "late_events", "dead_letters",
            "labels", "pipeline_metrics", "backtest_runs",
            "window_aggregates_hourly", "window_aggregates_daily",
            "window_aggregates_hours", "window_aggregates_hours_mv", "window_aggregates_days",
            "window_aggregates_sealed", "window_aggregates_sealed_domains", "window_aggregates_sealed_lag",
        }  # fmt: skip
        assert expected <= tables
        # 0005 removed 0004's maxMap rollups: their views made every insert ~5x slower.
        assert not tables & {
            "window_aggregates_hourly_state", "window_aggregates_daily_state",
            "window_aggregates_hourly_mv", "window_aggregates_daily_mv",
        }  # fmt: skip
        recorded = client.query(
            "SELECT version, name FROM schema_migrations FINAL ORDER BY version"
        ).result_rows
        assert recorded == [(m.version, m.name) for m in discover()]
        columns = client.query(
            "SELECT name FROM system.columns WHERE database = {db:String} AND table = 'window_aggregates' "
            "ORDER BY position",
            parameters={"db": fresh_db.clickhouse_database},
        ).result_columns[0]
    finally:
        client.close()
    avro = json.loads((ROOT / "avro" / "citystream.WindowAggregate.avsc").read_text())
    assert list(columns) == [f["name"] for f in avro["fields"]] + ["loaded_at"]


@pytest.mark.integration
@pytest.mark.parametrize(
    "table, record",
    [
        ("anomalies", "Anomaly"),
        ("alerts", "Alert"),
        ("sensor_health", "SensorHealth"),
        ("late_events", "LateEvent"),
        ("dead_letters", "DeadLetter"),
        ("labels", "Label"),
    ],
)
def test_result_tables_mirror_their_avro_records(store, table: str, record: str) -> None:
    client = _client(store.settings)
    try:
        columns = client.query(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = {t:String} "
            "ORDER BY position",
            parameters={"t": table},
        ).result_columns[0]
    finally:
        client.close()
    avro = json.loads((ROOT / "avro" / f"citystream.{record}.avsc").read_text())
    assert list(columns) == [f["name"] for f in avro["fields"]] + ["loaded_at"]


@pytest.mark.integration
def test_upgrade_from_the_previous_version_backfills_rollups(fresh_db: Settings) -> None:
    """Windows loaded before the upgrade are in the rollups at once, sealed or not, and stay exact."""
    from citystream.store.rollups import seal

    newest = len(discover())
    assert migrate(fresh_db, target=newest - 1) == list(range(1, newest))
    client = _client(fresh_db)
    try:
        # Loaded before the upgrade: revision 0 and a correction of minute 0, plus minute 1.
        client.insert(
            "window_aggregates",
            [
                _window("s1", 0, 0, 10, 230.0, 229.0, 231.0),
                _window("s1", 1, 0, 10, 232.0, 231.0, 233.0),
                _window("s1", 0, 1, 12, 231.0, 228.0, 231.0),
            ],
            column_names=WINDOW_COLUMNS,
        )
        assert migrate(fresh_db) == [newest]
        assert migrate(fresh_db) == []
        first = {
            "windows": 2,
            "samples": 22,
            "mean": (12 * 231.0 + 10 * 232.0) / 22,
            "lo": 228.0,
            "hi": 233.0,
        }
        _assert_hourly(client, **first)  # the hour is dirty: read from the windows themselves
        assert seal(client, grace_s=0).hours == 1
        _assert_hourly(client, **first)  # the same from the sealed rows

        # Later loads keep the rollups current: a late revision of minute 1, a re-delivered old
        # revision (must change nothing) and a new minute make the hour dirty again.
        client.insert(
            "window_aggregates",
            [
                _window("s1", 1, 1, 11, 232.5, 231.0, 236.0),
                _window("s1", 0, 0, 10, 230.0, 229.0, 231.0),
                _window("s1", 2, 0, 5, 240.0, 239.0, 241.0),
            ],
            column_names=WINDOW_COLUMNS,
        )
        mean = (12 * 231.0 + 11 * 232.5 + 5 * 240.0) / 28
        for sealed in (False, True):
            _assert_hourly(client, windows=3, samples=28, mean=mean, lo=228.0, hi=241.0)
            daily = client.query(
                "SELECT windows, samples, late FROM window_aggregates_daily WHERE key_id = 's1'"
            )
            assert daily.result_rows == [(3, 28, 2)], sealed
            if not sealed:
                assert seal(client, grace_s=0).hours == 1
        latest = client.query(
            "SELECT toUnixTimestamp64Milli(window_start) - {h:Int64}, revision, samples "
            "FROM window_aggregates_latest WHERE key_id = 's1' ORDER BY window_start",
            parameters={"h": HOUR_MS},
        ).result_rows
        assert latest == [(0, 1, 12), (60_000, 1, 11), (120_000, 0, 5)]
    finally:
        client.close()
    # The rollup views read under readonly=1 (as the viewer does; the viewer itself reads
    # only the store's project database, not this test's own one).
    reader = _client(fresh_db)
    try:
        assert reader.command("SELECT count() FROM window_aggregates_hourly", settings={"readonly": 1}) == 1
    finally:
        reader.close()


def _assert_hourly(client, *, windows: int, samples: int, mean: float, lo: float, hi: float) -> None:
    rows = client.query(
        "SELECT toUnixTimestamp(hour) * 1000, windows, samples, mean, min, max "
        "FROM window_aggregates_hourly WHERE domain = 'grid' AND key_id = 's1'"
    ).result_rows
    assert len(rows) == 1
    hour, got_windows, got_samples, got_mean, got_lo, got_hi = rows[0]
    assert (hour, got_windows, got_samples, got_lo, got_hi) == (HOUR_MS, windows, samples, lo, hi)
    assert math.isclose(got_mean, mean, rel_tol=1e-12)


@pytest.mark.integration
def test_refuses_a_store_migrated_by_newer_code(fresh_db: Settings) -> None:
    migrate(fresh_db)
    client = _client(fresh_db)
    try:
        client.insert(
            "schema_migrations",
            [[9999, "from_the_future", "f" * 64, 1, 0]],
            column_names=["version", "name", "checksum", "statements", "duration_ms"],
        )
    finally:
        client.close()
    with pytest.raises(UserError, match="schema is at version 9999"):
        migrate(fresh_db)


@pytest.mark.integration
def test_store_cli_migrate_and_status(store, fresh_db: Settings, monkeypatch, capsys) -> None:
    from citystream.cli import main

    for var, value in fresh_db.to_env().items():
        monkeypatch.setenv(var, value)
    assert main(["store", "status"]) == 1
    assert "migration(s) pending" in capsys.readouterr().out
    assert main(["store", "migrate"]) == 0
    assert "applied 0001_window_aggregates" in capsys.readouterr().out
    assert main(["store", "status"]) == 0
    out = capsys.readouterr().out
    assert f"schema version {len(discover())} of {len(discover())} (up to date)" in out
    assert "window_aggregates " in out
    assert main(["query", "SELECT count() AS n FROM schema_migrations FINAL"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "-", str(len(discover())), "(1 row)"]
    assert main(["query", "SELECT FROM nowhere WHERE"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("citystream: query failed: Code: 62. DB::Exception: Syntax error")
        and err.count("\n") == 1
    )
