"""Process and port helpers: the parts of `stack up/down` that must be exact."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from citystream import proc
from citystream.errors import UserError
from citystream.settings import Settings


def test_port_owner_and_clear_error_for_taken_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert proc.port_owner(port) == os.getpid()
        with pytest.raises(
            UserError, match=rf"port {port} is already in use by pid {os.getpid()}.*CITYSTREAM_X"
        ):
            proc.ensure_port_free(port, "kafka", "CITYSTREAM_X")
    proc.ensure_port_free(port, "kafka", "CITYSTREAM_X")  # released: no error


def test_stop_group_stops_children_too() -> None:
    launcher = subprocess.Popen(["bash", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    assert proc.wait_until(lambda: len(proc.group_members(launcher.pid)) == 3, 10)
    assert proc.stop_group(launcher.pid, timeout_s=10)
    launcher.wait()
    assert proc.group_members(launcher.pid) == []


def test_stack_up_names_port_conflict(tmp_path: Path) -> None:
    from citystream.stack import Kafka

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        settings = Settings(run_dir=tmp_path, kafka_port=s.getsockname()[1])
        with pytest.raises(UserError, match="CITYSTREAM_KAFKA_PORT"):
            Kafka(settings).start()


def test_missing_setup_is_named(tmp_path: Path) -> None:
    from citystream.stack import Kafka

    settings = Settings(run_dir=tmp_path, jars_dir=tmp_path / "nojars", kafka_port=proc.free_port())
    with pytest.raises(UserError, match="make setup"):
        Kafka(settings).start()


def test_children_never_inherit_pyflink_in_process_state(monkeypatch) -> None:
    from citystream.proc import PYFLINK_PROCESS_VARS, child_env

    for var in PYFLINK_PROCESS_VARS:
        monkeypatch.setenv(var, "from an in-process job")
    monkeypatch.setenv("CITYSTREAM_KEEP_ME", "1")
    env = child_env({"CITYSTREAM_TOPIC_PREFIX": "x."})
    assert not set(PYFLINK_PROCESS_VARS) & set(env)
    assert env["CITYSTREAM_KEEP_ME"] == "1" and env["CITYSTREAM_TOPIC_PREFIX"] == "x."
