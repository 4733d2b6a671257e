"""Tombstones that delete: a null value on a compacted topic becomes a deletion row in its table.

Why a row and not a skip: on the sensors topic a tombstone removes an entry
registered by mistake, and the store must forget it as compaction does. The
table (migration 0007) is a ``ReplacingMergeTree(loaded_at, is_deleted)``
whose ``is_deleted`` defaults to ``status = 'deleted'``; a deletion row is
the topic's record with the key in its key field, that marker status and
every other field empty. It goes into the same insert as the batch's other
records, in offset order, so "register, delete, register again" in one
batch ends registered, as on the topic. Tombstones on other topics stay
skipped (their tables keep no deletions).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from citystream import contracts


@dataclass(frozen=True)
class Tombstone:
    """How a topic's null value becomes a deletion row: the key's field and the marking fields."""

    record: str
    key_field: str
    marks: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def value(self, key: bytes | None) -> bytes | None:
        """The deletion record for ``key`` as bare Avro; None when the key is missing or not UTF-8.

        A keyless tombstone names nothing to delete, so it stays skipped.
        """
        if key is None:
            return None
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            return None
        fields = contracts.schema(self.record)["fields"]
        record = {f["name"]: _empty(f) for f in fields}
        record.update(self.marks)
        record[self.key_field] = text
        return contracts.encode(self.record, record)


def _empty(f: Mapping[str, Any]) -> Any:
    """A field's default, or the empty value of its type (null for unions that allow it)."""
    if "default" in f:
        return f["default"]
    return _empty_of(f["type"])


def _empty_of(node: Any) -> Any:
    if isinstance(node, list):
        return None if "null" in node else _empty_of(node[0])
    kind = node.get("type") if isinstance(node, dict) else node
    if kind == "array":
        return []
    if kind == "map":
        return {}
    if kind in ("int", "long"):
        return 0
    if kind in ("float", "double"):
        return 0.0
    if kind == "boolean":
        return False
    if kind == "bytes":
        return b""
    if kind == "record":
        return {f["name"]: _empty(f) for f in node["fields"]}
    return ""
