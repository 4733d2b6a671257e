"""What every stack service shares: a detached process group, its pid file, start/stop/status.

Why process groups: each service runs in its own session, so stopping its group
also stops the children it forked (Flink's Python workers, the JVM behind a
script); the group id recorded in ``state.json`` is all ``down`` needs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from citystream import proc
from citystream.errors import UserError
from citystream.settings import Settings


@dataclass(frozen=True)
class Status:
    name: str
    state: str  # healthy | unhealthy | stopped | crashed | external
    pid: int | None
    port: int
    detail: str


class Service(ABC):
    """A server process owned by the stack; its pid and process group live in ``state.json``."""

    name: str
    port_env: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.run_dir / self.name
        self.state_file = self.dir / "state.json"
        self.log = self.dir / f"{self.name}.log"

    @property
    @abstractmethod
    def port(self) -> int: ...

    @abstractmethod
    def _launch(self) -> subprocess.Popen[bytes]:
        """Start the server detached in its own session and return the launcher process."""

    @abstractmethod
    def healthy(self) -> bool: ...

    def detail(self) -> str:
        return ""

    def purge_paths(self) -> list[Path]:
        return [self.dir]

    def _state(self) -> dict[str, int]:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def running(self) -> bool:
        pgid = self._state().get("pgid")
        return bool(pgid and proc.group_members(pgid))

    def start(self, timeout_s: float = 120.0) -> str:
        """Start unless already healthy; returns what happened, for the user."""
        if self.running():
            if proc.wait_until(self.healthy, timeout_s):
                return "already running"
            raise UserError(
                f"{self.name} is running (pgid {self._state()['pgid']}) but not healthy; "
                f"see {self.log} or run `citystream stack down`"
            )
        proc.ensure_port_free(self.port, self.name, self.port_env)
        self.dir.mkdir(parents=True, exist_ok=True)
        launcher = self._launch()
        self.state_file.write_text(json.dumps({"pgid": launcher.pid, "port": self.port}))
        ok = proc.wait_until(lambda: self.healthy() or not self.running(), timeout_s)
        if ok and self.healthy():
            return "started"
        proc.stop_group(launcher.pid, timeout_s=10)
        why = "exited while starting" if ok else f"not healthy after {timeout_s:.0f}s"
        raise UserError(f"{self.name} {why}; last log lines of {self.log}:\n{proc.tail(self.log)}")

    def stop(self) -> str:
        pgid = self._state().get("pgid")
        if not pgid or not proc.group_members(pgid):
            self.state_file.unlink(missing_ok=True)
            return "not running"
        if not proc.stop_group(pgid):
            raise UserError(f"could not stop {self.name} (process group {pgid})")
        self.state_file.unlink(missing_ok=True)
        return "stopped"

    def pid(self) -> int | None:
        pgid = self._state().get("pgid")
        if not pgid:
            return None
        members = proc.group_members(pgid)
        return min(members) if members else None

    def status(self) -> Status:
        pid = self.pid()
        if pid is None:
            state = "crashed" if self.state_file.exists() else "stopped"
            return Status(self.name, state, None, self.port, f"log: {self.log}" if state == "crashed" else "")
        try:
            healthy = self.healthy()
        except Exception:
            healthy = False
        if healthy:
            return Status(self.name, "healthy", pid, self.port, self.detail())
        return Status(self.name, "unhealthy", pid, self.port, f"log: {self.log}")


def venv_python() -> str:
    return sys.executable


def http_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())
