"""Types and bytes as real clients see them from the store: what a ClickHouse server would send.

Against a real ``citystream store serve`` (chdb engine, free 127.0.0.1 port)
with clickhouse-connect (which asks for Native at ``client_protocol_version``
54405) and raw HTTP: time zones of DateTime columns, Variant / Dynamic / JSON /
Nested columns over several blocks, and hostile parameter bytes (NUL, line
breaks, backslashes, bytes that are not UTF-8, ``$x$...$x$`` binary binds)
that must come back as sent without breaking the result's framing.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from test_store_server import PASSWORD, RunningStore, _client, running_store

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStore]:
    with running_store(tmp_path_factory.mktemp("types") / "data") as running:
        client = _client(running)
        try:
            client.command("CREATE DATABASE IF NOT EXISTS srv")
            client.command(
                "CREATE TABLE srv.zoned (a DateTime('Asia/Tokyo'), b DateTime64(3, 'Europe/Berlin'), "
                "c DateTime, d Nullable(DateTime('America/New_York')), e Array(DateTime('Asia/Tokyo'))) "
                "ENGINE = MergeTree ORDER BY a"
            )
            client.command(f"INSERT INTO srv.zoned VALUES ({EPOCH}, {EPOCH}, {EPOCH}, {EPOCH}, [{EPOCH}])")
        finally:
            client.close()
        yield running


def _raw(store: RunningStore, params: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=60)
    try:
        token = base64.b64encode(f"default:{PASSWORD}".encode()).decode()
        conn.request("POST", "/?" + urlencode(params), body=body, headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------- DateTime time zones


def test_datetime_columns_keep_their_time_zone(store: RunningStore) -> None:
    moment = dt.datetime.fromtimestamp(EPOCH, dt.UTC)
    for readonly in (False, True):
        client = _client(store, readonly=readonly)
        try:
            assert client.protocol_version == 54405
            result = client.query("SELECT a, b, c, d, e FROM srv.zoned")
            names = [t.name for t in result.column_types]
            assert names == [
                "DateTime('Asia/Tokyo')",
                "DateTime64(3, 'Europe/Berlin')",
                "DateTime",
                "Nullable(DateTime('America/New_York'))",
                "Array(DateTime('Asia/Tokyo'))",
            ]
            a, b, _, d, e = result.result_rows[0]
            assert (str(a.tzinfo), str(b.tzinfo), str(d.tzinfo), str(e[0].tzinfo)) == (
                "Asia/Tokyo",
                "Europe/Berlin",
                "America/New_York",
                "Asia/Tokyo",
            )
            assert a == b == d == e[0] == moment
            # An expression's zone too, and with a FORMAT clause of the query's own.
            (row,) = client.query(
                "SELECT toDateTime({t:UInt32}, 'Asia/Kolkata') AS k", parameters={"t": EPOCH}
            ).result_rows
            assert str(row[0].tzinfo) == "Asia/Kolkata" and row[0] == moment
        finally:
            client.close()


def test_revision_zero_native_drops_the_zone_as_a_server_does(store: RunningStore) -> None:
    """Without client_protocol_version a server names a top-level DateTime('tz') column 'DateTime'."""
    status, _, body = _raw(store, {"query": "SELECT a FROM srv.zoned FORMAT Native"})
    assert status == 200 and b"\x08DateTime" in body and b"Asia/Tokyo" not in body
    status, _, body = _raw(
        store, {"query": "SELECT a FROM srv.zoned FORMAT Native", "client_protocol_version": "54405"}
    )
    assert status == 200 and b"\x16DateTime('Asia/Tokyo')" in body
    # clickhouse-go's revision (54460): the zone, then the "no custom serialization" byte.
    status, _, body = _raw(
        store, {"query": "SELECT a FROM srv.zoned FORMAT Native", "client_protocol_version": "54460"}
    )
    assert status == 200 and body.endswith(b"\x16DateTime('Asia/Tokyo')\x00" + EPOCH.to_bytes(4, "little"))


# --------------------------------------------------------------------------- Variant, Dynamic, JSON, Nested

ROWS = [
    (0, 7, 7, {"a": 1, "b": "x"}, [(1, "p")]),
    (1, "seven", "seven", {"a": 2, "c": {"d": [1, 2]}}, [(2, "q"), (3, "r")]),
    (2, [1, 2], [1, 2], {}, []),
    (3, None, None, {"b": "y"}, [(4, "s")]),
    (4, 8, 2.5, {"a": 3}, []),
]


@pytest.fixture(scope="module")
def typed_table(store: RunningStore) -> str:
    client = _client(store)
    client.command(
        "CREATE TABLE srv.typed (k UInt8, v Variant(UInt64, String, Array(UInt8)), "
        "d Dynamic(max_types = 2), j JSON(max_dynamic_paths = 1), n Nested(x UInt8, y String)) "
        "ENGINE = MergeTree ORDER BY k",
        settings={"flatten_nested": 0},  # one Nested column, not its flattened arrays
    )
    try:
        for k, v, d, j, n in ROWS:
            literal = "[1, 2]::Array(UInt8)" if isinstance(v, list) else _sql(v, "UInt64")
            dyn = "[1, 2]::Array(Int64)" if isinstance(d, list) else _sql(d, "Int64")
            nested = "[" + ", ".join(f"({x}, '{y}')" for x, y in n) + "]"
            client.command(
                f"INSERT INTO srv.typed SELECT {k}, {literal}, {dyn}, '{json.dumps(j)}', {nested}"
                if n
                else f"INSERT INTO srv.typed (k, v, d, j) SELECT {k}, {literal}, {dyn}, '{json.dumps(j)}'"
            )
    finally:
        client.close()
    return "srv.typed"


@pytest.mark.parametrize("block_size", ["1", "2", "65409"])
def test_variant_dynamic_json_nested_round_trip(
    store: RunningStore, typed_table: str, block_size: str
) -> None:
    # Small blocks: the walker must find every block's end inside these columns. The viewer
    # (readonly=1: clickhouse-connect sends it no settings) reads them in one block.
    client = _client(store, readonly=block_size == "65409")
    try:
        settings = {} if block_size == "65409" else {"max_block_size": block_size}
        result = client.query(f"SELECT k, v, d, j, n FROM {typed_table} ORDER BY k", settings=settings)
        types = [t.name for t in result.column_types]
        assert types[1] == "Variant(Array(UInt8), String, UInt64)" and types[2].startswith("Dynamic")
        assert types[3].startswith("JSON") and types[4] == "Nested(x UInt8, y String)"
        for got, (k, v, d, j, n) in zip(result.result_rows, ROWS, strict=True):
            assert got[0] == k
            assert got[1] == v, k
            assert got[2] == d, k
            assert _plain(got[3]) == j, k
            assert [(e["x"], e["y"]) for e in got[4]] == n, k
    finally:
        client.close()


def _sql(value: object, int_type: str) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return f"'{value}'"
    return f"{value}::{int_type if isinstance(value, int) else 'Float64'}"


def _plain(value: object) -> object:
    """JSON values as clickhouse-connect returns them, without its None-valued absent paths."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    return value


def test_each_type_alone(store: RunningStore) -> None:
    client = _client(store)
    try:
        cases = {
            "SELECT 1::Variant(String, UInt64) AS v UNION ALL SELECT 'a'": [(1,), ("a",)],
            "SELECT arrayJoin([1::Dynamic, 'x'::Dynamic, [1, 2]::Dynamic, NULL]) AS v": [
                (1,),
                ("x",),
                ([1, 2],),
                (None,),
            ],
            """SELECT '{"a": {"c": [1, 2]}, "b": "x"}'::JSON(a.c Array(UInt8)) AS v""": [
                ({"a": {"c": [1, 2]}, "b": "x"},)
            ],
            "SELECT [(1, 'a')]::Nested(x UInt8, y String) AS v": [([{"x": 1, "y": "a"}],)],
            "SELECT map('k', [1::Dynamic]) AS v": [({"k": [1]},)],
        }
        for sql, rows in cases.items():
            # UNION ALL branches may arrive in either order (the engine runs them in parallel).
            assert sorted(client.query(sql).result_rows, key=repr) == sorted(rows, key=repr), sql
    finally:
        client.close()


def test_newer_revision_for_dynamic_is_refused_not_misframed(store: RunningStore) -> None:
    status, headers, _ = _raw(
        store, {"query": "SELECT 1::Dynamic FORMAT Native", "client_protocol_version": "54473"}
    )
    assert status == 501 and headers["X-ClickHouse-Exception-Code"] == "48"


# --------------------------------------------------------------------------- hostile parameter bytes

HOSTILE = [
    b"a\x00b",
    b"line\nbreak\ttab\\back'quote",
    b"\xff\xfe not utf-8",
    b"$x$ dollar $x$",
    b"\r\n\r\nHTTP/1.1",
]


def test_hostile_parameter_bytes_come_back_as_sent(store: RunningStore) -> None:
    client = _client(store, readonly=True)
    try:
        for value in HOSTILE:
            (row,) = client.query(
                "SELECT hex({x:String}) AS h, length({x:String}) AS n", parameters={"x": value}
            ).result_rows
            assert row == (value.hex().upper(), len(value)), value
            # Binary binds: the bytes are spliced into the query text between $x$ markers.
            if b"$x$" not in value:
                (row,) = client.query("SELECT hex($x$) AS h, 1 AS one", parameters={"$x$": value}).result_rows
                assert row == (value.hex().upper(), 1), value
        # The framing holds for the next query on the same connection.
        assert client.query("SELECT 42").result_rows == [(42,)]
    finally:
        client.close()


def test_raw_parameter_bytes_in_the_url_and_body(store: RunningStore) -> None:
    query = "SELECT hex({x:String}) AS h FORMAT JSONCompactEachRow"
    for raw, expected in ((b"\xff\x00", b"FF00"), (b"a\\tb", b"610962"), (b"\\xc3\\xa9", b"C3A9")):
        conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=60)
        try:
            token = base64.b64encode(f"default:{PASSWORD}".encode()).decode()
            path = "/?" + urlencode({"query": query}) + "&param_x=" + "".join(f"%{b:02X}" for b in raw)
            conn.request("GET", path, headers={"Authorization": f"Basic {token}"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b'["' + expected + b'"]\n'), raw
        finally:
            conn.close()
    # Bytes that are not UTF-8 inside a dollar-quoted literal of the body: run as sent.
    status, _, body = _raw(store, {}, b"SELECT hex($x$\xff\n\x00 FORMAT CSV; DROP$x$) FORMAT TSV")
    assert (status, body) == (200, b"FF0A0020464F524D4154204353563B2044524F50\n")


# --------------------------------------------------------------------------- external data tables


def test_external_data_tables_are_read_for_that_query_only(store: RunningStore) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError
    from clickhouse_connect.driver.external import ExternalData

    keys = ExternalData(
        file_name="keys.csv", data=b"1,x\n3,y\n", fmt="CSV", structure=["k UInt8", "w String"]
    )
    typed = ExternalData(file_name="ty", data=b"5\tq\n", types=["UInt8", "String"])
    writer = _client(store)
    try:
        writer.command("CREATE TABLE IF NOT EXISTS srv.kv (k UInt8, v String) ENGINE = MergeTree ORDER BY k")
        writer.command("INSERT INTO srv.kv VALUES (1, 'a'), (2, 'b')")
    finally:
        writer.close()
    for readonly in (False, True):
        client = _client(store, readonly=readonly)
        try:
            assert client.query("SELECT k, w FROM keys ORDER BY k", external_data=keys).result_rows == [
                (1, "x"),
                (3, "y"),
            ]
            joined = client.query(
                "SELECT kv.v, keys.w FROM srv.kv AS kv INNER JOIN keys USING (k)", external_data=keys
            )
            assert joined.result_rows == [("a", "x")]
            assert client.query("SELECT _1, _2 FROM ty", external_data=typed).result_rows == [(5, "q")]
            with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
                client.query("SELECT * FROM keys")  # gone with its query
        finally:
            client.close()


@pytest.mark.parametrize(
    "structure",
    [
        "k UInt8 DEFAULT file('/etc/passwd')",
        "k UInt8) ENGINE = File(TSV, '/etc/passwd') --",
        "k UInt8) AS SELECT * FROM file('/etc/passwd') --",
        "k UInt8 MATERIALIZED url('http://127.0.0.1:1/x', CSV)",
        "k UInt8) ENGINE = Memory; DROP TABLE srv.kv; --",
    ],
)
def test_external_table_structure_is_columns_and_types_only(store: RunningStore, structure: str) -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError
    from clickhouse_connect.driver.external import ExternalData

    viewer = _client(store, readonly=True)
    try:
        with pytest.raises(DatabaseError) as caught:
            viewer.query(
                "SELECT * FROM bad",
                external_data=ExternalData(file_name="bad", data=b"1\n", structure=structure),
            )
        assert "DB::Exception" in str(caught.value) and "Traceback" not in str(caught.value)
        with pytest.raises(DatabaseError, match="73"):  # Values rows are expressions: not a data format here
            viewer.query(
                "SELECT * FROM bad",
                external_data=ExternalData(file_name="bad", data=b"(1)", structure="k UInt8", fmt="Values"),
            )
    finally:
        viewer.close()
