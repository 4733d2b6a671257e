"""The one way citystream code opens a ClickHouse connection.

Contract: :func:`connect` returns a clickhouse-connect HTTP client for
``settings.clickhouse_url`` - the embedded store or a real ClickHouse server,
the code cannot tell and need not care - logged in as the read-write user, or
as the read-only dashboard user with ``readonly=True``. Its default database is
``settings.clickhouse_database`` when that database exists; before the first
``citystream store migrate`` it falls back to the server's default database so
that health checks still work. Client sessions are off: one client may be
shared by threads (a ClickHouse session serialises its requests and refuses
concurrent ones). Unreachable servers and rejected credentials become a
one-line :class:`~citystream.errors.UserError`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from citystream.errors import UserError
from citystream.settings import Settings

_DEFAULT = object()
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_UNKNOWN_DATABASE = 81
_AUTHENTICATION_FAILED = 516


def connect(
    settings: Settings,
    readonly: bool = False,
    *,
    database: Any = _DEFAULT,
    connect_timeout: float = 10,
    send_receive_timeout: float = 300,
    **client_kwargs: Any,
) -> Any:
    """A clickhouse-connect client for the configured store.

    ``database``: leave out for ``settings.clickhouse_database``; ``None`` for the
    server default (the migrator, which creates the database itself).
    ``client_kwargs`` go to ``clickhouse_connect.get_client`` (e.g. ``settings``).
    """
    url = urlsplit(settings.clickhouse_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(
            f"CITYSTREAM_CLICKHOUSE_URL={settings.clickhouse_url!r} is not an http(s)://host:port URL"
        )
    if url.username or url.password:
        raise UserError(
            "put ClickHouse credentials in CITYSTREAM_CLICKHOUSE_USER/_PASSWORD, "
            "not in CITYSTREAM_CLICKHOUSE_URL"
        )
    if readonly:
        username, password = settings.clickhouse_viewer_user, settings.clickhouse_viewer_password
    else:
        username, password = settings.clickhouse_user, settings.clickhouse_password
    wanted = settings.clickhouse_database if database is _DEFAULT else database
    options: dict[str, Any] = {
        "host": url.hostname,
        "port": url.port or (8443 if url.scheme == "https" else 8123),
        "interface": url.scheme,
        "username": username,
        "password": password,
        "connect_timeout": connect_timeout,
        "send_receive_timeout": send_receive_timeout,
        "autogenerate_session_id": False,
        # Compression only costs CPU on the loopback interface.
        "compress": url.hostname not in _LOOPBACK,
    }
    if url.path and url.path != "/":
        options["proxy_path"] = url.path
    options.update(client_kwargs)
    try:
        try:
            return clickhouse_connect.get_client(database=wanted or None, **options)
        except DatabaseError as exc:
            if not wanted or getattr(exc, "code", None) != _UNKNOWN_DATABASE:
                raise
            # Not migrated yet: connect anyway so that health checks and the migrator work.
            return clickhouse_connect.get_client(database=None, **options)
    except OperationalError as exc:
        raise UserError(
            f"cannot reach ClickHouse at {settings.clickhouse_url} ({_reason(exc)}): start the store "
            "(`citystream stack up`) or fix CITYSTREAM_CLICKHOUSE_URL"
        ) from None
    except DatabaseError as exc:
        if getattr(exc, "code", None) == _AUTHENTICATION_FAILED:
            variable = "CITYSTREAM_CLICKHOUSE_VIEWER_" if readonly else "CITYSTREAM_CLICKHOUSE_"
            raise UserError(
                f"ClickHouse at {settings.clickhouse_url} rejected user {username!r}: "
                f"check {variable}USER and {variable}PASSWORD"
            ) from None
        raise


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def error_message(exc: BaseException) -> str:
    """The ClickHouse part of a clickhouse-connect error, on one line (``Code: N. DB::Exception: ...``)."""
    text = str(exc)
    match = re.search(r"Code: \d+\. DB::Exception: .*", text, re.S)
    if match:
        text = match.group(0)
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    text = re.sub(r"\s*\(for url [^)]*\)", "", text)
    return " ".join(text.split()) or type(exc).__name__
