"""The store process: ClickHouse's HTTP interface in front of the embedded chdb engine.

Contract (what clients may rely on; all of it is what a ClickHouse server does):

* Listens on 127.0.0.1 only and answers only requests whose ``Host`` is a
  loopback name (127.0.0.1, localhost, [::1], optionally with the port) and
  that carry no browser ``Origin`` unless it is configured (DNS rebinding,
  cross-site POST). ``GET /ping`` (and ``GET /`` without a query) answer
  ``Ok.``; everything else goes to ``/``.
* The query comes from the ``query`` URL parameter and/or the POST body
  (``query + "\\n" + body``), or a ``multipart/form-data`` ``query`` field,
  at most ``max_query_bytes`` of text after decoding. ``INSERT ... FORMAT f`` /
  ``INSERT ... VALUES`` stream the rest of the body (at most
  ``max_insert_bytes`` decoded) into the table; Values data holds literals only.
* Every statement is judged by :mod:`~citystream.chserver.policy` on the
  engine's own parse, and the engine's canonical text of it is what runs:
  exactly one statement, no ``INTO OUTFILE``, no file/url functions, and for
  the read-only user only reads of its databases.
* URL parameters: ``database``, ``default_format`` (also ``X-ClickHouse-Format``
  header), ``query_id``, ``session_id``/``session_timeout``/``session_check``,
  ``param_<name>`` (``{name:Type}`` placeholders), ``compress``/``decompress``
  (ClickHouse block framing, LZ4/ZSTD via ``network_compression_method``),
  ``enable_http_compression`` (+ ``Accept-Encoding``: zstd, lz4, gzip, deflate),
  ``client_protocol_version`` (Native re-framed for that revision); the other
  transport-only parameters in :data:`~citystream.chserver.scope.TRANSPORT_PARAMS` are accepted and
  ignored; other settings pass :mod:`~citystream.chserver.limits` (per-user
  caps, a read-only user's allow-list); one the engine does not know is
  skipped with a warning in the log, so clients written for a server work.
* Request bodies may be sent with ``Content-Encoding`` gzip/deflate/zstd/lz4
  and chunked transfer encoding; every decoding is bounded before buffering.
* Users: those of :class:`~citystream.chserver.config.ServerConfig`;
  credentials by HTTP basic auth, ``X-ClickHouse-User`` / ``X-ClickHouse-Key``
  headers or ``user``/``password`` parameters. None at all gets 401
  (REQUIRED_PASSWORD); a wrong user or password 403 with
  AUTHENTICATION_FAILED (516). The read-only user also runs with
  ``readonly=1`` applied after its URL settings. GET requests run with
  ``readonly=2``, like a server.
* Responses carry ``X-ClickHouse-Query-Id``, ``-Summary``, ``-Timezone``,
  ``-Server-Display-Name`` and, for result-producing statements, ``-Format``.
  Errors: the server's HTTP status for the code, ``X-ClickHouse-Exception-Code``
  and a ``Code: N. DB::Exception: ... (version V)`` body.
* Results: see :mod:`~citystream.chserver.results`: a ``SELECT`` in a
  block-wise format (Native, TSV, CSV, RowBinary, JSONEachRow ...) is
  streamed with chunked transfer encoding; a failure after the first bytes
  ends the stream with ClickHouse's ``__exception__`` block (tag in
  ``X-ClickHouse-Exception-Tag``). ``wait_end_of_query=1`` buffers (bounded).
* Sessions: only a session's own ``SET``/``USE`` persist; a request's URL
  settings and ``database`` apply to its query only
  (:mod:`~citystream.chserver.scope`).
* Limits: at most ``max_connections`` connections (503 beyond), a listen
  backlog of ``listen_backlog``; a request's headers must arrive within
  ``header_timeout_s`` and its query text within ``request_timeout_s``
  (slow clients are dropped); a query slot (:mod:`~citystream.chserver.slots`)
  is taken only once the statement is read, and ``reserved_writer_slots`` of
  them are kept for read-write users (the loader). A read-only user's work
  yields to the loader: its thread and engine threads run at nice
  ``reader_nice``, its body is decoded by at most ``reader_decoders`` threads,
  and it waits briefly at checkpoints while a writer's request is served.
  ``decompress=1`` blocks are checked against the remaining body budget (and
  16 MiB) before they are inflated.
* SIGTERM/SIGINT: stop accepting, let running requests finish (up to a grace
  period), close sessions, close the engine (flushes data), exit 0.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from citystream.chserver import native
from citystream.chserver.config import ServerConfig, User
from citystream.chserver.engine import Engine, Session, Sessions, close_quietly, result_summary
from citystream.chserver.errors import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    QUERY_IS_TOO_LARGE,
    REQUIRED_PASSWORD,
    SYNTAX_ERROR,
    TOO_MANY_SIMULTANEOUS_QUERIES,
    StartError,
    StoreError,
)
from citystream.chserver.external import ExternalTable, external_tables, load_external, parameter_names
from citystream.chserver.handler import Handler, HTTPServer
from citystream.chserver.policy import Checked, Policy, Who, inspect
from citystream.chserver.request import (
    Body,
    Outcome,
    Request,
    int_param,
    quote,
    read_statement,
    truthy,
    utf8,
)
from citystream.chserver.results import STREAMED_FORMATS, Blocks, collect
from citystream.chserver.scope import prepare
from citystream.chserver.slots import ReaderWork, Slots
from citystream.chserver.sqltext import RESULT_KINDS, analyze

log = logging.getLogger("citystream.chserver")

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Server:
    """HTTP front-end + engine. ``start()`` serves in a thread; ``stop()`` shuts down cleanly."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._users = {u.name: u for u in config.users}
        self.slots = Slots(config.max_concurrent_queries, config.reserved_writer_slots)
        self.reader_work = ReaderWork(config.reader_decoders, self.slots)
        self._active = 0
        self._active_cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._ignored: set[str] = set()
        # Bind first: a taken port should fail fast, before the engine spends time starting.
        try:
            self.httpd = HTTPServer((config.host, config.port), Handler, self)
        except OSError as exc:
            raise StartError(
                f"port {config.port} on {config.host} is not available ({exc.strerror})", "port"
            ) from None
        try:
            self.engine = Engine(config.data_dir)
        except BaseException:
            self.httpd.server_close()
            raise
        self.sessions = Sessions(self.engine, config.session_timeout_s, config.max_session_timeout_s)
        self.policy = Policy(self.engine.table_functions, self.engine.connect)

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
        """The configured user the request names; no credentials at all is refused (401)."""
        name: str | None = headers.get("X-ClickHouse-User")
        password = headers.get("X-ClickHouse-Key", "")
        auth = headers.get("Authorization", "")
        if name is None and auth[:6].lower() == "basic ":
            try:
                name, _, password = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise StoreError(AUTHENTICATION_FAILED, "Malformed basic authorization header") from None
        if name is None and "user" in params:
            name, password = params["user"], params.get("password", "")
        if name is None:
            raise StoreError(REQUIRED_PASSWORD, "Authentication required: send a user name and password")
        user = self._users.get(name)
        if user is None or not hmac.compare_digest(user.password.encode(), password.encode()):
            shown = name if name.isprintable() and len(name) <= 64 else "(invalid name)"
            raise StoreError(
                AUTHENTICATION_FAILED,
                f"{shown}: Authentication failed: password is incorrect, or there is no user with such name.",
            )
        return user

    def execute(
        self,
        user: User,
        method: str,
        params: dict[str, str],
        headers: Mapping[str, str],
        body: Body,
        chunks: Iterator[bytes],
    ) -> Outcome:
        """Read the request's statement in full (bounded), then run it in a query slot.

        A streamed outcome holds its slot, session and connection until the
        handler calls its ``finish`` (after the last byte is sent).
        """
        request = read_statement(params, chunks, self.config.max_query_bytes)
        body.statement_read()
        reader = bool(user.readonly)
        self.slots.acquire(reader, self.config.queue_timeout_s)
        held = contextlib.ExitStack()
        held.callback(self.slots.release, reader)
        try:
            checked = self._check(user, params, headers, request)
            session: Session | None = None
            session_id = params.get("session_id")
            if session_id:
                session = self.sessions.acquire(
                    user.name, session_id, params.get("session_timeout"), truthy(params.get("session_check"))
                )
                held.callback(self.sessions.release, session)
            tables = external_tables(body.files, params) if body.files else []
            for name in parameter_names(tables):
                params.pop(name, None)  # they describe the tables: never settings
            # A read-only user's engine threads run niced: dashboard floods yield the CPU to ingestion.
            forced = {"os_thread_priority": str(self.config.reader_nice)} if reader else None
            scope = prepare(
                self.engine,
                user,
                method,
                params,
                headers,
                session,
                self._ignored,
                self._external(tables),
                forced,
            )
            held.callback(scope.close, checked.kind, frozenset(user.limits))
            if request.stmt.kind == "INSERT" and request.stmt.has_insert_data:
                return self._insert(scope.conn, user, params, request, chunks)
            outcome = self._run(scope.conn, method, params, headers, request, checked)
            if outcome.stream is not None:
                outcome.finish = held.pop_all().close
            return outcome
        except StoreError as err:
            err.query = request.query  # type: ignore[attr-defined]
            message = str(err)
            if user.name != "default" and message.startswith("default: "):
                # The engine knows a single user; name the one who asked.
                renamed = StoreError(err.code, f"{user.name}: {message[9:]}")
                renamed.query = err.query  # type: ignore[attr-defined]
                raise renamed from err
            raise
        finally:
            held.close()

    def _external(self, tables: list[ExternalTable]) -> Callable[[Any], None] | None:
        """What creates the request's external data tables in its connection (before readonly)."""
        if not tables:
            return None
        return lambda conn: _engine_call(load_external, conn, tables, self.engine.connect)

    def _check(
        self, user: User, params: Mapping[str, str], headers: Mapping[str, str], request: Request
    ) -> Checked:
        """The statement policy's verdict, on a fresh connection (session settings cannot sway the parse)."""
        database = params.get("database") or headers.get("X-ClickHouse-Database")
        if user.databases is not None:
            if database and database not in user.databases:
                raise StoreError(
                    ACCESS_DENIED, f"{user.name}: Not enough privileges to use database {database}"
                )
            database = database or (user.databases[0] if user.databases else None)
        who = Who(
            user.name,
            bool(user.readonly),
            frozenset(user.databases) if user.databases is not None else None,
            database or "default",
            user.limits,
        )
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        conn = self.engine.connect()
        try:
            canonical, tree = _engine_call(inspect, conn, request.checked_text, binds)
        finally:
            close_quietly(conn)
        checked = self.policy.check(who, canonical, tree)
        if request.stmt.has_insert_data and (
            tree.kind != "InsertQuery" or any(c.kind == "SelectWithUnionQuery" for c in tree.children)
        ):
            raise StoreError(SYNTAX_ERROR, "An INSERT with data must name only its table and columns")
        return checked

    def _run(
        self,
        conn: Any,
        method: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        request: Request,
        checked: Checked,
    ) -> Outcome:
        """Run the canonical statement the policy accepted (never the raw text)."""
        stmt = analyze(checked.text)
        default_fmt = params.get("default_format") or headers.get("X-ClickHouse-Format") or "TabSeparated"
        bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        out_fmt = stmt.format or default_fmt
        revision = int_param(params, "client_protocol_version")
        reframe = None
        if out_fmt.lower() == "native" and revision > 0:
            reframe = _reframer(conn, checked, bind, revision, self.engine.connect)
        streamable = checked.kind == "SelectWithUnionQuery" and out_fmt.lower() in STREAMED_FORMATS
        if streamable and method != "HEAD":
            blocks = Blocks(conn, checked.engine_text, default_fmt, bind, reframe)
            outcome = Outcome(fmt=out_fmt, summary=result_summary(None), kind=stmt.kind, query=request.query)
            # The first block is computed before answering (an error then is a proper HTTP
            # error); a result of one block, or wait_end_of_query=1, is answered whole.
            first = blocks.take()
            if first is not None:
                blocks.peek()
            if blocks.exhausted or truthy(params.get("wait_end_of_query")):
                rest = collect(blocks, self.config.max_buffered_result_bytes - len(first or b""))
                outcome.body = (first or b"") + rest
                outcome.rows = blocks.rows
                outcome.summary.update(result_rows=str(blocks.rows), result_bytes=str(blocks.size))
            else:
                outcome.stream = blocks.after(first or b"")
            return outcome
        result = _engine_call(conn.query, checked.engine_text, default_fmt, params=bind)
        body = result.bytes() or b""
        produces = stmt.kind in RESULT_KINDS or stmt.format is not None or bool(body)
        if produces and reframe is not None:
            body = reframe(body)
        summary = result_summary(result)
        return Outcome(
            body=body,
            fmt=out_fmt if produces else None,
            summary=summary,
            rows=int(summary.get("result_rows", "0") or 0),
            kind=stmt.kind,
            query=request.query,
        )

    def _insert(
        self, conn: Any, user: User, params: Mapping[str, str], request: Request, chunks: Iterator[bytes]
    ) -> Outcome:
        stmt = request.stmt
        assert stmt.data_start is not None and stmt.format
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        if binds:
            clause = ", ".join(f"param_{k} = {quote(v)}" for k, v in binds.items() if _SETTING_NAME.match(k))
            _engine_call(conn.query, f"SET {clause}", "TabSeparated")
        first = bytes(request.head[stmt.data_start :])
        if stmt.format.lower() == "values":
            first, chunks = self._vet_values(conn, user, first, chunks)
        started = time.perf_counter()
        inserter = _engine_call(conn.send_insert, request.insert_head, stmt.format)
        limit = self.config.max_insert_bytes
        try:
            seen = len(first)
            if first:
                _engine_call(inserter.append, first)
            for chunk in chunks:
                seen += len(chunk)
                if seen > limit:
                    raise StoreError(QUERY_IS_TOO_LARGE, f"INSERT data is larger than {limit} bytes")
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
        return Outcome(summary=summary, rows=written, kind="INSERT", query=request.query)

    def _vet_values(
        self, conn: Any, user: User, first: bytes, chunks: Iterator[bytes]
    ) -> tuple[bytes, Iterator[bytes]]:
        """Values rows are SQL expressions: small data is judged as ``SELECT <rows>``, large is literals only.

        Why: the engine evaluates expressions in Values rows (the rollups send
        ``toDateTime64(0, 6, 'UTC')``), so ``file(...)`` there would run. Data up
        to ``max_query_bytes`` passes the statement policy like any SELECT; larger
        data (bulk loads) is parsed with expression interpretation switched off.
        """
        data = bytearray(first)
        while len(data) <= self.config.max_query_bytes:
            more = next(chunks, None)
            if more is None:
                who = Who(user.name, bool(user.readonly), None, "default")
                check = self.engine.connect()
                try:
                    canonical, tree = _engine_call(inspect, check, "SELECT " + utf8(bytes(data)), {})
                finally:
                    close_quietly(check)
                self.policy.check(who, canonical, tree)
                return bytes(data), iter(())
            data += more
        _engine_call(conn.query, _LITERAL_VALUES, "TabSeparated")
        return bytes(data), chunks


_LITERAL_VALUES = (
    "SET input_format_values_interpret_expressions = 0, "
    "input_format_values_deduce_templates_of_expressions = 0"
)


def _reframer(
    conn: Any, checked: Checked, binds: dict[str, str], revision: int, connect: Callable[[], Any]
) -> Callable[[bytes], bytes]:
    """Native re-framing for the client's protocol revision, with the result's real column types.

    The types are asked for (on a scratch connection, in this request's
    database) only when a block has a top-level DateTime column.
    """
    if revision < native.REVISION_WITH_DATETIME_TIME_ZONE:
        return lambda data: native.upgrade_native(data, revision)
    database = _engine_call(native.current_database, conn)
    return native.Reframer(revision, connect, database, checked.text, checked.tree, binds)


def _engine_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError.from_engine(exc) from exc


# --------------------------------------------------------------------------- foreground entry point

#: Work that runs beside the server in the same process: called with the server's URL and the
#: stop event once the server listens; returns a function that waits (up to the given seconds)
#: for that work to end, which :func:`serve` calls after setting the event and before the
#: server stops, so the work never loses its server while it still runs.
Companion = Callable[[str, threading.Event], Callable[[float], None]]


def serve(config: ServerConfig, ready: TextIO | None = None, companion: Companion | None = None) -> int:
    """Run the server in the foreground until SIGTERM/SIGINT; the exit code for a command line.

    ``companion``: see :data:`Companion`. On SIGTERM it is stopped first,
    then the server (running requests finish, the engine flushes its data).
    """
    # Request threads share one interpreter lock; at the default 5 ms switch interval every
    # hand-over of the loader's request may wait 5 ms behind a reader's Python work.
    sys.setswitchinterval(0.0005)
    server = Server(config)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    join: Callable[[float], None] | None = None
    try:
        server.start()
        message = (
            f"{config.banner}: listening on {server.url} (data {server.engine.path}, "
            f"engine {server.engine.version}, pid {os.getpid()})"
        )
        print(message, file=ready or sys.stdout, flush=True)
        if companion is not None:
            join = companion(server.url, stop)
        while not stop.wait(1.0):
            server.sessions.sweep()
    finally:
        stop.set()
        if join is not None:
            join(config.shutdown_grace_s)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
