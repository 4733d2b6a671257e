"""The HTTP layer: routes ``/ping`` and ``/``, frames responses and errors as a ClickHouse server does."""

from __future__ import annotations

import contextlib
import email.parser
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from citystream.chserver import wire
from citystream.chserver.config import ServerConfig, User
from citystream.chserver.engine import Engine
from citystream.chserver.errors import NOT_IMPLEMENTED, UNKNOWN_EXCEPTION, StoreError, http_status
from citystream.chserver.request import (
    Body,
    Outcome,
    content_type,
    decoded,
    parse_accept_encoding,
    snippet,
    truthy,
)

log = logging.getLogger("citystream.chserver")

#: An unread request body up to this size is drained after an error so keep-alive survives.
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

    def setup(self) -> None:
        self.timeout = self.server.store.config.idle_connection_timeout_s
        super().setup()

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
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        params = dict(parse_qsl(split.query, keep_blank_values=True))
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
        try:
            store.begin()
            try:
                user = store.authenticate(self.headers, params)
                user_name = user.name
                chunks = self._request_chunks(body.raw(), params)
                outcome = store.execute(user, self.command, params, self.headers, body, chunks)
            finally:
                store.end()
            payload = self._respond(outcome, base_headers, params)
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
            log.warning("internal error (%s)", type(exc).__name__, exc_info=True)
            self._fail(
                StoreError(UNKNOWN_EXCEPTION, "Internal error in the server; see its log"),
                base_headers,
                body,
                user_name,
                params,
            )

    def _respond(self, outcome: Outcome, base_headers: Mapping[str, str], params: Mapping[str, str]) -> bytes:
        """Send a successful result (block-compressed and/or content-encoded on request); the payload."""
        headers = dict(base_headers)
        headers["X-ClickHouse-Summary"] = json.dumps(outcome.summary, separators=(",", ":"))
        payload = outcome.body
        if outcome.fmt:
            headers["X-ClickHouse-Format"] = outcome.fmt
            headers["Content-Type"] = content_type(outcome.fmt)
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        if truthy(params.get("compress")) and payload:
            method = (params.get("network_compression_method") or "LZ4").upper()
            payload = b"".join(wire.compress_blocks(payload, method))
        if truthy(params.get("enable_http_compression")) and payload:
            coding = parse_accept_encoding(self.headers.get("Accept-Encoding", ""))
            if coding:
                payload = wire.encode_content(payload, coding)
                headers["Content-Encoding"] = coding
        self._send(200, payload, headers)
        return payload

    def _request_chunks(self, raw: Iterator[bytes], params: dict[str, str]) -> Iterator[bytes]:
        config = self.server.store.config
        ctype = self.headers.get("Content-Type", "")
        encoding = self.headers.get("Content-Encoding", "")
        if ctype.lower().startswith("multipart/form-data"):
            # A form holds the query and parameters only: bounded like a query text.
            data = b"".join(decoded(raw, encoding, False, config.max_query_bytes))
            self._form_fields(ctype, data, params)
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
                raise StoreError(NOT_IMPLEMENTED, "External data tables are not supported by this server")
            if isinstance(name, str):
                params[name] = payload.decode("utf-8", errors="replace")

    def _fail(
        self,
        err: StoreError,
        headers: dict[str, str],
        body: Body,
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
            getattr(err, "query", "") or snippet((params.get("query") or "").encode()),
        )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._send(status, text.encode(), out)

    def _send(self, status: int, payload: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            # Defence in depth: no header value ever carries CR/LF or other control characters.
            self.send_header(key, "".join(c if " " <= c <= "~" else "?" for c in str(value)))
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        self.flush_headers()


def _echoable(value: str | None) -> str | None:
    """``value`` if it is short and made of safe characters, else None (never echo the rest)."""
    if value and len(value) <= 128 and all(c in _ECHO_SAFE for c in value):
        return value
    return None
