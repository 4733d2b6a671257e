"""The read-only user stays in its database; no user gets past its setting caps.

Two layers, as in test_store_security: the policy on the engine's own parse
(in process, a table of statements), then the same rules against a real
``citystream store serve`` (the viewer's database is the project database
``srv``; the read-write user's caps are the store's WRITER_LIMITS), checked
with clickhouse-connect and a probe of the engine's effective settings.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_store_security import _verdict as security_verdict
from test_store_server import PASSWORD, RunningStore, _client, running_store

pytestmark = pytest.mark.security

CAPS = {"max_memory_usage": 1 << 30, "max_execution_time": 60, "max_threads": 8}


@pytest.fixture(scope="module")
def engine_conn() -> Iterator[object]:
    import chdb

    conn = chdb.connect(":memory:")
    yield conn
    conn.close()


def _verdict(conn: object, text: str, readonly: bool, binds: dict[str, str] | None = None) -> int:
    """The security suite's verdict, with a writer's caps in force (escalations are judged against them)."""
    return security_verdict(conn, text, readonly, binds, caps=CAPS)


OUTSIDE_THE_VIEWERS_DATABASE = [
    "SELECT * FROM other.t",
    "SELECT * FROM srv.t AS a INNER JOIN other.u AS b USING (k)",
    "SELECT * FROM srv.t WHERE k IN (SELECT k FROM other.u)",
    "WITH x AS (SELECT * FROM other.t) SELECT * FROM x",
    "SELECT * FROM srv.t UNION ALL SELECT * FROM other.t",
    "SELECT (SELECT max(k) FROM default.t)",
    "SHOW TABLES FROM other",
    "SHOW CREATE TABLE other.t",
    "DESCRIBE TABLE other.t",
    "EXISTS TABLE other.t",
    "EXISTS DATABASE other",
    "SELECT * FROM system.parts",
    "SELECT * FROM system.processes",
    "SELECT * FROM system.query_log",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM merge('other', '.*')",
    "SELECT * FROM {t:Identifier}",
]

INSIDE_THE_VIEWERS_DATABASE = [
    "SELECT * FROM srv.t",
    "SELECT * FROM t",
    "SELECT * FROM srv.t AS a INNER JOIN t AS b USING (k)",
    "SELECT name, engine FROM system.tables WHERE database = 'srv'",
    "SELECT name FROM system.databases",
    "SELECT name, type FROM system.columns WHERE database = 'srv'",
    "SELECT * FROM system.one",
    "SELECT number FROM system.numbers LIMIT 3",
    "SHOW TABLES FROM srv",
    "DESCRIBE TABLE srv.t",
]

#: A server's administrative statements: never the viewer's.
ADMIN = [
    "SYSTEM FLUSH LOGS",
    "SYSTEM DROP DNS CACHE",
    "SYSTEM SHUTDOWN",
    "KILL QUERY WHERE 1",
    "KILL MUTATION WHERE 1",
    "ATTACH TABLE srv.t",
    "DETACH TABLE srv.t",
    "BACKUP TABLE srv.t TO File('/tmp/citystream-backup')",
    "RESTORE TABLE srv.t FROM File('/tmp/citystream-backup')",
    "GRANT SELECT ON *.* TO viewer",
    "CREATE USER evil",
    "SET readonly = 0",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM srv.t SETTINGS readonly = 0, max_memory_usage = 0",
    "SELECT 1 FORMAT TSV SETTINGS readonly = 0",
    "EXPLAIN SELECT 1 FORMAT TSV SETTINGS readonly = 0",
    "EXPLAIN SELECT * FROM srv.t SETTINGS max_threads = 64",
    "SHOW TABLES SETTINGS max_threads = 64",
]

#: The read-write user's ways to raise a cap or change how SQL is read: all refused.
WRITER_ESCALATION = [
    "SET max_memory_usage = 0",
    "SET max_memory_usage = 1099511627776",
    "SET max_execution_time = 0",
    "SET max_threads = 1000",
    "SET max_threads = 2, max_memory_usage = 0",
    "SET readonly = 1",
    "SET dialect = 'kusto'",
    "SET format_schema = 'x:y'",
    "SELECT 1 SETTINGS max_memory_usage = 0",
    "SELECT 1 SETTINGS max_threads = 1",
    "SELECT * FROM (SELECT 1 SETTINGS max_memory_usage = 0)",
    "INSERT INTO srv.t SETTINGS max_memory_usage = 0 FORMAT Native",
    "INSERT INTO srv.t SELECT 1 SETTINGS max_execution_time = 0",
    "CREATE TABLE srv.x ENGINE = Memory AS SELECT 1 AS a SETTINGS max_memory_usage = 0",
    "OPTIMIZE TABLE srv.t FINAL SETTINGS max_execution_time = 0",
    "EXPLAIN SELECT 1 FORMAT TSV SETTINGS max_memory_usage = 0",
]

WRITER_ALLOWED = [
    "SET max_threads = 2",
    "SET max_memory_usage = 1000000",
    "SET max_memory_usage = 1073741824",
    "SET log_comment = 'a, max_memory_usage = 0'",
    "CREATE TABLE srv.s (a UInt8) ENGINE = MergeTree ORDER BY a SETTINGS index_granularity = 128",
    "ALTER TABLE srv.t MODIFY SETTING ttl_only_drop_parts = 1",
    "EXPLAIN indexes = 1 SELECT 1",
]


@pytest.mark.parametrize("text", OUTSIDE_THE_VIEWERS_DATABASE)
def test_viewer_reads_only_its_database(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=True, binds={"t": "other.t"}) in (164, 497)


@pytest.mark.parametrize("text", INSIDE_THE_VIEWERS_DATABASE)
def test_viewer_reads_its_database_and_schema_tables(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=True) == 0


@pytest.mark.parametrize("text", ADMIN)
def test_viewer_runs_no_admin_statement_nor_settings(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=True) != 0


@pytest.mark.parametrize("text", WRITER_ESCALATION)
def test_writer_cannot_raise_its_caps(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=False) == 497


@pytest.mark.parametrize("text", WRITER_ALLOWED)
def test_writer_may_lower_settings_and_set_table_settings(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=False) == 0


# --------------------------------------------------------------------------- against a real store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    with running_store(tmp_path_factory.mktemp("policy") / "data") as running:
        client = _client(running)
        try:
            for db in ("srv", "other"):
                client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
                client.command(f"CREATE TABLE IF NOT EXISTS {db}.t (k UInt8) ENGINE = MergeTree ORDER BY k")
                client.command(f"INSERT INTO {db}.t VALUES (1)")
        finally:
            client.close()
        yield running


def _code(call: object) -> int:
    """The ClickHouse error code of a failed clickhouse-connect call (0: it succeeded)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    try:
        call()  # type: ignore[operator]
    except DatabaseError as err:
        text = str(err)
        return int(text.split("code: ", 1)[1].split(",", 1)[0]) if "code: " in text else -1
    return 0


def test_real_viewer_stays_in_the_project_database(store: RunningStore) -> None:
    viewer = _client(store, readonly=True)
    try:
        assert viewer.command("SELECT count() FROM t") == 1
        assert viewer.command("SELECT count() FROM srv.t") == 1
        for text in OUTSIDE_THE_VIEWERS_DATABASE[:6]:
            assert _code(lambda t=text: viewer.query(t)) == 497, text
        assert _code(lambda: viewer.query("SELECT * FROM {t:Identifier}", parameters={"t": "other.t"})) == 497
        for text in ADMIN:
            assert _code(lambda t=text: viewer.command(t)) in (164, 497, 62), text
        # The escape attempts did not change the viewer's limits: the engine reports them.
        assert viewer.command("SELECT getSetting('readonly')") == 1
    finally:
        viewer.close()


def test_real_writer_caps_hold_however_a_setting_is_written(store: RunningStore) -> None:
    from citystream.store.serving import WRITER_LIMITS

    cap = WRITER_LIMITS["max_memory_usage"]
    import clickhouse_connect

    # With a session (clickhouse-connect's default): a SET would persist for later requests.
    writer = clickhouse_connect.get_client(
        host="127.0.0.1", port=store.port, username="default", password=PASSWORD, session_id="policy-probe"
    )
    try:
        for text in WRITER_ESCALATION[:8]:
            assert _code(lambda t=text: writer.command(t)) == 497, text
        for text in ("SELECT getSetting('max_memory_usage') SETTINGS max_memory_usage = 0",):
            assert _code(lambda t=text: writer.query(t)) == 497, text
        # The probe: the engine's effective settings after every attempt are still the caps.
        assert int(writer.command("SELECT getSetting('max_memory_usage')")) == cap
        assert (
            int(writer.command("SELECT getSetting('max_execution_time')"))
            == WRITER_LIMITS["max_execution_time"]
        )
        assert writer.command("SELECT getSetting('readonly')") == 0
        # Lowering is allowed and holds for the session.
        writer.command("SET max_threads = 2")
        assert int(writer.command("SELECT getSetting('max_threads')")) == 2
        # A URL setting above the cap is clamped, as before.
        assert (
            int(writer.command("SELECT getSetting('max_memory_usage')", settings={"max_memory_usage": 0}))
            == cap
        )
    finally:
        writer.close()
