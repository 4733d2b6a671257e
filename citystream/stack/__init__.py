"""The local stack: one Kafka broker (KRaft), one Flink cluster, one ClickHouse store.

``up``/``down``/``status`` keep the promises ``citystream stack`` makes (see
:mod:`citystream.cli.stack`): idempotent start with health checks, stop exactly
what was started, data kept unless purged. Each service is one module
(``kafka``, ``flink``, ``store``) on the shared :class:`Service` base; every
service runs in its own session, and nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable

from citystream import kafkaconf
from citystream.settings import Settings
from citystream.stack.acl import grant
from citystream.stack.flink import Flink
from citystream.stack.kafka import Kafka
from citystream.stack.service import Service, Status
from citystream.stack.store import Store, credentials
from citystream.store.client import connect
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics

__all__ = ["Flink", "Kafka", "Service", "Status", "Store", "down", "services", "status", "up"]


def _quiet_client_logs() -> None:
    """Health polls fail until a server is up; the clients' own error logs would only be noise."""
    for name in ("clickhouse_connect", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def services(settings: Settings) -> list[Service]:
    """The services ``up`` starts, in start order (a real ClickHouse server is not ours to start)."""
    _quiet_client_logs()
    found: list[Service] = []
    if settings.embedded_store:
        found.append(Store(settings))
    found += [Kafka(settings), Flink(settings)]
    return found


def up(settings: Settings, echo: Callable[..., object] = print) -> Settings:
    """Start what is not running, then bring the schema and the topics up to date.

    Returns the settings in force: with the embedded store, its users' passwords
    from the secrets file (generated on the first ``up``), for the caller's clients.
    """
    if settings.embedded_store:
        settings = credentials(settings)
    for svc in services(settings):
        echo(f"{svc.name:6} ... ", end="", flush=True)
        echo(f"{svc.start()} (port {svc.port})")
    if settings.embedded_store:
        # Ours to keep current, like the topics: `up` leaves a store the jobs and loader can use.
        applied = migrate(settings)
        echo(f"schema {len(applied)} migration(s) applied" if applied else "schema up to date")
    else:
        echo(f"store  ... external ClickHouse at {settings.clickhouse_url} (`citystream store migrate`)")
    changes = ensure_topics(
        settings.kafka_bootstrap,
        settings.topic_prefix,
        settings.topics_spec,
        security=kafkaconf.kafka_python(settings, "admin"),
    )
    echo(
        f"topics {len(changes)} change(s) from {settings.topics_spec.name}"
        if changes
        else "topics up to date"
    )
    if kafkaconf.secure(settings):
        grant(settings)
        echo(f"acls   producer, jobs and loader users granted {settings.topic_prefix}* topics")
    return settings


def down(settings: Settings, purge: bool = False, echo: Callable[..., object] = print) -> None:
    """Stop what ``up`` started, in reverse order; ``purge`` also deletes the data."""
    for svc in reversed(services(settings)):
        echo(f"{svc.name:6} {svc.stop()}")
        if purge:
            for path in svc.purge_paths():
                shutil.rmtree(path, ignore_errors=True)
            echo(f"{svc.name:6} data purged")


def status(settings: Settings) -> list[Status]:
    """Each service's state; an external ClickHouse shows as ``external`` or ``unreachable``."""
    found = [svc.status() for svc in services(settings)]
    if not settings.embedded_store:
        try:
            ok = connect(settings).command("SELECT 1") == 1
        except Exception:
            ok = False
        found.insert(
            0, Status("store", "external" if ok else "unreachable", None, 0, settings.clickhouse_url)
        )
    return found
