"""The embedded store speaks ClickHouse HTTP well enough for real clients.

Every test talks to a real ``citystream store serve`` subprocess (real chdb
engine, free 127.0.0.1 port, private data directory) with real clients:
clickhouse-connect over HTTP, raw HTTP for the wire details, and clickhouse-go
v2 (HTTP + LZ4, what Grafana's plugin uses) built from tests/go. Servers are
stopped by pid in a ``finally`` even when a test fails. Timestamps are fixed
epochs; nothing asserts on timing.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import gzip
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from citystream.proc import free_port
from citystream.settings import ROOT, Settings

pytestmark = pytest.mark.integration

PASSWORD = "rw-secret"
VIEWER_PASSWORD = "ro-secret"
EPOCH_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
GO_PROGRAM = ROOT / "tests" / "go" / "clickhouse_go_http"


@dataclass
class RunningStore:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log: Path

    @property
    def settings(self) -> Settings:
        return Settings(
            run_dir=self.data_dir.parent,
            store_port=self.port,
            clickhouse_password=PASSWORD,
            clickhouse_viewer_password=VIEWER_PASSWORD,
            clickhouse_database="srv",
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _ping(port: int) -> bool:
    with contextlib.suppress(OSError):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().read() == b"Ok.\n"
        finally:
            conn.close()
    return False


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=30)
    return proc.returncode


@contextlib.contextmanager
def running_store(data_dir: Path, log_name: str = "store.log") -> Iterator[RunningStore]:
    """``citystream store serve`` on a free port; stopped by pid (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    log = data_dir.parent / log_name
    env = dict(
        os.environ,
        CITYSTREAM_CLICKHOUSE_PASSWORD=PASSWORD,
        CITYSTREAM_CLICKHOUSE_VIEWER_PASSWORD=VIEWER_PASSWORD,
        # The viewer reads only the project's database (the statement policy): name the tests' one.
        CITYSTREAM_CLICKHOUSE_DATABASE="srv",
    )
    cmd = [sys.executable, "-m", "citystream.cli", "store", "serve"]
    cmd += ["--data", str(data_dir), "--port", str(port), "--log-level", "debug"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    store = RunningStore(proc, port, data_dir, log)
    try:
        deadline = time.monotonic() + 90
        while not _ping(port):
            if proc.poll() is not None:
                pytest.fail(f"store exited with {proc.returncode} while starting:\n{store.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"store did not answer /ping:\n{store.log_text()}")
            time.sleep(0.1)
        yield store
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    with running_store(tmp_path_factory.mktemp("store") / "data") as running:
        client = _client(running)
        client.command("CREATE DATABASE IF NOT EXISTS srv")
        client.close()
        yield running


def _client(store: RunningStore, readonly: bool = False, **kwargs: object):  # type: ignore[no-untyped-def]
    from citystream.store.client import connect

    return connect(store.settings, readonly=readonly, **kwargs)


def _http(
    store: RunningStore,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    user: str | None = "default",
    password: str = PASSWORD,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request; returns status, headers (case as sent) and the undecoded body."""
    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=60)
    try:
        hdrs = {}
        if user is not None:
            hdrs["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        hdrs.update(headers or {})
        path = "/" + ("?" + urlencode(params) if params else "")
        conn.request(method or ("POST" if body is not None else "GET"), path, body=body, headers=hdrs)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _ts(offset_s: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(EPOCH_MS / 1000 + offset_s, tz=dt.UTC)


# --------------------------------------------------------------------------- basics


def test_ping_and_select_one_with_clickhouse_headers(store: RunningStore) -> None:
    assert _ping(store.port)
    status, headers, body = _http(store, {"query": "SELECT 1", "query_id": "fixed-id-1"})
    assert (status, body) == (200, b"1\n")
    assert headers["X-ClickHouse-Query-Id"] == "fixed-id-1"
    assert headers["X-ClickHouse-Format"] == "TabSeparated"
    assert headers["X-ClickHouse-Timezone"]
    assert headers["X-ClickHouse-Server-Display-Name"]
    summary = json.loads(headers["X-ClickHouse-Summary"])
    assert summary["result_rows"] == "1"


def test_insert_native_and_read_back_every_type(store: RunningStore) -> None:
    client = _client(store)
    try:
        client.command("DROP TABLE IF EXISTS srv.typed")
        client.command(
            "CREATE TABLE srv.typed (id UInt32, sensor LowCardinality(String), ts DateTime64(3, 'UTC'), "
            "value Float64, note Nullable(String), tags Array(String), attrs Map(String, Float64), "
            "day Date, big Int64, flag Bool) ENGINE = MergeTree ORDER BY id"
        )
        rows = [
            [
                i,
                f"s{i % 3}",
                _ts(i),
                i * 0.25,
                None if i % 2 else f"note {i}",
                [f"t{j}" for j in range(i % 3)],
                {"a": float(i)} if i % 4 else {},
                dt.date(2023, 11, 14),
                -(2**40) + i,
                i % 2 == 0,
            ]
            for i in range(500)
        ]
        columns = ["id", "sensor", "ts", "value", "note", "tags", "attrs", "day", "big", "flag"]
        summary = client.insert("srv.typed", rows, column_names=columns)
        assert summary.written_rows == 500
        got = client.query("SELECT * FROM srv.typed ORDER BY id").result_rows
        assert len(got) == 500
        for want, row in zip(rows, got, strict=True):
            assert row[0] == want[0] and row[1] == want[1]
            assert row[2].replace(tzinfo=dt.UTC) == want[2]
            assert row[3:] == tuple(want[3:])
    finally:
        client.close()


def test_query_formats_json_each_row_and_format_clause(store: RunningStore) -> None:
    client = _client(store)
    try:
        raw = client.raw_query("SELECT number AS n, toString(number) AS s FROM numbers(3)", fmt="JSONEachRow")
        assert [json.loads(line) for line in raw.splitlines()] == [{"n": i, "s": str(i)} for i in range(3)]
        assert client.raw_query("SELECT 7 AS x FORMAT CSVWithNames") == b'"x"\n7\n'
    finally:
        client.close()
    status, headers, body = _http(store, {"query": "SELECT 1 AS one", "default_format": "JSONCompact"})
    assert status == 200 and headers["X-ClickHouse-Format"] == "JSONCompact"
    assert json.loads(body)["data"] == [[1]]


def test_server_side_parameter_binding(store: RunningStore) -> None:
    client = _client(store)
    try:
        result = client.query(
            "SELECT {n:UInt32} + 1, {s:String}, has({ids:Array(String)}, 'b')",
            parameters={"n": 41, "s": 'it\'s \\ "quoted"', "ids": ["a", "b"]},
        )
        assert result.result_rows == [(42, 'it\'s \\ "quoted"', True)]
    finally:
        client.close()
    status, _, body = _http(store, {"query": "SELECT {x:Int8} * 2", "param_x": "-4"})
    assert (status, body) == (200, b"-8\n")


def test_url_settings_apply_unknown_ones_are_skipped_bad_values_fail(store: RunningStore) -> None:
    status, _, body = _http(store, {"query": "SELECT getSetting('max_threads')", "max_threads": "2"})
    assert (status, body) == (200, b"2\n")
    status, _, body = _http(
        store, {"query": "SELECT 1", "a_server_only_setting": "1", "wait_end_of_query": "1"}
    )
    assert (status, body) == (200, b"1\n")
    assert "ignoring setting 'a_server_only_setting'" in store.log_text()
    status, headers, _ = _http(store, {"query": "SELECT 1", "max_threads": "lots"})
    assert status >= 400 and headers["X-ClickHouse-Exception-Code"] != "0"


# --------------------------------------------------------------------------- compression


@pytest.mark.parametrize("compress", [False, True, "lz4", "zstd", "gzip"])
def test_round_trip_with_and_without_compression(store: RunningStore, compress: object) -> None:
    table = f"srv.comp_{str(compress).lower()}"
    client = _client(store, compress=compress)
    try:
        client.command(f"DROP TABLE IF EXISTS {table}")
        client.command(f"CREATE TABLE {table} (k UInt64, v String) ENGINE = MergeTree ORDER BY k")
        rows = [[i, "x" * (i % 50)] for i in range(20_000)]
        assert client.insert(table, rows, column_names=["k", "v"]).written_rows == 20_000
        got = client.query(f"SELECT k, v FROM {table} ORDER BY k").result_rows
        assert [list(r) for r in got] == rows
    finally:
        client.close()


def test_http_content_encodings_on_requests_and_responses(store: RunningStore) -> None:
    _http(store, {"query": "CREATE TABLE IF NOT EXISTS srv.enc (a UInt8, b String) ENGINE = Memory"}, b"")
    body = gzip.compress(b"INSERT INTO srv.enc FORMAT TSV\n1\tone\n2\ttwo\n")
    status, headers, _ = _http(store, body=body, headers={"Content-Encoding": "gzip"})
    assert status == 200 and json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "2"
    params = {"query": "SELECT a, b FROM srv.enc ORDER BY a", "enable_http_compression": "1"}
    status, headers, body = _http(store, params, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert gzip.decompress(body) == b"1\tone\n2\ttwo\n"
    # Without enable_http_compression the server answers uncompressed, as ClickHouse does.
    status, headers, body = _http(
        store, params | {"enable_http_compression": "0"}, headers={"Accept-Encoding": "gzip"}
    )
    assert "Content-Encoding" not in headers and body == b"1\tone\n2\ttwo\n"


def test_clickhouse_native_block_compression(store: RunningStore) -> None:
    from citystream.chserver.wire import compress_blocks, decompress_blocks

    _http(store, {"query": "CREATE TABLE IF NOT EXISTS srv.blocks (a UInt32) ENGINE = Memory"}, b"")
    status, _, native = _http(
        store, {"query": "SELECT toUInt32(number) AS a FROM numbers(1000) FORMAT Native"}
    )
    assert status == 200
    framed = b"".join(compress_blocks(native, "LZ4"))
    params = {"query": "INSERT INTO srv.blocks FORMAT Native", "decompress": "1"}
    status, headers, _ = _http(store, params, framed)
    assert status == 200, _
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "1000"
    params = {"query": "SELECT sum(a) FROM srv.blocks", "compress": "1", "network_compression_method": "ZSTD"}
    status, _, body = _http(store, params)
    assert b"".join(decompress_blocks([body])) == b"499500\n"
    corrupt = bytearray(framed)
    corrupt[3] ^= 0xFF  # inside the checksum
    status, headers, body = _http(
        store, {"query": "INSERT INTO srv.blocks FORMAT Native", "decompress": "1"}, bytes(corrupt)
    )
    assert status == 500 and headers["X-ClickHouse-Exception-Code"] == "40", body


def test_native_reframed_for_client_protocol_version(store: RunningStore) -> None:
    params = {"query": "SELECT toUInt8(7) AS c", "default_format": "Native"}
    _, _, plain = _http(store, params)
    assert plain == b"\x01\x01\x01c\x05UInt8\x07"
    _, _, framed = _http(store, params | {"client_protocol_version": "54460"})
    # BlockInfo (is_overflows=0, bucket_num=-1) first, then a "no custom serialization" byte after the type.
    assert framed == b"\x01\x00\x02\xff\xff\xff\xff\x00" + b"\x01\x01\x01c\x05UInt8" + b"\x00" + b"\x07"


# --------------------------------------------------------------------------- errors and users


def test_bad_sql_is_a_clickhouse_error_with_code(store: RunningStore) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    client = _client(store)
    try:
        with pytest.raises(DatabaseError) as caught:
            client.query("SELECT FROM WHERE")
        assert caught.value.code == 62
        with pytest.raises(DatabaseError) as caught:
            client.command("SELECT * FROM srv.no_such_table")
        assert caught.value.code == 60
    finally:
        client.close()
    status, headers, body = _http(store, body=b"SELECT 1 +")
    assert status == 400 and headers["X-ClickHouse-Exception-Code"] == "62"
    assert body.startswith(b"Code: 62. DB::Exception: Syntax error") and b"(version " in body
    status, headers, _ = _http(store, body=b"SELECT 1; SELECT 2")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    status, headers, _ = _http(store, body=b"SELECT 1 INTO OUTFILE '/tmp/citystream-never'")
    assert headers["X-ClickHouse-Exception-Code"] == "358"


def test_read_only_user_reads_but_cannot_write(store: RunningStore) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    admin = _client(store)
    admin.command("CREATE TABLE IF NOT EXISTS srv.ro (a UInt8) ENGINE = MergeTree ORDER BY a")
    admin.insert("srv.ro", [[1], [2]], column_names=["a"])
    admin.close()
    viewer = _client(store, readonly=True)
    try:
        assert viewer.command("SELECT count() FROM srv.ro") >= 2
        with pytest.raises(DatabaseError) as caught:
            viewer.insert("srv.ro", [[3]], column_names=["a"])
        assert caught.value.code == 164
        for statement in (
            "DROP TABLE srv.ro",
            "CREATE TABLE srv.evil (a UInt8) ENGINE = Memory",
            "SELECT * FROM file('/etc/hostname', 'LineAsString')",
            "SELECT 1 SETTINGS readonly = 0",
        ):
            with pytest.raises(DatabaseError) as caught:
                viewer.command(statement)
            assert caught.value.code == 164, statement
        with pytest.raises(DatabaseError) as caught:
            viewer.command("KILL QUERY WHERE 1")
        assert caught.value.code == 497
    finally:
        viewer.close()
    # Settings in the URL are fine for the viewer (Grafana sends max_execution_time).
    status, _, body = _http(
        store,
        {"query": "SELECT getSetting('max_threads')", "max_threads": "1"},
        user="viewer",
        password=VIEWER_PASSWORD,
    )
    assert (status, body) == (200, b"1\n")
    status, headers, _ = _http(
        store, body=b"INSERT INTO srv.ro VALUES (9)", user="viewer", password=VIEWER_PASSWORD
    )
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (500, "164")


def test_wrong_password_and_unknown_user_are_rejected(store: RunningStore) -> None:
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError

    from citystream.errors import UserError
    from citystream.store.client import connect

    with pytest.raises(UserError, match="rejected user 'default'"):
        connect(store.settings.replace(clickhouse_password="wrong"))
    with pytest.raises(DatabaseError) as caught:
        clickhouse_connect.get_client(host="127.0.0.1", port=store.port, username="viewer", password="nope")
    assert caught.value.code == 516
    for user, password in (("default", "nope"), ("nobody", PASSWORD)):
        status, headers, body = _http(store, {"query": "SELECT 1"}, user=user, password=password)
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516"), body
    status, headers, _ = _http(
        store,
        {"query": "SELECT currentUser()"},
        headers={"X-ClickHouse-User": "viewer", "X-ClickHouse-Key": "nope"},
    )
    assert status == 403
    status, _, body = _http(
        store, {"query": "SELECT 1", "user": "viewer", "password": VIEWER_PASSWORD}, user=None
    )
    assert (status, body) == (200, b"1\n")


def test_sessions_keep_settings_and_temporary_tables(store: RunningStore) -> None:
    session = {"session_id": "citystream-test-session"}
    assert _http(store, session, b"SET max_threads = 3")[0] == 200
    assert _http(store, session, b"CREATE TEMPORARY TABLE tmp (a UInt8)")[0] == 200
    assert _http(store, session, b"INSERT INTO tmp VALUES (5)")[0] == 200
    status, _, body = _http(store, session, b"SELECT getSetting('max_threads'), sum(a) FROM tmp")
    assert (status, body) == (200, b"3\t5\n")
    status, headers, _ = _http(store, {"session_id": "other", "session_check": "1"}, b"SELECT 1")
    assert headers["X-ClickHouse-Exception-Code"] == "372"


# --------------------------------------------------------------------------- process lifecycle


def test_data_survives_restart_and_directory_is_exclusive(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_store(data) as first:
        client = _client(first)
        client.command("CREATE DATABASE IF NOT EXISTS srv")
        client.command(
            "CREATE TABLE IF NOT EXISTS srv.kept (ts DateTime64(3, 'UTC'), v Float64) "
            "ENGINE = MergeTree ORDER BY ts"
        )
        client.insert("srv.kept", [[_ts(i), float(i)] for i in range(10)], column_names=["ts", "v"])
        client.close()
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "citystream.cli",
                "store",
                "serve",
                "--data",
                str(data),
                "--port",
                str(free_port()),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert "in use by another store process" in second.stderr
        assert _stop(first.proc) == 0
        assert "engine closed" in first.log_text()
    with running_store(data, "store2.log") as again:
        client = _client(again)
        try:
            assert client.query("SELECT count(), sum(v) FROM srv.kept").result_rows == [(10, 45.0)]
        finally:
            client.close()


# --------------------------------------------------------------------------- clickhouse-go (Grafana's driver)


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        pytest.skip("go toolchain not found (install Go to run the clickhouse-go HTTP test)")
    return found


def test_clickhouse_go_http_lz4_client(store: RunningStore, tmp_path: Path) -> None:
    go = _go()
    binary = tmp_path / "clickhouse_go_http"
    build = subprocess.run(
        [go, "build", "-o", str(binary), "."], cwd=GO_PROGRAM, capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stderr
    env = dict(os.environ, CITYSTREAM_STORE_USER="default", CITYSTREAM_STORE_PASSWORD=PASSWORD)
    run = subprocess.run(
        [str(binary), f"127.0.0.1:{store.port}"], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 0, run.stdout + run.stderr + store.log_text()[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "ok"
    rows = [line for line in lines if line.startswith("row ")]
    assert rows == [
        f"row id=1 sensor=s1 ts={EPOCH_MS + 1000} value=1.5 note=NULL tags=[t0]",
        f"row id=2 sensor=s0 ts={EPOCH_MS + 2000} value=3.0 note=note-2 tags=[t0 t1]",
        f"row id=3 sensor=s1 ts={EPOCH_MS + 3000} value=4.5 note=NULL tags=[]",
        f"row id=4 sensor=s0 ts={EPOCH_MS + 4000} value=6.0 note=note-4 tags=[t0]",
    ]
    assert "count 5" in lines
    assert any(line.startswith("bad query rejected:") and "code: 47" in line for line in lines)
