"""Native blocks for a client that names its protocol revision, as a ClickHouse server sends them.

Why: chdb writes the ``Native`` format as a server does for revision 0 (no
``client_protocol_version``); clients such as clickhouse-connect (54405) and
clickhouse-go (54460) ask for a revision, and a server then frames each block
differently. Column data is copied verbatim; the walker here only measures it
to find where blocks and columns end.

Contract of :func:`upgrade_native` (``data``: chdb's revision-0 stream):

* a BlockInfo header before each block (revision >= 1);
* a "no custom serialization" byte after each column's type (>= 54454);
* top-level ``DateTime('tz')`` types: a server strips the time zone only for
  clients older than 54337; chdb always strips it, so the caller passes the
  result's real types (:func:`result_types`) and they are put back;
* Variant, Dynamic (V1/V2 structure), JSON (V1/V2, or as strings), Nested,
  Map, Tuple, LowCardinality, geo types and the fixed-width types are
  measured. Dynamic and JSON are written by the engine in the V1 layout, which
  is what a server sends below revision 54473; a client asking for 54473 or
  more gets NOT_IMPLEMENTED for them rather than a stream it would misread.
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from citystream.chserver.errors import NOT_IMPLEMENTED, StoreError

REVISION_WITH_BLOCK_INFO = 1
REVISION_WITH_DATETIME_TIME_ZONE = 54337
REVISION_WITH_LOW_CARDINALITY = 54405
REVISION_WITH_CUSTOM_SERIALIZATION = 54454
#: From this revision a server sends Dynamic and JSON in their V2 layout (the engine writes V1).
REVISION_WITH_V2_DYNAMIC_AND_JSON = 54473

_u64 = struct.Struct("<Q").unpack_from
_FIXED = {
    **dict.fromkeys(("Int8", "UInt8", "Bool", "Enum8", "Nothing"), 1),
    **dict.fromkeys(("Int16", "UInt16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("Int32", "UInt32", "Float32", "Date32", "DateTime", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("Int64", "UInt64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("Int128", "UInt128", "Decimal128", "UUID", "IPv6"), 16),
    **dict.fromkeys(("Int256", "UInt256", "Decimal256"), 32),
}
_GEO = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "Polygon": "Array(Ring)",
    "MultiLineString": "Array(LineString)",
    "MultiPolygon": "Array(Polygon)",
}
_NAMED_ELEMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)\s+(\S.*)$", re.S)
_JSON_PARAMETER = re.compile(r"^(max_dynamic_paths|max_dynamic_types)\s*=|^SKIP\s", re.I)


@dataclass(frozen=True)
class TypeNode:
    """A parsed type: its family, children, fixed width (0: variable) and, for JSON, typed path names."""

    family: str
    children: tuple[TypeNode, ...] = ()
    width: int = 0
    paths: tuple[str, ...] = ()


_STRING = TypeNode("String")
#: The shared data of a JSON column: Map(String, String) on the wire.
_SHARED_DATA = TypeNode("Array", (TypeNode("Tuple", (_STRING, _STRING)),))


def _split_args(text: str) -> list[str]:
    args: list[str] = []
    depth = 0
    quote = ""
    start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    tail = text[start:].strip()
    if tail or args:
        args.append(tail)
    return args


def split_types(text: str) -> list[str]:
    """A comma-separated list of type names, split at top-level commas only."""
    return [arg for arg in _split_args(text) if arg]


def _name_and_type(arg: str) -> tuple[str, str]:
    """``name Type`` (a Tuple element, Nested column or JSON typed path): both parts."""
    if arg.startswith("`"):
        end = arg.find("`", 1)
        while end > 0 and arg[end - 1] == "\\":
            end = arg.find("`", end + 1)
        if end > 0:
            return arg[1:end], arg[end + 1 :].strip()
        return "", arg
    match = _NAMED_ELEMENT.match(arg)
    return (match.group(1), match.group(2)) if match else ("", arg)


def parse_type(name: str) -> TypeNode:
    """Parse a ClickHouse type name into the tree the walker measures data with."""
    name = name.strip()
    paren = name.find("(")
    family = name if paren < 0 else name[:paren].strip()
    args = _split_args(name[paren + 1 : name.rfind(")")]) if paren >= 0 else []
    if family in _GEO:
        return parse_type(_GEO[family])
    if family in _FIXED:
        return TypeNode(family, width=_FIXED[family])
    if family == "Decimal":
        precision = int(args[0]) if args else 10
        return TypeNode(
            family, width=4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
        )
    if family == "FixedString":
        return TypeNode(family, width=int(args[0]))
    if family.startswith("Interval"):
        return TypeNode(family, width=8)
    if family == "String":
        return _STRING
    if family in ("Nullable", "Array", "LowCardinality"):
        return TypeNode(family, (parse_type(args[0]),))
    if family == "Tuple":
        return TypeNode(family, tuple(parse_type(_name_and_type(a)[1]) for a in args))
    if family == "Nested":
        return TypeNode("Array", (TypeNode("Tuple", tuple(parse_type(_name_and_type(a)[1]) for a in args)),))
    if family == "Map":
        return TypeNode(family, (parse_type(args[0]), parse_type(args[1])))
    if family == "Variant":
        return TypeNode(family, tuple(parse_type(a) for a in args))
    if family == "Dynamic":
        return TypeNode(family)
    if family == "JSON":
        typed = sorted(_name_and_type(a) for a in args if a and not _JSON_PARAMETER.match(a))
        return TypeNode(family, tuple(parse_type(t) for _, t in typed), paths=tuple(p for p, _ in typed))
    if family == "SimpleAggregateFunction":
        return parse_type(args[-1])
    raise StoreError(
        NOT_IMPLEMENTED,
        f"citystream store cannot send type {name} with client_protocol_version; "
        "query it without client_protocol_version or cast it (e.g. toString)",
    )


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _string(buf: memoryview, pos: int) -> tuple[str, int]:
    length, pos = _varint(buf, pos)
    return bytes(buf[pos : pos + length]).decode("utf-8", errors="replace"), pos + length


#: What a column's prefix said: for Dynamic the concrete Variant it is, plus the children's states.
State = tuple[Any, ...]


def _prefix(node: TypeNode, buf: memoryview, pos: int) -> tuple[int, State]:
    """Walk a column's serialization prefix; the state its data layout depends on."""
    family = node.family
    if family == "LowCardinality":
        return pos + 8, ()
    if family == "Variant":
        mode = _u64(buf, pos)[0]
        if mode != 0:
            raise StoreError(NOT_IMPLEMENTED, "Variant in compact discriminator mode cannot be re-framed")
        return _children_prefix(node.children, buf, pos + 8)
    if family == "Dynamic":
        return _dynamic_prefix(buf, pos)
    if family == "JSON":
        return _json_prefix(node, buf, pos)
    return _children_prefix(node.children, buf, pos)


def _children_prefix(children: tuple[TypeNode, ...], buf: memoryview, pos: int) -> tuple[int, State]:
    states = []
    for child in children:
        pos, state = _prefix(child, buf, pos)
        states.append(state)
    return pos, tuple(states)


def _dynamic_prefix(buf: memoryview, pos: int) -> tuple[int, State]:
    version = _u64(buf, pos)[0]
    pos += 8
    if version not in (1, 2):
        raise StoreError(NOT_IMPLEMENTED, f"Dynamic serialization version {version} cannot be re-framed")
    if version == 1:
        _, pos = _varint(buf, pos)  # max_dynamic_types
    count, pos = _varint(buf, pos)
    names = []
    for _ in range(count):
        name, pos = _string(buf, pos)
        names.append(name)
    # The values travel as a Variant of the listed types plus SharedVariant, sorted by name.
    variant = TypeNode(
        "Variant",
        tuple(_STRING if n == "SharedVariant" else parse_type(n) for n in sorted([*names, "SharedVariant"])),
    )
    pos, state = _prefix(variant, buf, pos)
    return pos, (variant, state)


def _json_prefix(node: TypeNode, buf: memoryview, pos: int) -> tuple[int, State]:
    version = _u64(buf, pos)[0]
    pos += 8
    if version == 1:  # serialized as one JSON string per row
        return pos, ("string",)
    if version not in (0, 2):
        raise StoreError(NOT_IMPLEMENTED, f"JSON serialization version {version} cannot be re-framed")
    if version == 0:
        _, pos = _varint(buf, pos)  # max_dynamic_paths
    count, pos = _varint(buf, pos)
    for _ in range(count):
        _, pos = _string(buf, pos)
    pos, typed = _children_prefix(node.children, buf, pos)
    dynamic = []
    for _ in range(count):
        pos, state = _dynamic_prefix(buf, pos)
        dynamic.append(state)
    return pos, ("paths", typed, tuple(dynamic))


def _data(node: TypeNode, state: State, buf: memoryview, pos: int, rows: int) -> int:
    """Walk ``rows`` rows of a column's data; the position after them."""
    family = node.family
    if node.width:
        return pos + node.width * rows
    if family == "String":
        for _ in range(rows):
            length, pos = _varint(buf, pos)
            pos += length
        return pos
    if family == "Nullable":
        return _data(node.children[0], state[0], buf, pos + rows, rows)
    if family in ("Array", "Map"):
        if rows == 0:
            return pos
        nested = _u64(buf, pos + 8 * (rows - 1))[0]
        pos += 8 * rows
        if nested:
            children = node.children if family == "Map" else node.children[:1]
            for child, child_state in zip(children, state, strict=False):
                pos = _data(child, child_state, buf, pos, nested)
        return pos
    if family == "Tuple":
        for child, child_state in zip(node.children, state, strict=True):
            pos = _data(child, child_state, buf, pos, rows)
        return pos
    if family == "LowCardinality":
        return _low_cardinality(node, buf, pos, rows)
    if family == "Variant":
        return _variant(node, state, buf, pos, rows)
    if family == "Dynamic":
        return _data(state[0], state[1], buf, pos, rows)
    if family == "JSON":
        return _json(node, state, buf, pos, rows)
    raise StoreError(NOT_IMPLEMENTED, f"cannot walk Native column of type {family}")


def _variant(node: TypeNode, state: State, buf: memoryview, pos: int, rows: int) -> int:
    counts = [0] * len(node.children)
    for discriminator in bytes(buf[pos : pos + rows]):
        if discriminator != 255:  # 255: NULL
            counts[discriminator] += 1
    pos += rows
    for child, child_state, count in zip(node.children, state, counts, strict=True):
        if count:
            pos = _data(child, child_state, buf, pos, count)
    return pos


def _json(node: TypeNode, state: State, buf: memoryview, pos: int, rows: int) -> int:
    if state[0] == "string":
        return _data(_STRING, (), buf, pos, rows)
    _, typed, dynamic = state
    for child, child_state in zip(node.children, typed, strict=True):
        pos = _data(child, child_state, buf, pos, rows)
    for variant, variant_state in dynamic:
        pos = _data(variant, variant_state, buf, pos, rows)
    return _data(_SHARED_DATA, (((), ()),), buf, pos, rows) if rows else pos


def _low_cardinality(node: TypeNode, buf: memoryview, pos: int, rows: int) -> int:
    if rows == 0:
        return pos
    flags = _u64(buf, pos)[0]
    pos += 8
    if flags & (1 << 8) or not flags & (1 << 9):
        raise StoreError(NOT_IMPLEMENTED, "LowCardinality with a shared dictionary cannot be re-framed")
    keys = _u64(buf, pos)[0]
    inner = node.children[0]
    if inner.family == "Nullable":
        inner = inner.children[0]
    pos = _data(inner, (), buf, pos + 8, keys)
    count = _u64(buf, pos)[0]
    return pos + 8 + count * (1 << (flags & 0xFF))


_BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"


def _type_name(buf: memoryview, pos: int) -> tuple[str, int, int]:
    """A column's type name, where its length starts and where it ends."""
    start = pos
    length, pos = _varint(buf, pos)
    return bytes(buf[pos : pos + length]).decode(), start, pos + length


def upgrade_native(data: bytes, revision: int, types: list[str] | None = None) -> bytes:
    """Re-frame a revision-0 Native stream for a client that asked for ``revision``.

    ``types``: the result's column types (:func:`result_types`), used to give
    top-level DateTime columns back their time zone; ``None`` leaves the names.
    """
    if revision <= 0 or not data:
        return data
    buf = memoryview(data)
    out = bytearray()
    pos = 0
    cache: dict[str, TypeNode] = {}
    zoned = types if types is not None and revision >= REVISION_WITH_DATETIME_TIME_ZONE else None
    try:
        while pos < len(buf):
            out += _BLOCK_INFO
            start = pos
            columns, pos = _varint(buf, pos)
            rows, pos = _varint(buf, pos)
            out += buf[start:pos]
            for index in range(columns):
                start = pos
                length, pos = _varint(buf, pos)
                pos += length
                type_name, type_start, pos = _type_name(buf, pos)
                out += buf[start:type_start]
                if type_name == "DateTime" and zoned is not None and index < len(zoned):
                    type_name = zoned[index] if zoned[index].startswith("DateTime(") else type_name
                encoded = type_name.encode()
                out += _varint_bytes(len(encoded)) + encoded
                if revision >= REVISION_WITH_CUSTOM_SERIALIZATION:
                    out.append(0)
                if rows:
                    start = pos
                    pos = _measure(type_name, cache, revision, buf, pos, rows)
                    out += buf[start:pos]
    except (IndexError, struct.error, ValueError) as exc:
        raise StoreError(NOT_IMPLEMENTED, f"cannot re-frame Native output: truncated stream ({exc})") from exc
    return bytes(out)


def _measure(
    type_name: str, cache: dict[str, TypeNode], revision: int, buf: memoryview, pos: int, rows: int
) -> int:
    node = cache.get(type_name)
    if node is None:
        node = cache[type_name] = parse_type(type_name)
        if revision < REVISION_WITH_LOW_CARDINALITY and "LowCardinality" in type_name:
            raise StoreError(NOT_IMPLEMENTED, "LowCardinality needs client_protocol_version >= 54405")
        if revision >= REVISION_WITH_V2_DYNAMIC_AND_JSON and ("Dynamic" in type_name or "JSON" in type_name):
            raise StoreError(
                NOT_IMPLEMENTED,
                f"Dynamic and JSON columns are sent for client_protocol_version < "
                f"{REVISION_WITH_V2_DYNAMIC_AND_JSON} only",
            )
    pos, state = _prefix(node, buf, pos)
    pos = _data(node, state, buf, pos, rows)
    if pos > len(buf):
        raise IndexError(pos)
    return pos


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def needs_types(data: bytes, revision: int) -> bool:
    """Whether the stream has a top-level ``DateTime`` column whose time zone the engine may have dropped."""
    if revision < REVISION_WITH_DATETIME_TIME_ZONE or not data:
        return False
    return b"\x08DateTime" in data[:65536]


class Reframer:
    """Re-frames each Native block for ``revision``; asks for the result's types only when needed.

    Why lazily and elsewhere: a DESCRIBE costs a second analysis of the query,
    needed only when a block has a top-level DateTime column; and it cannot run
    on the request's own connection once the query streams. ``connect`` opens
    a scratch connection, put in ``database`` (the request's current one).
    """

    def __init__(
        self,
        revision: int,
        connect: Callable[[], Any],
        database: str,
        canonical: str,
        tree: Any,
        binds: dict[str, str],
    ) -> None:
        self.revision = revision
        self._describe = (connect, database, canonical, tree, binds)
        self._types: list[str] | None = None
        self._asked = False

    def __call__(self, data: bytes) -> bytes:
        if not self._asked and needs_types(data, self.revision):
            self._asked = True
            self._types = self._result_types()
        return upgrade_native(data, self.revision, self._types)

    def _result_types(self) -> list[str] | None:
        connect, database, canonical, tree, binds = self._describe
        try:
            conn = connect()
        except Exception:
            return None
        try:
            conn.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")
            return result_types(conn, canonical, tree, binds)
        except Exception:  # no types (e.g. an external data table): the engine's names go out
            return None
        finally:
            with contextlib.suppress(Exception):
                conn.close()


def current_database(conn: Any) -> str:
    """The connection's current database (what unqualified names in the query resolve in)."""
    return str(conn.query("SELECT currentDatabase()", "TabSeparatedRaw").bytes().decode().rstrip("\n"))


def result_types(conn: Any, canonical: str, tree: Any, binds: dict[str, str]) -> list[str] | None:
    """The column types of a SELECT as the engine describes it (``None`` for other statements).

    Why a DESCRIBE: the engine's Native output drops a top-level DateTime's time
    zone (what a server does for revision-0 clients); the analyser still knows it.
    A trailing ``FORMAT x`` is taken off the engine's own canonical text, which
    prints it last (the policy refuses query-level SETTINGS and INTO OUTFILE).
    """
    if getattr(tree, "kind", "") != "SelectWithUnionQuery":
        return None
    text = canonical
    tail = [child for child in tree.children[1:] if child.kind == "Identifier"]
    if tail:
        suffix = f" FORMAT {tail[-1].name}"
        if not text.endswith(suffix):
            return None
        text = text[: -len(suffix)]
    sql = f"DESCRIBE TABLE ({text})".encode("utf-8", "surrogateescape")  # literals may hold any bytes
    rows = conn.query(sql, "JSONCompactEachRow", params=binds).bytes()
    return [json.loads(line)[1] for line in rows.decode("utf-8", "replace").splitlines() if line]
