"""ClickHouse sinks: decoded Avro result records -> rows of a store table.

Idempotency lives in the tables (ReplacingMergeTree keyed by the record's
natural key, versioned by ``revision``): inserting the same batch twice, as
happens after a crash between insert and offset commit, changes nothing a
query that reads the latest version can see. Each insert also carries a
deduplication token derived from the Kafka offsets it covers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.sink import Sink

_UTC = dt.UTC


def _as_datetime(value: Any) -> Any:
    if isinstance(value, int):
        return dt.datetime.fromtimestamp(value / 1000, tz=_UTC)
    return value


class ClickHouseSink(Sink):
    """Rows for one table, written with one ``INSERT`` per flush through a clickhouse-connect client."""

    def __init__(
        self, client: Any, table: str, columns: Sequence[str], *, timestamp_columns: Sequence[str] = ()
    ) -> None:
        self.client = client
        self.table = table
        self.columns = list(columns)
        self._ts = set(timestamp_columns)
        self._rows: list[list[Any]] = []
        self.token: str | None = None

    def add(self, record: Mapping[str, Any]) -> None:
        self._rows.append([_as_datetime(record[c]) if c in self._ts else record[c] for c in self.columns])

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        if not self._rows:
            return 0
        settings = {"insert_deduplication_token": self.token} if self.token else None
        self.client.insert(self.table, self._rows, column_names=self.columns, settings=settings)
        written = len(self._rows)
        self._rows = []
        return written

    def close(self) -> None:
        self._rows = []
