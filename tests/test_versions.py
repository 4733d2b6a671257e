"""The Flink pairing: the pinned apache-flink is one the Kafka connector release declares support for.

The connector's Maven version ``5.0.0-2.2`` names the Flink minor it is built
for; ``tests/test_stack.py`` and the Kafka job tests prove it also runs.
"""

from __future__ import annotations

import re
from importlib.metadata import version

import pytest

from citystream.settings import ROOT, Settings


def _pom_property(name: str) -> str:
    text = (ROOT / "infra" / "pom.xml").read_text()
    match = re.search(rf"<{re.escape(name)}>([^<]+)</{re.escape(name)}>", text)
    assert match, f"{name} missing from infra/pom.xml"
    return match.group(1)


def test_pyflink_matches_connector_flink_line() -> None:
    flink = version("apache-flink")
    connector = _pom_property("flink.kafka.connector.version")
    assert connector.rsplit("-", 1)[1] == ".".join(flink.split(".")[:2])
    assert _pom_property("flink.version") == flink


def test_resolved_jars_are_the_pinned_ones() -> None:
    jars = Settings().jars_dir
    if not (jars / ".resolved").exists():
        pytest.skip("run `make setup` first: JVM artefacts not resolved")
    names = {p.name for p in (jars / "flink").glob("*.jar")}
    assert f"flink-sql-connector-kafka-{_pom_property('flink.kafka.connector.version')}.jar" in names
    assert f"flink-avro-{_pom_property('flink.version')}.jar" in names
    assert f"kafka_2.13-{_pom_property('kafka.version')}.jar" in {
        p.name for p in (jars / "kafka").glob("*.jar")
    }
