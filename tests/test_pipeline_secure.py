"""The whole pipeline over SASL_SSL with ACLs and store credentials, run as a user runs it.

One ``citystream demo --secure`` from a fresh run dir (a smaller city than
``make demo``), in a subprocess whose environment also holds a Grafana token
and password, as an operator's shell might. Then, with the stack still up:

* later commands find SASL_SSL and their users from the run dir alone;
* every process the stack started holds only its own secrets
  (``/proc/<pid>/environ``): the broker and Flink none, the store its own
  passwords only;
* no secret value appears in any file of the run (logs of the broker, Flink,
  the jobs' submissions, the store) nor in the demo's own output;
* ``--help`` of every command and ``citystream config`` show none either.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from citystream import kafkaconf, proc, stack
from citystream.cli import build_parser
from citystream.settings import Settings
from citystream.settings import load as load_settings
from tests.conftest import stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.security]

#: Files that hold secrets by design (0600): the secrets themselves and the broker's own config.
SECRET_STORES = {"secrets.toml", "server.properties", "secrets.json", "broker.p12", "ca.p12"}


def _cli() -> str:
    return str(Path(sys.executable).parent / "citystream")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def _base_env(settings: Settings) -> dict[str, str]:
    """Only the run dir and the ports: everything else must come from the run dir."""
    env = {k: v for k, v in proc.child_env().items() if not k.startswith("CITYSTREAM_")}
    env.update(
        CITYSTREAM_RUN_DIR=str(settings.run_dir),
        CITYSTREAM_KAFKA_PORT=str(settings.kafka_port),
        CITYSTREAM_KAFKA_CONTROLLER_PORT=str(settings.kafka_controller_port),
        CITYSTREAM_FLINK_PORT=str(settings.flink_rest_port),
        CITYSTREAM_STORE_PORT=str(settings.store_port),
    )
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``citystream demo --secure`` with Grafana secrets in its environment; the stack left up."""
    settings = stack_settings(tmp_path_factory.mktemp("pipeline-secure") / "run")
    grafana = {
        "CITYSTREAM_GRAFANA_TOKEN": f"glsa_{secrets.token_hex(16)}",
        "CITYSTREAM_GRAFANA_PASSWORD": secrets.token_urlsafe(16),
    }
    env = {**_base_env(settings), **grafana}
    cmd = [_cli(), "demo", "--secure", "--sensors", "9", "--minutes", "3", "--keep-running"]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        current = load_settings(_base_env(settings))
        yield {"done": done, "settings": current, "grafana": grafana}
    finally:
        with contextlib.suppress(Exception):
            stack.down(load_settings(_base_env(settings)), echo=lambda *a, **k: None)


def _all_secrets(run: dict) -> dict[str, str]:
    settings: Settings = run["settings"]
    found = {f"kafka secret {i}": v for i, v in enumerate(kafkaconf.secret_values(settings))}
    found["store read-write password"] = settings.clickhouse_password
    found["store viewer password"] = settings.clickhouse_viewer_password
    found.update({f"${name}": value for name, value in run["grafana"].items()})
    assert all(len(v) >= 16 for v in found.values()), "every secret is set (and long enough to grep)"
    assert len(found) == 11  # 4 Kafka users, keystore, CA, controller; 2 store users; token, password
    return found


def test_secure_demo_passes_and_is_remembered(run: dict) -> None:
    done, settings = run["done"], run["settings"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK: all " in done.stdout
    assert "acls   producer, jobs and loader users granted" in done.stdout
    # Nothing exported: the run dir says SASL_SSL, the secrets file holds the store passwords.
    assert settings.kafka_security == kafkaconf.SASL_SSL
    assert settings.clickhouse_password and settings.clickhouse_viewer_password
    status = subprocess.run(
        [_cli(), "stack", "status"], env=_base_env(settings), capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "SASL_SSL" in status.stdout and "kafka security: sasl_ssl" in status.stdout
    topics = subprocess.run(
        [_cli(), "topics", "list", "--prefix", "citystream.demo."],
        env=_base_env(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert topics.returncode == 0, topics.stdout + topics.stderr
    assert "citystream.demo.readings.grid" in topics.stdout


def test_each_process_holds_only_its_own_secrets(run: dict) -> None:
    settings = run["settings"]
    every = _all_secrets(run)
    own = {
        "store": {"store read-write password", "store viewer password"},
        "kafka": set(),
        "flink": set(),
    }
    seen = 0
    for svc in stack.services(settings):
        pgid = svc._state().get("pgid")
        assert pgid, f"{svc.name} is not running"
        for pid in proc.group_members(pgid):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                values = "\n".join(_environ(pid).values())
                seen += 1
                for what, secret in every.items():
                    if what not in own[svc.name]:
                        assert secret not in values, f"{svc.name} process {pid} holds the {what}"
    assert seen >= 4  # the store, the broker, the JobManager and the TaskManager
    # What `jobs submit` hands `flink run` (and so the job's Python code): no secret either.
    os.environ.update(run["grafana"])
    try:
        submit_env = "\n".join(stack.Flink(settings).env().values())
        submit_env += "\n".join(settings.to_env(secrets=False).values())
    finally:
        for name in run["grafana"]:
            os.environ.pop(name, None)
    for what, secret in every.items():
        assert secret not in submit_env, f"a Flink client's environment holds the {what}"


def test_no_secret_in_any_log_or_output(run: dict) -> None:
    settings = run["settings"]
    every = _all_secrets(run)
    texts = {"demo stdout": run["done"].stdout, "demo stderr": run["done"].stderr}
    files = [p for p in settings.run_dir.rglob("*") if p.is_file() and p.name not in SECRET_STORES]
    logs = [p for p in files if p.suffix in (".log", ".out")]
    assert {"kafka.log", "store.log"} <= {p.name for p in logs}
    assert any(p.name.startswith("submit-detect") for p in logs)
    assert any("taskexecutor" in p.name for p in logs)
    for path in files:
        texts[str(path.relative_to(settings.run_dir))] = path.read_bytes().decode(errors="replace")
    leaks = [
        (where, what) for where, text in texts.items() for what, secret in every.items() if secret in text
    ]
    assert not leaks, leaks


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_help_and_config_mask_every_secret(
    run: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main

    every = _all_secrets(run)
    for var, value in {**_base_env(run["settings"]), **run["grafana"]}.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("CITYSTREAM_CLICKHOUSE_PASSWORD", run["settings"].clickhouse_password)
    helps = [p.format_help() for p in _parsers(build_parser())]
    assert len(helps) > 10
    assert main(["config"]) == 0
    shown = "\n".join(helps) + capsys.readouterr().out
    assert "***" in shown
    for what, secret in every.items():
        assert secret not in shown, f"--help or config shows the {what}"
