"""Results sent while they are computed, with ClickHouse's mid-stream exception convention.

Contract:

* A ``SELECT``/``WITH`` whose output format is in :data:`STREAMED_FORMATS`
  is streamed: the engine's blocks go out as they come, in HTTP chunks, so a
  large result costs a few blocks of memory, not its size. Other formats
  (those with a prefix or suffix: JSON, XML, Pretty, ``*WithNames*``,
  Parquet ...) are computed in full: chdb's streaming API repeats a format's
  prefix in every chunk. ``wait_end_of_query=1`` buffers a streamed result
  too, up to ``max_buffered_result_bytes`` (TOO_MANY_ROWS_OR_BYTES beyond).
* The first block is computed before the response starts, so a statement
  that fails at once gets a proper HTTP error. A failure after the first
  bytes are sent is written as a server does (ClickHouse 25.11+): every
  query response carries ``X-ClickHouse-Exception-Tag: <tag>`` and the
  stream ends with ``__exception__\\r\\n<tag>\\r\\n<Code: N. DB::Exception:
  ...>\\n<length> <tag>\\r\\n__exception__\\r\\n`` (what clickhouse-connect
  1.12 scans for); the connection is then closed.
* :class:`Encoder`: ``compress=1`` block framing and/or an HTTP content
  coding (zstd, lz4, gzip, deflate, br), applied chunk by chunk.
"""

from __future__ import annotations

import contextlib
import secrets
import string
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import lz4.frame

from citystream.chserver import wire
from citystream.chserver.errors import TOO_MANY_ROWS_OR_BYTES, UNKNOWN_COMPRESSION_METHOD, StoreError

try:
    from backports import zstd  # type: ignore[import-not-found]
except ImportError:  # Python 3.14+ has it in the standard library
    from compression import zstd  # type: ignore[import-not-found,no-redef]

try:  # optional, as in wire: br responses only when the brotli module is installed
    import brotli  # type: ignore[import-not-found]
except ImportError:
    brotli = None

#: Output formats whose output is the concatenation of their blocks' outputs (no prefix/suffix).
STREAMED_FORMATS = frozenset(
    {
        "native",
        "tabseparated",
        "tsv",
        "tabseparatedraw",
        "tsvraw",
        "csv",
        "rowbinary",
        "jsoneachrow",
        "jsonlines",
        "ndjson",
        "jsoncompacteachrow",
        "jsonstringseachrow",
        "jsoncompactstringseachrow",
        "tskv",
        "lineasstring",
    }
)
_TAG_ALPHABET = string.ascii_letters + string.digits


def exception_tag() -> str:
    return "".join(secrets.choice(_TAG_ALPHABET) for _ in range(16))


def exception_block(tag: str, text: str) -> bytes:
    """The bytes a server appends to a response whose query failed after data was sent."""
    message = text.rstrip("\n").encode("utf-8", errors="replace")
    return (
        b"__exception__\r\n"
        + tag.encode()
        + b"\r\n"
        + message
        + b"\n"
        + str(len(message)).encode()
        + b" "
        + tag.encode()
        + b"\r\n__exception__\r\n"
    )


class Blocks:
    """The engine's output of one query, block by block; engine failures become ClickHouse errors.

    ``rows``/``size`` count what has been taken so far. ``close()`` cancels the
    query (a client gone, an error), and is safe to call twice.
    """

    def __init__(
        self,
        conn: Any,
        sql: str,
        fmt: str,
        params: dict[str, str],
        reframe: Callable[[bytes], bytes] | None = None,
    ) -> None:
        try:
            self._streaming = conn.send_query(sql, fmt, params=params)
        except Exception as exc:
            raise StoreError.from_engine(exc) from exc
        self._reframe = reframe
        self._ahead: list[bytes] = []
        self._done = False
        self.rows = 0
        self.size = 0

    def take(self) -> bytes | None:
        """The next non-empty block, or None at the end."""
        if self._ahead:
            return self._ahead.pop()
        while not self._done:
            try:
                chunk = next(self._streaming, None)
            except Exception as exc:
                self.close()
                raise StoreError.from_engine(exc) from exc
            if chunk is None:
                self.close()
                return None
            data = chunk.bytes() or b""
            if data:
                self.rows += int(chunk.rows_read())
                self.size += len(data)
                return self._reframe(data) if self._reframe is not None else data
        return None

    def peek(self) -> bytes | None:
        """The next block without taking it (computed now, so a failure surfaces here)."""
        data = self.take()
        if data is not None:
            self._ahead.append(data)
        return data

    @property
    def exhausted(self) -> bool:
        return self._done and not self._ahead

    def after(self, first: bytes) -> Iterator[bytes]:
        """``first`` (already taken), then the rest; closing the iterator cancels the query."""
        try:
            yield first
            while (data := self.take()) is not None:
                yield data
        finally:
            self.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            with contextlib.suppress(Exception):  # a finished stream may refuse; nothing to do
                self._streaming.cancel()


def collect(blocks: Blocks, limit: int) -> bytes:
    """A result in full (``wait_end_of_query=1``, or a small one), at most ``limit`` bytes."""
    out = bytearray()
    try:
        while (data := blocks.take()) is not None:
            out += data
            if len(out) > limit:
                raise StoreError(
                    TOO_MANY_ROWS_OR_BYTES,
                    f"Limit for result exceeded: the buffered result is larger than {limit} bytes",
                )
    finally:
        blocks.close()
    return bytes(out)


class Encoder:
    """Response framing applied chunk by chunk: ClickHouse blocks, then an HTTP content coding."""

    def __init__(self, block_method: str | None, coding: str | None) -> None:
        self._block_method = block_method
        self.coding = coding
        self._compress: Callable[[bytes], bytes] | None = None
        self._flush: Callable[[], bytes] | None = None
        if coding is not None:
            self._compress, self._flush = _content_encoder(coding)

    def encode(self, data: bytes) -> bytes:
        if self._block_method and data:
            data = b"".join(wire.compress_blocks(data, self._block_method))
        if self._compress is not None:
            return self._compress(data)
        return data

    def finish(self) -> bytes:
        return self._flush() if self._flush is not None else b""


def _content_encoder(coding: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """(compress chunk, finish) for one response; every chunk is flushed so the client sees it."""
    if coding in ("gzip", "deflate"):
        z = zlib.compressobj(3, zlib.DEFLATED, (16 if coding == "gzip" else 0) + zlib.MAX_WBITS)
        return (lambda d: z.compress(d) + z.flush(zlib.Z_SYNC_FLUSH)), z.flush
    if coding == "zstd":
        zc = zstd.ZstdCompressor()
        return (lambda d: zc.compress(d, zc.FLUSH_BLOCK)), (lambda: zc.flush(zc.FLUSH_FRAME))
    if coding == "lz4":
        lc = lz4.frame.LZ4FrameCompressor(auto_flush=True)
        header = [lc.begin()]

        def lz4_chunk(d: bytes) -> bytes:
            head = header.pop() if header else b""
            return head + lc.compress(d) if d else head

        return lz4_chunk, (lambda: (header.pop() if header else b"") + lc.flush())
    if coding == "br" and brotli is not None:
        bc = brotli.Compressor()
        return (lambda d: bc.process(d) + bc.flush()), bc.finish
    raise StoreError(UNKNOWN_COMPRESSION_METHOD, f"Unknown HTTP compression method {coding!r}")
