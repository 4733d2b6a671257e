"""The local stack end to end: up, a small demo on the standalone Flink cluster, status, down, up again.

One test on purpose: starting Kafka, Flink and the store costs most of a
minute on two cores, and each step depends on the one before.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from citystream import demo, stack
from citystream.cli import main
from citystream.stack.store import credentials
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = pid_dir.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = pid_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
                if text in cmd and state != "Z":
                    found.append(f"{pid_dir.name}: {cmd[:120]}")
    return found


def _status_cli(
    settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    for var, value in settings.to_env().items():
        monkeypatch.setenv(var, value)
    code = main(["stack", "status"])
    return code, capsys.readouterr().out


def demo_sensors(settings) -> dict[str, set[str]]:
    """The sensors of each department that the demo's readings topics hold."""
    return {
        name: {r["record"]["envelope"]["sensor_id"] for r in rows if r["record"] is not None}
        for name, rows in demo.read_back(settings).items()
    }


def test_stack_lifecycle_with_demo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = stack_settings(tmp_path / "run")
    run_dir = str(settings.run_dir)
    log: list[str] = []
    try:
        # A smaller variant of `citystream demo`: the same path and checks, fewer sensors and minutes.
        report = demo.run(
            settings,
            sensors=9,
            minutes=3,
            keep_running=True,
            echo=lambda *a, **k: log.append(" ".join(map(str, a))),
        )
        assert report.ok, "\n".join(log)
        assert report.windows > 0 and set(report.domains) == {"traffic", "water", "grid"}
        assert any(line.startswith(f"OK: all {report.windows} ") for line in log), "\n".join(log)
        # The first `up` generated the store users' passwords: every later client reads them.
        settings = credentials(settings)
        assert settings.clickhouse_password and settings.clickhouse_viewer_password

        code, out = _status_cli(settings, monkeypatch, capsys)
        assert code == 0, out
        assert [line.split()[1] for line in out.splitlines()[1:4]] == ["healthy"] * 3, out
        assert out.splitlines()[4] == "kafka security: plaintext", out

        stack.down(settings, echo=lambda *a, **k: None)
        assert _processes_mentioning(run_dir) == []
        code, out = _status_cli(settings, monkeypatch, capsys)
        assert code == 1
        assert [line.split()[1] for line in out.splitlines()[1:4]] == ["stopped"] * 3, out

        # Up again: the broker's topics and the store's rows are still there.
        assert stack.up(settings, echo=lambda *a, **k: None) == settings  # the same passwords
        demo_settings = settings.replace(topic_prefix=demo.DEMO_PREFIX)
        kept = sum(
            len(demo.sensor_minute_rows(demo_settings, name, sensors))
            for name, sensors in demo_sensors(demo_settings).items()
        )
        assert kept == report.windows
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            assert "citystream.demo.readings.grid" in admin.list_topics()
        finally:
            admin.close()

        stack.down(settings, purge=True, echo=lambda *a, **k: None)
        assert _processes_mentioning(run_dir) == []
        assert not (settings.run_dir / "kafka").exists()
        assert not (settings.run_dir / "store").exists()
    finally:
        stack.down(settings, echo=lambda *a, **k: None)
