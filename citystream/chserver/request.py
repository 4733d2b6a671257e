"""One HTTP request as ClickHouse's HTTP interface reads it: body, codings and parameters.

Pure helpers without server state, so the handler and the statement runner
share one reading of a request.
"""

from __future__ import annotations

import contextlib
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from citystream.chserver import wire
from citystream.chserver.errors import (
    BAD_ARGUMENTS,
    CANNOT_DECOMPRESS,
    QUERY_IS_TOO_LARGE,
    SYNTAX_ERROR,
    UNKNOWN_EXCEPTION,
    StoreError,
)
from citystream.chserver.sqltext import Statement, analyze

CHUNK = 1 << 16

CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "native": "application/octet-stream",
    "rowbinary": "application/octet-stream",
    "rowbinarywithnamesandtypes": "application/octet-stream",
    "parquet": "application/octet-stream",
    "arrow": "application/octet-stream",
    "arrowstream": "application/octet-stream",
    "orc": "application/octet-stream",
    "avro": "application/octet-stream",
}


@dataclass
class Outcome:
    """What a request produced: a body, or a stream of chunks plus ``finish`` to call once it is sent."""

    body: bytes = b""
    fmt: str | None = None
    summary: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    kind: str = ""
    query: str = ""
    stream: Iterator[bytes] | None = None
    finish: Callable[[], None] = lambda: None


class Body:
    """The raw request body (Content-Length or chunked), read once; ``drained`` once fully read."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._h = handler
        self.drained = False
        self._gen: Iterator[bytes] | None = None
        #: A multipart form's file parts: external data tables (field name -> data).
        self.files: dict[str, bytes] = {}

    def raw(self) -> Iterator[bytes]:
        if self._gen is None:
            self._gen = self._read()
        return self._gen

    def _read(self) -> Iterator[bytes]:
        headers = self._h.headers
        rfile = self._h.rfile
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            while True:
                line = rfile.readline(65537)
                if not line:
                    raise StoreError(UNKNOWN_EXCEPTION, "Unexpected end of chunked request body")
                try:
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    raise StoreError(BAD_ARGUMENTS, "Malformed chunk size in request body") from None
                if size == 0:
                    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                remaining = size
                while remaining:
                    piece = rfile.read(min(remaining, CHUNK))
                    if not piece:
                        raise StoreError(UNKNOWN_EXCEPTION, "Unexpected end of chunked request body")
                    remaining -= len(piece)
                    yield piece
                rfile.readline(3)
        else:
            try:
                remaining = int(headers.get("Content-Length") or 0)
            except ValueError:
                raise StoreError(BAD_ARGUMENTS, "Invalid Content-Length") from None
            while remaining > 0:
                piece = rfile.read(min(remaining, CHUNK))
                if not piece:
                    raise StoreError(UNKNOWN_EXCEPTION, "Unexpected end of request body")
                remaining -= len(piece)
                yield piece
        self.drained = True

    def statement_read(self) -> None:
        """The query text is in: from here the body may take as long as its data needs."""
        relax = getattr(self._h, "relax_deadline", None)
        if relax is not None:
            relax()

    def drain(self, limit: int) -> bool:
        """Read and drop the rest (up to ``limit`` bytes) so the connection can be reused."""
        seen = 0
        try:
            for piece in self.raw():
                seen += len(piece)
                if seen > limit:
                    return False
        except Exception:
            return False
        return self.drained


def decoded(
    chunks: Iterator[bytes], content_encoding: str, block_framed: bool, limit: int
) -> Iterator[bytes]:
    """The body after every decoding, in bounded pieces, failing once more than ``limit`` bytes came out."""
    if content_encoding and content_encoding.lower() not in ("identity", ""):
        chunks = _content_decoded(chunks, wire.content_decoder(content_encoding))
    if block_framed:
        chunks = wire.decompress_blocks(_block_budget(chunks, limit))
    return _counted(chunks, limit)


def _content_decoded(chunks: Iterator[bytes], decoder: Any) -> Iterator[bytes]:
    """Decoded pieces; an encoded body that decodes to nothing is corrupt (a truncated header)."""
    fed = produced = False
    for chunk in chunks:
        fed = fed or bool(chunk)
        for piece in decoder.pieces(chunk):
            produced = produced or bool(piece)
            yield piece
    if fed and not produced:
        raise StoreError(CANNOT_DECOMPRESS, "Cannot decompress the request body: truncated or corrupt data")


_FRAME_HEAD = 16 + 9  # checksum, method byte, compressed size, raw size
#: Largest decompressed block accepted (ClickHouse writes 1 MiB blocks; clients at most a few MiB).
MAX_BLOCK_RAW = 16 << 20


def _block_budget(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """Compressed-block frames passed through once their header's raw size fits the remaining budget.

    Why: a block's header states its decompressed size, and inflating it
    allocates that much at once; a few bytes claiming a huge block must be
    refused before anything is allocated, and the sum of the blocks stays
    within the body's ``limit``.
    """
    pending = bytearray()  # bytes of the current frame's header not yet complete
    left_in_frame = 0  # bytes of the current frame (after its header) still to pass through
    budget = limit
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            if left_in_frame:
                take = min(left_in_frame, len(view))
                yield bytes(view[:take])
                view, left_in_frame = view[take:], left_in_frame - take
                continue
            need = _FRAME_HEAD - len(pending)
            pending += view[:need]
            view = view[need:]
            if len(pending) < _FRAME_HEAD:
                break
            size, raw = struct.unpack_from("<II", pending, 17)
            if size < 9 or raw > MAX_BLOCK_RAW:
                raise StoreError(CANNOT_DECOMPRESS, f"Too large size of compressed block: {raw}")
            if raw > budget:
                raise StoreError(
                    QUERY_IS_TOO_LARGE,
                    f"Compressed block of {raw} bytes exceeds the request body limit of {limit} bytes",
                )
            budget -= raw
            left_in_frame = size - 9
            yield bytes(pending)
            pending.clear()
    if pending:
        yield bytes(pending)  # a truncated header: the decoder reports it


def _counted(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise StoreError(QUERY_IS_TOO_LARGE, f"Request body is larger than {limit} bytes after decoding")
        if chunk:
            yield chunk


def parse_accept_encoding(header: str) -> str | None:
    offered = []
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            with contextlib.suppress(ValueError):
                q = float(match.group(1))
        if name and q > 0:
            offered.append((q, name))
    supported = wire.http_encodings()
    for _, name in sorted(offered, key=lambda item: -item[0]):
        if name in supported:
            return name
        if name == "*":
            return supported[0]
    return None


def quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def snippet(text: bytes | bytearray, limit: int = 160) -> str:
    """A log-friendly one-line prefix of a query."""
    line = " ".join(bytes(text[: limit * 2]).decode("utf-8", errors="replace").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def content_type(fmt: str) -> str:
    lowered = fmt.lower()
    if lowered in CONTENT_TYPES:
        return CONTENT_TYPES[lowered]
    if lowered.startswith("json"):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


def readonly_level(user_level: int, requested: str | None, method: str) -> int:
    levels = {user_level}
    if requested:
        try:
            levels.add(int(requested))
        except ValueError:
            raise StoreError(BAD_ARGUMENTS, f"Invalid readonly value {requested!r}") from None
    if method == "GET":
        levels.add(2)
    if 1 in levels:
        return 1
    return 2 if 2 in levels else 0


def int_param(params: Mapping[str, str], name: str) -> int:
    try:
        return int(params.get(name) or 0)
    except ValueError:
        raise StoreError(BAD_ARGUMENTS, f"Invalid {name} value {params.get(name)!r}") from None


@dataclass
class Request:
    """A request's statement, read in full (or, for an INSERT with data, up to where the data starts)."""

    head: bytearray
    stmt: Statement
    #: What the statement policy checks: the whole text, or an INSERT's head with its FORMAT.
    checked_text: str
    #: For an INSERT with data: the statement without FORMAT, as the engine's inserter wants it.
    insert_head: str = ""

    @property
    def query(self) -> str:
        return snippet(self.head[: self.stmt.head_end] if self.stmt.has_insert_data else self.head)


def read_statement(params: Mapping[str, str], chunks: Iterator[bytes], limit: int) -> Request:
    """The statement of a request: URL ``query`` + body, at most ``limit`` bytes of text.

    Why bounded here: the text is parsed by the engine (and its head by
    :func:`~citystream.chserver.sqltext.analyze` to find where INSERT data starts),
    so it must never grow with what a client chooses to send.
    """
    url_query = params.get("query")
    head = bytearray(url_query.encode() if url_query is not None else b"")
    first = next(chunks, None)
    if first is not None and url_query is not None:
        head += b"\n"
    head += first or b""
    exhausted = first is None
    _bound(head, limit)
    window = [_WINDOW]
    stmt = _classify(head, window)
    # An INSERT's head may span several body chunks; anything else is read in full below.
    while stmt.kind in ("", "INSERT") and not (stmt.kind == "INSERT" and stmt.complete) and not exhausted:
        more = next(chunks, None)
        if more is None:
            exhausted = True
            break
        head += more
        _bound(head, limit)
        stmt = _classify(head, window)
    if stmt.kind == "INSERT" and not stmt.complete and exhausted:
        closed = analyze(head.decode("latin-1") + "\n")
        if closed.has_insert_data:
            stmt = closed
    if stmt.kind == "INSERT" and stmt.has_insert_data and stmt.format:
        insert_head = utf8(bytes(head[: stmt.head_end])).rstrip()
        return Request(head, stmt, f"{insert_head} FORMAT {stmt.format}", insert_head)
    for more in chunks:
        head += more
        _bound(head, limit)
    # Literals may hold any bytes ($x$...$x$ binary parameters): kept as surrogate escapes.
    text = bytes(head).decode("utf-8", "surrogateescape")
    if not text.strip():
        raise StoreError(SYNTAX_ERROR, "Empty query")
    return Request(head, Statement(kind=stmt.kind), text)


#: How much of a request's text is classified at first (doubled while that does not decide it).
_WINDOW = 4096


def _classify(head: bytearray, window: list[int]) -> Statement:
    """:func:`analyze` on as short a prefix of ``head`` as decides the statement's kind and data start.

    Why: the lexer is Python; running it over a whole 256 KiB text on every
    body chunk let a few requests of junk text take the CPU from the loader.
    A statement's first word decides its kind, and an INSERT's data starts
    after a short head; ``window`` (shared across calls) only grows when the
    prefix leaves that open, so the text is lexed about twice at most.
    """
    while True:
        size = window[0]
        stmt = analyze(head[:size].decode("latin-1"))
        cut = size < len(head)
        undecided = stmt.kind == "" or (stmt.kind == "INSERT" and not stmt.complete)
        # A data start at the very end of the prefix may still have blanks and a newline to skip.
        at_edge = stmt.data_start is not None and stmt.data_start >= size
        if not cut or not (undecided or at_edge):
            return stmt
        window[0] = size * 2


def _bound(head: bytearray, limit: int) -> None:
    if len(head) > limit:
        raise StoreError(QUERY_IS_TOO_LARGE, f"Query is too large: more than {limit} bytes")


def utf8(data: bytes) -> str:
    """Query text as the engine reads it; anything but UTF-8 is refused."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(SYNTAX_ERROR, "The query text is not valid UTF-8") from None
