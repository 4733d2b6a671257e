"""The embedded chdb engine and its per-request / per-session connections.

Contract:

* :class:`Engine` owns one chdb data directory for the life of the process.
  It takes an exclusive ``flock`` on ``DATA_DIR/.store.lock`` first, so a second
  store on the same directory fails with a message naming the holder instead
  of chdb's opaque "Error initializing EmbeddedServer".
* Every HTTP request gets its own chdb connection (cheap: ~0.1 ms). chdb runs
  queries of different connections in parallel and keeps ``USE``/``SET``
  state per connection, which is exactly the isolation HTTP requests need;
  an "anchor" connection held by the engine keeps the engine alive between
  requests, and closing it last shuts the engine down and flushes data.
* :class:`Sessions` maps ``(user, session_id)`` to a long-lived connection, as
  ClickHouse sessions do (``SET``, ``USE`` and temporary tables persist; a
  request's URL settings and ``database`` do not, see
  :mod:`~citystream.chserver.scope`); a session is used by one request at a
  time (SESSION_IS_LOCKED otherwise) and expires after its timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chdb

from citystream.chserver.errors import (
    INVALID_SESSION_TIMEOUT,
    SESSION_IS_LOCKED,
    SESSION_NOT_FOUND,
    StartError,
    StoreError,
)

log = logging.getLogger(__name__)

LOCK_NAME = ".store.lock"
_INFO_QUERY = "SELECT version(), timezone(), displayName(), revision()"


def _lock_directory(path: Path) -> int:
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartError(
            f"data directory {path} is in use by another store process (pid {holder})", "data_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Engine:
    """One chdb engine bound to ``data_dir``; hands out connections to it."""

    def __init__(self, data_dir: Path) -> None:
        data_dir = Path(data_dir).expanduser()
        data_dir.mkdir(parents=True, exist_ok=True)
        # chdb compares engine paths literally: always hand it the same spelling.
        self.path = os.path.realpath(data_dir)
        self._lock_fd: int | None = _lock_directory(Path(self.path))
        try:
            self._anchor: Any = chdb.connect(self.path)
            row = self._anchor.query(_INFO_QUERY, "TabSeparated").bytes().decode()
            version, tz, display, revision = row.rstrip("\n").split("\t")
            names = self._anchor.query("SELECT name, value FROM system.settings", "TabSeparatedRaw").bytes()
            functions = self._anchor.query("SELECT name FROM system.table_functions", "TabSeparated").bytes()
        except BaseException:
            self._release_lock()
            raise
        self.version = version
        self.timezone = tz
        self.display_name = display
        self.revision = int(revision)
        #: Each query-level setting's value on a fresh connection (what a session returns to).
        self.defaults: dict[str, str] = dict(
            line.split("\t", 1) for line in names.decode().splitlines() if "\t" in line
        )
        #: Query-level settings the engine accepts (aliases included).
        self.settings: frozenset[str] = frozenset(self.defaults)
        #: Table-function names (lowercase): every one of them may reach files, URLs or processes.
        self.table_functions: frozenset[str] = frozenset(functions.decode().lower().split())

    def connect(self) -> Any:
        """A fresh connection: its own database and settings, shared data."""
        if self._anchor is None:
            raise StoreError(SESSION_NOT_FOUND, "The store is shutting down")
        try:
            return chdb.connect(self.path)
        except Exception as exc:
            raise StoreError.from_engine(exc) from exc

    def close(self) -> None:
        """Close the anchor connection last: that shuts the engine down and flushes its data."""
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            with contextlib.suppress(Exception):
                anchor.close()
        self._release_lock()

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


def close_quietly(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()


@dataclass
class Session:
    """A ClickHouse-style HTTP session: one connection reused by consecutive requests."""

    key: tuple[str, str]
    conn: Any
    timeout: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    expires: float = 0.0
    #: Settings the session's own ``SET`` statements changed, with their values.
    baseline: dict[str, str] = field(default_factory=dict)
    #: The database the session's own ``USE`` chose (None: the connection's first one).
    database: str | None = None
    #: Set when a request could not put the connection back as the session left it.
    broken: bool = False


class Sessions:
    def __init__(self, engine: Engine, default_timeout: float = 60.0, max_timeout: float = 3600.0) -> None:
        self._engine = engine
        self._default = default_timeout
        self._max = max_timeout
        self._by_key: dict[tuple[str, str], Session] = {}
        self._guard = threading.Lock()

    def acquire(self, user: str, session_id: str, timeout: str | None, check: bool) -> Session:
        """The locked session for this request (created unless ``check``); release it afterwards."""
        seconds = self._default
        if timeout:
            try:
                seconds = float(timeout)
            except ValueError:
                raise StoreError(INVALID_SESSION_TIMEOUT, f"Invalid session timeout: '{timeout}'") from None
            if seconds <= 0 or seconds > self._max:
                raise StoreError(
                    INVALID_SESSION_TIMEOUT,
                    f"Session timeout '{timeout}' is larger than max_session_timeout: {self._max:g}",
                )
        self.sweep()
        key = (user, session_id)
        with self._guard:
            session = self._by_key.get(key)
            if session is None:
                if check:
                    raise StoreError(SESSION_NOT_FOUND, f"Session {session_id} not found")
                session = self._by_key[key] = Session(key, self._engine.connect(), seconds)
            if not session.lock.acquire(blocking=False):
                raise StoreError(SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client")
            session.timeout = seconds
        return session

    def release(self, session: Session) -> None:
        if session.broken:
            with self._guard:
                if self._by_key.get(session.key) is session:
                    del self._by_key[session.key]
            close_quietly(session.conn)
        session.expires = time.monotonic() + session.timeout
        session.lock.release()

    def sweep(self) -> None:
        now = time.monotonic()
        expired: list[Session] = []
        with self._guard:
            for key, session in list(self._by_key.items()):
                if session.expires and session.expires < now and session.lock.acquire(blocking=False):
                    del self._by_key[key]
                    expired.append(session)
        for session in expired:
            close_quietly(session.conn)
            session.lock.release()

    def close_all(self) -> None:
        with self._guard:
            sessions = list(self._by_key.values())
            self._by_key.clear()
        for session in sessions:
            close_quietly(session.conn)

    def __len__(self) -> int:
        return len(self._by_key)


def result_summary(result: Any) -> dict[str, str]:
    """The X-ClickHouse-Summary fields of a chdb result (0 for what chdb does not report)."""

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
