"""Shared fixtures: real servers on free 127.0.0.1 ports, stopped by pid even when a test fails.

Why real servers: the contracts that matter (Avro bytes Flink can read, offsets
committed after ClickHouse acknowledged, process groups that really stop)
only show against the real broker, the real Flink and the real ClickHouse engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from citystream.proc import free_port
from citystream.settings import ROOT, Settings

DATASETS = ROOT.parent / "shared" / "datasets"


def stack_settings(run_dir: Path, **extra: object) -> Settings:
    """Settings for a private stack under ``run_dir`` with every port freshly chosen."""
    return Settings(
        run_dir=run_dir,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        flink_rest_port=free_port(),
        store_port=free_port(),
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def session_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One private run directory and port set for the session's shared broker and store."""
    return stack_settings(tmp_path_factory.mktemp("stack"), topic_prefix="test.")


@pytest.fixture(scope="session")
def kafka(session_settings: Settings) -> Iterator[object]:
    """A real Apache Kafka broker (KRaft, combined broker+controller); ``.bootstrap`` is its address."""
    from citystream.stack import Kafka

    broker = Kafka(session_settings)
    broker.start()
    broker.bootstrap = session_settings.kafka_bootstrap  # type: ignore[attr-defined]
    broker.settings_ = session_settings  # type: ignore[attr-defined]
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def store(session_settings: Settings) -> Iterator[object]:
    """The embedded ClickHouse store server (chdb) with the project's migrations applied."""
    from citystream.stack import Store
    from citystream.store.migrate import migrate

    # No loader inside: tests load explicitly, and their topics would otherwise be loaded twice.
    server = Store(session_settings, loader=False)
    server.start()
    server.url = session_settings.clickhouse_url  # type: ignore[attr-defined]
    try:
        migrate(session_settings)
        yield server
    finally:
        server.stop()


@pytest.fixture
def datasets() -> Path:
    """``../shared/datasets``; tests that need it are skipped (with the reason) when it is absent."""
    if not DATASETS.is_dir():
        pytest.skip(f"real datasets not found at {DATASETS}")
    return DATASETS
