"""Settings: one frozen object, every variable named in ENV, secrets never printed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from citystream import settings
from citystream.cli import main


def test_defaults_derive_addresses_from_ports() -> None:
    s = settings.load({})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.clickhouse_url == "http://127.0.0.1:8123"
    assert s.embedded_store


def test_environment_overrides_and_rederives() -> None:
    s = settings.load({"CITYSTREAM_KAFKA_PORT": "19092", "CITYSTREAM_STORE_PORT": "18123"})
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert s.clickhouse_url == "http://127.0.0.1:18123"
    moved = s.replace(kafka_port=29092)
    assert moved.kafka_bootstrap == "127.0.0.1:29092"


def test_external_clickhouse_is_not_embedded() -> None:
    s = settings.load({"CITYSTREAM_CLICKHOUSE_URL": "http://10.0.0.5:8123"})
    assert not s.embedded_store


def test_bad_number_names_the_variable() -> None:
    with pytest.raises(ValueError, match="CITYSTREAM_KAFKA_PORT"):
        settings.load({"CITYSTREAM_KAFKA_PORT": "ninety"})


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.Settings().kafka_port = 1  # type: ignore[misc]


def test_every_env_var_names_a_field_and_round_trips() -> None:
    fields = {f.name for f in dataclasses.fields(settings.Settings)}
    assert set(settings.ENV.values()) <= fields
    s = settings.Settings(run_dir=Path("/tmp/x"), kafka_port=1234, clickhouse_password="pw")
    assert settings.load(s.to_env()) == s


def test_secrets_masked(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_CLICKHOUSE_PASSWORD", "hunter2")
    assert settings.load().masked()["clickhouse_password"] == "***"
    assert "hunter2" not in repr(settings.load())
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "***" in out
