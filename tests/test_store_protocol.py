"""Wire formats and statement routing of the store, without a server.

The CityHash128 vectors come from github.com/go-faster/city's CH128 (what
clickhouse-go verifies compressed blocks with); the Native layouts are the
ones a ClickHouse server sends for a given client_protocol_version.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citystream.chserver import wire
from citystream.chserver.errors import StoreError, http_status
from citystream.chserver.sqltext import analyze, split_statements

# length -> (low, high) of CH128 over bytes((i * 7 + length * 13 + 3) % 251 for i in range(length))
CITYHASH_VECTORS = {
    0: (4463240938071824939, 4374473821787594281),
    1: (7144106653015585213, 5866814860018338241),
    3: (15944535616843779641, 14535380091767965707),
    7: (10270944011145327721, 979022832361860534),
    8: (16700010448744092292, 5555969521982699369),
    15: (14615393334851046258, 1570549594952473282),
    16: (3453655298392558692, 438759140823508531),
    17: (1974916123881467816, 10552790665712820034),
    31: (10724052694358585532, 14928799553286530201),
    64: (3420164156884111137, 13396385327057898798),
    127: (10522467568814652479, 12109810446735825496),
    128: (4858878069350003056, 16080444068249933954),
    129: (15086012059015571694, 15716767167958174267),
    255: (9063391857508895784, 9351027410789400352),
    256: (15120103402395921153, 10259187371338682029),
    600: (7371648971034657913, 4285903834879889995),
}


@pytest.mark.parametrize("length", sorted(CITYHASH_VECTORS))
def test_cityhash128_matches_clickhouse_variant(length: int) -> None:
    data = bytes((i * 7 + length * 13 + 3) % 251 for i in range(length))
    assert wire.cityhash128(data) == CITYHASH_VECTORS[length]


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=5000), method=st.sampled_from(["LZ4", "ZSTD", "NONE"]))
def test_compressed_blocks_round_trip_in_any_chunking(data: bytes, method: str) -> None:
    framed = b"".join(wire.compress_blocks(data, method, block_size=1000))
    pieces = [framed[i : i + 37] for i in range(0, len(framed), 37)]
    assert b"".join(wire.decompress_blocks(pieces)) == data


def test_truncated_or_corrupt_blocks_are_clickhouse_errors() -> None:
    framed = b"".join(wire.compress_blocks(b"x" * 100, "LZ4"))
    with pytest.raises(StoreError) as caught:
        list(wire.decompress_blocks([framed[:-1]]))
    assert caught.value.code == 271
    with pytest.raises(StoreError) as caught:
        list(wire.decompress_blocks([framed[:-1] + bytes([framed[-1] ^ 1])]))
    assert caught.value.code == 40


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "lz4"])
def test_content_encodings_round_trip_across_frames(encoding: str) -> None:
    body = wire.encode_content(b"abc" * 1000, encoding) + (
        wire.encode_content(b"def", encoding) if encoding != "deflate" else b""
    )
    decode = wire.content_decoder(encoding)
    out = b"".join(decode(body[i : i + 50]) for i in range(0, len(body), 50))
    assert out == b"abc" * 1000 + (b"def" if encoding != "deflate" else b"")


def _block(columns: list[tuple[str, str, bytes]], rows: int) -> bytes:
    out = bytearray([len(columns), rows])
    for name, type_name, data in columns:
        out += bytes([len(name)]) + name.encode() + bytes([len(type_name)]) + type_name.encode() + data
    return bytes(out)


def test_native_reframing_walks_nested_columns() -> None:
    u64 = struct.Struct("<Q").pack
    low_card = u64(1) + u64(1 << 9) + u64(2) + b"\x01a\x01b" + u64(3) + b"\x00\x01\x00"  # a, b, a
    nullable = b"\x00\x01\x00" + struct.pack("<3i", 1, 0, 3)  # 1, NULL, 3
    array = u64(1) + u64(3) + b"\x01\x02\x03"  # [1], [2, 3]
    tuple_ab = b"\x01\x02" + b"\x01x\x00"  # (1, 'x'), (2, '')
    first = [("lc", "LowCardinality(String)", low_card), ("n", "Nullable(Int32)", nullable)]
    second = [("arr", "Array(UInt8)", array), ("t", "Tuple(a UInt8, b String)", tuple_ab)]
    stream = _block(first, 3) + _block(second, 2)

    info = b"\x01\x00\x02\xff\xff\xff\xff\x00"  # BlockInfo: is_overflows=0, bucket_num=-1
    expected = bytearray()
    for columns, rows in ((first, 3), (second, 2)):
        expected += info + bytes([len(columns), rows])
        for name, type_name, data in columns:
            expected += bytes([len(name)]) + name.encode() + bytes([len(type_name)]) + type_name.encode()
            expected += b"\x00" + data  # no custom serialization, then the data unchanged
    assert wire.upgrade_native(stream, 54460) == bytes(expected)
    # Before custom serialization (54454) only the BlockInfo is added.
    assert wire.upgrade_native(_block(first, 3), 54405) == info + _block(first, 3)


def test_native_reframing_refuses_types_it_cannot_walk() -> None:
    block = _block([("j", "JSON", b"\x00")], 1)
    with pytest.raises(StoreError) as caught:
        wire.upgrade_native(block, 54460)
    assert caught.value.code == 48 and http_status(caught.value.code) == 501


@pytest.mark.parametrize(
    "text, kind, fmt, insert_data",
    [
        ("SELECT 1", "SELECT", None, None),
        ("select 1 format JSONEachRow;", "SELECT", "JSONEachRow", None),
        ("SELECT 1 FORMAT JSON SETTINGS max_threads = 1", "SELECT", "JSON", None),
        ("SELECT format FROM t", "SELECT", None, None),
        ("SELECT 'FORMAT CSV' -- FORMAT TSV\n", "SELECT", None, None),
        ("(SELECT 1) FORMAT TSV", "SELECT", "TSV", None),
        ("INSERT INTO t (a, b) FORMAT Native\n\x0a\x01", "INSERT", "Native", "\x0a\x01"),
        ("INSERT INTO t FORMAT CSV 1,2\n", "INSERT", "CSV", "1,2\n"),
        ("INSERT INTO format FORMAT TSV\n1\n", "INSERT", "TSV", "1\n"),
        ("INSERT INTO t VALUES (1, ';')", "INSERT", "Values", " (1, ';')"),
        ("INSERT INTO t SETTINGS async_insert = 0 FORMAT TSV\n1", "INSERT", "TSV", "1"),
        ("INSERT INTO t SELECT 1", "INSERT", None, None),
        ("CREATE TABLE t (format String) ENGINE = Memory", "CREATE", None, None),
    ],
)
def test_statement_analysis(text: str, kind: str, fmt: str | None, insert_data: str | None) -> None:
    stmt = analyze(text)
    assert (stmt.kind, stmt.format) == (kind, fmt)
    assert (text[stmt.data_start :] if stmt.has_insert_data else None) == insert_data


def test_multi_statements_outfile_and_incomplete_heads_are_detected() -> None:
    assert analyze("SELECT 1; SELECT 2").multi
    assert not analyze("SELECT 1;  ;").multi
    assert analyze("SELECT 1 INTO OUTFILE 'x'").into_outfile
    assert not analyze("INSERT INTO t (a) FORMAT Nat").complete
    assert not analyze("INSERT INTO t (a").complete
    assert not analyze("SELECT 1 /* open").complete


def test_split_statements_ignores_separators_in_strings_and_comments() -> None:
    script = (
        "-- head; note\nCREATE TABLE a (x String DEFAULT ';') ENGINE = Memory; /* ; */\n-- c;\nSELECT (1);"
    )
    assert split_statements(script) == ["CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory", "SELECT (1)"]


def test_http_status_follows_clickhouse() -> None:
    assert [http_status(c) for c in (62, 60, 516, 164, 497, 48, 1002)] == [400, 404, 403, 500, 403, 501, 500]
