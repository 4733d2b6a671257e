"""The store process: ClickHouse's HTTP interface in front of the embedded chdb engine.

Contract (what clients may rely on; all of it is what a ClickHouse server does):

* Listens on 127.0.0.1 only. ``GET /ping`` (and ``GET /`` without a query)
  answer ``Ok.``; everything else goes to ``/``.
* The query comes from the ``query`` URL parameter and/or the POST body
  (``query + "\\n" + body``), or a ``multipart/form-data`` ``query`` field.
  ``INSERT ... FORMAT f`` / ``INSERT ... VALUES`` stream the rest of the body
  into the table; anything else must be one statement (multi-statements are
  rejected like a server does). ``INTO OUTFILE`` is refused.
* URL parameters: ``database``, ``default_format`` (also ``X-ClickHouse-Format``
  header), ``query_id``, ``session_id``/``session_timeout``/``session_check``,
  ``param_<name>`` (``{name:Type}`` placeholders), ``compress``/``decompress``
  (ClickHouse block framing, LZ4/ZSTD via ``network_compression_method``),
  ``enable_http_compression`` (+ ``Accept-Encoding``: zstd, lz4, gzip, deflate),
  ``client_protocol_version`` (Native re-framed for that revision); the other
  transport-only parameters in :data:`TRANSPORT_PARAMS` are accepted and
  ignored; every other parameter the engine knows as a setting is applied
  (a bad value fails as on a server), and one it does not know (a
  server-only setting, or a typo) is skipped with a warning in the log, so
  that clients written for a ClickHouse server keep working.
* Request bodies may be sent with ``Content-Encoding`` gzip/deflate/zstd/lz4
  (br when the brotli module is installed) and chunked transfer encoding.
* Users: the read-write user and the read-only user from
  :class:`StoreConfig`; credentials by HTTP basic auth, ``X-ClickHouse-User`` /
  ``X-ClickHouse-Key`` headers or ``user``/``password`` parameters; none means
  ``default`` with an empty password. A wrong user or password gets 403 with
  AUTHENTICATION_FAILED (516). The read-only user runs with ``readonly=1``
  applied after its URL settings, so the engine itself rejects writes, DDL,
  table functions and setting changes inside the query (READONLY, 164); it
  may still pass settings as URL parameters (what Grafana does). GET
  requests run with ``readonly=2``, like a server.
* Responses carry ``X-ClickHouse-Query-Id``, ``-Summary``, ``-Timezone``,
  ``-Server-Display-Name`` and, for result-producing statements, ``-Format``.
  Errors: the server's HTTP status for the code, ``X-ClickHouse-Exception-Code``
  and a ``Code: N. DB::Exception: ... (version V)`` body.
* Results are computed in full before the first byte is sent (as with
  ``wait_end_of_query=1``), so an error is always a proper HTTP error.
* SIGTERM/SIGINT: stop accepting, let running requests finish (up to a grace
  period), close sessions, close the engine (flushes data), exit 0.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import hmac
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from citystream.errors import UserError
from citystream.store import wire
from citystream.store.engine import Engine, Session, Sessions, close_quietly
from citystream.store.errors import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    BAD_ARGUMENTS,
    INTO_OUTFILE_NOT_ALLOWED,
    NOT_IMPLEMENTED,
    QUERY_IS_TOO_LARGE,
    SYNTAX_ERROR,
    TOO_MANY_SIMULTANEOUS_QUERIES,
    UNKNOWN_EXCEPTION,
    StoreError,
    http_status,
)
from citystream.store.sqltext import RESULT_KINDS, Statement, analyze

log = logging.getLogger("citystream.store")

#: URL parameters that steer the HTTP layer and never reach the engine as settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "http_wait_end_of_query",
        "client_protocol_version",
        "role",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "http_zlib_compression_level",
        "network_compression_method",
        "network_zstd_compression_level",
        "http_native_compression_disable_checksumming_on_decompress",
        "http_response_buffer_size",
        "add_http_cors_header",
        "stacktrace",
        "readonly",  # applied last, see _readonly_level
    }
)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CHUNK = 1 << 16
#: A query text (not INSERT data) larger than this is refused, like max_query_size on a server.
MAX_QUERY_TEXT = 64 << 20
#: An unread request body up to this size is drained after an error so keep-alive survives.
MAX_DRAIN = 16 << 20
#: How much of a body is searched for the end of an INSERT statement before giving up.
MAX_INSERT_HEAD = 1 << 20

_CONTENT_TYPES = {
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


@dataclass(frozen=True)
class User:
    name: str
    password: str = field(repr=False)
    #: 0: read-write; 1: ClickHouse readonly=1 (no writes, DDL, table functions, in-query settings).
    readonly: int = 0


@dataclass(frozen=True)
class StoreConfig:
    """Everything the store process needs; :meth:`from_settings` derives it from citystream settings."""

    data_dir: Path
    port: int
    users: tuple[User, ...]
    host: str = "127.0.0.1"
    max_concurrent_queries: int = 8
    queue_timeout_s: float = 60.0
    session_timeout_s: float = 60.0
    max_session_timeout_s: float = 3600.0
    shutdown_grace_s: float = 30.0
    idle_connection_timeout_s: float = 300.0

    @classmethod
    def from_settings(
        cls, settings: Any, data_dir: Path | None = None, port: int | None = None
    ) -> StoreConfig:
        users = (
            User(settings.clickhouse_user, settings.clickhouse_password, 0),
            User(settings.clickhouse_viewer_user, settings.clickhouse_viewer_password, 1),
        )
        if users[0].name == users[1].name:
            raise UserError(
                f"the read-only user and the read-write user are both called {users[0].name!r}: "
                "set CITYSTREAM_CLICKHOUSE_VIEWER_USER to another name"
            )
        return cls(
            data_dir=Path(data_dir) if data_dir is not None else default_data_dir(settings),
            port=settings.store_port if port is None else port,
            users=users,
        )


def default_data_dir(settings: Any) -> Path:
    """Where the stack keeps the store's data (citystream.stack.Store), so a hand-run serve finds it."""
    return Path(settings.run_dir) / "store" / "data"


# --------------------------------------------------------------------------- request model


@dataclass
class _Outcome:
    body: bytes = b""
    fmt: str | None = None
    summary: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    kind: str = ""
    query: str = ""


class _Body:
    """The raw request body (Content-Length or chunked), read once; ``drained`` once fully read."""

    def __init__(self, handler: BaseHTTPRequestHandler) -> None:
        self._h = handler
        self.drained = False
        self._gen: Iterator[bytes] | None = None

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
                    piece = rfile.read(min(remaining, _CHUNK))
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
                piece = rfile.read(min(remaining, _CHUNK))
                if not piece:
                    raise StoreError(UNKNOWN_EXCEPTION, "Unexpected end of request body")
                remaining -= len(piece)
                yield piece
        self.drained = True

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


def _decoded(chunks: Iterator[bytes], content_encoding: str, block_framed: bool) -> Iterator[bytes]:
    if content_encoding and content_encoding.lower() not in ("identity", ""):
        decode = wire.content_decoder(content_encoding)
        chunks = (out for out in (decode(chunk) for chunk in chunks) if out)
    if block_framed:
        chunks = wire.decompress_blocks(chunks)
    return chunks


def _parse_accept_encoding(header: str) -> str | None:
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


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# --------------------------------------------------------------------------- the server


class StoreServer:
    """HTTP front-end + engine. ``start()`` serves in a thread; ``stop()`` shuts down cleanly."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._users = {u.name: u for u in config.users}
        self._slots = threading.BoundedSemaphore(config.max_concurrent_queries)
        self._active = 0
        self._active_cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._ignored: set[str] = set()
        # Bind first: a taken port should fail fast, before the engine spends time starting.
        try:
            self.httpd = _HTTPServer((config.host, config.port), _Handler, self)
        except OSError as exc:
            raise UserError(
                f"store port {config.port} on {config.host} is not available ({exc.strerror}): "
                "stop whatever uses it or set CITYSTREAM_STORE_PORT"
            ) from None
        try:
            self.engine = Engine(config.data_dir)
        except BaseException:
            self.httpd.server_close()
            raise
        self.sessions = Sessions(self.engine, config.session_timeout_s, config.max_session_timeout_s)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="store-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, wait for running requests, then close sessions and the engine."""
        if self._closing:
            return
        self._closing = True
        if self._thread is not None and self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        with self._active_cv:
            while self._active and time.monotonic() < deadline:
                self._active_cv.wait(0.2)
            if self._active:
                log.warning("%d request(s) still running after the grace period", self._active)
        self.sessions.close_all()
        self.engine.close()
        log.info("engine closed, data flushed")

    # ----------------------------------------------------------------- request handling

    def begin(self) -> None:
        with self._active_cv:
            if self._closing:
                raise StoreError(TOO_MANY_SIMULTANEOUS_QUERIES, "The store is shutting down")
            self._active += 1

    def end(self) -> None:
        with self._active_cv:
            self._active -= 1
            self._active_cv.notify_all()

    def authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> User:
        name: str | None = headers.get("X-ClickHouse-User")
        password = headers.get("X-ClickHouse-Key", "")
        auth = headers.get("Authorization", "")
        if name is None and auth[:6].lower() == "basic ":
            try:
                name, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise StoreError(AUTHENTICATION_FAILED, "Malformed basic authorization header") from None
        if name is None and "user" in params:
            name, password = params["user"], params.get("password", "")
        if name is None:
            name, password = "default", params.get("password", "")
        user = self._users.get(name)
        if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            raise StoreError(
                AUTHENTICATION_FAILED,
                f"{name}: Authentication failed: password is incorrect, or there is no user with such name.",
            )
        return user

    def execute(
        self,
        user: User,
        method: str,
        params: dict[str, str],
        headers: Mapping[str, str],
        body: _Body,
        chunks: Iterator[bytes],
    ) -> _Outcome:
        """Run one request's statement on a (session or fresh) connection."""
        if not self._slots.acquire(timeout=self.config.queue_timeout_s):
            raise StoreError(
                TOO_MANY_SIMULTANEOUS_QUERIES,
                f"Too many simultaneous queries. Maximum: {self.config.max_concurrent_queries}",
            )
        session: Session | None = None
        conn: Any = None
        seen: dict[str, str] = {}
        try:
            session_id = params.get("session_id")
            if session_id:
                session = self.sessions.acquire(
                    user.name, session_id, params.get("session_timeout"), _truthy(params.get("session_check"))
                )
                conn = session.conn
            else:
                conn = self.engine.connect()
            self._prepare(conn, user, method, params, headers, session)
            return self._run(conn, user, params, headers, chunks, seen)
        except StoreError as err:
            err.query = seen.get("query", "")  # type: ignore[attr-defined]
            message = str(err)
            if user.name != "default" and message.startswith("default: "):
                # The engine knows a single user; name the one who asked.
                renamed = StoreError(err.code, f"{user.name}: {message[9:]}")
                renamed.query = err.query  # type: ignore[attr-defined]
                raise renamed from err
            raise
        finally:
            if session is not None:
                self.sessions.release(session)
            elif conn is not None:
                close_quietly(conn)
            self._slots.release()

    def _prepare(
        self,
        conn: Any,
        user: User,
        method: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        session: Session | None,
    ) -> None:
        database = params.get("database") or headers.get("X-ClickHouse-Database")
        if database:
            _engine_call(conn.query, f"USE `{database.replace('`', '``')}`", "TabSeparated")
        settings = {}
        for name, value in params.items():
            if name in TRANSPORT_PARAMS or name.startswith("param_"):
                continue
            if name in self.engine.settings:
                settings[name] = value
            elif name not in self._ignored:
                # A setting only a ClickHouse server has (or a typo): a client written for a
                # server must keep working, so it is skipped, and reported once.
                self._ignored.add(name)
                log.warning("ignoring setting %r unknown to the embedded engine", name)
        if session is not None:
            settings = {k: v for k, v in settings.items() if session.applied.get(k) != v}
        for name in settings:
            if not _SETTING_NAME.match(name):
                raise StoreError(BAD_ARGUMENTS, f"Invalid setting name {name!r}")
        if settings:
            clause = ", ".join(f"{k} = {_quote(v)}" for k, v in settings.items())
            _engine_call(conn.query, f"SET {clause}", "TabSeparated")
            if session is not None:
                session.applied.update(settings)
        level = _readonly_level(user.readonly, params.get("readonly"), method)
        if level and (session is None or session.readonly != level):
            _engine_call(conn.query, f"SET readonly = {level}", "TabSeparated")
            if session is not None:
                session.readonly = level

    def _run(
        self,
        conn: Any,
        user: User,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        chunks: Iterator[bytes],
        seen: dict[str, str],
    ) -> _Outcome:
        url_query = params.get("query")
        head = bytearray()
        if url_query is not None:
            head += url_query.encode()
        first = next(chunks, None)
        if first is not None:
            if url_query is not None:
                head += b"\n"
            head += first
        exhausted = first is None
        stmt = analyze(head.decode("latin-1"))
        # An INSERT's head may span several body chunks; anything else is read in full below.
        while (
            (stmt.kind in ("", "INSERT")) and not (stmt.kind == "INSERT" and stmt.complete) and not exhausted
        ):
            if len(head) > MAX_INSERT_HEAD:
                break
            more = next(chunks, None)
            if more is None:
                exhausted = True
                break
            head += more
            stmt = analyze(head.decode("latin-1"))
        if stmt.kind == "INSERT" and not stmt.complete and exhausted:
            closed = analyze(head.decode("latin-1") + "\n")
            if closed.has_insert_data:
                stmt = closed
        if stmt.kind == "INSERT" and stmt.has_insert_data:
            seen["query"] = _snippet(head[: stmt.head_end or 0]) + f" FORMAT {stmt.format}"
            return self._insert(conn, params, head, stmt, chunks)
        for more in chunks:
            head += more
            if len(head) > MAX_QUERY_TEXT:
                raise StoreError(QUERY_IS_TOO_LARGE, f"Query is too large ({len(head)} bytes)")
        text = bytes(head)
        if not text.strip():
            raise StoreError(SYNTAX_ERROR, "Empty query")
        seen["query"] = _snippet(text)
        stmt = analyze(text.decode("latin-1"))
        self._check(user, stmt)
        default_fmt = params.get("default_format") or headers.get("X-ClickHouse-Format") or "TabSeparated"
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        result = _engine_call(conn.query, text, default_fmt, params=bind)
        body = result.bytes() or b""
        out_fmt = stmt.format or default_fmt
        produces = stmt.kind in RESULT_KINDS or stmt.format is not None or bool(body)
        revision = _int_param(params, "client_protocol_version")
        if produces and out_fmt.lower() == "native" and revision > 0:
            body = wire.upgrade_native(body, revision)
        summary = _summary(result)
        return _Outcome(
            body=body,
            fmt=out_fmt if produces else None,
            summary=summary,
            rows=int(summary.get("result_rows", "0") or 0),
            kind=stmt.kind,
            query=seen["query"],
        )

    def _check(self, user: User, stmt: Statement) -> None:
        if stmt.multi:
            raise StoreError(SYNTAX_ERROR, "Multi-statements are not allowed")
        if stmt.into_outfile:
            raise StoreError(INTO_OUTFILE_NOT_ALLOWED, "INTO OUTFILE is not allowed")
        if user.readonly and stmt.kind == "KILL":
            raise StoreError(
                ACCESS_DENIED,
                f"{user.name}: Not enough privileges. To execute this query, "
                "it's necessary to have the grant KILL QUERY ON *.*",
            )

    def _insert(
        self,
        conn: Any,
        params: Mapping[str, str],
        head: bytearray,
        stmt: Statement,
        chunks: Iterator[bytes],
    ) -> _Outcome:
        assert stmt.head_end is not None and stmt.data_start is not None and stmt.format
        statement = bytes(head[: stmt.head_end]).decode("utf-8", errors="replace").rstrip()
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        if binds:
            clause = ", ".join(f"param_{k} = {_quote(v)}" for k, v in binds.items() if _SETTING_NAME.match(k))
            _engine_call(conn.query, f"SET {clause}", "TabSeparated")
        started = time.perf_counter()
        inserter = _engine_call(conn.send_insert, statement, stmt.format)
        try:
            first = bytes(head[stmt.data_start :])
            if first:
                _engine_call(inserter.append, first)
            for chunk in chunks:
                _engine_call(inserter.append, chunk)
            result = _engine_call(inserter.finish)
        except BaseException:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise
        written = int(result.rows_written)
        elapsed = getattr(result, "elapsed", None) or (time.perf_counter() - started)
        summary = {
            "read_rows": str(written),
            "read_bytes": str(result.bytes_written),
            "written_rows": str(written),
            "written_bytes": str(result.bytes_written),
            "total_rows_to_read": "0",
            "result_rows": str(written),
            "result_bytes": str(result.bytes_written),
            "elapsed_ns": str(int(float(elapsed) * 1e9)),
        }
        return _Outcome(summary=summary, rows=written, kind="INSERT", query=_snippet(head[: stmt.head_end]))


def _snippet(text: bytes | bytearray, limit: int = 160) -> str:
    """A log-friendly one-line prefix of a query."""
    line = " ".join(bytes(text[: limit * 2]).decode("utf-8", errors="replace").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _content_type(fmt: str) -> str:
    lowered = fmt.lower()
    if lowered in _CONTENT_TYPES:
        return _CONTENT_TYPES[lowered]
    if lowered.startswith("json"):
        return "application/json; charset=UTF-8"
    return "text/plain; charset=UTF-8"


def _readonly_level(user_level: int, requested: str | None, method: str) -> int:
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


def _int_param(params: Mapping[str, str], name: str) -> int:
    try:
        return int(params.get(name) or 0)
    except ValueError:
        raise StoreError(BAD_ARGUMENTS, f"Invalid {name} value {params.get(name)!r}") from None


def _engine_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError.from_engine(exc) from exc


def _summary(result: Any) -> dict[str, str]:
    def stat(name: str) -> int:
        with contextlib.suppress(Exception):
            return int(getattr(result, name)())
        return 0

    elapsed = 0.0
    with contextlib.suppress(Exception):
        elapsed = float(result.elapsed())
    return {
        "read_rows": str(stat("storage_rows_read")),
        "read_bytes": str(stat("storage_bytes_read")),
        "written_rows": str(stat("rows_written")),
        "written_bytes": str(stat("bytes_written")),
        "total_rows_to_read": str(stat("storage_rows_read")),
        "result_rows": str(stat("rows_read")),
        "result_bytes": str(stat("bytes_read")),
        "elapsed_ns": str(int(elapsed * 1e9)),
    }


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, store: StoreServer) -> None:
        self.store = store
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("unhandled error serving %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "citystream-store"
    # Headers and body go out in one write; without TCP_NODELAY a keep-alive client would
    # still wait for the delayed-ACK timer (~40 ms) on every response.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.store.config.idle_connection_timeout_s
        super().setup()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    # ----------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        store = self.server.store
        started = time.perf_counter()
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        body = _Body(self)
        if path in ("/ping", "/replicas_status") or (
            path == "/" and "query" not in params and self.command in ("GET", "HEAD")
        ):
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            log.debug("%s %s -> 200 Ok.", self.command, path)
            return
        if path != "/":
            self._send(404, f"There is no handle {path}\n\nUse / or /ping.\n".encode(), {})
            log.debug("%s %s -> 404", self.command, path)
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        base_headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": store.engine.display_name,
            "X-ClickHouse-Timezone": params.get("session_timezone") or store.engine.timezone,
        }
        user_name = "-"
        outcome: _Outcome | None = None
        try:
            store.begin()
            try:
                user = store.authenticate(self.headers, params)
                user_name = user.name
                chunks = self._request_chunks(body.raw(), params)
                outcome = store.execute(user, self.command, params, self.headers, body, chunks)
            finally:
                store.end()
            headers = dict(base_headers)
            headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary, separators=(",", ":"))
            payload = outcome.body
            if outcome.fmt:
                headers["X-ClickHouse-Format"] = outcome.fmt
                headers["Content-Type"] = _content_type(outcome.fmt)
            else:
                headers["Content-Type"] = "text/plain; charset=UTF-8"
            if _truthy(params.get("compress")) and payload:
                method = (params.get("network_compression_method") or "LZ4").upper()
                payload = b"".join(wire.compress_blocks(payload, method))
            if _truthy(params.get("enable_http_compression")) and payload:
                coding = _parse_accept_encoding(self.headers.get("Accept-Encoding", ""))
                if coding:
                    payload = wire.encode_content(payload, coding)
                    headers["Content-Encoding"] = coding
            self._send(200, payload, headers)
            log.debug(
                "%s %s %s fmt=%s rows=%d bytes=%d %.1fms query_id=%s: %s",
                user_name,
                self.command,
                outcome.kind or "-",
                outcome.fmt or "-",
                outcome.rows,
                len(payload),
                (time.perf_counter() - started) * 1000,
                query_id,
                outcome.query,
            )
        except StoreError as err:
            self._fail(err, base_headers, body, user_name, params)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the store: still answer like a server would
            log.warning("internal error", exc_info=True)
            self._fail(
                StoreError(UNKNOWN_EXCEPTION, f"{type(exc).__name__}: {exc}"),
                base_headers,
                body,
                user_name,
                params,
            )

    def _request_chunks(self, raw: Iterator[bytes], params: dict[str, str]) -> Iterator[bytes]:
        ctype = self.headers.get("Content-Type", "")
        encoding = self.headers.get("Content-Encoding", "")
        if ctype.lower().startswith("multipart/form-data"):
            data = b"".join(_decoded(raw, encoding, False))
            self._form_fields(ctype, data, params)
            return iter(())
        return _decoded(raw, encoding, _truthy(params.get("decompress")))

    @staticmethod
    def _form_fields(ctype: str, data: bytes, params: dict[str, str]) -> None:
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + data
        )
        for part in message.walk():
            if part.is_multipart():
                continue
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                raise StoreError(
                    NOT_IMPLEMENTED, "External data tables are not supported by the citystream store"
                )
            if isinstance(name, str):
                params[name] = payload.decode("utf-8", errors="replace")

    def _fail(
        self,
        err: StoreError,
        headers: dict[str, str],
        body: _Body,
        user_name: str,
        params: Mapping[str, str],
    ) -> None:
        status = http_status(err.code)
        out = dict(headers)
        out["X-ClickHouse-Exception-Code"] = str(err.code)
        out["Content-Type"] = "text/plain; charset=UTF-8"
        if not body.drained and not body.drain(MAX_DRAIN):
            # Discarding a huge unread body is wasteful: drop the connection instead.
            self.close_connection = True
        text = err.body(self.server.store.engine.version)
        log.warning(
            "%s HTTP %d code=%d %s query_id=%s: %s",
            user_name,
            status,
            err.code,
            (str(err).splitlines() or [""])[0][:300],
            headers.get("X-ClickHouse-Query-Id", ""),
            getattr(err, "query", "") or _snippet((params.get("query") or "").encode()),
        )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(status, text.encode(), out)

    def _send(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()


# --------------------------------------------------------------------------- foreground entry point


def serve(config: StoreConfig, ready: Any = None, loader: Any = None) -> int:
    """Run the store in the foreground until SIGTERM/SIGINT; the exit code for the CLI.

    ``loader``: None, or ``(settings, options)`` to run the Kafka loader
    (connectors/loader.py) in a thread writing through this server's own HTTP
    interface, so it is the same code a standalone ``citystream load`` runs
    against a ClickHouse server. On SIGTERM the loader stops first (a batch
    not yet acknowledged is abandoned uncommitted), then the server.
    """
    server = StoreServer(config)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    loader_thread: threading.Thread | None = None
    try:
        server.start()
        message = (
            f"citystream store: listening on {server.url} (data {server.engine.path}, "
            f"engine {server.engine.version}, pid {os.getpid()})"
        )
        print(message, file=ready or sys.stdout, flush=True)
        if loader is not None:
            loader_settings, options = loader
            loader_thread = threading.Thread(
                target=_run_loader,
                args=(loader_settings.replace(clickhouse_url=server.url), options, stop),
                name="store-loader",
                daemon=True,
            )
            loader_thread.start()
        while not stop.wait(1.0):
            server.sessions.sweep()
    finally:
        stop.set()
        if loader_thread is not None:
            loader_thread.join(config.shutdown_grace_s)
            if loader_thread.is_alive():
                log.warning("the loader did not stop within %.0fs", config.shutdown_grace_s)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _run_loader(settings: Any, options: Mapping[str, Any], stop: threading.Event) -> None:
    """The store's loader thread: consumes until ``stop``; a crash is logged and the loader restarted."""
    from citystream.connectors.loader import Loader

    log.info(
        "loader: %s -> %s (group %s)",
        settings.kafka_bootstrap,
        settings.clickhouse_database,
        options.get("group_id", "citystream-loader"),
    )
    while not stop.is_set():
        try:
            stats = Loader(settings, **options).run(until_end=False, stop=stop.is_set)
            log.info("loader stopped: %d rows in %d batches", stats.loaded, stats.batches)
        except Exception:
            log.exception("loader failed; restarting it in 5 s")
            stop.wait(5.0)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (bind 0, read it, release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
