"""What the loader does besides loading: record its progress, and seal the window rollups.

Neither may stop the loading: a failure is logged and loading goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable

from citystream.connectors.loader.common import Abandoned, LoadStats, Throughput, error_code, one_line
from citystream.connectors.loader.storelink import StoreLink
from citystream.store.rollups import seal

log = logging.getLogger("citystream.connectors.loader")

#: ClickHouse's UNKNOWN_TABLE: the store's schema predates the sealed rollups (migration 0005).
_UNKNOWN_TABLE = 60


class Metrics:
    """The loader's rows in ``pipeline_metrics`` (component ``loader``, instance = consumer group)."""

    def __init__(
        self,
        link: StoreLink,
        database: str,
        instance: str,
        stats: LoadStats,
        throughput: Throughput,
        lag: Callable[[], int],
        every_s: float,
    ) -> None:
        self.link = link
        self.database = database
        self.instance = instance
        self.stats = stats
        self.throughput = throughput
        self._lag = lag
        self.every_s = every_s
        self._last = time.monotonic()
        self._recorded = False

    def record(self, force: bool = False) -> None:
        """Record after the first batch, when forced, else at most every ``every_s`` seconds."""
        now = time.monotonic()
        elapsed = now - self._last
        # The first batch is recorded at once, so `store status` has something to show early.
        first = not self._recorded and self.stats.batches > 0
        if not force and not first and elapsed < self.every_s:
            return
        self._recorded = self._recorded or self.stats.batches > 0
        self.stats.lag_records = self._lag()
        rate = self.throughput.rows_since_metrics / elapsed if elapsed > 0 else 0.0
        self._last, self.throughput.rows_since_metrics = now, 0
        client = self.link.client
        if client is None:
            return
        ts = dt.datetime.now(dt.UTC)
        values = {
            "rows_per_s": rate,
            "lag_records": float(self.stats.lag_records),
            "batch_ms": self.throughput.last_batch_ms,
            "rows_total": float(self.stats.loaded),
            "undecodable_total": float(self.stats.undecodable),
            "rejected_total": float(self.stats.rejected),
            "retries_total": float(self.stats.retries),
        }
        rows = [[ts, "loader", self.instance, name, value, {}] for name, value in values.items()]
        try:
            client.insert(
                f"`{self.database}`.`pipeline_metrics`",
                rows,
                column_names=["ts", "component", "instance", "metric", "value", "labels"],
            )
        except Exception as exc:  # metrics must never stop the loading
            log.warning("could not record loader metrics: %s", one_line(exc))


class Sealer:
    """Sealing passes of the window rollups (citystream/store/rollups.py), between the loader's inserts."""

    def __init__(
        self, link: StoreLink, stats: LoadStats, every_s: float, grace_s: float, max_hours: int
    ) -> None:
        self.link = link
        self.stats = stats
        self.every_s = every_s
        self.grace_s = grace_s
        self.max_hours = max_hours
        self._last = time.monotonic()

    def maybe_seal(self, stop: Callable[[], bool]) -> None:
        """A sealing pass if one is due; call only while no insert of this loader is in flight."""
        if self.every_s <= 0 or time.monotonic() - self._last < self.every_s or stop():
            return
        self._last = time.monotonic()
        try:
            result = seal(self.link.get(stop), grace_s=self.grace_s, max_hours=self.max_hours)
        except Abandoned:
            raise
        except Exception as exc:  # sealing must never stop the loading
            if error_code(exc) == _UNKNOWN_TABLE:
                log.info("the store has no sealed rollups (migration 0005); not sealing")
                self.every_s = 0
            else:
                log.warning("sealing rollups failed (%s); loading goes on", one_line(exc))
            return
        self.stats.sealed_hours += result.hours
        self.stats.seal_s += result.seconds
        if result.hours:
            log.info(
                "sealed %d hour(s) and %d day(s) in %.1fs (%d more waiting)",
                result.hours, result.days, result.seconds, result.remaining,
            )  # fmt: skip
