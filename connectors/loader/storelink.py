"""The loader's connection to the store: (re)connected with backoff while the store is down."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from citystream.connectors.loader.common import Abandoned, Backoff, LoadStats, one_line, sleep

log = logging.getLogger("citystream.connectors.loader")


class StoreLink:
    """One ClickHouse client, shared by the loader's threads; ``drop()`` makes the next ``get`` reconnect."""

    def __init__(self, factory: Callable[[], Any], stats: LoadStats, max_backoff_s: float) -> None:
        self._factory = factory
        self.stats = stats
        self.max_backoff_s = max_backoff_s
        self.client: Any = None

    def get(self, stop: Callable[[], bool]) -> Any:
        """The ClickHouse client, (re)connecting with backoff while the store is down."""
        backoff = Backoff(self.max_backoff_s, stop)
        while self.client is None:
            try:
                self.client = self._factory()
            except Exception as exc:
                if stop():
                    raise Abandoned("stop requested while the store was unreachable") from exc
                self.stats.retries += 1
                log.warning("store unreachable (%s); retrying in %.1fs", exc, backoff.delay)
                backoff.wait()
        return self.client

    def drop(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def wait_for_schema(self, database: str, tables: Iterable[str], stop: Callable[[], bool]) -> None:
        """Return once every table exists (the store may start before `store migrate`)."""
        names = sorted(set(tables))
        told = False
        while True:
            client = self.get(stop)
            try:
                found = client.query(
                    "SELECT count() FROM system.tables "
                    "WHERE database = {db:String} AND has({names:Array(String)}, name)",
                    parameters={"db": database, "names": names},
                ).result_rows[0][0]
                if int(found) == len(names):
                    return
                if not told:
                    log.info("waiting for the schema (`citystream store migrate`) before loading")
                    told = True
            except Exception as exc:
                log.warning("cannot check the schema (%s); retrying", one_line(exc))
                self.drop()
            if stop():
                raise Abandoned("stop requested while waiting for the schema")
            sleep(1.0, stop)
