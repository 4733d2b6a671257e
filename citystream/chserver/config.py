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
    max_concurrent_queries: int = 8
    queue_timeout_s: float = 60.0
    session_timeout_s: float = 60.0
    max_session_timeout_s: float = 3600.0
    shutdown_grace_s: float = 30.0
    idle_connection_timeout_s: float = 300.0
    #: Open connections served at once (one thread each); more are answered 503 and closed.
    max_connections: int = 64
    #: The listen backlog: connections the kernel queues before they are accepted.
    listen_backlog: int = 128
    #: Query text (URL ``query`` + body of a non-INSERT, or a whole multipart form), decoded.
    max_query_bytes: int = 256 << 10
    #: An INSERT's data after every decoding (content coding, compressed blocks).
    max_insert_bytes: int = 256 << 20
    #: Browser origins (``scheme://host:port``) whose requests are accepted; others get 403.
    allowed_origins: tuple[str, ...] = ()
    #: The HTTP ``Server`` header.
    server_name: str = "chserver"
    #: Prefix of the line :func:`~citystream.chserver.server.serve` prints once it listens.
    banner: str = "chserver"
