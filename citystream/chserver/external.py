"""External data tables (ClickHouse HTTP interface): files sent with a query, read as tables.

A client sends a ``multipart/form-data`` body whose file parts are tables
(the part's field name is the table name) and URL parameters
``<name>_structure`` (``id UInt32, s String``) or ``<name>_types``
(``UInt32,String``: columns ``_1``, ``_2`` ...) and optionally
``<name>_format`` (TabSeparated by default). As a server does, the table
exists for that query only, under that name, in the query's connection.

Contract:

* :func:`external_tables` reads the form's files and their parameters
  (refusing a name that is not a plain identifier, a format outside
  :data:`FORMATS`, a file without structure);
* :func:`load_external` creates each as a ``TEMPORARY`` ``Memory`` table and
  streams its data in. It runs before the request's ``readonly`` level is
  applied (creating a temporary table is DDL to the engine); what it creates
  is decided on the engine's own parse: the engine's canonical statement must
  be a ``CREATE TEMPORARY TABLE`` whose tree holds column names and data types
  only and the ``Memory`` engine (so a structure cannot smuggle a default
  expression, a ``SELECT`` or another engine), and only that canonical text runs.
* Formats that evaluate expressions (``Values``) or read schema files are not
  in :data:`FORMATS`. The data is bounded by the form's bound (the whole form
  is read before the query runs).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citystream.chserver.errors import BAD_ARGUMENTS, SYNTAX_ERROR, UNKNOWN_FORMAT, StoreError
from citystream.chserver.native import split_types
from citystream.chserver.policy import Node, inspect

#: Input formats an external table may be sent in (lowercase -> the engine's name).
FORMATS = {
    name.lower(): name
    for name in (
        "TabSeparated",
        "TSV",
        "TabSeparatedRaw",
        "TSVRaw",
        "TabSeparatedWithNames",
        "TSVWithNames",
        "TabSeparatedWithNamesAndTypes",
        "TSVWithNamesAndTypes",
        "CSV",
        "CSVWithNames",
        "CSVWithNamesAndTypes",
        "JSONEachRow",
        "JSONLines",
        "NDJSON",
        "JSONCompactEachRow",
        "Native",
        "RowBinary",
        "RowBinaryWithNames",
        "RowBinaryWithNamesAndTypes",
        "Parquet",
        "Arrow",
        "ArrowStream",
        "ORC",
    )
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Node kinds of a CREATE TEMPORARY TABLE holding columns and types only.
_CREATE_NODES = frozenset(
    {
        "CreateQuery",
        "Identifier",
        "Columns",
        "ExpressionList",
        "ColumnDeclaration",
        "DataType",
        "TupleDataType",
        "NameTypePair",
        "Storage",
        "Function",
        "Literal",
    }
)


@dataclass(frozen=True)
class ExternalTable:
    name: str
    data: bytes = field(repr=False)
    #: Column definitions as the client sent them (judged by the engine's parse before use).
    structure: str
    fmt: str


def external_tables(files: Mapping[str, bytes], params: Mapping[str, str]) -> list[ExternalTable]:
    """The form's files as tables; the parameters each uses are ``<name>_structure|_types|_format``."""
    tables = []
    for name, data in files.items():
        if not _NAME.match(name):
            raise StoreError(BAD_ARGUMENTS, "External table name must be a plain identifier")
        structure = params.get(f"{name}_structure")
        types = params.get(f"{name}_types")
        if not structure and types:
            structure = ", ".join(f"_{i} {t}" for i, t in enumerate(split_types(types), 1))
        if not structure:
            raise StoreError(
                BAD_ARGUMENTS, f"Neither structure nor types have not been provided for external table {name}"
            )
        fmt = params.get(f"{name}_format") or "TabSeparated"
        if fmt.lower() not in FORMATS:
            raise StoreError(
                UNKNOWN_FORMAT, f"Format {fmt} is not accepted for external tables by this server"
            )
        tables.append(ExternalTable(name, data, structure, FORMATS[fmt.lower()]))
    return tables


def parameter_names(tables: list[ExternalTable]) -> set[str]:
    """URL parameters that describe the tables (never settings)."""
    return {f"{t.name}_{suffix}" for t in tables for suffix in ("structure", "types", "format")}


def load_external(conn: Any, tables: list[ExternalTable], connect: Callable[[], Any]) -> None:
    """Create and fill each table in ``conn``, before its readonly level is set.

    ``connect``: opens a scratch connection on which the structure is parsed.
    """
    for table in tables:
        canonical = _checked_create(table, connect)
        conn.query(f"DROP TEMPORARY TABLE IF EXISTS `{table.name}`", "TabSeparated")
        conn.query(canonical, "TabSeparated")
        inserter = conn.send_insert(f"INSERT INTO `{table.name}`", table.fmt)
        try:
            if table.data:
                inserter.append(table.data)
            inserter.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                inserter.cancel()
            raise


def _checked_create(table: ExternalTable, connect: Callable[[], Any]) -> str:
    text = f"CREATE TEMPORARY TABLE `{table.name}` ({table.structure}) ENGINE = Memory"
    scratch = connect()
    try:
        canonical, tree = inspect(scratch, text, {})
    finally:
        with contextlib.suppress(Exception):
            scratch.close()
    if not canonical.startswith("CREATE TEMPORARY TABLE ") or tree.kind != "CreateQuery":
        raise _bad_structure(table)
    for node, parent in tree.walk():
        if node.kind not in _CREATE_NODES or not _allowed(node, parent):
            raise _bad_structure(table)
    return canonical


def _allowed(node: Node, parent: Node | None) -> bool:
    if node.kind == "Function":  # only the table engine, and only Memory
        return parent is not None and parent.kind == "Storage" and node.name == "Memory" and not node.children
    if node.kind == "Literal":  # type arguments only (precision, time zone, enum values)
        return parent is not None and parent.kind == "ExpressionList"
    if node.kind == "ColumnDeclaration":  # a type and nothing else (no DEFAULT, CODEC, TTL)
        return len(node.children) == 1 and node.children[0].kind in ("DataType", "TupleDataType")
    return True


def _bad_structure(table: ExternalTable) -> StoreError:
    return StoreError(
        SYNTAX_ERROR, f"The structure of external table {table.name} must list columns and types only"
    )
