"""Flink SQL DDL derived from the Avro contracts, so a job never restates a schema by hand.

Why derive: Flink's ``avro`` format reads raw Avro binary with a schema it
derives from the table's columns. Binary layout is all that must match, so
generating the column list from ``avro/*.avsc`` (same order, same types,
NOT NULL exactly where Avro has no ``null`` branch) keeps producer, job and
contracts in lockstep.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from citystream.settings import ROOT

AVRO_DIR = ROOT / "avro"

_PRIMITIVES = {
    "string": "STRING",
    "int": "INT",
    "long": "BIGINT",
    "double": "DOUBLE",
    "float": "FLOAT",
    "boolean": "BOOLEAN",
    "bytes": "BYTES",
}


@cache
def avsc(name: str) -> dict[str, Any]:
    """The parsed ``.avsc`` JSON of ``citystream.Name`` (unresolved references kept as names)."""
    path = AVRO_DIR / f"{name}.avsc"
    return json.loads(Path(path).read_text())


def _sql_type(avro_type: Any) -> str:
    nullable = False
    if isinstance(avro_type, list):
        branches = [b for b in avro_type if b != "null"]
        if len(branches) != 1 or avro_type[0] != "null":
            raise ValueError(f"only ['null', X] unions map to Flink SQL, got {avro_type!r}")
        nullable, avro_type = True, branches[0]
    suffix = "" if nullable else " NOT NULL"
    if isinstance(avro_type, str):
        if avro_type in _PRIMITIVES:
            return _PRIMITIVES[avro_type] + suffix
        return f"ROW<{columns(avro_type)}>" + suffix  # a named record in its own file
    kind = avro_type.get("type")
    if avro_type.get("logicalType") == "timestamp-millis":
        return "TIMESTAMP(3)" + suffix  # legacy Avro mapping: timestamp-millis, UTC
    if kind == "record":
        return f"ROW<{_fields(avro_type['fields'])}>" + suffix
    if kind == "array":
        return f"ARRAY<{_sql_type(avro_type['items'])}>" + suffix
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind] + suffix
    raise ValueError(f"no Flink SQL type for Avro {avro_type!r}")


def _fields(fields: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{f['name']}` {_sql_type(f['type'])}" for f in fields)


def columns(name: str) -> str:
    """Flink SQL column list (``a STRING NOT NULL, ...``) for record ``citystream.Name``."""
    return _fields(avsc(name)["fields"])


def kafka_table(
    table: str,
    record: str,
    *,
    topic: str,
    bootstrap: str,
    extra_columns: str = "",
    bounded: bool = False,
    group_id: str | None = None,
    sink: bool = False,
    transactional_id_prefix: str | None = None,
    key_field: str | None = None,
    security: Mapping[str, str] | None = None,
    offsets: Mapping[int, tuple[int, int]] | None = None,
) -> str:
    """``CREATE TEMPORARY TABLE`` for an Avro-encoded Kafka topic.

    ``bounded`` makes a source stop at the offsets current when the job starts,
    which is how the demo and tests run a streaming job to completion.
    ``key_field`` (a STRING or BYTES column) becomes the record key as raw
    bytes: topics that are compacted refuse unkeyed records, and a key keeps
    one sensor's (or alert's) records in order on one partition.
    ``offsets`` (partition -> [start, end)) makes a source read exactly that
    range and stop (:func:`offset_options`; replays), whatever ``bounded`` says.
    ``security`` (:func:`citystream.kafkaconf.flink`) holds a password: never log the DDL.
    """
    cols = columns(record) + (f", {extra_columns}" if extra_columns else "")
    options = {"connector": "kafka", "topic": topic, "properties.bootstrap.servers": bootstrap}
    options.update(security or {})
    if key_field:
        options.update({"key.format": "raw", "key.fields": key_field, "value.format": "avro"})
        options["value.fields-include"] = "ALL"
    else:
        options["format"] = "avro"
    if sink:
        options.update(delivery(transactional_id_prefix))
    else:
        options["scan.startup.mode"] = "earliest-offset"
        options["properties.group.id"] = group_id or f"citystream-{table}"
        options["properties.isolation.level"] = "read_committed"
        if bounded:
            options["scan.bounded.mode"] = "latest-offset"
        if offsets is not None:
            options.update(offset_options(offsets))
    opts = ",\n  ".join(f"'{k}' = '{v}'" for k, v in options.items())
    return f"CREATE TEMPORARY TABLE `{table}` (\n  {cols}\n) WITH (\n  {opts}\n)"


def offset_options(offsets: Mapping[int, tuple[int, int]]) -> dict[str, str]:
    """Source options that read exactly ``[start, end)`` of every partition given, then stop.

    Why also no offset commits: a replay reads under its own group id, and
    committing would still leave a group behind that looks like a consumer;
    the range, not the group, says what was read. Every partition of the
    topic must be listed (an unlisted one would be read from the committed
    or earliest offset and never end).
    """
    if not offsets:
        raise ValueError("offsets must name at least one partition")
    bad = {p: r for p, r in offsets.items() if not 0 <= int(r[0]) <= int(r[1])}
    if bad:
        raise ValueError(f"offset ranges must satisfy 0 <= start <= end: {bad}")

    def spec(i: int) -> str:
        return ";".join(f"partition:{int(p)},offset:{int(r[i])}" for p, r in sorted(offsets.items()))

    return {
        "scan.startup.mode": "specific-offsets",
        "scan.startup.specific-offsets": spec(0),
        "scan.bounded.mode": "specific-offsets",
        "scan.bounded.specific-offsets": spec(1),
        "properties.commit.offsets.on.checkpoint": "false",
    }


def delivery(transactional_id_prefix: str | None) -> dict[str, str]:
    """Sink options: exactly-once (Kafka transactions) with a prefix, at-least-once without."""
    if not transactional_id_prefix:
        return {"sink.delivery-guarantee": "at-least-once"}
    return {
        "sink.delivery-guarantee": "exactly-once",
        "sink.transactional-id-prefix": transactional_id_prefix,
        # Below the broker's transaction.max.timeout.ms (15 min), above any checkpoint gap;
        # Flink's default (1 h) would be refused.
        "properties.transaction.timeout.ms": "600000",
    }
