"""citystream's settings mapped onto the chserver server, and its start failures onto UserError.

Why here and not in chserver: the server is a self-contained package that
knows nothing of citystream (its settings, environment variables or
commands); this module is where citystream's names for things (the
read-write and viewer users, ``CITYSTREAM_STORE_PORT``, ``stack down``)
meet it.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from citystream.chserver.config import ServerConfig, User
from citystream.chserver.errors import StartError
from citystream.chserver.server import Companion
from citystream.chserver.server import serve as serve_foreground
from citystream.errors import UserError
from citystream.settings import Settings

#: What to do about a start failure, by :attr:`StartError.cause`, in citystream's terms.
_HINTS = {
    "port": "stop whatever uses it or set CITYSTREAM_STORE_PORT",
    "data_dir": "stop it (`citystream stack down`) or use another --data directory",
}


#: Caps on the dashboards' (viewer's) queries: a panel must not take the machine down.
VIEWER_LIMITS = MappingProxyType(
    {
        "max_memory_usage": 1 << 30,
        "max_execution_time": 60,
        "max_result_rows": 1_000_000,
        "max_result_bytes": 256 << 20,
        "max_threads": 4,
    }
)
#: Caps on the loader's and migrations' (read-write user's) requests: roomier, still bounded.
WRITER_LIMITS = MappingProxyType({"max_memory_usage": 4 << 30, "max_execution_time": 3600, "max_threads": 8})


def default_data_dir(settings: Settings) -> Path:
    """Where the stack keeps the store's data (citystream.stack.Store), so a hand-run serve finds it."""
    return Path(settings.run_dir) / "store" / "data"


def server_config(settings: Settings, data_dir: Path | None = None, port: int | None = None) -> ServerConfig:
    """The store server's configuration: citystream's two users, its port and data directory."""
    users = (
        User(settings.clickhouse_user, settings.clickhouse_password, 0, limits=WRITER_LIMITS),
        User(
            settings.clickhouse_viewer_user,
            settings.clickhouse_viewer_password,
            1,
            # The viewer reads the project's database (and harmless system tables) only.
            databases=(settings.clickhouse_database,),
            limits=VIEWER_LIMITS,
        ),
    )
    if users[0].name == users[1].name:
        raise UserError(
            f"the read-only user and the read-write user are both called {users[0].name!r}: "
            "set CITYSTREAM_CLICKHOUSE_VIEWER_USER to another name"
        )
    return ServerConfig(
        data_dir=Path(data_dir) if data_dir is not None else default_data_dir(settings),
        port=settings.store_port if port is None else port,
        users=users,
        allowed_origins=tuple(o.strip() for o in settings.store_allowed_origins.split(",") if o.strip()),
        server_name="citystream-store",
        banner="citystream store",
    )


def serve(config: ServerConfig, companion: Companion | None = None) -> int:
    """Run the store in the foreground until SIGTERM/SIGINT; a failure to start is a UserError."""
    try:
        return serve_foreground(config, companion=companion)
    except StartError as exc:
        raise UserError(f"store {exc}: {_HINTS.get(exc.cause, 'see the message')}") from None
