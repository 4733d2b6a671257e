"""The store's front door, tried as a local attacker would.

Two layers: the statement policy on ClickHouse's own parse (fast, an
in-process chdb engine, a table of hostile and legitimate statements), and
every probe against a real ``citystream store serve`` on a free 127.0.0.1
port (raw HTTP, as curl would send it): viewer writes, file/url reads,
settings escalation, missing or wrong credentials, foreign Host/Origin,
compression bombs per encoding while the server's RSS is watched, a huge
query and header injection (a burst of 16 connections: test_store_fidelity).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import lz4.frame
import pytest

from citystream.chserver import wire
from citystream.chserver.errors import StoreError

try:
    from backports import zstd  # type: ignore[import-not-found]
except ImportError:  # Python 3.14+
    from compression import zstd  # type: ignore[import-not-found,no-redef]

from test_store_server import PASSWORD, VIEWER_PASSWORD, RunningStore, _client, running_store

pytestmark = pytest.mark.security

#: The server's RSS may grow by at most this much while it refuses bombs and huge queries.
RSS_GROWTH_BOUND = 600 << 20
VIEWER = ("viewer", VIEWER_PASSWORD)
WRITER = ("default", PASSWORD)


# --------------------------------------------------------------------------- the policy, in process


@pytest.fixture(scope="module")
def engine_conn() -> Iterator[object]:
    import chdb

    conn = chdb.connect(":memory:")
    yield conn
    conn.close()


def _verdict(
    conn: object,
    text: str,
    readonly: bool,
    binds: dict[str, str] | None = None,
    caps: dict[str, int] | None = None,
) -> int:
    """0 when the policy accepts ``text``; else the ClickHouse error code of the refusal."""
    import chdb

    from citystream.chserver.policy import Policy, Who, inspect, table_functions

    scope = frozenset({"srv"}) if readonly else None
    who = Who("viewer" if readonly else "default", readonly, scope, "srv", *([caps] if caps else []))
    try:
        canonical, tree = inspect(conn, text, binds or {})
        Policy(table_functions(conn), lambda: chdb.connect(":memory:")).check(who, canonical, tree)
    except StoreError as err:
        return err.code
    except Exception as exc:  # an engine parse error: refused before anything runs
        return StoreError.from_engine(exc).code
    return 0


HOSTILE_FOR_EVERYONE = [
    "SELECT 1; SELECT 2",
    "SELECT 1; DROP TABLE srv.t",
    "SELECT 1 /* open comment",
    "SELECT 'open string",
    "SELECT $x$ open dollar",
    "SELECT 1 INTO OUTFILE '/tmp/citystream-pwned'",
    "SELECT 1 INTO OUTFILE '/tmp/citystream-pwned' FORMAT CSV",
    "SELECT $a$ ; $a$ INTO OUTFILE '/tmp/citystream-pwned'",
    "SELECT file('/proc/self/environ')",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "DESC url('http://127.0.0.1:1/x', CSV)",
    "DESCRIBE TABLE file('/etc/passwd')",
    "SELECT * FROM url('http://127.0.0.1:1/x', CSV)",
    "SELECT * FROM executable('id', 'TSV', 'x String')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV')",
    "SELECT * FROM mysql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "SELECT * FROM python(x)",
    "SELECT dictGet('d', 'a', toUInt64(1))",
    "SELECT joinGet('srv.j', 'v', 1)",
    "SELECT * FROM srv.t WHERE a IN (SELECT * FROM file('/etc/passwd'))",
    "WITH (SELECT file('/etc/passwd')) AS x SELECT x",
    "INSERT INTO FUNCTION file('/tmp/citystream-pwned', 'TSV') SELECT 1",
    "CREATE TABLE srv.f (a String) ENGINE = File(TSV, '/etc/hostname')",
    "CREATE TABLE srv.u (a String) ENGINE = URL('http://127.0.0.1:1/', CSV)",
    "CREATE TABLE srv.d (a String DEFAULT file('/etc/passwd')) ENGINE = Memory",
    "CREATE DICTIONARY srv.dd (a UInt8) PRIMARY KEY a SOURCE(FILE(path '/etc/passwd' format 'TSV')) "
    "LAYOUT(FLAT()) LIFETIME(0)",
    "SYSTEM SHUTDOWN",
    "SELECT 1 SETTINGS max_threads = 1; SELECT 2",
]

HOSTILE_FOR_VIEWER = [
    "DROP TABLE srv.t",
    "CREATE TABLE srv.evil (a UInt8) ENGINE = Memory",
    "INSERT INTO srv.t VALUES (1)",
    "INSERT INTO srv.t SELECT 1",
    "ALTER TABLE srv.t DELETE WHERE 1",
    "TRUNCATE TABLE srv.t",
    "SET max_memory_usage = 0",
    "SELECT 1 SETTINGS max_memory_usage = 0",
    "SELECT 1 FORMAT CSV SETTINGS readonly = 0",
    "SELECT * FROM numbers(3) SETTINGS max_threads = 64",
    "SELECT * FROM merge('srv', '.*')",
    "SELECT * FROM view(SELECT 1)",
    "SELECT * FROM other.t",
    "SELECT * FROM system.processes",
    "SELECT * FROM system.query_log",
    "SHOW TABLES FROM other",
    "KILL QUERY WHERE 1",
    "EXPLAIN SELECT * FROM file('/etc/passwd')",
    "USE other",
    "OPTIMIZE TABLE srv.t",
]

LEGITIMATE_FOR_VIEWER = [
    "SELECT 1",
    "SELECT count() FROM srv.t",
    "SELECT a, count() FROM t GROUP BY a ORDER BY a LIMIT 10 FORMAT JSONEachRow",
    "WITH w AS (SELECT a FROM srv.t) SELECT * FROM w",
    "SELECT toStartOfInterval(ts, INTERVAL 1 minute) AS t, avg(v) FROM srv.t "
    "WHERE ts > now() - 60 GROUP BY t",
    "SELECT * FROM srv.t AS x INNER JOIN srv.u AS y USING (a)",
    "SELECT count() OVER (PARTITION BY a ORDER BY b) FROM srv.t",
    "SELECT name FROM system.tables WHERE database = 'srv'",
    "SELECT name, type FROM system.columns WHERE table = 't'",
    "SELECT number FROM numbers(10)",
    "SELECT $x$ ; DROP TABLE srv.t $x$",
    "SELECT 1 -- trailing comment",
    "SHOW TABLES FROM srv",
    "SHOW DATABASES",
    "DESCRIBE TABLE srv.t",
    "EXISTS TABLE srv.t",
    "SHOW CREATE TABLE srv.t",
    "SELECT version(), timezone()",
    "EXPLAIN indexes = 1 SELECT count() FROM srv.t WHERE a = 1",
    "SELECT CAST(1 AS String), [1, 2], arrayMap(x -> x + 1, [1]), * EXCEPT (a) FROM srv.t",
]

LEGITIMATE_FOR_WRITER = [
    "CREATE DATABASE IF NOT EXISTS srv",
    "CREATE TABLE IF NOT EXISTS srv.t (a UInt8, ts DateTime64(3, 'UTC')) ENGINE = ReplacingMergeTree "
    "PARTITION BY toYYYYMM(ts) ORDER BY (a, ts) TTL toDateTime(ts) + INTERVAL 30 DAY "
    "SETTINGS non_replicated_deduplication_window = 100",
    "CREATE MATERIALIZED VIEW IF NOT EXISTS srv.mv TO srv.t AS SELECT a, ts FROM srv.u",
    "CREATE OR REPLACE VIEW srv.v AS SELECT * FROM srv.t",
    "ALTER TABLE srv.t ADD COLUMN IF NOT EXISTS b String",
    "DROP TABLE IF EXISTS srv.t",
    "INSERT INTO srv.t (a, ts) FORMAT Native",
    "INSERT INTO srv.t SELECT number, now() FROM numbers(10)",
    "SET max_threads = 3",
    "SET max_threads = 1",
    "ALTER TABLE srv.t MODIFY SETTING ttl_only_drop_parts = 1",
    "KILL QUERY WHERE query_id = 'x'",
    "OPTIMIZE TABLE srv.t FINAL",
    "SELECT {n:UInt32} + 1",
]


@pytest.mark.parametrize("text", HOSTILE_FOR_EVERYONE)
def test_policy_refuses_for_every_user(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=True) != 0
    assert _verdict(engine_conn, text, readonly=False) != 0


@pytest.mark.parametrize("text", HOSTILE_FOR_VIEWER)
def test_policy_refuses_the_viewer(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=True) in (164, 497, 62)


@pytest.mark.parametrize("text", LEGITIMATE_FOR_VIEWER)
def test_policy_accepts_what_dashboards_send(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=True) == 0


@pytest.mark.parametrize("text", LEGITIMATE_FOR_WRITER)
def test_policy_accepts_what_loader_and_migrations_send(engine_conn: object, text: str) -> None:
    assert _verdict(engine_conn, text, readonly=False, binds={"n": "1"}) == 0


def test_outfile_is_its_own_code_and_parse_tree_cannot_be_forged(engine_conn: object) -> None:
    assert _verdict(engine_conn, "SELECT 1 INTO OUTFILE 'x'", readonly=False) == 358
    # A quoted identifier holding a newline could forge EXPLAIN AST lines: refused outright.
    assert _verdict(engine_conn, "SELECT `a\nTableIdentifier srv.t` FROM other.t", readonly=True) != 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "lz4"])
def test_decoders_hand_out_bounded_pieces(encoding: str) -> None:
    bomb = wire.encode_content(b"\0" * (64 << 20), encoding)
    pieces = wire.content_decoder(encoding).pieces(bomb)
    first = next(pieces)
    assert 0 < len(first) <= wire.PIECE


# --------------------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    with running_store(tmp_path_factory.mktemp("secure") / "data") as running:
        client = _client(running)
        client.command("CREATE DATABASE IF NOT EXISTS srv")
        client.command("CREATE TABLE IF NOT EXISTS srv.victim (a UInt8) ENGINE = MergeTree ORDER BY a")
        client.command("CREATE TABLE IF NOT EXISTS srv.sink (a UInt8) ENGINE = Null")
        client.insert("srv.victim", [[1], [2]], column_names=["a"])
        client.close()
        yield running


def _request(
    store: RunningStore,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = WRITER,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=120)
    try:
        hdrs = {}
        if auth is not None:
            hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        hdrs.update(headers or {})
        path = "/" + ("?" + urlencode(params) if params else "")
        conn.request(method or ("POST" if body is not None else "GET"), path, body=body, headers=hdrs)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _refused(result: tuple[int, dict[str, str], bytes]) -> bool:
    status, headers, body = result
    return (
        status >= 400 and headers.get("X-ClickHouse-Exception-Code", "0") != "0" and b"Traceback" not in body
    )


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssWatch:
    """Samples a process's RSS in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _rss(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss(self.pid))

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_viewer_cannot_write_by_any_spelling(store: RunningStore, tmp_path: Path) -> None:
    target = tmp_path / "pwned.txt"
    attempts = [
        "DROP TABLE srv.victim",
        "CREATE TABLE srv.evil (a UInt8) ENGINE = Memory",
        "INSERT INTO srv.victim VALUES (9)",
        "ALTER TABLE srv.victim DELETE WHERE 1",
        f"SELECT 1 INTO OUTFILE '{target}'",
        f"SELECT $x$ $x$ INTO OUTFILE '{target}'",
        f"SELECT 1 INTO OUTFILE '{target}' FORMAT TSV /* open",
        f"SELECT 1; SELECT 2 INTO OUTFILE '{target}'",
        f"SELECT $x$;$x$; SELECT 2 INTO OUTFILE '{target}'; SELECT $y$",
        f"SELECT 1 -- comment\n; SELECT 1 INTO OUTFILE '{target}'",
        "SELECT 1; DROP TABLE srv.victim",
    ]
    for text in attempts:
        assert _refused(_request(store, body=text.encode(), auth=VIEWER)), text
        assert _refused(_request(store, {"query": text}, auth=VIEWER)), text
    # A dollar-quoted ';' is a string, not a second statement.
    status, _, body = _request(store, body=b"SELECT $x$ ; DROP TABLE srv.victim $x$", auth=VIEWER)
    assert (status, body) == (200, b" ; DROP TABLE srv.victim \n")
    assert not target.exists()
    status, _, body = _request(store, {"query": "SELECT count() FROM srv.victim"}, auth=VIEWER)
    assert (status, body) == (200, b"2\n")


@pytest.mark.parametrize("auth", [VIEWER, WRITER], ids=["viewer", "writer"])
def test_no_user_reads_files_or_urls(store: RunningStore, auth: tuple[str, str]) -> None:
    for text in (
        "SELECT file('/proc/self/environ')",
        "SELECT * FROM file('/proc/self/environ', 'RawBLOB')",
        "DESC url('http://127.0.0.1:1/x', CSV)",
        "SELECT * FROM url('http://127.0.0.1:1/x', CSV)",
        "SELECT * FROM executable('id', 'TSV', 'x String')",
        "SELECT * FROM remote('127.0.0.1', system.one)",
        "INSERT INTO FUNCTION file('/tmp/citystream-pwned', 'TSV') SELECT 1",
        "CREATE TABLE srv.f (a String) ENGINE = File(RawBLOB, '/proc/self/environ')",
    ):
        result = _request(store, body=text.encode(), auth=auth)
        assert _refused(result), text
        assert b"PATH=" not in result[2] and b"CITYSTREAM" not in result[2], text


def test_viewer_cannot_raise_its_limits(store: RunningStore) -> None:
    def setting(name: str, value: str) -> bytes:
        params = {"query": f"SELECT getSetting('{name}')", name: value}
        status, _, body = _request(store, params, auth=VIEWER)
        assert status == 200, body
        return body.strip()

    assert setting("max_memory_usage", "0") == str(1 << 30).encode()
    assert setting("max_memory_usage", str(1 << 40)) == str(1 << 30).encode()
    assert setting("max_execution_time", "100000") == b"60"
    assert setting("max_threads", "1") == b"1"  # lowering is fine (Grafana sends such settings)
    status, _, body = _request(
        store, {"query": "SELECT getSetting('dialect')", "dialect": "kusto"}, auth=VIEWER
    )
    assert (status, body) == (200, b"clickhouse\n")
    for text in ("SELECT 1 SETTINGS max_memory_usage = 0", "SET max_execution_time = 0"):
        assert _refused(_request(store, body=text.encode(), auth=VIEWER)), text


def test_credentials_are_required(store: RunningStore) -> None:
    status, headers, _ = _request(store, {"query": "SELECT 1"}, auth=None)
    assert status == 401 and headers["X-ClickHouse-Exception-Code"] == "194"
    status, _, _ = _request(store, body=b"CREATE TABLE srv.anon (a UInt8) ENGINE = Memory", auth=None)
    assert status == 401
    for auth in (("default", ""), ("default", "wrong"), ("nobody", PASSWORD), ("viewer", PASSWORD)):
        status, headers, _ = _request(store, {"query": "SELECT 1"}, auth=auth)
        assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516"), auth
    assert _request(store, {"query": "SELECT 1"})[0] == 200


def test_foreign_host_and_browser_origin_are_refused(store: RunningStore) -> None:
    for headers in (
        {"Host": "evil.example"},
        {"Host": f"evil.example:{store.port}"},
        {"Host": "127.0.0.1.evil.example"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ):
        status, _, _ = _request(
            store, body=b"CREATE TABLE srv.rebound (a UInt8) ENGINE = Memory", headers=headers
        )
        assert status == 403, headers
    for host in ("localhost", f"localhost:{store.port}", f"127.0.0.1:{store.port}", f"[::1]:{store.port}"):
        assert _request(store, {"query": "SELECT 1"}, headers={"Host": host})[0] == 200, host
    assert _refused(_request(store, {"query": "EXISTS TABLE srv.rebound"})) is False
    assert _request(store, {"query": "EXISTS TABLE srv.rebound"})[2] == b"0\n"


def _bomb(encoding: str, decoded_size: int) -> bytes:
    """``decoded_size`` bytes of b"1\\n" in ``encoding``, built from one repeated frame when possible."""
    unit = b"1\n" * (8 << 20)  # 16 MiB
    if encoding == "deflate":  # one stream only: compress it incrementally
        comp = zlib.compressobj(1)
        out = [comp.compress(unit) for _ in range(decoded_size // len(unit))]
        return b"".join(out) + comp.flush()
    if encoding == "blocks":
        return b"".join(wire.compress_blocks(unit, "ZSTD", block_size=len(unit))) * (
            decoded_size // len(unit)
        )
    frame = {"gzip": gzip.compress, "zstd": zstd.compress, "lz4": lz4.frame.compress}[encoding](unit)
    return frame * (decoded_size // len(unit))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "lz4", "blocks"])
def test_compression_bombs_are_bounded(store: RunningStore, encoding: str) -> None:
    headers = {} if encoding == "blocks" else {"Content-Encoding": encoding}
    extra = {"decompress": "1"} if encoding == "blocks" else {}
    bomb = _bomb(encoding, 1 << 30)
    assert len(bomb) < 64 << 20
    with RssWatch(store.proc.pid) as rss:
        # As query text: refused at the query-size bound.
        result = _request(store, {"query": "SELECT 1"} | extra, body=bomb, headers=headers, auth=VIEWER)
        assert _refused(result) and result[1]["X-ClickHouse-Exception-Code"] == "229", result[2]
        # As INSERT data: refused at the insert-size bound, having streamed (not buffered) it.
        params = {"query": "INSERT INTO srv.sink FORMAT TSV"} | extra
        result = _request(store, params, body=bomb, headers=headers)
        assert _refused(result) and result[1]["X-ClickHouse-Exception-Code"] == "229", result[2]
    assert rss.peak - rss.start < RSS_GROWTH_BOUND, (rss.start, rss.peak)
    assert _request(store, {"query": "SELECT 1"})[0] == 200


def test_huge_query_is_refused_before_parsing(store: RunningStore) -> None:
    with RssWatch(store.proc.pid) as rss:
        result = _request(store, body=b"SELECT 1" + b"," * (2 << 20), auth=VIEWER)
        multipart = (
            b'--b\r\nContent-Disposition: form-data; name="query"\r\n\r\nSELECT 1'
            + b"," * (2 << 20)
            + b"\r\n--b--\r\n"
        )
        form = _request(store, body=multipart, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert result[0] == 413 and result[1]["X-ClickHouse-Exception-Code"] == "229"
    assert form[0] == 413
    assert rss.peak - rss.start < RSS_GROWTH_BOUND, (rss.start, rss.peak)


def test_echoed_values_cannot_inject_headers(store: RunningStore) -> None:
    for auth in (None, VIEWER):
        for name in ("query_id", "session_timezone"):
            params = {"query": "SELECT 1", name: "x\r\nSet-Cookie: pwned=1\r\nX-Injected: 1"}
            _, headers, body = _request(store, params, auth=auth)
            assert "Set-Cookie" not in headers and "X-Injected" not in headers, headers
            assert all("\r" not in v and "\n" not in v for v in headers.values())
            assert b"Traceback" not in body


def test_errors_carry_no_python_internals(store: RunningStore) -> None:
    for body, headers in (
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}),
        (b"garbage", {"Content-Encoding": "zstd"}),
        (b"SELECT 1", {"Content-Encoding": "br"}),
        (b"\xff\xfe SELECT 1", {}),
    ):
        status, _, text = _request(store, body=body, headers=headers)
        assert status >= 400 and text.startswith(b"Code: ")
        assert b"Traceback" not in text and b"Error:" not in text and b"object" not in text, text
