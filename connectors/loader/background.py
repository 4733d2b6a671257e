"""The loader as a companion of the store server: consuming in a thread beside ``store serve --loader``.

It writes through the server's own HTTP interface, so it is the same code a
standalone ``citystream load`` runs against a ClickHouse server. On SIGTERM
the loader stops first (a batch not yet acknowledged is abandoned
uncommitted), then the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from citystream.connectors.loader.loop import Loader
from citystream.settings import Settings

log = logging.getLogger("citystream.store")


def run_forever(settings: Settings, options: Mapping[str, Any], stop: threading.Event) -> None:
    """Consume until ``stop``; a crash is logged and the loader restarted."""
    log.info(
        "loader: %s -> %s (group %s)",
        settings.kafka_bootstrap,
        settings.clickhouse_database,
        options.get("group_id", "citystream-loader"),
    )
    while not stop.is_set():
        try:
            stats = Loader(settings, **options).run(until_end=False, stop=stop.is_set)
            log.info("loader stopped: %d rows in %d batches", stats.loaded, stats.batches)
        except Exception:
            log.exception("loader failed; restarting it in 5 s")
            stop.wait(5.0)


def companion(
    settings: Settings, options: Mapping[str, Any]
) -> Callable[[str, threading.Event], Callable[[float], None]]:
    """A chserver companion (``serve(..., companion=...)``) that runs the loader against the server."""

    def start(url: str, stop: threading.Event) -> Callable[[float], None]:
        thread = threading.Thread(
            target=run_forever,
            args=(settings.replace(clickhouse_url=url), options, stop),
            name="store-loader",
            daemon=True,
        )
        thread.start()

        def join(grace_s: float) -> None:
            thread.join(grace_s)
            if thread.is_alive():
                log.warning("the loader did not stop within %.0fs", grace_s)

        return join

    return start
