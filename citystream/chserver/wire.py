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
  (gzip, deflate, zstd, lz4 frame; br for responses when the brotli module is
  installed). Request decoders hand out bounded pieces (:data:`PIECE`), so a
  compression bomb can be counted and stopped before it is buffered.
* ``upgrade_native(data, revision, types)``: re-frames a protocol-0 ``Native``
  stream for clients that send ``client_protocol_version``; see
  :mod:`~citystream.chserver.native` (re-exported here).

Every failure is a :class:`WireError` carrying a ClickHouse error code, so the
HTTP layer can report it the way a server would.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lz4.block
import lz4.frame

try:
    from backports import zstd  # type: ignore[import-not-found]
except ImportError:  # Python 3.14+ has it in the standard library
    from compression import zstd  # type: ignore[import-not-found,no-redef]

try:  # optional: Content-Encoding br is offered only when the brotli module is installed
    import brotli  # type: ignore[import-not-found]
except ImportError:
    brotli = None

from citystream.chserver.cityhash import cityhash128
from citystream.chserver.errors import (
    CANNOT_DECOMPRESS,
    CHECKSUM_DOESNT_MATCH,
    NOT_IMPLEMENTED,
    UNKNOWN_COMPRESSION_METHOD,
    StoreError,
)

WireError = StoreError

_u64 = struct.Struct("<Q").unpack_from


# --------------------------------------------------------------------------- compressed blocks

_METHOD_NONE = 0x02
_METHOD_LZ4 = 0x82
_METHOD_ZSTD = 0x90
_BLOCK_HEADER = 9
#: Same ceiling ch-go applies; a larger header value means a corrupt or hostile stream.
_MAX_BLOCK = 128 * 1024 * 1024


def compress_blocks(data: bytes, method: str = "LZ4", block_size: int = 1 << 20) -> Iterator[bytes]:
    """Frame ``data`` as ClickHouse compressed blocks (what a server sends for ``compress=1``)."""
    method = method.upper()
    for start in range(0, len(data), block_size):
        chunk = data[start : start + block_size]
        if method == "LZ4":
            code, payload = _METHOD_LZ4, lz4.block.compress(chunk, store_size=False)
        elif method == "ZSTD":
            code, payload = _METHOD_ZSTD, zstd.compress(chunk)
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
                    data = lz4.block.decompress(payload, uncompressed_size=raw)
                elif code == _METHOD_ZSTD:
                    # Bounded by the header's raw size: a hostile block cannot expand further.
                    data = zstd.ZstdDecompressor().decompress(payload, raw + 1)
                elif code == _METHOD_NONE:
                    data = payload
                else:
                    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown compression method: 0x{code:02x}")
            except StoreError:
                raise
            except Exception:
                raise StoreError(CANNOT_DECOMPRESS, "Cannot decompress block: corrupt data") from None
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


def http_encodings() -> list[str]:
    """Content codings this process can produce, in the order the store prefers them."""
    found = ["zstd", "lz4", "gzip", "deflate"]
    if brotli is not None:
        found.append("br")
    return found


def encode_content(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        compressor = zlib.compressobj(3, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush()
    if encoding == "deflate":
        return zlib.compress(data, 3)
    if encoding == "zstd":
        return zstd.compress(data)
    if encoding == "lz4":
        return lz4.frame.compress(data)
    if encoding == "br" and brotli is not None:
        return brotli.compress(data)
    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown HTTP compression method {encoding!r}")


#: Largest piece a streaming decoder hands out at once, whatever the input expands to.
PIECE = 1 << 16


def _bz2_style(dec: Any, data: bytes, piece: int) -> Iterator[bytes]:
    """Drive a decoder with the bz2-style ``decompress(data, max_length)`` / ``needs_input`` API."""
    out = dec.decompress(data, piece)
    while True:
        if out:
            yield out
        if dec.eof or dec.needs_input:
            return
        out = dec.decompress(b"", piece)


def _zlib_style(dec: Any, data: bytes, piece: int) -> Iterator[bytes]:
    """Drive a zlib decompressobj: ``max_length`` leaves the rest of the input in ``unconsumed_tail``."""
    while True:
        out = dec.decompress(data, piece)
        data = dec.unconsumed_tail
        if out:
            yield out
        if dec.eof or (not data and len(out) < piece):
            return


class _Streaming:
    """A content decoder that never produces more than ``piece`` bytes per step.

    Why: a few kilobytes of zstd/gzip can expand to gigabytes in one
    ``decompress`` call; handing out bounded pieces lets the caller count the
    decoded size and stop before anything large is buffered. Clients may send
    several concatenated frames, so a finished frame restarts the decoder on
    the bytes after it.
    """

    def __init__(
        self, factory: Callable[[], Any], drive: Callable[[Any, bytes, int], Iterator[bytes]]
    ) -> None:
        self._factory = factory
        self._drive = drive
        self._dec: Any = factory()

    def pieces(self, chunk: bytes, piece: int = PIECE) -> Iterator[bytes]:
        try:
            while chunk:
                yield from self._drive(self._dec, chunk, piece)
                if not self._dec.eof:
                    return
                chunk = bytes(self._dec.unused_data or b"")
                self._dec = self._factory()
        except StoreError:
            raise
        except Exception:
            raise StoreError(CANNOT_DECOMPRESS, "Cannot decompress the request body: corrupt data") from None

    def __call__(self, chunk: bytes) -> bytes:
        return b"".join(self.pieces(chunk))


class _Deflate(_Streaming):
    """HTTP 'deflate' is zlib-wrapped by the standard, raw by some clients: accept both (one stream)."""

    def __init__(self) -> None:
        self._dec = None
        self._drive = _zlib_style

    def pieces(self, chunk: bytes, piece: int = PIECE) -> Iterator[bytes]:
        if self._dec is None:
            raw = not chunk or (chunk[0] & 0x0F) != 8
            self._dec = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        try:
            yield from _zlib_style(self._dec, chunk, piece)
        except zlib.error:
            raise StoreError(CANNOT_DECOMPRESS, "Cannot decompress deflate body: corrupt data") from None


def content_decoder(encoding: str) -> _Streaming:
    """A chunk-at-a-time decoder for a request ``Content-Encoding``: ``pieces(chunk)`` is bounded."""
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return _Streaming(lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), _zlib_style)
    if encoding == "deflate":
        return _Deflate()
    if encoding == "zstd":
        return _Streaming(zstd.ZstdDecompressor, _bz2_style)
    if encoding == "lz4":
        return _Streaming(lz4.frame.LZ4FrameDecompressor, _bz2_style)
    if encoding == "br":
        # The brotli module has no bounded-output decoding in every version: a br body
        # could expand without a ceiling, so br is offered for responses only.
        raise StoreError(NOT_IMPLEMENTED, "Content-Encoding br is not accepted for request bodies")
    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown HTTP compression method {encoding!r}")


# --------------------------------------------------------------------------- Native protocol revisions

# Re-framing Native output for a client's revision lives in its own module (the type walker).
from citystream.chserver.native import (  # noqa: E402
    REVISION_WITH_BLOCK_INFO,
    REVISION_WITH_CUSTOM_SERIALIZATION,
    REVISION_WITH_LOW_CARDINALITY,
    parse_type,
    upgrade_native,
)

__all__ = [
    "REVISION_WITH_BLOCK_INFO",
    "REVISION_WITH_CUSTOM_SERIALIZATION",
    "REVISION_WITH_LOW_CARDINALITY",
    "BlockDecompressor",
    "compress_blocks",
    "content_decoder",
    "decompress_blocks",
    "encode_content",
    "http_encodings",
    "parse_type",
    "upgrade_native",
]
