"""Byte-level formats the store speaks on the wire, independent of HTTP.

Contract:

* ``cityhash128(data) -> (low, high)``: CityHash v1.0.2 128-bit, the exact
  variant ClickHouse uses to checksum compressed blocks (newer CityHash
  releases give different values and would be rejected by clients).
* ``compress_blocks`` / ``BlockDecompressor``: ClickHouse's own block framing
  (``compress=1`` responses, ``decompress=1`` request bodies): 16-byte checksum,
  1-byte method, UInt32 compressed size (incl. the 9-byte header), UInt32 raw
  size, payload. Methods: LZ4 (0x82), ZSTD (0x90), none (0x02).
* ``content_decoder`` / ``encode_content``: HTTP ``Content-Encoding`` codecs
  (gzip, deflate, zstd, lz4 frame, br when the brotli module is installed).
* ``upgrade_native(data, revision)``: re-frames a protocol-0 ``Native`` stream
  (what chdb emits) for clients that send ``client_protocol_version`` (what a
  ClickHouse server would emit): a BlockInfo header per block and, from
  revision 54454, a "no custom serialization" byte per column. Column data is
  copied verbatim; the type walker only measures it. Types whose layout
  depends on the revision (JSON, Dynamic, Variant, AggregateFunction ...)
  raise :class:`WireError` rather than produce a stream the client would
  misread.

Every failure is a :class:`WireError` carrying a ClickHouse error code, so the
HTTP layer can report it the way a server would.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator

from citystream.store.errors import (
    CANNOT_DECOMPRESS,
    CHECKSUM_DOESNT_MATCH,
    NOT_IMPLEMENTED,
    UNKNOWN_COMPRESSION_METHOD,
    StoreError,
)

WireError = StoreError

_M = 0xFFFFFFFFFFFFFFFF
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F
_K3 = 0xC949D7C7509E6557
_KMUL = 0x9DDFEA08EB382D69

_u64 = struct.Struct("<Q").unpack_from
_u32 = struct.Struct("<I").unpack_from


def _f64(s: bytes, o: int) -> int:
    return _u64(s, o)[0]


def _rot(v: int, shift: int) -> int:
    return v if shift == 0 else ((v >> shift) | (v << (64 - shift))) & _M


def _shift_mix(v: int) -> int:
    return v ^ (v >> 47)


def _hash16(u: int, v: int) -> int:
    a = ((u ^ v) * _KMUL) & _M
    a ^= a >> 47
    b = ((v ^ a) * _KMUL) & _M
    b ^= b >> 47
    return (b * _KMUL) & _M


def _len0to16(s: bytes, o: int, n: int) -> int:
    if n > 8:
        a = _f64(s, o)
        b = _f64(s, o + n - 8)
        return _hash16(a, _rot((b + n) & _M, n)) ^ b
    if n >= 4:
        a = _u32(s, o)[0]
        return _hash16((n + (a << 3)) & _M, _u32(s, o + n - 4)[0])
    if n > 0:
        y = (s[o] + (s[o + (n >> 1)] << 8)) & 0xFFFFFFFF
        z = (n + (s[o + n - 1] << 2)) & 0xFFFFFFFF
        return (_shift_mix(((y * _K2) & _M) ^ ((z * _K3) & _M)) * _K2) & _M
    return _K2


def _murmur(s: bytes, o: int, n: int, a: int, b: int) -> tuple[int, int]:
    c = d = 0
    rest = n - 16
    if rest <= 0:
        a = (_shift_mix((a * _K1) & _M) * _K1) & _M
        c = (b * _K1 + _len0to16(s, o, n)) & _M
        d = _shift_mix((a + (_f64(s, o) if n >= 8 else c)) & _M)
    else:
        c = _hash16((_f64(s, o + n - 8) + _K1) & _M, a)
        d = _hash16((b + n) & _M, (c + _f64(s, o + n - 16)) & _M)
        a = (a + d) & _M
        while True:
            a ^= (_shift_mix((_f64(s, o) * _K1) & _M) * _K1) & _M
            a = (a * _K1) & _M
            b ^= a
            c ^= (_shift_mix((_f64(s, o + 8) * _K1) & _M) * _K1) & _M
            c = (c * _K1) & _M
            d ^= c
            o += 16
            rest -= 16
            if rest <= 0:
                break
    a = _hash16(a, c)
    b = _hash16(d, b)
    return a ^ b, _hash16(b, a)


def _weak32(s: bytes, o: int, a: int, b: int) -> tuple[int, int]:
    w, x, y, z = struct.unpack_from("<4Q", s, o)
    a = (a + w) & _M
    b = _rot((b + a + z) & _M, 21)
    c = a
    a = (a + x + y) & _M
    b = (b + _rot(a, 44)) & _M
    return (a + z) & _M, (b + c) & _M


def _city128_seeded(s: bytes, o: int, n: int, x: int, y: int) -> tuple[int, int]:
    if n < 128:
        return _murmur(s, o, n, x, y)
    z = (n * _K1) & _M
    v0 = (_rot(y ^ _K1, 49) * _K1 + _f64(s, o)) & _M
    v1 = (_rot(v0, 42) * _K1 + _f64(s, o + 8)) & _M
    w0 = (_rot((y + z) & _M, 35) * _K1 + x) & _M
    w1 = (_rot((x + _f64(s, o + 88)) & _M, 53) * _K1) & _M
    while n >= 128:
        for _ in (0, 1):
            x = (_rot((x + y + v0 + _f64(s, o + 16)) & _M, 37) * _K1) & _M
            y = (_rot((y + v1 + _f64(s, o + 48)) & _M, 42) * _K1) & _M
            x ^= w1
            y ^= v0
            z = _rot(z ^ w0, 33)
            v0, v1 = _weak32(s, o, (v1 * _K1) & _M, (x + w0) & _M)
            w0, w1 = _weak32(s, o + 32, (z + w1) & _M, y)
            z, x = x, z
            o += 64
        n -= 128
    y = (y + _rot(w0, 37) * _K0 + z) & _M
    x = (x + _rot((v0 + z) & _M, 49) * _K0) & _M
    done = 0
    while done < n:
        done += 32
        y = (_rot((y - x) & _M, 42) * _K0 + v1) & _M
        w0 = (w0 + _f64(s, o + n - done + 16)) & _M
        x = (_rot(x, 49) * _K0 + w0) & _M
        w0 = (w0 + v0) & _M
        v0, v1 = _weak32(s, o + n - done, v0, v1)
    x = _hash16(x, v0)
    y = _hash16(y, w0)
    return (_hash16((x + v1) & _M, w1) + y) & _M, _hash16((x + w1) & _M, (y + v1) & _M)


def cityhash128(data: bytes) -> tuple[int, int]:
    """CityHash v1.0.2 (low, high): the checksum ClickHouse puts before every compressed block."""
    data = bytes(data)
    n = len(data)
    if n >= 16:
        return _city128_seeded(data, 16, n - 16, _f64(data, 0) ^ _K3, _f64(data, 8))
    if n >= 8:
        return _city128_seeded(data, 0, 0, _f64(data, 0) ^ ((n * _K0) & _M), _f64(data, n - 8) ^ _K1)
    return _city128_seeded(data, 0, n, _K0, _K1)


# --------------------------------------------------------------------------- compressed blocks

_METHOD_NONE = 0x02
_METHOD_LZ4 = 0x82
_METHOD_ZSTD = 0x90
_BLOCK_HEADER = 9
#: Same ceiling ch-go applies; a larger header value means a corrupt or hostile stream.
_MAX_BLOCK = 128 * 1024 * 1024


def _lz4_block():  # type: ignore[no-untyped-def]
    import lz4.block

    return lz4.block


def _zstd():  # type: ignore[no-untyped-def]
    try:
        from backports import zstd  # type: ignore[import-not-found]
    except ImportError:  # Python 3.14+
        from compression import zstd  # type: ignore[import-not-found,no-redef]
    return zstd


def compress_blocks(data: bytes, method: str = "LZ4", block_size: int = 1 << 20) -> Iterator[bytes]:
    """Frame ``data`` as ClickHouse compressed blocks (what a server sends for ``compress=1``)."""
    method = method.upper()
    for start in range(0, len(data), block_size):
        chunk = data[start : start + block_size]
        if method == "LZ4":
            code, payload = _METHOD_LZ4, _lz4_block().compress(chunk, store_size=False)
        elif method == "ZSTD":
            code, payload = _METHOD_ZSTD, _zstd().compress(chunk)
        elif method == "NONE":
            code, payload = _METHOD_NONE, bytes(chunk)
        else:
            raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown network compression method {method!r}")
        header = struct.pack("<BII", code, len(payload) + _BLOCK_HEADER, len(chunk))
        low, high = cityhash128(header + payload)
        yield struct.pack("<QQ", low, high) + header + payload


class BlockDecompressor:
    """Incremental decoder for a ``decompress=1`` request body; feed raw bytes, get data bytes."""

    def __init__(self, verify: bool = True) -> None:
        self._buf = bytearray()
        self._verify = verify

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        self._buf += chunk
        while len(self._buf) >= 16 + _BLOCK_HEADER:
            code, size, raw = struct.unpack_from("<BII", self._buf, 16)
            if size < _BLOCK_HEADER or size > _MAX_BLOCK or raw > _MAX_BLOCK:
                raise StoreError(CANNOT_DECOMPRESS, f"Too large size of compressed block: {size}")
            if len(self._buf) < 16 + size:
                return
            frame = bytes(self._buf[16 : 16 + size])
            if self._verify:
                expected = struct.unpack_from("<QQ", self._buf, 0)
                if cityhash128(frame) != expected:
                    raise StoreError(CHECKSUM_DOESNT_MATCH, "Checksum doesn't match: corrupted data.")
            del self._buf[: 16 + size]
            payload = frame[_BLOCK_HEADER:]
            try:
                if code == _METHOD_LZ4:
                    data = _lz4_block().decompress(payload, uncompressed_size=raw)
                elif code == _METHOD_ZSTD:
                    data = _zstd().decompress(payload)
                elif code == _METHOD_NONE:
                    data = payload
                else:
                    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown compression method: 0x{code:02x}")
            except StoreError:
                raise
            except Exception as exc:
                raise StoreError(CANNOT_DECOMPRESS, f"Cannot decompress block: {exc}") from exc
            if len(data) != raw:
                raise StoreError(CANNOT_DECOMPRESS, "Decompressed size does not match the block header")
            yield data

    def close(self) -> None:
        if self._buf:
            raise StoreError(CANNOT_DECOMPRESS, "Truncated compressed block at the end of the request body")


def decompress_blocks(chunks: Iterable[bytes], verify: bool = True) -> Iterator[bytes]:
    decoder = BlockDecompressor(verify)
    for chunk in chunks:
        yield from decoder.feed(chunk)
    decoder.close()


# --------------------------------------------------------------------------- HTTP content codings


def _brotli():  # type: ignore[no-untyped-def]
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        return None
    return brotli


def http_encodings() -> list[str]:
    """Content codings this process can produce, in the order the store prefers them."""
    found = ["zstd", "lz4", "gzip", "deflate"]
    if _brotli() is not None:
        found.append("br")
    return found


def encode_content(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(3, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush()
    if encoding == "deflate":
        return zlib.compress(data, 3)
    if encoding == "zstd":
        return _zstd().compress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.compress(data)
    if encoding == "br":
        brotli = _brotli()
        if brotli is not None:
            return brotli.compress(data)
    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown HTTP compression method {encoding!r}")


class _Restarting:
    """Runs a one-frame streaming decoder repeatedly: clients may send several concatenated frames."""

    def __init__(self, factory: Callable[[], object]) -> None:
        self._factory = factory
        self._dec: object = factory()

    def __call__(self, chunk: bytes) -> bytes:
        out = bytearray()
        while chunk:
            dec = self._dec
            out += dec.decompress(chunk)  # type: ignore[attr-defined]
            if getattr(dec, "eof", False):
                chunk = bytes(getattr(dec, "unused_data", None) or b"")
                self._dec = self._factory()
            else:
                chunk = b""
        return bytes(out)


def content_decoder(encoding: str) -> Callable[[bytes], bytes]:
    """A chunk-at-a-time decoder for a request ``Content-Encoding``."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return _Restarting(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
    if encoding == "deflate":
        return _DeflateDecoder()
    if encoding == "zstd":
        zstd = _zstd()
        return _Restarting(zstd.ZstdDecompressor)
    if encoding == "lz4":
        import lz4.frame

        return _Restarting(lz4.frame.LZ4FrameDecompressor)
    if encoding == "br":
        brotli = _brotli()
        if brotli is not None:
            dec = brotli.Decompressor()
            return lambda chunk: dec.process(chunk)
        raise StoreError(
            NOT_IMPLEMENTED, "Content-Encoding br needs the brotli module, which is not installed"
        )
    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown HTTP compression method {encoding!r}")


class _DeflateDecoder:
    """HTTP 'deflate' is zlib-wrapped by the standard, raw by some clients: accept both."""

    def __init__(self) -> None:
        self._dec: object | None = None

    def __call__(self, chunk: bytes) -> bytes:
        if self._dec is None:
            raw = not chunk or (chunk[0] & 0x0F) != 8
            self._dec = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        try:
            return self._dec.decompress(chunk)  # type: ignore[attr-defined]
        except zlib.error as exc:
            raise StoreError(CANNOT_DECOMPRESS, f"Cannot decompress deflate body: {exc}") from exc


# --------------------------------------------------------------------------- Native protocol revisions

#: Revisions (client_protocol_version values) at which the Native layout changes.
REVISION_WITH_BLOCK_INFO = 1
REVISION_WITH_LOW_CARDINALITY = 54405
REVISION_WITH_CUSTOM_SERIALIZATION = 54454

_FIXED = {
    **dict.fromkeys(("Int8", "UInt8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("Int16", "UInt16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("Int32", "UInt32", "Float32", "Date32", "DateTime", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("Int64", "UInt64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("Int128", "UInt128", "Decimal128", "UUID", "IPv6"), 16),
    **dict.fromkeys(("Int256", "UInt256", "Decimal256"), 32),
}
_GEO = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "Polygon": "Array(Ring)",
    "MultiLineString": "Array(LineString)",
    "MultiPolygon": "Array(Polygon)",
}
_NAMED_ELEMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)$", re.S)

TypeNode = tuple[str, tuple["TypeNode", ...], int]


def _split_args(text: str) -> list[str]:
    args: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail or args:
        args.append(tail)
    return args


def _strip_element_name(arg: str) -> str:
    if arg.startswith("`"):
        end = arg.find("`", 1)
        while end > 0 and arg[end - 1] == "\\":
            end = arg.find("`", end + 1)
        return arg[end + 1 :].strip() if end > 0 else arg
    match = _NAMED_ELEMENT.match(arg)
    return match.group(2) if match else arg


def parse_type(name: str) -> TypeNode:
    """Parse a ClickHouse type name into (family, children, fixed_width) for the Native walker."""
    name = name.strip()
    paren = name.find("(")
    family = name if paren < 0 else name[:paren].strip()
    args = _split_args(name[paren + 1 : name.rfind(")")]) if paren >= 0 else []
    if family in _GEO:
        return parse_type(_GEO[family])
    if family in _FIXED:
        return family, (), _FIXED[family]
    if family == "Decimal":
        precision = int(args[0]) if args else 10
        width = 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
        return family, (), width
    if family == "FixedString":
        return family, (), int(args[0])
    if family.startswith("Interval"):
        return family, (), 8
    if family == "String":
        return family, (), 0
    if family in ("Nullable", "Array", "LowCardinality"):
        return family, (parse_type(args[0]),), 0
    if family == "Tuple":
        return family, tuple(parse_type(_strip_element_name(a)) for a in args), 0
    if family == "Map":
        return family, (parse_type(args[0]), parse_type(args[1])), 0
    if family == "SimpleAggregateFunction":
        return parse_type(args[-1])
    raise StoreError(
        NOT_IMPLEMENTED,
        f"citystream store cannot send type {name} with client_protocol_version; "
        "query it without client_protocol_version or cast it (e.g. toString)",
    )


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip_prefix(node: TypeNode, buf: memoryview, pos: int) -> int:
    family, children, _ = node
    if family == "LowCardinality":
        return pos + 8
    for child in children:
        pos = _skip_prefix(child, buf, pos)
    return pos


def _skip_data(node: TypeNode, buf: memoryview, pos: int, rows: int) -> int:
    family, children, width = node
    if width:
        return pos + width * rows
    if family == "String":
        for _ in range(rows):
            length, pos = _varint(buf, pos)
            pos += length
        return pos
    if family == "Nullable":
        return _skip_data(children[0], buf, pos + rows, rows)
    if family in ("Array", "Map"):
        if rows == 0:
            return pos
        nested = _u64(buf, pos + 8 * (rows - 1))[0]
        pos += 8 * rows
        if nested:
            for child in children if family == "Map" else children[:1]:
                pos = _skip_data(child, buf, pos, nested)
        return pos
    if family == "Tuple":
        for child in children:
            pos = _skip_data(child, buf, pos, rows)
        return pos
    if family == "LowCardinality":
        if rows == 0:
            return pos
        flags = _u64(buf, pos)[0]
        pos += 8
        if flags & (1 << 8) or not flags & (1 << 9):
            raise StoreError(NOT_IMPLEMENTED, "LowCardinality with a shared dictionary cannot be re-framed")
        keys = _u64(buf, pos)[0]
        inner = children[0]
        if inner[0] == "Nullable":
            inner = inner[1][0]
        pos = _skip_data(inner, buf, pos + 8, keys)
        count = _u64(buf, pos)[0]
        return pos + 8 + count * (1 << (flags & 0xFF))
    raise StoreError(NOT_IMPLEMENTED, f"cannot walk Native column of type {family}")


_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"


def upgrade_native(data: bytes, revision: int) -> bytes:
    """Re-frame a revision-0 Native stream for a client that asked for ``revision``."""
    if revision <= 0 or not data:
        return data
    buf = memoryview(data)
    out = bytearray()
    pos = 0
    custom = revision >= REVISION_WITH_CUSTOM_SERIALIZATION
    cache: dict[str, TypeNode] = {}
    try:
        while pos < len(buf):
            out += _BLOCK_INFO
            start = pos
            columns, pos = _varint(buf, pos)
            rows, pos = _varint(buf, pos)
            out += buf[start:pos]
            for _ in range(columns):
                start = pos
                length, pos = _varint(buf, pos)
                pos += length
                length, pos = _varint(buf, pos)
                type_name = bytes(buf[pos : pos + length]).decode()
                pos += length
                out += buf[start:pos]
                if custom:
                    out.append(0)
                if rows:
                    node = cache.get(type_name)
                    if node is None:
                        node = cache[type_name] = parse_type(type_name)
                        if revision < REVISION_WITH_LOW_CARDINALITY and "LowCardinality" in type_name:
                            raise StoreError(
                                NOT_IMPLEMENTED, "LowCardinality needs client_protocol_version >= 54405"
                            )
                    start = pos
                    pos = _skip_data(node, buf, _skip_prefix(node, buf, pos), rows)
                    if pos > len(buf):
                        raise IndexError(pos)
                    out += buf[start:pos]
    except (IndexError, struct.error) as exc:
        raise StoreError(NOT_IMPLEMENTED, f"cannot re-frame Native output: truncated stream ({exc})") from exc
    return bytes(out)
