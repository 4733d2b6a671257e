"""The Avro schemas in avro/: loaded one named type per file, references inlined, cached.

Why inline references: each file holds one named type and may refer to others by
full name, but fastavro, Flink's DDL derivation and the compatibility checker all
want a schema that stands on its own.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException

from citystream.errors import UserError
from citystream.settings import ROOT

#: Where the project's schemas live.
SCHEMA_DIR = ROOT / "avro"

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})

_FILE_NAME = re.compile(r"^(?P<full>[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+)\.avsc$")

JsonSchema = Any  # a schema as JSON: str (type name), list (union) or dict


class SchemaError(UserError):
    """A schema file that cannot be used: bad JSON, bad Avro, unknown reference, wrong file name."""


def load_texts(texts: Mapping[str, str]) -> dict[str, dict]:
    """Standalone schemas by full name from ``{file name: JSON text}``.

    Takes texts rather than a directory so that the CI check can load the schemas
    of another git revision exactly like the working tree's. Each result has the
    named types it uses inlined at their first use (names qualified), so it can be
    parsed, compared or printed without the other files.
    """
    raw: dict[str, dict] = {}
    for file_name, text in sorted(texts.items()):
        match = _FILE_NAME.match(Path(file_name).name)
        if not match:
            raise SchemaError(f"{file_name}: schema files are named <namespace>.<Name>.avsc")
        try:
            node = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{file_name}: not valid JSON: {exc}") from None
        if not isinstance(node, dict) or node.get("type") not in NAMED:
            raise SchemaError(f"{file_name}: top level must be a named type (record, enum, fixed)")
        full = qualify(node.get("name", ""), node.get("namespace", ""))
        if full != match["full"]:
            raise SchemaError(f"{file_name}: file name must be {full}.avsc (name + namespace)")
        raw[full] = node
    out = {}
    for full in raw:
        try:
            out[full] = _inline(raw[full], "", raw, set())
        except SchemaError as exc:
            raise SchemaError(f"{full}.avsc: {exc}") from None
    return out


def load_dir(directory: Path = SCHEMA_DIR) -> dict[str, dict]:
    """Standalone schemas by full name from every ``*.avsc`` in ``directory``."""
    if not directory.is_dir():
        raise SchemaError(f"{directory}: no such schema directory")
    return load_texts({p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*.avsc"))})


def qualify(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _inline(node: JsonSchema, namespace: str, raw: Mapping[str, dict], defined: set[str]) -> JsonSchema:
    """Replace references to other files' types by their definitions, first use only."""
    if isinstance(node, list):
        return [_inline(branch, namespace, raw, defined) for branch in node]
    if isinstance(node, str):
        if node in PRIMITIVES:
            return node
        full = qualify(node, namespace)
        if full in defined:
            return full
        if full not in raw and node in raw:
            full = node
        if full not in raw:
            raise SchemaError(f"unknown type {node!r}")
        return _inline(raw[full], namespace, raw, defined)
    if not isinstance(node, dict) or "type" not in node:
        raise SchemaError(f"not a schema: {json.dumps(node)[:80]}")
    kind = node["type"]
    if kind in NAMED:
        name = node.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaError(f"{kind} without a name")
        full = qualify(name, node.get("namespace", namespace))
        inner_ns = full.rpartition(".")[0]
        defined.add(full)
        out = {k: v for k, v in node.items() if k != "namespace"}
        out["name"] = full
        if kind in ("record", "error"):
            fields = node.get("fields")
            if not isinstance(fields, list):
                raise SchemaError(f"record {full} has no field list")
            out["fields"] = [{**f, "type": _inline(f.get("type"), inner_ns, raw, defined)} for f in fields]
        return out
    if kind == "array":
        return {**node, "items": _inline(node.get("items"), namespace, raw, defined)}
    if kind == "map":
        return {**node, "values": _inline(node.get("values"), namespace, raw, defined)}
    if isinstance(kind, str) and kind in PRIMITIVES:
        return node
    # {"type": "citystream.Envelope"} or {"type": [...]}: the wrapper adds nothing
    return _inline(kind, namespace, raw, defined)


def parse(schema: JsonSchema) -> dict:
    """fastavro's parsed form of a standalone schema; rejects invalid Avro (e.g. a bad default)."""
    try:
        return fastavro.parse_schema(schema, _write_hint=False)
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"{name_of(schema)}: invalid Avro schema: {exc}") from None


@functools.cache
def _schemas() -> dict[str, dict]:
    return load_dir(SCHEMA_DIR)


@functools.cache
def parsed_pair(full: str) -> tuple[dict, dict]:
    """(schema for writing, schema for reading) of one type.

    The reading schema has its logical types removed: the binary layout is the
    same, and decoding timestamps to epoch milliseconds (as they were encoded and
    as Flink and ClickHouse see them) keeps ``decode(encode(r)) == r``.
    """
    standalone = _schemas()[full]
    return parse(standalone), parse(strip_logical(standalone))


def strip_logical(node: JsonSchema) -> JsonSchema:
    if isinstance(node, list):
        return [strip_logical(b) for b in node]
    if isinstance(node, dict):
        out = {k: strip_logical(v) for k, v in node.items() if k != "logicalType"}
        if "fields" in node:
            out["fields"] = [{**f, "type": strip_logical(f["type"])} for f in node["fields"]]
        return out
    return node


def names() -> list[str]:
    """Full names of every schema in avro/, sorted."""
    return sorted(_schemas())


def resolve_name(name: str) -> str:
    """Full name for ``name``, which may omit the namespace (``"Alert"``)."""
    known = _schemas()
    if name in known:
        return name
    matches = [full for full in known if full.rpartition(".")[2] == name]
    if len(matches) == 1:
        return matches[0]
    raise UserError(f"unknown schema {name!r}; known: {', '.join(sorted(known))}")


def schema(name: str) -> dict:
    """The standalone JSON schema of ``name`` (references inlined), as a fresh copy."""
    return json.loads(json.dumps(_schemas()[resolve_name(name)]))


def parsed_schema(name: str) -> dict:
    """fastavro's parsed schema of ``name`` (cached; do not modify)."""
    return parsed_pair(resolve_name(name))[0]


def name_of(node: JsonSchema) -> str:
    """Full name of a named type, else its kind (``long``, ``array``, ``union`` ...), for messages."""
    if isinstance(node, dict) and isinstance(node.get("name"), str):
        return qualify(node["name"], node.get("namespace", ""))
    return kind_of(node) if isinstance(node, dict | str) else "union"


def kind_of(node: JsonSchema) -> str:
    """The type of a schema node: a primitive or complex type name, or ``union``."""
    if isinstance(node, list):
        return "union"
    if isinstance(node, str):
        return node
    kind = node.get("type")
    return kind if isinstance(kind, str) else kind_of(kind)


def short_name(full: str) -> str:
    """A full name without its namespace."""
    return full.rpartition(".")[2]
