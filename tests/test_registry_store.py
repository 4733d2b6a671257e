"""The sensor registry in the store: migration 0007, the real loader from a real topic, the current view.

Real broker (the session ``kafka``), the real store server (the session
``store``, chdb), the real loader; a database and topic prefix of its own per
test. Sensor records are encoded with the project's Avro contracts. Fixed
epochs; waits only guard against hangs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from citystream import contracts
from citystream.connectors.loader import ROUTES, routes
from citystream.connectors.loader.tombstones import Tombstone
from citystream.settings import Settings

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
DAY = 86_400_000
CHANNEL = {"name": "flow_lps", "unit": "L/s", "type": "continuous", "min": 0.0, "max": 500.0}


def sensor(sensor_id: str, **changes: Any) -> dict[str, Any]:
    """A valid Sensor record (avro/citystream.Sensor.avsc) with ``changes`` applied."""
    record: dict[str, Any] = {
        "sensor_id": sensor_id,
        "domain": "water",
        "kind": "flow",
        "channels": [CHANNEL],
        "site_id": f"site-{sensor_id}",
        "site_name": f"Pumping station {sensor_id}",
        "zone_id": "dma-north",
        "zone_name": "North DMA",
        "areas": ["district-north", "city"],
        "lat": 52.37,
        "lon": 4.89,
        "installed_at": T0,
        "retired_at": None,
        "status": "active",
        "owner": "water",
        "tags": ["vendor=acme"],
        "valid_from": T0,
    }
    record.update(changes)
    return record


def encoded(record: dict[str, Any]) -> tuple[bytes, bytes]:
    return record["sensor_id"].encode(), contracts.encode("citystream.Sensor", record)


# --------------------------------------------------------------------------- unit: no servers


def test_sensors_topic_routes_to_the_sensors_table_and_deletes_on_tombstones() -> None:
    assert ROUTES["sensors"] == ("citystream.Sensor", "sensors")
    (route,) = [r for r in routes(Settings(topic_prefix="x.")) if r.table == "sensors"]
    assert route.topic == "x.sensors"
    assert route.columns[:4] == ("sensor_id", "domain", "kind", "channels")
    assert route.timestamp_columns == ("installed_at", "retired_at", "valid_from")
    assert route.tombstone is not None
    others = [r for r in routes(Settings()) if r.table != "sensors"]
    assert all(r.tombstone is None for r in others)  # their tombstones stay skipped


def test_a_tombstone_becomes_a_deletion_record_of_its_key() -> None:
    tomb = Tombstone("citystream.Sensor", "sensor_id", {"status": "deleted"})
    record = contracts.decode("citystream.Sensor", tomb.value(b"w-9") or b"")
    assert record["sensor_id"] == "w-9" and record["status"] == "deleted"
    assert record["channels"] == [] and record["lat"] is None and record["site_name"] == ""
    assert tomb.value(None) is None  # a keyless tombstone names nothing to delete
    assert tomb.value(b"\xff\xfe") is None


# --------------------------------------------------------------------------- against the real store


@pytest.fixture
def registry(kafka: Any, store: Any) -> Iterator[Settings]:
    """Settings with a topic prefix and a database of their own, migrated."""
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    tag = uuid.uuid4().hex[:8]
    settings = kafka.settings_.replace(topic_prefix=f"rg{tag}.", clickhouse_database=f"rg_{tag}")
    migrate(settings)
    yield settings
    client = connect(settings, database=None)
    try:
        client.command(f"DROP DATABASE IF EXISTS rg_{tag}")
    finally:
        client.close()


def _query(settings: Settings, sql: str, *, readonly: bool = False) -> list[tuple]:
    from citystream.store.client import connect

    client = connect(settings, readonly=readonly)
    try:
        return [tuple(r) for r in client.query(sql).result_rows]
    finally:
        client.close()


def _produce(settings: Settings, pairs: list[tuple[bytes, bytes | None]]) -> None:
    from tests.test_loader import produce

    produce(settings, {"sensors": pairs})


def _load(settings: Settings, group: str) -> Any:
    from citystream.connectors.loader import load

    return load(settings, until_end=True, group_id=f"citystream-loader-{group}", batch_ms=200)


@pytest.mark.integration
def test_migration_creates_the_registry_table_and_view(registry: Settings) -> None:
    db = registry.clickhouse_database
    (engine,) = _query(
        registry, f"SELECT engine_full FROM system.tables WHERE database = '{db}' AND name = 'sensors'"
    )
    assert engine[0].startswith("ReplacingMergeTree(loaded_at, is_deleted)")
    columns = dict(
        _query(
            registry, f"SELECT name, type FROM system.columns WHERE database = '{db}' AND table = 'sensors'"
        )
    )
    fields = [f["name"] for f in contracts.schema("citystream.Sensor")["fields"]]
    assert set(fields) | {"is_deleted", "loaded_at"} == set(columns)
    assert columns["channels"].startswith("Array(Tuple(name String, unit String, type String")
    assert columns["lat"] == "Nullable(Float64)"
    view = _query(
        registry, f"SELECT name FROM system.columns WHERE database = '{db}' AND table = 'sensors_current'"
    )
    assert {r[0] for r in view} == set(fields) | {"loaded_at"}


@pytest.mark.integration
def test_loaded_registry_keeps_the_latest_message_per_sensor(registry: Settings) -> None:
    """Register, move, retire, in one batch and across batches: the view holds the last message of each."""
    meter = sensor("w-2", domain="grid", kind="feeder_meter", zone_id="sub-7", zone_name="Substation 7")
    _produce(
        registry,
        [
            encoded(sensor("w-1")),
            encoded(meter),
            encoded(sensor("w-1", lat=52.4, lon=4.9, site_name="Pumping station moved", valid_from=T0 + DAY)),
        ],
    )
    stats = _load(registry, "a")
    assert stats.loaded == 3
    _produce(
        registry,
        [encoded({**meter, "status": "retired", "retired_at": T0 + 2 * DAY, "valid_from": T0 + 2 * DAY})],
    )
    _load(registry, "a")
    rows = _query(
        registry,
        "SELECT sensor_id, status, site_name, zone_name, lat, lon, channels.name, "
        "toBool(retired_at IS NOT NULL) FROM sensors_current ORDER BY sensor_id",
    )
    assert rows == [
        ("w-1", "active", "Pumping station moved", "North DMA", 52.4, 4.9, ["flow_lps"], False),
        ("w-2", "retired", "Pumping station w-2", "Substation 7", 52.37, 4.89, ["flow_lps"], True),
    ]
    # Every message is a row until a merge (whenever that runs); FINAL shows one per sensor.
    assert _query(registry, "SELECT count() FROM sensors FINAL") == [(2,)]
    # Channels keep their physical range, unbounded ends as NULL.
    _produce(registry, [encoded(sensor("w-3", channels=[{**CHANNEL, "max": None}]))])
    _load(registry, "a")
    assert _query(registry, "SELECT channels FROM sensors_current WHERE sensor_id = 'w-3'") == [
        ([{"name": "flow_lps", "unit": "L/s", "type": "continuous", "min": 0.0, "max": None}],)
    ]


@pytest.mark.integration
def test_a_tombstone_deletes_the_sensor_and_a_new_registration_restores_it(registry: Settings) -> None:
    _produce(registry, [encoded(sensor("w-1")), encoded(sensor("w-2")), (b"w-2", None)])
    stats = _load(registry, "t")
    assert stats.tombstones == 1
    assert _query(registry, "SELECT sensor_id FROM sensors_current ORDER BY sensor_id") == [("w-1",)]
    assert _query(registry, "SELECT count() FROM sensors FINAL") == [(1,)]
    # Deleted, then registered again within one batch: registered, as on the compacted topic.
    _produce(registry, [(b"w-1", None), encoded(sensor("w-1", site_name="Again"))])
    _load(registry, "t")
    assert _query(registry, "SELECT sensor_id, site_name FROM sensors_current ORDER BY sensor_id") == [
        ("w-1", "Again")
    ]


@pytest.mark.integration
def test_the_store_refuses_dictionaries_so_the_view_serves_names(registry: Settings, kafka: Any) -> None:
    """CREATE DICTIONARY and dictGet are refused by the store's policy; the view answers the same lookup."""
    from citystream.store.client import connect, error_message

    _produce(registry, [encoded(sensor("w-1"))])
    _load(registry, "d")
    client = connect(registry)
    try:
        with pytest.raises(Exception) as refused:
            client.command(
                "CREATE DICTIONARY sensor_dict (sensor_id String, site_name String) PRIMARY KEY sensor_id "
                "SOURCE(CLICKHOUSE(TABLE 'sensors_current')) LAYOUT(COMPLEX_KEY_HASHED()) LIFETIME(60)"
            )
        assert "Dictionaries are not allowed" in error_message(refused.value)
    finally:
        client.close()
    assert _query(registry, "SELECT site_name, zone_name FROM sensors_current WHERE sensor_id = 'w-1'") == [
        ("Pumping station w-1", "North DMA")
    ]
    # The read-only user may not call dictGet at all (the policy refuses the family by name).
    viewer = connect(kafka.settings_, readonly=True)  # the store's own database: the viewer may read it
    try:
        with pytest.raises(Exception) as denied:
            viewer.query("SELECT dictGet('sensor_dict', 'site_name', 'w-1')")
        assert "dictGet" in error_message(denied.value) or "not allowed" in error_message(denied.value)
    finally:
        viewer.close()


def test_server_dictionary_ddl_loads_the_current_registry_in_the_engine() -> None:
    """infra/clickhouse/server/sensor_dict.sql on the engine itself (chdb in this process, no policy).

    The store server refuses dictionaries (above), so this is the only place the
    DDL meets the engine: the migrations, then the dictionary over 0007's view.
    """
    import chdb

    from citystream.chserver.sqltext import split_statements
    from citystream.settings import ROOT
    from citystream.store.migrate import discover

    db = f"dict_{uuid.uuid4().hex[:8]}"
    conn = chdb.connect(":memory:")
    conn.query(f"CREATE DATABASE {db}")
    conn.query(f"USE {db}")
    for migration in discover():  # 0001-0007, as `store migrate` applies them
        for statement in migration.statements():
            conn.query(statement)
    conn.query(
        "INSERT INTO sensors (sensor_id, domain, site_name, zone_name, status, lat) VALUES "
        "('a', 'water', 'Site A', 'North DMA', 'active', NULL), ('b', 'grid', 'Old', 'Z', 'active', 1.5), "
        "('b', 'grid', 'Site B', 'Z', 'retired', 1.5), ('c', 'grid', 'Oops', 'Z', 'active', 0), "
        "('c', '', '', '', 'deleted', NULL)"
    )
    ddl = (ROOT / "infra" / "clickhouse" / "server" / "sensor_dict.sql").read_text()
    ddl = ddl.replace("${CITYSTREAM_CLICKHOUSE_DATABASE}", db)
    ddl = ddl.replace(
        "USER '${REGISTRY_DICT_USER}' PASSWORD '${REGISTRY_DICT_PASSWORD}'", ""
    )  # chdb: no users
    (statement,) = split_statements(ddl)
    conn.query(statement)
    answer = conn.query(
        f"SELECT dictGet('{db}.sensor_dict', ('site_name', 'zone_name', 'status', 'lat'), k), "
        f"dictHas('{db}.sensor_dict', k) FROM (SELECT arrayJoin(['a', 'b', 'c']) AS k) ORDER BY k",
        "JSONCompactEachRow",
    )
    rows = [json.loads(line) for line in answer.bytes().decode().splitlines() if line]
    empty = {"site_name": "", "zone_name": "", "status": "", "lat": None}
    assert rows == [
        [{"site_name": "Site A", "zone_name": "North DMA", "status": "active", "lat": None}, 1],
        [{"site_name": "Site B", "zone_name": "Z", "status": "retired", "lat": 1.5}, 1],
        [empty, 0],  # deleted by its tombstone row
    ]
    conn.query(f"DROP DATABASE {db}")
