"""How schemas may evolve: Avro's resolution rules for BACKWARD compatibility, plus two of ours.

Why our own checker: the Apache ``avro`` package ships one (``avro.compatibility``),
and ``tests/test_contracts.py`` checks that our verdicts agree with it, but its
error locations are field *indices* that are lost inside unions, and a failing CI
check has to name the field and the rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from citystream.contracts.schemas import (
    NAMED,
    PRIMITIVES,
    JsonSchema,
    SchemaError,
    kind_of,
    name_of,
    parse,
    qualify,
    short_name,
)

#: Writer type -> reader types that can read it (Avro specification, "Schema Resolution").
PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


@dataclass(frozen=True)
class Incompatibility:
    """One reason old data cannot be read with a new schema."""

    path: str  # where, e.g. "GridReading.envelope.seq" ("[]" = array items, "{}" = map values)
    rule: str  # which rule, e.g. "field-added-without-default"
    detail: str  # what to do about it, for people

    def __str__(self) -> str:
        return f"{self.path}: {self.rule}: {self.detail}"


def check_backward(new: JsonSchema, old: JsonSchema) -> list[Incompatibility]:
    """Every reason a reader with ``new`` cannot read data written with ``old`` (empty = OK).

    Avro's resolution rules (``resolution_issues``) plus two project rules, because
    Flink's ``avro`` format and ClickHouse read our topics positionally, by the
    schema in their DDL, not by resolution:

    * ``logical-type-changed``: the same bytes would mean something else;
    * ``field-order-changed``: fields both versions share keep their order and new
      fields go after all old ones.
    """
    parse(new)
    parse(old)
    return _Checker(new, old, strict=True).run()


def resolution_issues(reader: JsonSchema, writer: JsonSchema) -> list[Incompatibility]:
    """Avro's schema-resolution rules only: why ``reader`` cannot read ``writer``'s data."""
    return _Checker(reader, writer, strict=False).run()


def _index(node: JsonSchema, namespace: str = "", out: dict[str, dict] | None = None) -> dict[str, dict]:
    """Every named type defined inside a schema, by full name, for resolving later references."""
    out = {} if out is None else out
    if isinstance(node, list):
        for branch in node:
            _index(branch, namespace, out)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in NAMED:
            full = qualify(node["name"], node.get("namespace", namespace))
            out[full] = node
            for f in node.get("fields", []):
                _index(f["type"], full.rpartition(".")[0], out)
        elif kind == "array":
            _index(node["items"], namespace, out)
        elif kind == "map":
            _index(node["values"], namespace, out)
        elif not isinstance(kind, str) or kind not in PRIMITIVES:
            _index(kind, namespace, out)
    return out


class _Checker:
    """One comparison of a reader schema with a writer schema."""

    def __init__(self, reader: JsonSchema, writer: JsonSchema, *, strict: bool) -> None:
        self.reader, self.writer, self.strict = reader, writer, strict
        self.reader_index, self.writer_index = _index(reader), _index(writer)
        # (reader name, writer name) pairs being compared: a recursive type meeting
        # itself again is assumed compatible, as the specification's resolution does
        self.in_progress: set[tuple[str, str]] = set()

    def run(self) -> list[Incompatibility]:
        root = name_of(self.reader)
        return self.compare(self.reader, self.writer, short_name(root))

    def deref(self, node: JsonSchema, index: Mapping[str, dict]) -> JsonSchema:
        while isinstance(node, str) and node not in PRIMITIVES:
            target = index.get(node) or next((v for k, v in index.items() if short_name(k) == node), None)
            if target is None:
                raise SchemaError(f"unknown type {node!r}")
            node = target
        if isinstance(node, dict) and not isinstance(node.get("type"), str):
            return self.deref(node["type"], index)
        if isinstance(node, dict) and node["type"] not in PRIMITIVES | NAMED | {"array", "map"}:
            return self.deref(node["type"], index)
        return node

    def compatible(self, reader: JsonSchema, writer: JsonSchema) -> bool:
        return not self.compare(reader, writer, "", avro_only=True)

    def compare(
        self, reader: JsonSchema, writer: JsonSchema, path: str, *, avro_only: bool = False
    ) -> list[Incompatibility]:
        writer = self.deref(writer, self.writer_index)
        if kind_of(writer) != "union":
            return self.compare_branch(reader, writer, path, avro_only=avro_only, from_union=False)
        # every branch the old data may hold must be readable
        issues: list[Incompatibility] = []
        for branch in writer:
            issues += self.compare_branch(reader, branch, path, avro_only=avro_only, from_union=True)
        return issues

    def compare_branch(
        self, reader: JsonSchema, writer: JsonSchema, path: str, *, avro_only: bool, from_union: bool
    ) -> list[Incompatibility]:
        """Issues reading one non-union writer type with ``reader`` (a union or not)."""
        reader = self.deref(reader, self.reader_index)
        writer = self.deref(writer, self.writer_index)
        wk = kind_of(writer)
        is_union = kind_of(reader) == "union"
        branches = [self.deref(b, self.reader_index) for b in reader] if is_union else [reader]
        # the specification resolves against the first branch that matches: the same
        # type (same name for named types) first, then one it can be promoted to
        same = [b for b in branches if kind_of(b) == wk and (wk not in NAMED or _names_match(b, writer))]
        promoted = [b for b in branches if kind_of(b) in PROMOTIONS.get(wk, ())]
        if not is_union:
            if same or promoted:
                return self.compare_pair(reader, writer, path, avro_only=avro_only)
            if kind_of(reader) == wk:  # named types whose names differ
                return self.compare_pair(reader, writer, path, avro_only=avro_only)
            if not from_union:
                return [
                    self.issue(
                        path, "type-changed", f"{_describe(writer)} cannot be read as {_describe(reader)}"
                    )
                ]
        else:
            for branch in same + promoted:
                if self.compatible(branch, writer):
                    return self.compare_pair(branch, writer, path, avro_only=avro_only)
            if same:  # explain through the branch the author most likely meant
                return self.compare_pair(same[0], writer, path, avro_only=avro_only)
        return [
            self.issue(
                path,
                "union-branch-missing",
                f"old data may hold {_describe(writer)}, which {_describe(reader)} cannot read",
            )
        ]

    def compare_pair(
        self, reader: JsonSchema, writer: JsonSchema, path: str, *, avro_only: bool
    ) -> list[Incompatibility]:
        """Two non-union types of the same kind, or a permitted promotion."""
        rk, wk = kind_of(reader), kind_of(writer)
        if rk != wk:
            return []  # a promotion (int -> long, string -> bytes ...): callers checked it is one
        issues: list[Incompatibility] = []
        if self.strict and not avro_only:
            rl, wl = _logical(reader), _logical(writer)
            if rl != wl:
                issues.append(
                    self.issue(
                        path,
                        "logical-type-changed",
                        f"logical type {wl or 'none'} became {rl or 'none'}: the same bytes would mean "
                        "something else to Flink and ClickHouse",
                    )
                )
        if rk in PRIMITIVES:
            return issues
        if rk == "array":
            return issues + self.compare(reader["items"], writer["items"], f"{path}[]", avro_only=avro_only)
        if rk == "map":
            return issues + self.compare(
                reader["values"], writer["values"], f"{path}{{}}", avro_only=avro_only
            )
        if not _names_match(reader, writer):
            issues.append(
                self.issue(
                    path,
                    "name-changed",
                    f"{rk} {name_of(writer)} is now {name_of(reader)}; keep the name or add the old "
                    "one to 'aliases'",
                )
            )
            return issues
        if rk == "fixed":
            if reader.get("size") != writer.get("size"):
                issues.append(
                    self.issue(
                        path, "fixed-size-changed", f"size {writer.get('size')} became {reader.get('size')}"
                    )
                )
            return issues
        if rk == "enum":
            missing = [s for s in writer.get("symbols", []) if s not in reader.get("symbols", [])]
            if missing and "default" not in reader:
                issues.append(
                    self.issue(
                        path,
                        "enum-symbol-removed",
                        f"old data may hold {', '.join(missing)}; keep them or give the enum a default",
                    )
                )
            return issues
        return issues + self.compare_records(reader, writer, path, avro_only=avro_only)

    def compare_records(
        self, reader: dict, writer: dict, path: str, *, avro_only: bool
    ) -> list[Incompatibility]:
        pair = (name_of(reader), name_of(writer))
        if pair in self.in_progress:
            return []
        self.in_progress.add(pair)
        try:
            issues: list[Incompatibility] = []
            writer_fields = {f["name"]: f for f in writer["fields"]}
            matched: list[tuple[int, int, str]] = []  # (writer position, reader position, name)
            writer_pos = {f["name"]: i for i, f in enumerate(writer["fields"])}
            for reader_pos, field in enumerate(reader["fields"]):
                name = field["name"]
                source = next(
                    (n for n in [name, *field.get("aliases", [])] if n in writer_fields),
                    None,
                )
                field_path = f"{path}.{name}"
                if source is None:
                    if "default" not in field:
                        issues.append(
                            self.issue(
                                field_path,
                                "field-added-without-default",
                                f"new field {name!r} has no default, so old data (which lacks it) cannot "
                                "be read; give it a default",
                            )
                        )
                    continue
                matched.append((writer_pos[source], reader_pos, name))
                issues += self.compare(
                    field["type"], writer_fields[source]["type"], field_path, avro_only=avro_only
                )
            if self.strict and not avro_only:
                issues += self.check_order(reader, matched, path)
            return issues
        finally:
            self.in_progress.discard(pair)

    def check_order(
        self, reader: dict, matched: list[tuple[int, int, str]], path: str
    ) -> list[Incompatibility]:
        by_writer = sorted(matched)
        reader_positions = [reader_pos for _, reader_pos, _ in by_writer]
        if reader_positions != sorted(reader_positions):
            moved = next(
                name
                for (_, pos, name), expected in zip(by_writer, sorted(reader_positions), strict=True)
                if pos != expected
            )
            return [
                self.issue(
                    f"{path}.{moved}",
                    "field-order-changed",
                    "fields kept from the old schema must stay in their old order (Flink's avro format "
                    "reads fields by position)",
                )
            ]
        last_old = max(reader_positions, default=-1)
        matched_positions = set(reader_positions)
        for pos, field in enumerate(reader["fields"]):
            if pos < last_old and pos not in matched_positions:
                return [
                    self.issue(
                        f"{path}.{field['name']}",
                        "field-order-changed",
                        "new fields go after all old ones (Flink's avro format reads fields by position)",
                    )
                ]
        return []

    @staticmethod
    def issue(path: str, rule: str, detail: str) -> Incompatibility:
        return Incompatibility(path or "(root)", rule, detail)


def _logical(node: JsonSchema) -> str | None:
    return node.get("logicalType") if isinstance(node, dict) else None


def _names_match(reader: dict, writer: dict) -> bool:
    """Same unqualified name, or the writer's name is one of the reader's aliases."""
    reader_full, writer_full = name_of(reader), name_of(writer)
    if short_name(reader_full) == short_name(writer_full):
        return True
    namespace = reader_full.rpartition(".")[0]
    aliases = {qualify(a, namespace) for a in reader.get("aliases", [])}
    return writer_full in aliases or short_name(writer_full) in {short_name(a) for a in aliases}


def _describe(node: JsonSchema) -> str:
    if isinstance(node, list):
        return "union [" + ", ".join(_describe(b) for b in node) + "]"
    kind = kind_of(node)
    if kind in NAMED:
        return f"{kind} {short_name(name_of(node))}"
    if kind == "array" and isinstance(node, dict):
        return f"array<{_describe(node['items'])}>"
    if kind == "map" and isinstance(node, dict):
        return f"map<{_describe(node['values'])}>"
    logical = _logical(node)
    return f"{kind} ({logical})" if logical else kind
