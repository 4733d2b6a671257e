"""What a server is told: users, limits and who may reach it, as plain frozen dataclasses.

An embedding application maps its own settings onto :class:`ServerConfig`
(citystream does it in ``citystream.store.serving``), so this package never
reads environment variables or configuration files itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

#: Engine settings a user's requests may lower but never raise (0 means "unlimited" to the
#: engine, so a request asking for 0 gets the cap).
LIMIT_SETTINGS = (
    "max_memory_usage",
    "max_execution_time",
    "max_result_rows",
    "max_result_bytes",
    "max_threads",
)


@dataclass(frozen=True)
class User:
    name: str
    password: str = field(repr=False)
    #: 0: read-write; 1: read-only (the statement policy's viewer rules, plus ClickHouse readonly=1).
    readonly: int = 0
    #: Databases a read-only user may read besides harmless ``system`` tables; ``None``: any.
    #: The first one is the user's default database.
    databases: tuple[str, ...] | None = None
    #: Caps on :data:`LIMIT_SETTINGS`, applied to every request of this user.
    limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server process needs to run."""

    data_dir: Path
    port: int
    users: tuple[User, ...]
    host: str = "127.0.0.1"
    #: Statements running at once; ``reserved_writer_slots`` of them only read-write users may take,
    #: so read-only users run at most two at once (more queue): on a small machine a burst of
    #: dashboard reads then cannot take every core from ingestion.
    max_concurrent_queries: int = 8
    reserved_writer_slots: int = 6
    #: Linux nice value of a read-only user's request thread and of the engine threads running its
    #: query (the engine's ``os_thread_priority``): a flood of dashboard reads yields the CPU to
    #: ingestion (19: measured 0.6 of the loader's quiet rate under every probe at once, 10: 0.5).
    reader_nice: int = 19
    #: Read-only users' request bodies decoded at once (see :class:`~citystream.chserver.slots.ReaderWork`).
    reader_decoders: int = 1
    queue_timeout_s: float = 60.0
    session_timeout_s: float = 60.0
    max_session_timeout_s: float = 3600.0
    shutdown_grace_s: float = 30.0
    #: How long an open connection may wait for its next request (ClickHouse's keep_alive_timeout).
    keep_alive_timeout_s: float = 10.0
    #: A request's line and headers must arrive within this, whatever the pace (slow-loris).
    header_timeout_s: float = 10.0
    #: A query's text (URL + body, before a query slot is taken) must arrive within this.
    request_timeout_s: float = 30.0
    #: Longest wait for the next bytes of a request body (ClickHouse's http_receive_timeout).
    receive_timeout_s: float = 30.0
    #: Open connections served at once (one thread each); more are answered 503 and closed.
    max_connections: int = 128
    #: The listen backlog: connections the kernel queues before they are accepted.
    listen_backlog: int = 128
    #: A result buffered whole (``wait_end_of_query=1``): larger ones fail with code 396.
    max_buffered_result_bytes: int = 256 << 20
    #: Query text (URL ``query`` + body of a non-INSERT, or a whole multipart form), decoded.
    max_query_bytes: int = 256 << 10
    #: An INSERT's data after every decoding (content coding, compressed blocks).
    max_insert_bytes: int = 256 << 20
    #: A refusal with one of :data:`~citystream.chserver.errors.HOSTILE_CODES` (too large, corrupt,
    #: bad credentials, forbidden) is answered only after this delay: a loop of hostile requests
    #: then costs the server a few requests a second, not hundreds (ingestion keeps its CPU).
    refusal_delay_s: float = 0.25
    #: Browser origins (``scheme://host:port``) whose requests are accepted; others get 403.
    allowed_origins: tuple[str, ...] = ()
    #: The HTTP ``Server`` header.
    server_name: str = "chserver"
    #: Prefix of the line :func:`~citystream.chserver.server.serve` prints once it listens.
    banner: str = "chserver"
