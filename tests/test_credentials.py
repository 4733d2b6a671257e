"""Credentials by default, and a store process that holds no secret it does not need.

The first ``stack up`` writes the store users' passwords to the secrets file
(mode 0600) and every citystream process reads them from there; the store
process is started with an environment built from scratch, so a query that made
it reveal ``/proc/self/environ`` would show no Grafana token nor another
service's secret.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from citystream import settings as settings_mod
from citystream import stack
from citystream.cli import main
from citystream.errors import UserError
from citystream.settings import ENV, Settings
from citystream.stack.store import INHERITED_VARS, STORE_FIELDS, credentials
from citystream.store.client import connect
from tests.conftest import stack_settings

pytestmark = pytest.mark.security

PASSWORD_VARS = ("CITYSTREAM_CLICKHOUSE_PASSWORD", "CITYSTREAM_CLICKHOUSE_VIEWER_PASSWORD")


def test_first_up_generates_private_passwords_and_reuses_them(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / "run")
    first = credentials(settings)
    path = settings.secrets_file
    assert path == tmp_path / "run" / "secrets.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first.clickhouse_password) >= 24 and len(first.clickhouse_viewer_password) >= 24
    assert first.clickhouse_password != first.clickhouse_viewer_password
    written = path.read_text()
    again = credentials(settings)
    assert path.read_text() == written, "regenerated while it existed"
    assert (again.clickhouse_password, again.clickhouse_viewer_password) == (
        first.clickhouse_password,
        first.clickhouse_viewer_password,
    )
    assert not list(path.parent.glob(".*tmp")), "temporary file left behind"


def test_a_password_already_set_wins_over_the_file(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path, clickhouse_password="chosen")
    got = credentials(settings)
    assert got.clickhouse_password == "chosen"
    assert got.clickhouse_viewer_password  # the other one still comes from the file


def test_load_reads_the_file_and_the_environment_wins(tmp_path: Path) -> None:
    generated = credentials(Settings(run_dir=tmp_path))
    env = {"CITYSTREAM_RUN_DIR": str(tmp_path)}
    loaded = settings_mod.load(env)
    assert loaded.clickhouse_password == generated.clickhouse_password
    assert loaded.clickhouse_viewer_password == generated.clickhouse_viewer_password
    # Present in the environment wins, even empty: a child given to_env() sees its parent's settings.
    assert settings_mod.load({**env, "CITYSTREAM_CLICKHOUSE_PASSWORD": "env"}).clickhouse_password == "env"
    assert settings_mod.load({**env, "CITYSTREAM_CLICKHOUSE_PASSWORD": ""}).clickhouse_password == ""
    # A secrets file elsewhere is found through CITYSTREAM_SECRETS_FILE.
    moved = tmp_path / "elsewhere.toml"
    moved.write_text('clickhouse_password = "x"\n')
    assert settings_mod.load({**env, "CITYSTREAM_SECRETS_FILE": str(moved)}).clickhouse_password == "x"


def test_secrets_file_holds_only_store_passwords_and_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text('grafana_token = "t"\n')
    with pytest.raises(ValueError, match="may hold only"):
        settings_mod.load({"CITYSTREAM_SECRETS_FILE": str(path)})
    path.write_text('clickhouse_password = "p"\n')
    path.chmod(0o644)
    with pytest.raises(UserError, match="chmod 600"):
        credentials(Settings(run_dir=tmp_path))


def test_config_masks_passwords_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    generated = credentials(Settings(run_dir=tmp_path))
    for var in PASSWORD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CITYSTREAM_RUN_DIR", str(tmp_path))
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert generated.clickhouse_password not in out and generated.clickhouse_viewer_password not in out
    assert "***" in out


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if item)


@pytest.mark.integration
def test_store_started_as_stack_up_does_holds_only_its_own_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "grafana-token-that-must-not-leak"
    monkeypatch.setenv("CITYSTREAM_GRAFANA_TOKEN", token)
    monkeypatch.setenv("CITYSTREAM_GRAFANA_PASSWORD", "grafana-password-that-must-not-leak")
    monkeypatch.setenv("SOME_OTHER_SECRET", "not-for-the-store")
    for var in PASSWORD_VARS:
        monkeypatch.delenv(var, raising=False)
    settings = credentials(stack_settings(tmp_path / "run", grafana_token=token))
    (store,) = [svc for svc in stack.services(settings) if svc.name == "store"]  # as `up` makes it
    try:
        store.start()
        pid = store.pid()
        assert pid is not None
        environ = _environ(pid)
        allowed = {var for var, name in ENV.items() if name in STORE_FIELDS or name.startswith("kafka_")}
        assert set(environ) <= allowed | set(INHERITED_VARS), set(environ) - allowed - set(INHERITED_VARS)
        text = "\n".join(environ.values())
        assert token not in text and "must-not-leak" not in text and "not-for-the-store" not in text
        assert environ["CITYSTREAM_CLICKHOUSE_PASSWORD"] == settings.clickhouse_password

        # The store asks for the generated passwords; the CLI finds them in the file by itself.
        with pytest.raises(Exception):  # noqa: B017 - clickhouse-connect's auth error type varies
            connect(settings.replace(clickhouse_password="")).command("SELECT 1")
        viewer = connect(settings, readonly=True)
        try:
            assert viewer.command("SELECT 1") == 1
        finally:
            viewer.close()
        monkeypatch.delenv("CITYSTREAM_GRAFANA_TOKEN")
        monkeypatch.setenv("CITYSTREAM_RUN_DIR", str(settings.run_dir))
        monkeypatch.setenv("CITYSTREAM_STORE_PORT", str(settings.store_port))
        assert main(["query", "SELECT 41 + 1", "--format", "csv"]) == 0
        assert "42" in capsys.readouterr().out
    finally:
        store.stop()
    assert os.path.exists(settings.secrets_file)
