"""What Flink SQL's ``avro`` format cannot read, so a schema change is refused before it lands."""

from __future__ import annotations

import json

from citystream.contracts.schemas import PRIMITIVES, JsonSchema, kind_of, name_of, short_name


def flink_violations(schema_json: JsonSchema) -> list[str]:
    """Why Flink SQL's ``avro`` format could not mirror ``schema_json`` (empty when it can).

    Flink derives the Avro schema from the table DDL, so only shapes a DDL can
    produce are allowed: no enum, map or fixed; unions only ``["null", X]``, whose
    default (if any) is null; timestamps only as long ``timestamp-millis``.
    """
    problems: list[str] = []
    _flink_walk(schema_json, short_name(name_of(schema_json)), problems)
    return problems


#: Logical types a Flink DDL produces, with the Avro type under each.
_FLINK_LOGICAL = {"timestamp-millis": "long", "date": "int", "time-millis": "int", "decimal": "bytes"}


def _flink_walk(node: JsonSchema, path: str, problems: list[str]) -> None:
    if isinstance(node, str) and node not in PRIMITIVES:
        return  # a repeated named type was checked where it was defined
    if isinstance(node, list):
        if len(node) != 2 or node[0] != "null" or node[1] == "null":
            problems.append(f"{path}: union {json.dumps(node)} is not ['null', X] (null first)")
        for branch in node:
            if branch != "null":
                _flink_walk(branch, path, problems)
        return
    kind = kind_of(node)
    logical = node.get("logicalType") if isinstance(node, dict) else None
    if kind in ("enum", "map", "fixed"):
        problems.append(f"{path}: {kind} is not allowed; Flink SQL's avro format cannot express it")
    elif logical is not None and _FLINK_LOGICAL.get(logical) != kind:
        problems.append(
            f"{path}: logical type {logical} on {kind} is not allowed; timestamps are long timestamp-millis"
        )
    elif kind == "array":
        _flink_walk(node["items"], f"{path}[]", problems)
    elif kind in ("record", "error"):
        for f in node["fields"]:
            _flink_walk(f["type"], f"{path}.{f['name']}", problems)
            # Avro 1.12 lets a union default match any branch; older readers (Java 1.11) want the first
            if isinstance(f["type"], list) and f.get("default", None) is not None:
                problems.append(f"{path}.{f['name']}: default of a ['null', X] field must be null")
