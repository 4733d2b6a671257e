"""The library side of ``citystream store seal | status``: sealing everything, and what the store holds.

The command line (citystream/cli/store.py) only parses arguments and prints
what these functions return.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from citystream.errors import UserError
from citystream.settings import Settings
from citystream.store.client import connect
from citystream.store.migrate import discover, schema_version
from citystream.store.rollups import SealResult, seal

log = logging.getLogger(__name__)


def seal_all(
    settings: Settings,
    grace_s: float = 0.0,
    hours_per_pass: int = 72,
    on_pass: Callable[[SealResult], None] = lambda _result: None,
) -> tuple[int, int]:
    """Seal every dirty hour (older than ``grace_s``) in passes; the hours and days sealed."""
    client = connect(settings, send_receive_timeout=3600)
    hours = days = 0
    try:
        while True:
            result = seal(client, grace_s=grace_s, max_hours=hours_per_pass, busy_retries=50)
            if result.busy:
                raise UserError("an INSERT into window_aggregates kept running for 10 s: try again later")
            hours, days = hours + result.hours, days + result.days
            on_pass(result)
            if not result.remaining:
                return hours, days
    finally:
        client.close()


@dataclass(frozen=True)
class TableUse:
    name: str
    engine: str
    rows: int
    parts: int
    bytes: int


@dataclass(frozen=True)
class LoaderRun:
    """A loader instance's last metrics row in pipeline_metrics."""

    instance: str
    last: dt.datetime
    age_s: float
    lag_records: float
    rows_per_s: float
    rows_total: float


@dataclass(frozen=True)
class StoreStatus:
    server_version: str
    schema_version: int
    known_versions: int
    tables: list[TableUse]
    loads: list[LoaderRun]


def status(settings: Settings) -> StoreStatus:
    """The database's tables (rows, parts, bytes on disk), schema version and the loaders' last loads."""
    database = settings.clickhouse_database
    client = connect(settings, database=None)
    try:
        version = schema_version(client, database)
        rows = client.query(
            """
            SELECT t.name, t.engine, ifNull(t.total_rows, 0), ifNull(p.parts, 0), ifNull(p.bytes, 0)
            FROM system.tables AS t
            LEFT JOIN
            (
                SELECT table, count() AS parts, sum(bytes_on_disk) AS bytes
                FROM system.parts WHERE database = {db:String} AND active GROUP BY table
            ) AS p ON p.table = t.name
            WHERE t.database = {db:String}
            ORDER BY t.name
            """,
            parameters={"db": database},
        ).result_rows
        server = client.command("SELECT version()")
        loads = _last_loads(client, database) if version >= 3 else []
    finally:
        client.close()
    return StoreStatus(
        server_version=str(server),
        schema_version=version,
        known_versions=len(discover()),
        tables=[TableUse(n, e, int(r), int(p), int(b)) for n, e, r, p, b in rows],
        loads=[LoaderRun(*row) for row in loads],
    )


def _last_loads(client: Any, database: str) -> list[tuple]:
    """Per loader instance: its last metrics row (time, age in s, lag_records, rows_per_s, rows_total)."""
    try:
        return client.query(
            """
            SELECT instance, max(ts) AS last, dateDiff('millisecond', last, now64(3)) / 1000,
                   argMaxIf(value, ts, metric = 'lag_records'), argMaxIf(value, ts, metric = 'rows_per_s'),
                   argMaxIf(value, ts, metric = 'rows_total')
            FROM {db:Identifier}.pipeline_metrics
            WHERE component = 'loader'
            GROUP BY instance
            ORDER BY last DESC
            """,
            parameters={"db": database},
        ).result_rows
    except Exception as exc:  # status must still show the tables
        log.debug("no loader metrics: %s", exc)
        return []
