"""A request's ``database`` and URL settings: in force for its one query, never for a session's next.

Why: a ClickHouse server applies URL settings and ``database`` to one query;
only a session's own ``SET`` and ``USE`` statements persist. chdb keeps
settings per connection, so a session's connection gets the request's
settings with ``SET`` before the query and the session's own values back
after it. clickhouse-connect's sync client opens a session for every
client, so without this one ``settings=`` would apply to every later query.

Contract:

* :func:`prepare` returns a :class:`Scope` whose ``conn`` runs the request:
  a fresh connection without a session; the session's connection otherwise,
  except for requests that run read-only (a read-only user, ``GET``, the
  ``readonly`` parameter), which get a fresh connection carrying the
  session's own settings and database (``readonly`` cannot be undone on a
  connection).
* The settings a request applies are its allowed URL settings with the
  user's caps (:mod:`~citystream.chserver.limits`); a session's own lower
  values of capped settings are kept.
* :meth:`Scope.close` with the statement's top node kind puts the session's
  connection back as the session left it (after a ``Set``/``UseQuery``
  statement, that statement's values become the session's own) and closes a
  fresh connection. A session whose state cannot be restored is discarded.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from citystream.chserver.config import LIMIT_SETTINGS, User
from citystream.chserver.engine import Engine, Session, close_quietly
from citystream.chserver.errors import BAD_ARGUMENTS, StoreError
from citystream.chserver.limits import request_settings
from citystream.chserver.request import quote, readonly_level

log = logging.getLogger("citystream.chserver")

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
        "http_write_exception_in_output_format",
        "add_http_cors_header",
        "stacktrace",
        "readonly",  # applied last, see readonly_level
    }
)

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def run_sql(conn: Any, text: str) -> None:
    """A statement of the server's own (USE/SET); engine failures become ClickHouse errors."""
    try:
        conn.query(text, "TabSeparated")
    except Exception as exc:
        raise StoreError.from_engine(exc) from exc


def set_clause(settings: Mapping[str, str]) -> str:
    return "SET " + ", ".join(f"{k} = {quote(v)}" for k, v in settings.items())


def use_clause(database: str) -> str:
    return f"USE `{database.replace('`', '``')}`"


class Scope:
    """The connection one request runs on, and how to undo what the request changed on it."""

    def __init__(self, engine: Engine, conn: Any, session: Session | None, fresh: bool) -> None:
        self.engine = engine
        self.conn = conn
        self.session = session
        self.fresh = fresh
        #: Settings this request SET on a session's connection (to restore afterwards).
        self.applied: dict[str, str] = {}
        #: Whether this request switched a session's connection to another database.
        self.switched = False

    def close(self, kind: str, capped: frozenset[str] = frozenset()) -> None:
        if self.fresh or self.session is None:
            close_quietly(self.conn)
            return
        session = self.session
        try:
            if kind == "Set":
                self._adopt_settings(session)
            if kind == "UseQuery":
                session.database = _current_database(self.conn)
            elif self.switched:
                run_sql(self.conn, use_clause(session.database or "default"))
            defaults = self.engine.defaults
            restore = {
                name: session.baseline.get(name, defaults.get(name, ""))
                for name, value in self.applied.items()
                # Caps are applied again by every request; a SET statement's own values stay.
                if name not in capped and session.baseline.get(name) != value
            }
            if restore:
                run_sql(self.conn, set_clause(restore))
        except Exception:
            log.warning("session %s: could not restore its settings; closing it", session.key[1])
            session.broken = True

    def _adopt_settings(self, session: Session) -> None:
        """After a SET statement: the session's own settings are what its connection now has changed."""
        raw = self.conn.query("SELECT name, value FROM system.settings WHERE changed", "TabSeparatedRaw")
        own: dict[str, str] = {}
        for line in raw.bytes().decode("utf-8", errors="replace").splitlines():
            name, _, value = line.partition("\t")
            if self.engine.defaults.get(name) == value or self.applied.get(name) == value:
                continue  # a fresh connection's value, or this request's URL setting
            own[name] = value
        session.baseline = own
        self.applied = {k: v for k, v in self.applied.items() if k not in own}


def _current_database(conn: Any) -> str:
    return conn.query("SELECT currentDatabase()", "TabSeparatedRaw").bytes().decode().strip()


def url_settings(
    params: Mapping[str, str], known: frozenset[str], ignored: set[str]
) -> list[tuple[str, str]]:
    """The request's URL parameters that are engine settings (names checked, unknown ones reported once)."""
    requested = []
    for name, value in params.items():
        if name in TRANSPORT_PARAMS or name.startswith("param_"):
            continue
        if not _SETTING_NAME.match(name):
            raise StoreError(BAD_ARGUMENTS, "Invalid setting name in the URL")
        if name not in known and name not in ignored:
            # A setting only a ClickHouse server has (or a typo): a client written for a
            # server must keep working, so it is skipped, and reported once.
            ignored.add(name)
            log.warning("ignoring setting %r unknown to the embedded engine", name)
        requested.append((name, value))
    return requested


def prepare(
    engine: Engine,
    user: User,
    method: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    session: Session | None,
    ignored: set[str],
    setup: Callable[[Any], None] | None = None,
    forced: Mapping[str, str] | None = None,
) -> Scope:
    """The connection for this request, with its database and settings applied.

    ``forced``: settings the server applies for this user whatever the request says.
    """
    level = readonly_level(user.readonly, params.get("readonly"), method)
    fresh = session is None or level > 0
    scope = Scope(engine, engine.connect() if fresh else session.conn, session, fresh)  # type: ignore[union-attr]
    try:
        own = dict(session.baseline) if session is not None else {}
        database = params.get("database") or headers.get("X-ClickHouse-Database")
        if fresh and session is not None:
            # A read-only request of a session: its own settings and database, on a fresh connection.
            if own:
                run_sql(scope.conn, set_clause(own))
            database = database or session.database
        if database:
            run_sql(scope.conn, use_clause(database))
            scope.switched = not fresh
        elif fresh and user.databases:
            # A read-only user's unqualified names resolve in its own database (once it exists).
            with contextlib.suppress(StoreError):
                run_sql(scope.conn, use_clause(user.databases[0]))
        kept = [(k, v) for k, v in own.items() if k in LIMIT_SETTINGS]
        requested = url_settings(params, engine.settings, ignored)
        settings = request_settings(user, kept + requested, engine.settings)
        settings.update(forced or {})
        if settings:
            run_sql(scope.conn, set_clause(settings))
            if not fresh:
                scope.applied = settings
        if setup is not None:  # e.g. external data tables: created before readonly applies
            setup(scope.conn)
        if level:
            run_sql(scope.conn, f"SET readonly = {level}")
    except BaseException:
        scope.close("")
        raise
    return scope
