"""Push the ClickHouse datasource and every dashboard to a Grafana given by URL.

Why an upsert with fixed uids: a push must be repeatable (CI, a new laptop, a
restored Grafana) and must never leave two copies of a dashboard or a second
datasource that panels do not point at. The datasource is created or updated
under :data:`~dashboards.factories.DATASOURCE_UID`, the folder under
:data:`FOLDER_UID`, and dashboards are saved with ``overwrite=true`` by uid.

Every failure becomes one :class:`~citystream.errors.UserError` line naming
the Grafana, the step and what to do, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import niquests
from grafana_client import GrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaTimeoutError,
    GrafanaUnauthorizedError,
)

from citystream.dashboards.factories import DATASOURCE_NAME, DATASOURCE_TYPE, DATASOURCE_UID
from citystream.errors import UserError
from citystream.settings import Settings

FOLDER_UID = "citystream"
FOLDER_TITLE = "citystream"
#: Seconds to wait for Grafana per request; a push is a handful of small requests.
TIMEOUT_S = 10.0

T = TypeVar("T")


@dataclass(frozen=True)
class Credentials:
    """How to authenticate: a service-account token wins over user/password; neither means anonymous."""

    token: str = ""
    user: str = ""
    password: str = ""

    def for_client(self) -> str | tuple[str, str] | None:
        if self.token:
            return self.token
        if self.user:
            return (self.user, self.password)
        return None


def datasource_payload(settings: Settings) -> dict[str, Any]:
    """The datasource as Grafana's HTTP API takes it, pointing at the store the settings name.

    Grafana connects as the store's read-only *viewer* user: a dashboard (or
    anyone with Explore access) must not be able to change data. Uses the same
    ``jsonData`` keys as the provisioning file
    (infra/grafana/provisioning/datasources/clickhouse.yaml): the plugin ignores
    keys it does not know (``database`` for instance), silently.
    """
    url = urlsplit(settings.clickhouse_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise UserError(
            f"CITYSTREAM_CLICKHOUSE_URL={settings.clickhouse_url!r} is not an http(s) URL with a host; "
            "Grafana's ClickHouse plugin needs one"
        )
    secure = url.scheme == "https"
    json_data: dict[str, Any] = {
        "host": url.hostname,
        "port": url.port or (8443 if secure else 8123),
        "protocol": "http",
        "secure": secure,
        "username": settings.clickhouse_viewer_user,
        "defaultDatabase": settings.clickhouse_database,
    }
    if url.path.strip("/"):
        json_data["path"] = url.path
    payload: dict[str, Any] = {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "isDefault": False,
        "jsonData": json_data,
    }
    if settings.clickhouse_viewer_password:
        payload["secureJsonData"] = {"password": settings.clickhouse_viewer_password}
    return payload


def push(
    settings: Settings,
    url: str,
    credentials: Credentials,
    dashboards: Sequence[dict[str, Any]],
    *,
    report: Callable[[str], None] = print,
) -> None:
    """Upsert the datasource, the folder, then each dashboard (overwrite=true), in that order.

    The datasource goes first so that no dashboard is ever shown pointing at a
    uid Grafana does not know.
    """
    if not urlsplit(url).scheme or not urlsplit(url).hostname:
        raise UserError(f"--url {url!r} is not a URL like http://127.0.0.1:3000")
    api = GrafanaApi.from_url(url, credential=credentials.for_client(), timeout=TIMEOUT_S)
    where = _redacted(url)

    ds = datasource_payload(settings)
    existing = _call(
        where,
        "look up the ClickHouse datasource",
        lambda: _get_or_none(api.datasource.get_datasource_by_uid, DATASOURCE_UID),
    )
    if existing is None:
        _call(where, "create the ClickHouse datasource", lambda: api.datasource.create_datasource(ds))
        report(f"datasource {DATASOURCE_UID}: created")
    else:
        _call(
            where,
            "update the ClickHouse datasource",
            lambda: api.datasource.update_datasource_by_uid(DATASOURCE_UID, ds),
        )
        report(f"datasource {DATASOURCE_UID}: updated")

    folder = _call(
        where, f"look up folder {FOLDER_UID!r}", lambda: _get_or_none(api.folder.get_folder, FOLDER_UID)
    )
    if folder is None:
        _call(
            where,
            f"create folder {FOLDER_UID!r}",
            lambda: api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID),
        )
        report(f"folder {FOLDER_UID}: created")

    for model in dashboards:
        body = {
            "dashboard": {**model, "id": None},
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "citystream dashboards push",
        }
        uid = model["uid"]
        _call(where, f"save dashboard {uid!r}", lambda body=body: api.dashboard.update_dashboard(body))
        report(f"dashboard {uid}: saved ({model.get('title', '')})")


def _get_or_none(getter: Callable[[str], T], uid: str) -> T | None:
    """``getter(uid)``, or None when Grafana answers 404 (not there yet)."""
    try:
        return getter(uid)
    except GrafanaClientError as exc:
        if exc.status_code == 404:
            return None
        raise


def _call(where: str, action: str, fn: Callable[[], T]) -> T:
    """Run one API call, turning every client failure into a one-line UserError."""
    try:
        return fn()
    except GrafanaTimeoutError:
        raise UserError(
            f"Grafana at {where} did not answer within {TIMEOUT_S:g} s (while trying to {action})"
        ) from None
    except GrafanaUnauthorizedError:
        raise UserError(
            f"Grafana at {where} refused the credentials (401) while trying to {action}: "
            "set CITYSTREAM_GRAFANA_TOKEN, or CITYSTREAM_GRAFANA_USER and CITYSTREAM_GRAFANA_PASSWORD"
        ) from None
    except GrafanaClientError as exc:
        hint = (
            " (push creates a datasource: the token or user needs the Admin role)"
            if exc.status_code == 403
            else ""
        )
        raise UserError(
            f"Grafana at {where} refused to {action}: {exc.status_code} {_message(exc)}{hint}"
        ) from None
    except GrafanaServerError as exc:
        raise UserError(f"Grafana at {where} failed to {action}: {exc.status_code} {_message(exc)}") from None
    except GrafanaException as exc:
        raise UserError(f"Grafana at {where} failed to {action}: {_one_line(str(exc))}") from None
    except niquests.exceptions.RequestException as exc:
        raise UserError(
            f"Grafana at {where} is unreachable ({_reason(exc)}): start it, "
            "or pass --url / set CITYSTREAM_GRAFANA_URL"
        ) from None


def _message(exc: Any) -> str:
    response = exc.response
    if isinstance(response, dict) and response.get("message"):
        return _one_line(str(response["message"]))
    return _one_line(str(response or exc.message))


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for known in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if known.lower() in text.lower():
            return known.lower()
    return _one_line(text)[:120]


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _redacted(url: str) -> str:
    """The URL without any user:password@ part, so an error line never prints a secret."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=netloc, query="", fragment="").geturl()
