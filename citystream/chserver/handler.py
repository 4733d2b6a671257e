"""The HTTP layer: routes ``/ping`` and ``/``, frames responses and errors as a ClickHouse server does."""

from __future__ import annotations

import contextlib
import email.parser
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from citystream.chserver import wire
from citystream.chserver.config import ServerConfig, User
from citystream.chserver.engine import Engine
from citystream.chserver.errors import HOSTILE_CODES, UNKNOWN_EXCEPTION, StoreError, http_status
from citystream.chserver.params import query_params
from citystream.chserver.request import (
    Body,
    Outcome,
    content_type,
    decoded,
    parse_accept_encoding,
    snippet,
    truthy,
)
from citystream.chserver.results import Encoder, exception_block, exception_tag
from citystream.chserver.slots import GatedChunks, ReaderWork, Slots

log = logging.getLogger("citystream.chserver")

#: An unread request body up to this size is drained after an error so keep-alive survives
#: (and a client still sending reads the error instead of a reset).
MAX_DRAIN = 16 << 20
_BUSY_TEXT = b"Code: 202. DB::Exception: Too many open connections. (TOO_MANY_SIMULTANEOUS_QUERIES)\n"
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=UTF-8\r\n"
    b"X-ClickHouse-Exception-Code: 202\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_TEXT)).encode() + b"\r\n\r\n" + _BUSY_TEXT
)
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
#: Characters allowed in a query_id or time zone name that is echoed in a response header.
_ECHO_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/+")


class Backend(Protocol):
    """What the HTTP layer needs of the server (:class:`~citystream.chserver.server.Server`).

    A protocol, not an import: the server module builds its listener from this one.
    """

    config: ServerConfig
    engine: Engine
    reader_work: ReaderWork
    slots: Slots

    def begin(self) -> None: ...

    def end(self) -> None: ...

    def authenticate(self, headers: Mapping[str, str], params: Mapping[str, str]) -> User: ...

    def execute(
        self,
        user: User,
        method: str,
        params: dict[str, str],
        headers: Mapping[str, str],
        body: Body,
        chunks: Iterator[bytes],
    ) -> Outcome: ...


class HTTPServer(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them; a deep listen backlog."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type, store: Backend) -> None:
        self.store = store
        # Python's default backlog of 5 makes a burst of connections wait for SYN retries (~1 s).
        self.request_queue_size = store.config.listen_backlog
        self._connections = threading.BoundedSemaphore(store.config.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._connections.acquire(blocking=False):
            # Over the cap: answer at once rather than queue a thread per connection.
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._connections.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("unhandled error serving %s", client_address, exc_info=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chserver"
    # Headers and body go out in one write; without TCP_NODELAY a keep-alive client would
    # still wait for the delayed-ACK timer (~40 ms) on every response.
    disable_nagle_algorithm = True
    server: HTTPServer
    _gate: GatedChunks | None = None
    _writing = False
    _niced = 0

    def setup(self) -> None:
        config = self.server.store.config
        self.timeout = config.receive_timeout_s
        super().setup()
        # Reads go through a deadline: a client must send its headers (and its query text)
        # in bounded time however slowly it dribbles them, or its connection is closed.
        self._deadline = DeadlineReader(self.connection, config.receive_timeout_s)
        self.rfile = io.BufferedReader(self._deadline, 1 << 16)

    def handle_one_request(self) -> None:
        config = self.server.store.config
        self._deadline.arm(config.keep_alive_timeout_s)
        try:
            waiting = self.rfile.peek(1)
        except OSError:  # the keep-alive wait timed out, or the client went away
            waiting = b""
        if not waiting:
            self.close_connection = True
            return
        self._deadline.arm(config.header_timeout_s)
        super().handle_one_request()

    def _nice(self, level: int) -> None:
        """Run this connection's thread at nice ``level``: a reader's work yields the CPU to the loader.

        The engine runs much of a statement in the calling thread, so a read-only
        user's requests are served by a niced thread. Raising the value is always
        allowed; lowering it back may not be (without CAP_SYS_NICE), and then the
        thread just stays nicer.
        """
        if level != self._niced:
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), level)
                self._niced = level

    def _release_gate(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.release()

    def relax_deadline(self) -> None:
        """The statement is read: the body's data may take long, if each read makes progress."""
        self._deadline.arm(None)
        self._release_gate()

    def version_string(self) -> str:
        return self.server.store.config.server_name

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
        # From the headers on, the query text has request_timeout_s to arrive (then, see relax_deadline).
        self._deadline.arm(store.config.request_timeout_s)
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        params = query_params(split.query)  # param_ values keep bytes that are not UTF-8
        body = Body(self)
        refusal = self._foreign(store.config)
        if refusal:
            self.close_connection = True
            self._send(403, f"{refusal}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
            log.warning("%s %s -> 403: %s", self.command, path, refusal)
            return
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
        # Only values that pass a strict character check are echoed in headers.
        query_id = _echoable(params.get("query_id")) or str(uuid.uuid4())
        base_headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": store.engine.display_name,
            "X-ClickHouse-Timezone": _echoable(params.get("session_timezone")) or store.engine.timezone,
        }
        user_name = "-"
        outcome: Outcome | None = None
        tag = exception_tag()
        base_headers["X-ClickHouse-Exception-Tag"] = tag
        try:
            store.begin()
            try:
                user = store.authenticate(self.headers, params)
                user_name = user.name
                raw: Iterator[bytes] = body.raw()
                self._nice(store.config.reader_nice if user.readonly else 0)
                if user.readonly:
                    store.slots.yield_to_writers()
                    raw = self._gate = store.reader_work.gated(raw)
                else:
                    store.slots.writing(+1)
                    self._writing = True
                chunks = self._request_chunks(body, raw, params)
                outcome = store.execute(user, self.command, params, self.headers, body, chunks)
                self.connection.settimeout(store.config.receive_timeout_s)  # a reader must keep up
                try:
                    sent = self._respond(outcome, base_headers, params, tag)
                finally:
                    outcome.finish()
            finally:
                self._release_gate()
                if self._writing:
                    self._writing = False
                    store.slots.writing(-1)
                store.end()
            log.debug(
                "%s %s %s fmt=%s rows=%d bytes=%d %.1fms query_id=%s: %s",
                user_name,
                self.command,
                outcome.kind or "-",
                outcome.fmt or "-",
                outcome.rows,
                sent,
                (time.perf_counter() - started) * 1000,
                query_id,
                outcome.query,
            )
        except StoreError as err:
            self._fail(err, base_headers, body, user_name, params)
        except TimeoutError:
            # A client too slow to send its request: drop it without an answer it would not read.
            self.close_connection = True
            log.warning("%s %s: client too slow to send its request; connection closed", user_name, path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the store: still answer like a server would
            log.warning("internal error (%s)", type(exc).__name__, exc_info=True)
            self._fail(
                StoreError(UNKNOWN_EXCEPTION, "Internal error in the server; see its log"),
                base_headers,
                body,
                user_name,
                params,
            )

    def _respond(
        self, outcome: Outcome, base_headers: Mapping[str, str], params: Mapping[str, str], tag: str
    ) -> int:
        """Send a successful result (block-compressed and/or content-encoded on request); bytes sent."""
        headers = dict(base_headers)
        headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary, separators=(",", ":"))
        if outcome.fmt:
            headers["X-ClickHouse-Format"] = outcome.fmt
            headers["Content-Type"] = content_type(outcome.fmt)
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        block_method = None
        if truthy(params.get("compress")):
            block_method = (params.get("network_compression_method") or "LZ4").upper()
        coding = None
        if truthy(params.get("enable_http_compression")):
            coding = parse_accept_encoding(self.headers.get("Accept-Encoding", ""))
        if outcome.stream is not None:
            return self._stream(outcome, headers, Encoder(block_method, coding), tag)
        payload = outcome.body
        if block_method and payload:
            payload = b"".join(wire.compress_blocks(payload, block_method))
        if coding and payload:
            payload = wire.encode_content(payload, coding)
            headers["Content-Encoding"] = coding
        self._send(200, payload, headers)
        return len(payload)

    def _stream(self, outcome: Outcome, headers: dict[str, str], encoder: Encoder, tag: str) -> int:
        """Send a result chunk by chunk; a failure mid-way ends it with the exception block."""
        assert outcome.stream is not None
        if encoder.coding:
            headers["Content-Encoding"] = encoder.coding
        chunked = self.request_version == "HTTP/1.1"
        if not chunked:
            self.close_connection = True  # HTTP/1.0: the end of the body is the end of the connection
        headers["Transfer-Encoding" if chunked else "Connection"] = "chunked" if chunked else "close"
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, _header_safe(value))
        self.end_headers()
        sent = 0
        try:
            for chunk in outcome.stream:
                if self._gate is not None:  # a reader: each block gives way to the loader first
                    self.server.store.slots.yield_to_writers()
                sent += self._write_chunk(encoder.encode(chunk), chunked)
        except StoreError as err:
            # Headers and data are out: the error goes at the end of the stream, as a server does.
            self.close_connection = True
            log.warning("mid-stream error code=%d %s: %s", err.code, str(err)[:300], outcome.query)
            text = err.body(self.server.store.engine.version)
            sent += self._write_chunk(encoder.encode(exception_block(tag, text)), chunked)
        finally:
            outcome.stream.close()  # type: ignore[attr-defined]
        sent += self._write_chunk(encoder.finish(), chunked)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return sent

    def _write_chunk(self, data: bytes, chunked: bool) -> int:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        return len(data)

    def _request_chunks(self, body: Body, raw: Iterator[bytes], params: dict[str, str]) -> Iterator[bytes]:
        config = self.server.store.config
        ctype = self.headers.get("Content-Type", "")
        encoding = self.headers.get("Content-Encoding", "")
        if ctype.lower().startswith("multipart/form-data"):
            # A form holds the query and parameters only: bounded like a query text.
            data = b"".join(decoded(raw, encoding, False, config.max_query_bytes))
            body.files = self._form_fields(ctype, data, params)
            return iter(())
        limit = max(config.max_query_bytes, config.max_insert_bytes)
        return decoded(raw, encoding, truthy(params.get("decompress")), limit)

    def _foreign(self, config: ServerConfig) -> str:
        """Why a request from outside this machine's own clients is refused ("" when it is not)."""
        host = (self.headers.get("Host") or "").strip().lower()
        port = str(self.server.server_address[1])
        if not any(host in (name, f"{name}:{port}") for name in _LOOPBACK):
            return "Host header must name this machine's loopback address"
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip() not in config.allowed_origins:
            return "Requests from browser origins are not accepted"
        return ""

    @staticmethod
    def _form_fields(ctype: str, data: bytes, params: dict[str, str]) -> dict[str, bytes]:
        """Fields into ``params``; file parts (external data tables) returned by field name."""
        message = email.parser.BytesParser().parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + data
        )
        files: dict[str, bytes] = {}
        for part in message.walk():
            if part.is_multipart():
                continue
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                files[name if isinstance(name, str) else ""] = payload
            elif isinstance(name, str):
                params[name] = payload.decode("utf-8", errors="replace")
        return files

    def _fail(
        self,
        err: StoreError,
        headers: dict[str, str],
        body: Body,
        user_name: str,
        params: Mapping[str, str],
    ) -> None:
        status = http_status(err.code)
        self.connection.settimeout(self.server.store.config.receive_timeout_s)
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
            getattr(err, "query", "") or snippet((params.get("query") or "").encode()),
        )
        if err.code in HOSTILE_CODES:
            time.sleep(self.server.store.config.refusal_delay_s)  # a tarpit: see ServerConfig
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(status, text.encode(), out)

    def _send(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, _header_safe(value))
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()


def _header_safe(value: object) -> str:
    """Defence in depth: no header value ever carries CR/LF or other control characters."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(value))


class DeadlineReader(io.RawIOBase):
    """The connection's reads, each waiting at most ``per_read`` seconds, all ending by a deadline.

    Why: a socket timeout alone bounds one wait, so a client sending a byte
    every few seconds could hold its connection (and thread) for ever.
    """

    def __init__(self, sock: socket.socket, per_read: float) -> None:
        self._sock = sock
        self._per_read = per_read
        self._deadline: float | None = None

    def arm(self, seconds: float | None) -> None:
        self._deadline = None if seconds is None else time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        wait = self._per_read
        if self._deadline is not None:
            wait = min(wait, self._deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("the client is too slow to send its request")
        self._sock.settimeout(wait)
        return self._sock.recv_into(buffer)


def _echoable(value: str | None) -> str | None:
    """``value`` if it is short and made of safe characters, else None (never echo the rest)."""
    if value and len(value) <= 128 and all(c in _ECHO_SAFE for c in value):
        return value
    return None
