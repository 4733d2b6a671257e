"""Topic spec validation, and ``ensure_topics`` against a real Kafka broker.

The broker tests each use their own topic prefix on the session's shared broker,
so they neither see nor disturb each other's (or other modules') topics.
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from citystream import cli, contracts
from citystream.cli import topics as topics_cli
from citystream.errors import UserError
from citystream.topics import DEFAULT_SPEC, ensure_topics, list_topics, load_spec

_prefixes = itertools.count()


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses, even across runs against a reused broker."""
    return f"tt{os.getpid()}-{next(_prefixes)}."


def _write_spec(path: Path, body: str) -> Path:
    path.write_text(
        '[defaults]\npartitions = 2\nreplication_factor = 1\n"cleanup.policy" = "delete"\n'
        '"retention.ms" = 3600000\n"compression.type" = "zstd"\n' + body
    )
    return path


# --------------------------------------------------------------------------- spec, no broker


def test_project_spec_declares_every_topic_with_a_real_schema() -> None:
    specs = {s.suffix: s for s in load_spec()}
    assert set(specs) == {
        "readings.traffic",
        "readings.water",
        "readings.grid",
        "sensors",
        "aggregates",
        "anomalies",
        "alerts",
        "sensor-health",
        "late-events",
        "labels",
        "dead-letter",
    }
    for spec in specs.values():
        assert contracts.resolve_name(spec.value) == spec.value
    assert specs["alerts"].configs["cleanup.policy"] == "compact"
    assert specs["sensor-health"].configs["cleanup.policy"] == "compact"
    assert "alert_id" in specs["alerts"].key
    assert all("sensor_id" in specs[f"readings.{d}"].key for d in ("traffic", "water", "grid"))


def test_defaults_apply_and_topics_override_them(tmp_path: Path) -> None:
    spec = _write_spec(
        tmp_path / "t.toml",
        '[topics.a]\nkey = "k"\nvalue = "v"\n[topics.b]\nkey = "k"\nvalue = "v"\npartitions = 5\n'
        '"cleanup.policy" = "delete,compact"\n"segment.ms" = 60000\n',
    )
    a, b = load_spec(spec)
    assert (a.partitions, b.partitions) == (2, 5)
    assert b.configs["cleanup.policy"] == "compact,delete"
    assert b.configs["segment.ms"] == "60000"
    assert "segment.ms" not in a.configs


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[topics.a]\nkey = "k"\nvalue = "v"\npartitions = 0\n', "partitions must be a whole number >= 1"),
        ('[topics.a]\nkey = "k"\nvalue = "v"\npartitons = 3\n', "unknown key(s) partitons"),
        ('[topics.a]\nvalue = "v"\n', "key must say what the Kafka key is"),
        ('[topics.a]\nkey = "k"\nvalue = "v"\n"cleanup.policy" = "forever"\n', "cleanup.policy must be"),
        ('[topics.a]\nkey = "k"\nvalue = "v"\n"compression.type" = "brotli"\n', "compression.type must be"),
        ('[topics.a]\nkey = "k"\nvalue = "v"\n"retention.ms" = -5\n', "retention.ms must be"),
        ('[topics."a b"]\nkey = "k"\nvalue = "v"\n', "topic names use only"),
        ("[topics.a\n", "not valid TOML"),
    ],
)
def test_bad_spec_is_a_one_line_user_error(tmp_path: Path, body: str, message: str) -> None:
    spec = _write_spec(tmp_path / "t.toml", body)
    with pytest.raises(UserError) as caught:
        load_spec(spec)
    assert message in str(caught.value)
    assert str(spec) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_required_config_is_named(tmp_path: Path) -> None:
    spec = tmp_path / "t.toml"
    spec.write_text('[topics.a]\nkey = "k"\nvalue = "v"\npartitions = 1\nreplication_factor = 1\n')
    with pytest.raises(UserError, match=r"missing cleanup\.policy, retention\.ms, compression\.type"):
        load_spec(spec)


def test_unreachable_broker_is_a_user_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"no Kafka broker answers at 127.0.0.1:{port}"):
        ensure_topics(f"127.0.0.1:{port}", "x.")


def test_malformed_bootstrap_is_a_user_error() -> None:
    with pytest.raises(UserError, match="is not HOST:PORT"):
        ensure_topics("localhost", "x.")


def test_bad_prefix_is_a_user_error() -> None:
    with pytest.raises(UserError, match="topic prefix 'a b'"):
        ensure_topics("127.0.0.1:1", "a b")


def test_topics_command_is_registered() -> None:
    assert "citystream.cli.topics" in cli.COMMAND_MODULES


# --------------------------------------------------------------------------- real broker


@pytest.fixture
def admin(kafka: object) -> Iterator[object]:
    from kafka import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="test-topics")  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.close()


def _configs(admin: object, name: str, keys: list[str]) -> dict[str, str]:
    from kafka.admin import ConfigResource, ConfigResourceType

    found = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name, keys)], config_filter="all"
    )  # type: ignore[attr-defined]
    return {k: e["value"] for k, e in found["topic"][name].items()}


def _partitions(admin: object, name: str) -> int:
    (topic,) = admin.describe_topics([name])  # type: ignore[attr-defined]
    return len(topic["partitions"])


@pytest.mark.integration
def test_ensure_creates_the_project_topics_then_changes_nothing(
    kafka: object, admin: object, prefix: str
) -> None:
    bootstrap = kafka.bootstrap  # type: ignore[attr-defined]
    changes = ensure_topics(bootstrap, prefix)
    specs = load_spec()
    assert sorted(c.topic for c in changes) == sorted(s.name(prefix) for s in specs)
    assert {c.action for c in changes} == {"create"}
    for spec in specs:
        name = spec.name(prefix)
        assert _partitions(admin, name) == spec.partitions
        assert _configs(admin, name, list(spec.configs)) == dict(spec.configs)
    assert ensure_topics(bootstrap, prefix) == []
    assert all(state.status == "ok" for state in list_topics(bootstrap, prefix))


@pytest.mark.integration
def test_ensure_repairs_config_drift_and_leaves_other_configs(
    kafka: object, admin: object, prefix: str, tmp_path: Path
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    bootstrap = kafka.bootstrap  # type: ignore[attr-defined]
    spec = _write_spec(tmp_path / "t.toml", '[topics.events]\nkey = "k"\nvalue = "v"\n')
    ensure_topics(bootstrap, prefix, spec)
    name = f"{prefix}events"
    drift = {"retention.ms": "1000", "compression.type": "lz4", "segment.ms": "600000"}
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, drift)])  # type: ignore[attr-defined]

    changes = ensure_topics(bootstrap, prefix, spec)
    assert sorted(str(c) for c in changes) == [
        f"alter-config   {name}: compression.type: lz4 -> zstd",
        f"alter-config   {name}: retention.ms: 1000 -> 3600000",
    ]
    assert _configs(admin, name, ["retention.ms", "compression.type", "segment.ms"]) == {
        "retention.ms": "3600000",
        "compression.type": "zstd",
        "segment.ms": "600000",  # not in the spec: not ours to reset
    }
    assert ensure_topics(bootstrap, prefix, spec) == []


@pytest.mark.integration
def test_ensure_adds_partitions_and_refuses_to_remove_them(
    kafka: object, admin: object, prefix: str, tmp_path: Path
) -> None:
    bootstrap = kafka.bootstrap  # type: ignore[attr-defined]
    spec = _write_spec(tmp_path / "t.toml", '[topics.grow]\nkey = "k"\nvalue = "v"\n')
    ensure_topics(bootstrap, prefix, spec)
    name = f"{prefix}grow"

    more = _write_spec(tmp_path / "more.toml", '[topics.grow]\nkey = "k"\nvalue = "v"\npartitions = 4\n')
    (change,) = ensure_topics(bootstrap, prefix, more)
    assert (change.topic, change.action) == (name, "add-partitions")
    assert change.detail.startswith("2 -> 4; keys written from now on may land on other partitions")
    assert _partitions(admin, name) == 4

    # fewer partitions than the topic has, plus a config change: refused, and nothing applied
    fewer = _write_spec(
        tmp_path / "fewer.toml",
        '[topics.grow]\nkey = "k"\nvalue = "v"\npartitions = 3\n"retention.ms" = 5000\n',
    )
    with pytest.raises(UserError) as refused:
        ensure_topics(bootstrap, prefix, fewer)
    message = str(refused.value)
    assert f"Kafka cannot remove partitions: {name} has 4 partitions, the spec asks for 3" in message
    assert "Nothing was changed" in message
    assert _partitions(admin, name) == 4
    assert _configs(admin, name, ["retention.ms"]) == {"retention.ms": "3600000"}


@pytest.mark.integration
def test_config_the_broker_rejects_is_a_user_error(kafka: object, prefix: str, tmp_path: Path) -> None:
    spec = _write_spec(tmp_path / "t.toml", '[topics.bad]\nkey = "k"\nvalue = "v"\n"no.such.config" = 1\n')
    with pytest.raises(UserError, match=rf"could not create {prefix}bad"):
        ensure_topics(kafka.bootstrap, prefix, spec)  # type: ignore[attr-defined]


@pytest.mark.integration
def test_cli_create_and_list(
    kafka: object,
    prefix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CITYSTREAM_KAFKA_BOOTSTRAP", kafka.bootstrap)  # type: ignore[attr-defined]
    monkeypatch.setenv("CITYSTREAM_TOPIC_PREFIX", prefix)
    parser = argparse.ArgumentParser()
    topics_cli.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(["topics", *argv])
        return args.handler(args)

    assert run("list") == 1  # nothing created yet
    assert "missing" in capsys.readouterr().out
    assert run("create") == 0
    out = capsys.readouterr().out
    assert f"create         {prefix}alerts: partitions=1, cleanup.policy=compact" in out
    assert run("create") == 0
    assert capsys.readouterr().out.startswith(f"topics: up to date ({len(load_spec(DEFAULT_SPEC))} topics")
    assert run("list") == 0
    listing = capsys.readouterr().out
    assert f"{prefix}sensor-health" in listing
    assert "compact" in listing


def test_every_topic_a_job_reads_or_writes_is_in_the_spec() -> None:
    """A job writing a topic the spec (and so the loader) does not know loses its output silently."""
    import re

    from citystream.jobs.common import Windows
    from citystream.jobs.grid import GRID
    from citystream.jobs.kafka_io import build
    from citystream.jobs.traffic import TRAFFIC
    from citystream.jobs.water import WATER
    from citystream.settings import Settings

    class Capture:
        def __init__(self) -> None:
            self.ddl: list[str] = []

        def execute_sql(self, ddl: str) -> None:
            self.ddl.append(ddl)

    settings = Settings(topic_prefix="t.")
    t_env = Capture()
    for domain in (GRID, TRAFFIC, WATER):
        build(t_env, settings, domain, Windows(), bounded=True)  # type: ignore[arg-type]
    used = {m for ddl in t_env.ddl for m in re.findall(r"'topic' = 't\.([^']+)'", ddl)}
    source = (Path(__file__).parents[1] / "jobs" / "detect.py").read_text()
    used |= set(re.findall(r'"(anomalies|alerts|sensor-health|aggregates)"', source))
    spec = {s.suffix for s in load_spec()}
    assert len(used) >= 9
    assert used <= spec, used - spec
