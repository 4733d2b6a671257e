"""The sensor registry on a real broker: the compacted topic, the CLI, and sources registering.

Acceptance (issue 15): ``citystream sensors import`` of a CSV with one bad row reports that
row, imports nothing and exits 2 - run as the real command in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from citystream import cli, contracts
from citystream.registry import Sensor, default_channels
from citystream.registry import kafka as registry
from citystream.registry.imports import COLUMNS
from citystream.settings import Settings
from citystream.simulator.engine import SCHEMAS
from tests.test_producer import read_topic

pytestmark = pytest.mark.integration

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


@pytest.fixture
def env(kafka, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Settings:
    """A private topic prefix per test on the session broker, for in-process and subprocess CLIs."""
    prefix = f"reg{abs(hash(request.node.name)) % 10**8}."
    values = {
        "CITYSTREAM_RUN_DIR": str(tmp_path / "run"),
        "CITYSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "CITYSTREAM_TOPIC_PREFIX": prefix,
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return kafka.settings_.replace(topic_prefix=prefix, run_dir=tmp_path / "run")


def citystream(*args: str) -> subprocess.CompletedProcess:
    """The real command line in its own process (environment from the fixture)."""
    return subprocess.run(
        [sys.executable, "-m", "citystream.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ),
    )


def csv_file(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([",".join(COLUMNS), *rows]) + "\n", encoding="utf-8")
    return path


def row(i: int, lat: str = "38.71") -> str:
    return (
        f"water-z07-j{i:02d}-pressure,water,pressure,water-z07-j{i:02d},Junction {i},z07,Zone 7,"
        f"district-east;city,{lat},-9.13,2026-01-01T00:00:00Z,active,water utility,vendor=acme"
    )


def test_import_with_one_bad_row_reports_it_imports_nothing_and_exits_2(
    env: Settings, tmp_path: Path
) -> None:
    bad = csv_file(tmp_path / "bad.csv", [row(1), row(2), row(3, lat="123.4"), row(4)])
    done = citystream("sensors", "import", str(bad))
    assert done.returncode == 2, done
    assert "line 4" in done.stderr and "lat 123.4 is not a latitude" in done.stderr
    assert "1 bad row, nothing imported" in done.stderr
    assert "Traceback" not in done.stderr
    assert registry.current(env) == {}
    assert read_topic(env.kafka_bootstrap, registry.topic(env)) == []  # not one message was written

    good = csv_file(tmp_path / "good.csv", [row(1), row(2), row(3), row(4)])
    done = citystream("sensors", "import", str(good))
    assert done.returncode == 0, done.stderr
    assert "4 sensors registered" in done.stdout
    entries = registry.current(env)
    assert sorted(entries) == [f"water-z07-j{i:02d}-pressure" for i in (1, 2, 3, 4)]
    assert entries["water-z07-j03-pressure"].channels == default_channels("water", "pressure")


def test_geojson_import_dry_run_registers_nothing(env: Settings, tmp_path: Path) -> None:
    props = {
        "sensor_id": "grid-ss07-bus",
        "domain": "grid",
        "kind": "bus_meter",
        "site_id": "grid-ss07",
        "zone_id": "z07",
        "installed_at": "2026-01-01T00:00:00Z",
    }
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [-9.1, 38.7]},
                "properties": props,
            }
        ],
    }
    path = tmp_path / "grid.geojson"
    path.write_text(json.dumps(doc))
    assert cli.main(["sensors", "import", str(path), "--dry-run"]) == 0
    assert registry.current(env) == {}
    assert cli.main(["sensors", "import", str(path)]) == 0
    assert registry.current(env)["grid-ss07-bus"].lat == 38.7


def test_add_show_list_retire_remove_round_trip(env: Settings, capsys: pytest.CaptureFixture) -> None:
    add = ["sensors", "add", "traffic-z07-s001-l1", "--domain", "traffic", "--kind", "loop_detector"]
    add += ["--site", "traffic-z07-s001", "--site-name", "Main St / 5th Ave", "--zone", "z07"]
    add += [
        "--lat",
        "38.70",
        "--lon",
        "-9.15",
        "--installed-at",
        "2026-01-01T00:00:00Z",
        "--tag",
        "school-zone",
    ]
    assert cli.main([*add, "--range", "mean_speed_kmh=0:200"]) == 0
    # a second add without --replace is refused, exit 2
    assert cli.main(add) == 2
    assert "already registered" in capsys.readouterr().err

    assert cli.main(["sensors", "show", "traffic-z07-s001-l1"]) == 0
    shown = capsys.readouterr().out
    assert "Main St / 5th Ave" in shown and "mean_speed_kmh" in shown and "[0, 200] km/h" in shown
    assert "2026-01-01T00:00:00.000Z" in shown

    added = registry.current(env)["traffic-z07-s001-l1"]
    assert added.installed_at == added.valid_from == 1_767_225_600_000
    assert added.channel("mean_speed_kmh").max == 200.0  # type: ignore[union-attr]

    assert cli.main(["sensors", "retire", "traffic-z07-s001-l1", "--at", "2026-01-10T00:00:00Z"]) == 0
    retired = registry.current(env)["traffic-z07-s001-l1"]
    assert (retired.status, retired.retired_at, retired.valid_from) == (
        "retired",
        1_768_003_200_000,
        1_768_003_200_000,
    )
    assert cli.main(["sensors", "retire", "traffic-z07-s001-l1"]) == 2  # already retired

    registry.publish(env, [_pressure("water-z07-j09-pressure")])
    capsys.readouterr()
    assert cli.main(["sensors", "list", "--status", "retired"]) == 0
    table = capsys.readouterr().out
    assert "traffic-z07-s001-l1" in table and "water-z07-j09" not in table and "(1 sensor)" in table
    assert cli.main(["sensors", "list", "--json", "--domain", "water"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["sensor_id"] for r in listed] == ["water-z07-j09-pressure"]

    # the tombstone: gone from the registry, and a null value on the topic
    assert cli.main(["sensors", "remove", "water-z07-j09-pressure"]) == 0
    assert set(registry.current(env)) == {"traffic-z07-s001-l1"}
    records = read_topic(env.kafka_bootstrap, registry.topic(env))
    assert (b"water-z07-j09-pressure", None) in records
    assert cli.main(["sensors", "show", "water-z07-j09-pressure"]) == 2
    assert "not registered" in capsys.readouterr().err


def _pressure(sensor_id: str, installed_at: int = T0) -> Sensor:
    return Sensor(
        sensor_id=sensor_id,
        domain="water",
        kind="pressure",
        channels=default_channels("water", "pressure"),
        site_id=sensor_id.rsplit("-", 1)[0],
        zone_id="z07",
        installed_at=installed_at,
    )


def test_latest_message_per_id_wins_and_sources_keep_the_earliest_installation(env: Settings) -> None:
    first = _pressure("water-z07-j01-pressure", T0)
    assert registry.publish(env, [first, _pressure("water-z07-j02-pressure", T0)]) == 2
    assert registry.register(env, [_pressure("water-z07-j01-pressure", T0 + 3_600_000)]) == 0  # nothing new
    registry.publish(env, [first.retire(T0 + 60_000)])
    entries = registry.current(env)
    assert entries["water-z07-j01-pressure"].status == "retired"
    assert entries["water-z07-j02-pressure"] == _pressure("water-z07-j02-pressure", T0)
    # the topic is compacted, one partition, as the spec says
    assert len(read_topic(env.kafka_bootstrap, registry.topic(env))) == 3


def test_simulate_registers_every_produced_sensor_before_its_readings(env: Settings, tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    args = ["simulate", "--seed", "5", "--duration", "3m", "--sensors", "30", "--imperfections", "heavy"]
    assert (
        cli.main([*args, "--summary-json", str(summary_file), "--labels-file", str(tmp_path / "l.jsonl")])
        == 0
    )
    summary = json.loads(summary_file.read_text())
    assert summary["registered"] == 30
    entries = registry.current(env)
    produced: dict[str, int] = {}
    for domain, d in summary["domains"].items():
        for key, value in read_topic(env.kafka_bootstrap, d["topic"]):
            try:
                r = contracts.decode(SCHEMAS[domain], value)
            except ValueError:
                continue  # undecodable poison still carries its key
            sid = r["envelope"]["sensor_id"]
            produced[sid] = min(produced.get(sid, r["envelope"]["event_time"]), r["envelope"]["event_time"])
            assert key == sid.encode()
    assert set(entries) == set(produced)  # one entry per produced sensor id, and only those
    for sid, first_event in produced.items():
        assert (
            entries[sid].installed_at <= entries[sid].valid_from <= first_event
        )  # the jobs join on event time
    # a second run with the same seed rewrites identical entries (compaction keeps one each)
    assert cli.main([*args, "--labels-file", str(tmp_path / "l2.jsonl")]) == 0
    assert registry.current(env) == entries


def test_dataset_import_registers_its_sensors_from_their_first_reading(env: Settings, tmp_path: Path) -> None:
    rows = ["timestamp,sensor,speed,occ"]
    rows += [f"2026-01-05 00:{i * 5:02d}:00,{s},{50 + i},{10 + i}" for i in range(6) for s in ("a", "b")]
    path = tmp_path / "loops.csv"
    path.write_text("\n".join(rows) + "\n")
    args = ["import", "csv", str(path), "--domain", "traffic", "--sensor-col", "sensor"]
    assert (
        cli.main(
            [*args, "--map", "speed=mean_speed_kmh", "--map", "occ=occupancy_pct", "--shift-to", "2026-02-01"]
        )
        == 0
    )
    entries = registry.current(env)
    assert sorted(entries) == ["traffic-a", "traffic-b"]
    first = 1_769_904_000_000  # 2026-02-01T00:00:00Z, where --shift-to moved the first reading
    assert all(
        e.installed_at == e.valid_from == first and e.kind == "loop_detector" for e in entries.values()
    )
    readings = read_topic(env.kafka_bootstrap, env.topic("readings.traffic"))
    times = [contracts.decode("citystream.TrafficReading", v)["envelope"]["event_time"] for _, v in readings]
    assert len(times) == 12 and min(times) == first


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A SASL_SSL broker with the stack's ACLs (each component on its own SCRAM user)."""
    from citystream import kafkaconf
    from citystream.stack import Kafka, acl
    from tests.conftest import stack_settings

    settings = stack_settings(
        tmp_path_factory.mktemp("secure-registry"), topic_prefix="secreg.", kafka_security=kafkaconf.SASL_SSL
    )
    broker = Kafka(settings)
    broker.start()
    try:
        acl.grant(settings)
        yield settings
    finally:
        broker.stop()


@pytest.mark.security
def test_registry_works_over_sasl_ssl_and_the_jobs_may_read_it(secure: Settings) -> None:
    """Sources write and read the registry, the jobs read it, the loader may not write it (ACLs)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from citystream import kafkaconf

    registry.ensure_topic(secure)  # as admin: nobody else may create topics
    assert registry.publish(secure, [_pressure("water-z07-j01-pressure")], ensure=False) == 1
    assert list(registry.current(secure)) == ["water-z07-j01-pressure"]

    name = registry.topic(secure)
    jobs = Consumer({**kafkaconf.confluent(secure, "jobs"), "group.id": "citystream-water-registry"})
    try:
        jobs.assign([TopicPartition(name, 0, 0)])
        msg = jobs.poll(30)
        assert msg is not None and msg.error() is None, msg and msg.error()
        assert Sensor.decode(msg.value()).sensor_id == "water-z07-j01-pressure"
    finally:
        jobs.close()

    errors: list[object] = []
    loader = Producer({**kafkaconf.confluent(secure, "loader"), "message.timeout.ms": 10_000})
    loader.produce(name, b"x", b"evil", on_delivery=lambda err, _msg: errors.append(err))
    loader.flush(30)
    assert errors and errors[0] is not None  # refused: only the sources write the registry
