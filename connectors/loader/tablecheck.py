"""Does a table still hold what its topic's contract says? The loader's check against schema drift.

Why: a migration that renames, drops or retypes a column the loader writes
makes the table refuse *every* record (or, worse, take them with silent loss:
ClickHouse converts an Avro double 230.7 into a UInt8 column as 230, and
an Avro long 1000 into Int8 as -24). Such a refusal is the table's fault,
not the data's: the loader must stall and alert, never divert good records
to dead letters. Comparing the table's columns with the Avro contract names
the column and the reason, without trying records one by one.

Only what is certain is flagged: a column the loader writes that is missing,
or whose type cannot hold every value of its Avro type without loss (e.g. an
Avro ``long`` needs ``Int64``/``UInt64``, or ``DateTime64`` with at least
millisecond precision for ``timestamp-millis``, and an optional field a
``Nullable`` column). ``LowCardinality`` is ignored, and Avro types without a
rule here (records, maps, enums) are accepted as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from citystream import contracts

_WRAPPERS = re.compile(r"^(LowCardinality|Nullable)\((.*)\)$")
_DATETIME64 = re.compile(r"^DateTime64\((\d+)\s*(,.*)?\)$")

#: ClickHouse types that hold every value of an Avro primitive (after the wrappers are taken off).
LOSSLESS: dict[str, frozenset[str]] = {
    "string": frozenset({"String"}),
    "bytes": frozenset({"String"}),
    "long": frozenset({"Int64", "UInt64"}),
    "int": frozenset({"Int32", "UInt32", "Int64", "UInt64"}),
    "double": frozenset({"Float64"}),
    "float": frozenset({"Float32", "Float64"}),
    "boolean": frozenset({"Bool", "UInt8"}),
}


def _bare(ch_type: str) -> str:
    """``ch_type`` without LowCardinality(...) / Nullable(...) around it."""
    ch_type = ch_type.strip()
    while match := _WRAPPERS.match(ch_type):
        ch_type = match.group(2).strip()
    return ch_type


def _branch(avro: Any) -> Any:
    """The non-null branch of an optional union (``["null", X]``); other unions as they are."""
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        return branches[0] if len(branches) == 1 else avro
    return avro


def fits(avro: Any, ch_type: str) -> bool:
    """Whether column type ``ch_type`` holds every value of Avro type ``avro`` (True when unsure)."""
    if isinstance(avro, list) and "null" in avro and "Nullable(" not in ch_type:
        return False  # the contract allows null; the column cannot hold it
    avro, bare = _branch(avro), _bare(ch_type)
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-millis":
            match = _DATETIME64.match(bare)
            return bool(match and int(match.group(1)) >= 3) or bare in LOSSLESS["long"]
        if avro.get("type") == "array":
            inner = re.match(r"^Array\((.*)\)$", bare)
            return bool(inner) and fits(avro["items"], inner.group(1))  # type: ignore[union-attr]
        avro = avro.get("type")
    if isinstance(avro, str) and avro in LOSSLESS:
        return bare in LOSSLESS[avro]
    return True


def drift(record: str, columns: Iterable[str], table_columns: Mapping[str, str]) -> list[str]:
    """Why the table cannot take ``record``'s ``columns`` as the contract defines them ([]: it can).

    ``table_columns``: the table's column name -> ClickHouse type, as system.columns shows them.
    """
    fields = {f["name"]: f["type"] for f in contracts.schema(record)["fields"]}
    problems = []
    for name in columns:
        if name not in table_columns:
            problems.append(f"column {name} is missing")
        elif not fits(fields[name], table_columns[name]):
            problems.append(
                f"column {name} is {table_columns[name]}, which cannot hold the contract's "
                f"{_describe(fields[name])} without loss"
            )
    return problems


def _describe(avro: Any) -> str:
    avro = _branch(avro)
    if isinstance(avro, dict):
        return str(avro.get("logicalType") or avro.get("type"))
    return str(avro)


def table_columns(client: Any, database: str, table: str) -> dict[str, str] | None:
    """The table's columns (name -> type); None when the table does not exist."""
    rows = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": database, "t": table},
    ).result_rows
    return {str(name): str(kind) for name, kind in rows} or None
