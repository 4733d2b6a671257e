"""ClickHouse sinks: result records -> rows of a store table, one ``INSERT`` per flush.

Idempotency lives in the tables (ReplacingMergeTree keyed by the record's
natural key) and in the insert itself: each flush carries the
``insert_deduplication_token`` the caller set (derived from the Kafka offsets
and bytes it covers), so the same batch sent twice - a crash between insert
and offset commit - is stored once.

Two sinks, one contract (connectors/sink.py):

* :class:`AvroSink` buffers bare Avro records (Kafka values) and sends them
  as one Avro container, ``INSERT ... FORMAT Avro``: ClickHouse decodes them,
  which is what makes the loader fast (see connectors/avroframe.py);
* :class:`ClickHouseSink` buffers decoded records (dicts) and sends rows
  through clickhouse-connect: the fallback for a batch ClickHouse rejected,
  and for writers that build records in Python.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from citystream.connectors.avroframe import container
from citystream.connectors.sink import Sink

_UTC = dt.UTC

#: Settings of every loader insert. Dependent materialized views (the rollups) are fed even
#: when the source block was a duplicate: their state is idempotent (maxMap), and a crash between
#: the source part and the view's part being written must not leave a window out of the rollups.
INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}


def _as_datetime(value: Any) -> Any:
    if isinstance(value, int):
        return dt.datetime.fromtimestamp(value / 1000, tz=_UTC)
    return value


def _settings(token: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = dict(INSERT_SETTINGS)
    if token:
        settings["insert_deduplication_token"] = token
    return settings


class ClickHouseSink(Sink):
    """Decoded records for one table, written as rows through a clickhouse-connect client."""

    def __init__(
        self,
        client: Any,
        table: str,
        columns: Sequence[str],
        *,
        timestamp_columns: Sequence[str] = (),
        database: str | None = None,
    ) -> None:
        self.client = client
        self.table = table
        self.database = database
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
        self.client.insert(
            self.table,
            self._rows,
            column_names=self.columns,
            database=self.database,
            settings=_settings(self.token),
        )
        written = len(self._rows)
        self._rows = []
        return written

    def close(self) -> None:
        self._rows = []


class AvroSink(Sink):
    """Bare Avro records of one schema for one table, sent undecoded as an Avro container."""

    def __init__(
        self, client: Any, table: str, columns: Sequence[str], schema: Any, *, database: str | None = None
    ) -> None:
        self.client = client
        self.table = table
        self.database = database
        self.columns = list(columns)
        self.schema = schema
        self._values: list[bytes] = []
        self.token: str | None = None

    def add(self, record: bytes) -> None:  # type: ignore[override]
        self._values.append(record)

    @property
    def pending(self) -> int:
        return len(self._values)

    def flush(self, body: bytes | None = None) -> int:
        """Send the buffer; ``body`` is ``b"".join`` of it when the caller already has that."""
        if not self._values:
            return 0
        target = f"`{self.table}`" if not self.database else f"`{self.database}`.`{self.table}`"
        self.client.raw_insert(
            target,
            self.columns,
            insert_block=container(self.schema, self._values, body),
            settings=_settings(self.token),
            fmt="Avro",
        )
        written = len(self._values)
        self._values = []
        return written

    def close(self) -> None:
        self._values = []
