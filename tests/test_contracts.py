"""The Avro data contracts: wire format, schema conventions, and the BACKWARD checker.

The checker tests state one Avro resolution rule each, as an (old, new) schema
pair with the verdict the specification gives; every one of them fails if that
rule is dropped or inverted. A property test compares the pure resolution rules
with the reference implementation in the Apache ``avro`` package.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citystream import contracts
from citystream.contracts import check_backward, resolution_issues
from citystream.errors import UserError
from citystream.settings import ROOT

NAMES = contracts.names()
RESULT_RECORDS = ["Anomaly", "Alert", "SensorHealth", "LateEvent", "DeadLetter", "Label"]

# --------------------------------------------------------------------------- schema files


def test_every_expected_schema_exists() -> None:
    short = {n.rpartition(".")[2] for n in NAMES}
    assert {"Envelope", "GridReading", "TrafficReading", "WaterReading", "WindowAggregate"} <= short
    assert set(RESULT_RECORDS) <= short


def _fields(node: Any, seen: set[str]) -> list[tuple[str, dict]]:
    """(record name, field) for every field of every record reachable from ``node``."""
    if isinstance(node, list):
        return [item for branch in node for item in _fields(branch, seen)]
    if isinstance(node, str):
        return []
    out = []
    if node.get("type") == "record" and node["name"] not in seen:
        seen.add(node["name"])
        for field in node["fields"]:
            out.append((node["name"], field))
            out += _fields(field["type"], seen)
    elif node.get("type") == "array":
        out += _fields(node["items"], seen)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_record_and_field_has_a_doc(name: str) -> None:
    schema = contracts.schema(name)
    assert schema.get("doc", "").strip(), f"{name} has no doc"
    for record, field in _fields(schema, set()):
        assert field.get("doc", "").strip(), f"{record}.{field['name']} has no doc"


@pytest.mark.parametrize("name", NAMES)
def test_flink_sql_can_mirror_every_schema(name: str) -> None:
    assert contracts.flink_violations(contracts.schema(name)) == []


@pytest.mark.parametrize("name", [f"citystream.{n}" for n in RESULT_RECORDS])
def test_result_record_fields_that_may_change_have_defaults(name: str) -> None:
    """Result records' descriptive fields carry defaults so they can be replaced or dropped later."""
    descriptive = {"severity", "explanation", "details", "error", "observed", "expected", "score", "source"}
    for _, field in _fields(contracts.schema(name), set()):
        if field["name"] in descriptive:
            assert "default" in field, f"{name}.{field['name']} has no default"


def test_file_name_must_match_the_record_name() -> None:
    text = json.dumps({"type": "record", "name": "A", "namespace": "x", "fields": []})
    assert contracts.load_texts({"x.A.avsc": text})
    with pytest.raises(UserError, match=r"file name must be x\.A\.avsc"):
        contracts.load_texts({"x.B.avsc": text})


def test_references_to_other_files_are_inlined_once() -> None:
    standalone = contracts.schema("GridReading")
    envelope = standalone["fields"][0]["type"]
    assert envelope["name"] == "citystream.Envelope"
    assert envelope["fields"][0]["name"] == "sensor_id"


def test_unknown_reference_is_a_user_error() -> None:
    text = json.dumps(
        {"type": "record", "name": "A", "namespace": "x", "fields": [{"name": "b", "type": "x.Nope"}]}
    )
    with pytest.raises(UserError, match=r"unknown type 'x\.Nope'"):
        contracts.load_texts({"x.A.avsc": text})


def test_invalid_default_is_a_user_error() -> None:
    bad = {"type": "record", "name": "A", "fields": [{"name": "b", "type": "int", "default": "x"}]}
    with pytest.raises(UserError, match="invalid Avro schema"):
        contracts.parse(bad)


def test_unknown_schema_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"unknown schema 'Nope'; known: citystream\.Alert"):
        contracts.encode("Nope", {})


# --------------------------------------------------------------------------- wire format


def _strategy(node: Any, index: dict[str, dict]) -> st.SearchStrategy[Any]:
    """Values valid for ``node``, derived from the schema itself."""
    if isinstance(node, list):
        return st.one_of([_strategy(b, index) for b in node])
    if isinstance(node, str) and node in index:
        node = index[node]
    kind = node if isinstance(node, str) else node["type"]
    if isinstance(kind, dict | list):
        return _strategy(kind, index)
    simple = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=20),
        "bytes": st.binary(max_size=20),
    }
    if kind in simple:
        return simple[kind]
    if kind == "array":
        return st.lists(_strategy(node["items"], index), max_size=4)
    if kind == "record":
        index[node["name"]] = node
        return st.fixed_dictionaries({f["name"]: _strategy(f["type"], index) for f in node["fields"]})
    raise AssertionError(f"no strategy for {kind}")


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_schema_round_trips(name: str, data: st.DataObject) -> None:
    records = data.draw(st.lists(_strategy(contracts.schema(name), {}), min_size=1, max_size=3))
    encoded = [contracts.encode(name, r) for r in records]
    assert [contracts.decode(name, b) for b in encoded] == records
    assert contracts.encode_many(name, records) == encoded


def test_encoding_is_bare_avro_without_header() -> None:
    """What Flink's avro format reads: the first byte is already the first field."""
    record = {
        "domain": "grid",
        "key_kind": "sensor",
        "key_id": "s1",
        "metric": "voltage_v",
        "window_start": 1_700_000_000_000,
        "window_end": 1_700_000_060_000,
        "samples": 3,
        "mean": 230.0,
        "min": 229.0,
        "max": 231.0,
    }
    data = contracts.encode("WindowAggregate", record)
    assert data.startswith(b"\x08grid\x0csensor\x04s1")  # zig-zag string lengths 4, 6, 2
    decoded = contracts.decode("WindowAggregate", data)
    assert decoded == {**record, "late": 0, "duplicates": 0, "revision": 0}


def test_timestamps_accept_datetimes_and_decode_to_epoch_millis() -> None:
    from datetime import UTC, datetime

    label = {
        "label_id": "l1",
        "domain": "water",
        "kind": "leak",
        "start_time": datetime(2024, 1, 1, tzinfo=UTC),
        "end_time": 1_704_070_800_000,
    }
    decoded = contracts.decode("Label", contracts.encode("Label", label))
    assert decoded["start_time"] == 1_704_067_200_000
    assert decoded["end_time"] == 1_704_070_800_000


def test_encode_rejects_unknown_and_missing_fields() -> None:
    with pytest.raises(ValueError, match="more fields than the schema specifies: typo"):
        contracts.encode("Label", {"typo": 1})
    with pytest.raises(ValueError, match="label_id"):
        contracts.encode("Label", {"domain": "grid"})


def test_decode_rejects_truncated_and_trailing_bytes() -> None:
    data = contracts.encode("SensorHealth", {"sensor_id": "s", "status": "ok", "since": 0})
    with pytest.raises(ValueError, match="ends early"):
        contracts.decode("SensorHealth", data[:-1])
    with pytest.raises(ValueError, match="1 bytes left over"):
        contracts.decode("SensorHealth", data + b"\x00")
    with pytest.raises(ValueError, match="cannot decode NoneType"):
        contracts.decode("SensorHealth", None)  # type: ignore[arg-type]  # a tombstone


def test_decode_resolves_data_written_with_an_older_schema() -> None:
    old = contracts.schema("SensorHealth")
    old["fields"] = [f for f in old["fields"] if f["name"] != "details"]
    old_record = {"sensor_id": "s", "site_id": "", "zone_id": "", "domain": "", "status": "ok", "since": 5}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, contracts.parse(old), old_record)
    data = buf.getvalue()
    assert contracts.decode("SensorHealth", data, writer=old) == {**old_record, "details": ""}


def test_kafka_serializer_pair() -> None:
    ser, de = contracts.serializer("Alert"), contracts.deserializer("Alert")
    alert = {"alert_id": "a", "state": "open", "domain": "grid", "kind": "voltage_sag"}
    alert |= {"first_seen": 1, "last_seen": 2}
    assert de(ser(alert))["affected_keys"] == []
    assert ser(None) is None  # tombstones on the compacted topics pass through
    assert de(None) is None


# --------------------------------------------------------------------------- BACKWARD rules


def rec(*fields: dict, name: str = "R", **extra: Any) -> dict:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def f(name: str, type_: Any, **extra: Any) -> dict:
    return {"name": name, "type": type_, **extra}


def rules(new: dict, old: dict) -> list[tuple[str, str]]:
    return [(i.path, i.rule) for i in check_backward(new, old)]


TS = {"type": "long", "logicalType": "timestamp-millis"}
INNER = rec(f("x", "int"), name="Inner")


def test_identical_schema_is_compatible() -> None:
    schema = rec(f("a", "int"), f("b", ["null", "string"], default=None))
    assert rules(schema, copy.deepcopy(schema)) == []


def test_removed_field_is_compatible() -> None:
    assert rules(rec(f("a", "int")), rec(f("a", "int"), f("b", "string"))) == []


def test_field_added_with_default_is_compatible() -> None:
    assert rules(rec(f("a", "int"), f("b", "string", default="")), rec(f("a", "int"))) == []


def test_field_added_without_default_is_rejected() -> None:
    assert rules(rec(f("a", "int"), f("b", "string")), rec(f("a", "int"))) == [
        ("R.b", "field-added-without-default")
    ]


def test_removing_a_default_from_a_field_old_data_has_is_compatible() -> None:
    assert rules(rec(f("a", "int")), rec(f("a", "int", default=0))) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    ],
)
def test_permitted_promotion_is_compatible(old: str, new: str) -> None:
    assert rules(rec(f("a", new)), rec(f("a", old))) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("long", "int"),
        ("double", "float"),
        ("float", "long"),
        ("double", "long"),
        ("int", "string"),
        ("string", "int"),
        ("boolean", "int"),
        ("null", "string"),
    ],
)
def test_narrowing_or_unrelated_type_change_is_rejected(old: str, new: str) -> None:
    assert rules(rec(f("a", new)), rec(f("a", old))) == [("R.a", "type-changed")]


def test_making_a_field_nullable_is_compatible() -> None:
    assert rules(rec(f("a", ["null", "double"], default=None)), rec(f("a", "double"))) == []


def test_making_a_nullable_field_required_is_rejected() -> None:
    issues = check_backward(rec(f("a", "double")), rec(f("a", ["null", "double"], default=None)))
    assert [(i.path, i.rule) for i in issues] == [("R.a", "union-branch-missing")]
    assert "old data may hold null" in issues[0].detail


def test_union_gaining_a_branch_is_compatible() -> None:
    assert rules(rec(f("a", ["null", "int", "string"])), rec(f("a", ["null", "int"]))) == []


def test_union_losing_a_branch_is_rejected() -> None:
    assert rules(rec(f("a", ["null", "string"])), rec(f("a", ["null", "int", "string"]))) == [
        ("R.a", "union-branch-missing")
    ]


def test_union_branch_promotion_is_compatible() -> None:
    assert rules(rec(f("a", ["null", "long"])), rec(f("a", ["null", "int"]))) == []


def test_array_items_follow_the_rules() -> None:
    old = rec(f("a", {"type": "array", "items": "int"}))
    assert rules(rec(f("a", {"type": "array", "items": "long"})), old) == []
    assert rules(rec(f("a", {"type": "array", "items": "string"})), old) == [("R.a[]", "type-changed")]


def test_array_to_scalar_is_rejected() -> None:
    assert rules(rec(f("a", "string")), rec(f("a", {"type": "array", "items": "string"}))) == [
        ("R.a", "type-changed")
    ]


def test_map_values_follow_the_rules() -> None:
    old = rec(f("m", {"type": "map", "values": "long"}))
    assert rules(rec(f("m", {"type": "map", "values": "double"})), old) == []
    assert rules(rec(f("m", {"type": "map", "values": "int"})), old) == [("R.m{}", "type-changed")]


def test_nested_record_is_checked_field_by_field() -> None:
    old = rec(f("inner", INNER))
    grown = rec(f("inner", rec(f("x", "int"), f("y", "int", default=0), name="Inner")))
    assert rules(grown, old) == []
    broken = rec(f("inner", rec(f("x", "int"), f("y", "int"), name="Inner")))
    assert rules(broken, old) == [("R.inner.y", "field-added-without-default")]


def test_nested_record_inside_a_nullable_union_names_the_inner_field() -> None:
    old = rec(f("inner", ["null", INNER], default=None))
    new = rec(f("inner", ["null", rec(f("x", "long"), f("y", "int"), name="Inner")], default=None))
    assert rules(new, old) == [("R.inner.y", "field-added-without-default")]


def test_renamed_record_is_rejected_unless_aliased() -> None:
    old = rec(f("inner", INNER))
    renamed = rec(f("inner", rec(f("x", "int"), name="Other")))
    assert rules(renamed, old) == [("R.inner", "name-changed")]
    aliased = rec(f("inner", rec(f("x", "int"), name="Other", aliases=["Inner"])))
    assert rules(aliased, old) == []


def test_renamed_field_needs_an_alias() -> None:
    old = rec(f("a", "int"))
    assert rules(rec(f("b", "int")), old) == [("R.b", "field-added-without-default")]
    assert rules(rec(f("b", "int", aliases=["a"])), old) == []


def test_references_by_name_are_followed() -> None:
    old = rec(f("first", INNER), f("second", "Inner"))
    new = rec(f("first", rec(f("x", "int"), name="Inner")), f("second", "Inner"))
    assert rules(new, old) == []
    new_bad = rec(f("first", rec(f("x", "string"), name="Inner")), f("second", "Inner"))
    assert ("R.first.x", "type-changed") in rules(new_bad, old)


def test_recursive_record_terminates() -> None:
    node = rec(f("value", "int"), f("next", ["null", "Node"], default=None), name="Node")
    grown = rec(
        f("value", "long"),
        f("next", ["null", "Node"], default=None),
        f("tag", "string", default=""),
        name="Node",
    )
    assert rules(grown, node) == []


def test_enum_symbols_removed_are_rejected_unless_the_reader_has_a_default() -> None:
    old = rec(f("e", {"type": "enum", "name": "E", "symbols": ["A", "B"]}))
    assert rules(rec(f("e", {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]})), old) == []
    assert rules(rec(f("e", {"type": "enum", "name": "E", "symbols": ["A"]})), old) == [
        ("R.e", "enum-symbol-removed")
    ]
    with_default = {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}
    assert rules(rec(f("e", with_default)), old) == []


def test_fixed_size_change_is_rejected() -> None:
    old = rec(f("h", {"type": "fixed", "name": "H", "size": 16}))
    assert rules(rec(f("h", {"type": "fixed", "name": "H", "size": 32})), old) == [
        ("R.h", "fixed-size-changed")
    ]


def test_changed_default_and_doc_are_compatible() -> None:
    old = rec(f("a", "int", default=1, doc="one"))
    assert rules(rec(f("a", "int", default=2, doc="two")), old) == []


def test_logical_type_change_is_rejected_by_the_project_rule_only() -> None:
    old = rec(f("t", TS))
    micros = rec(f("t", {"type": "long", "logicalType": "timestamp-micros"}))
    assert rules(micros, old) == [("R.t", "logical-type-changed")]
    assert rules(rec(f("t", "long")), old) == [("R.t", "logical-type-changed")]
    assert resolution_issues(micros, old) == []  # Avro itself resolves the bytes


def test_reordered_fields_are_rejected_by_the_project_rule_only() -> None:
    old = rec(f("a", "int"), f("b", "int"))
    swapped = rec(f("b", "int"), f("a", "int"))
    assert rules(swapped, old) == [("R.a", "field-order-changed")]
    assert resolution_issues(swapped, old) == []


def test_new_field_in_the_middle_is_rejected_by_the_project_rule() -> None:
    old = rec(f("a", "int"), f("b", "int"))
    middle = rec(f("a", "int"), f("n", "int", default=0), f("b", "int"))
    assert rules(middle, old) == [("R.n", "field-order-changed")]
    assert rules(rec(f("a", "int"), f("b", "int"), f("n", "int", default=0)), old) == []


def test_incompatibility_message_names_path_rule_and_fix() -> None:
    (issue,) = check_backward(rec(f("a", "int"), f("b", "string")), rec(f("a", "int")))
    assert str(issue).startswith("R.b: field-added-without-default: new field 'b' has no default")
    assert "give it a default" in str(issue)


@pytest.mark.parametrize("name", NAMES)
def test_every_project_schema_is_compatible_with_itself(name: str) -> None:
    schema = contracts.schema(name)
    assert check_backward(schema, copy.deepcopy(schema)) == []


def test_changing_the_shared_envelope_is_caught_in_every_reading() -> None:
    texts = {p.name: p.read_text() for p in (ROOT / "avro").glob("*.avsc")}
    old = contracts.load_texts(texts)
    envelope = json.loads(texts["citystream.Envelope.avsc"])
    next(fl for fl in envelope["fields"] if fl["name"] == "seq")["type"] = "int"
    new = contracts.load_texts({**texts, "citystream.Envelope.avsc": json.dumps(envelope)})
    for reading in ("GridReading", "TrafficReading", "WaterReading"):
        full = f"citystream.{reading}"
        assert rules(new[full], old[full]) == [(f"{reading}.envelope.seq", "type-changed")]


# --------------------------------------------------------------------------- Flink rules


@pytest.mark.parametrize(
    ("type_", "message"),
    [
        ({"type": "enum", "name": "E", "symbols": ["A"]}, "enum is not allowed"),
        ({"type": "map", "values": "int"}, "map is not allowed"),
        ({"type": "fixed", "name": "F", "size": 4}, "fixed is not allowed"),
        (["int", "null"], "is not ['null', X]"),
        (["null", "int", "string"], "is not ['null', X]"),
        ({"type": "long", "logicalType": "timestamp-micros"}, "timestamp-micros on long is not allowed"),
        ({"type": "array", "items": {"type": "map", "values": "int"}}, "R.a[]: map is not allowed"),
    ],
)
def test_flink_rules_reject_shapes_a_ddl_cannot_produce(type_: Any, message: str) -> None:
    problems = contracts.flink_violations(rec(f("a", type_)))
    assert len(problems) == 1
    assert message in problems[0]


def test_flink_rules_want_null_defaults_on_nullable_fields() -> None:
    problems = contracts.flink_violations(rec(f("a", ["null", "int"], default=1)))
    assert problems == ["R.a: default of a ['null', X] field must be null"]


def test_flink_rules_accept_what_a_ddl_produces() -> None:
    ok = rec(
        f("a", ["null", "double"]),
        f("t", TS),
        f("l", {"type": "array", "items": "string"}),
        f("n", ["null", rec(f("x", "int"), name="N")]),
    )
    assert contracts.flink_violations(ok) == []


# --------------------------------------------------------------------------- reference agreement

PRIMITIVE_TYPES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
ZERO = {
    "null": None,
    "boolean": False,
    "int": 0,
    "long": 0,
    "float": 0.0,
    "double": 0.0,
    "bytes": "",
    "string": "",
}


def _zero(type_: Any) -> Any:
    if isinstance(type_, list):
        return _zero(type_[0])
    if isinstance(type_, str):
        return ZERO[type_]
    if type_["type"] == "array":
        return []
    return {fl["name"]: _zero(fl["type"]) for fl in type_["fields"]}


@st.composite
def _types(draw: st.DrawFn, depth: int) -> Any:
    """A primitive, a union of primitives, or (nested) arrays of those."""
    choice = draw(st.integers(0, 2 if depth else 1))
    if choice == 0:
        return draw(st.sampled_from(PRIMITIVE_TYPES))
    if choice == 1:
        return draw(st.lists(st.sampled_from(PRIMITIVE_TYPES), min_size=1, max_size=3, unique=True))
    return {"type": "array", "items": draw(_types(depth - 1))}


@st.composite
def _record_types(draw: st.DrawFn, depth: int, path: str = "") -> dict:
    """Records of such types and nested records; names follow the path, so they are unique,
    and sometimes differ between two draws (R... vs S...) to exercise the name rule."""
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4, unique=True))
    fields = []
    for name in names:
        nested = depth and draw(st.booleans())
        type_ = draw(_record_types(depth - 1, f"{path}_{name}")) if nested else draw(_types(1))
        field: dict[str, Any] = {"name": name, "type": type_}
        if draw(st.booleans()):
            field["default"] = _zero(type_)
        fields.append(field)
    prefix = draw(st.sampled_from(["R", "R", "R", "S"]))
    return {"type": "record", "name": f"{prefix}{path}", "fields": fields}


def _reference_compatible(reader: dict, writer: dict) -> bool:
    checker = ReaderWriterCompatibilityChecker()
    result = checker.get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    return result.compatibility is SchemaCompatibilityType.compatible


@settings(max_examples=300, deadline=None)
@given(reader=_record_types(2), writer=_record_types(2))
def test_resolution_rules_agree_with_the_apache_reference(reader: dict, writer: dict) -> None:
    ours = resolution_issues(reader, writer) == []
    assert ours == _reference_compatible(reader, writer), resolution_issues(reader, writer)


# --------------------------------------------------------------------------- .ci/check_schemas.py

SCRIPT = ROOT / ".ci" / "check_schemas.py"


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        check=True,
        capture_output=True,
    )


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--repo", str(repo), *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repo whose main branch holds the project's schemas, checked out on a feature branch."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "avro", repo / "avro")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "avro")
    _git(repo, "commit", "-q", "-m", "schemas")
    _git(repo, "checkout", "-q", "-b", "feature")
    return repo


def _edit(repo: Path, name: str, change: Any) -> None:
    path = repo / "avro" / f"citystream.{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema, indent=2))


def test_script_passes_without_a_main_branch(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "avro", tmp_path / "avro")
    _git(tmp_path, "init", "-q", "-b", "trunk")
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no main or origin/main branch" in result.stdout


def test_script_passes_when_identical(repo: Path) -> None:
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert "identical to main" in result.stdout


def test_script_accepts_a_compatible_change_and_a_new_file(repo: Path) -> None:
    _edit(
        repo, "Alert", lambda s: s["fields"].append({"name": "n", "type": "long", "default": 0, "doc": "x"})
    )
    new = {"type": "record", "name": "Extra", "namespace": "citystream", "doc": "d", "fields": []}
    (repo / "avro" / "citystream.Extra.avsc").write_text(json.dumps(new))
    result = _run(repo)
    assert result.returncode == 0, result.stderr
    assert "changed   (backward compatible) citystream.Alert" in result.stdout
    assert "new      citystream.Extra" in result.stdout


def test_script_rejects_a_field_without_default_naming_field_and_rule(repo: Path) -> None:
    _edit(repo, "Anomaly", lambda s: s["fields"].append({"name": "n", "type": "long", "doc": "x"}))
    result = _run(repo)
    assert result.returncode == 1
    assert "avro/citystream.Anomaly.avsc: Anomaly.n: field-added-without-default" in result.stderr


def test_script_sees_a_change_to_a_referenced_schema(repo: Path) -> None:
    def narrow(schema: dict) -> None:
        next(fl for fl in schema["fields"] if fl["name"] == "seq")["type"] = "int"

    _edit(repo, "Envelope", narrow)
    result = _run(repo)
    assert result.returncode == 1
    assert "avro/citystream.GridReading.avsc: GridReading.envelope.seq: type-changed" in result.stderr


def test_script_falls_back_to_origin_main(repo: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    # the clone's only local branch is the checked-out "feature"; main exists only as origin/main
    has_main = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--verify", "--quiet", "main"], check=False
    )
    assert has_main.returncode != 0
    _edit(clone, "Label", lambda s: s["fields"].append({"name": "n", "type": "int", "doc": "x"}))
    result = _run(clone)
    assert result.returncode == 1
    assert "Label.n: field-added-without-default" in result.stderr


def test_script_rejects_a_schema_flink_cannot_mirror(repo: Path) -> None:
    _edit(
        repo,
        "Alert",
        lambda s: s["fields"].append(
            {"name": "m", "type": {"type": "map", "values": "int"}, "default": {}, "doc": "x"}
        ),
    )
    result = _run(repo)
    assert result.returncode == 1
    assert "Alert.m: map is not allowed" in result.stderr


def test_script_exits_2_on_unreadable_schema(repo: Path) -> None:
    (repo / "avro" / "citystream.Alert.avsc").write_text("{not json")
    result = _run(repo)
    assert result.returncode == 2
    assert "citystream.Alert.avsc: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
