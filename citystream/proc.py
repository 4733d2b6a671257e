"""Process and port helpers for servers the project starts itself.

Why not a supervisor library: the contract is small and must be exact — a
server is started in its own session (so its whole process group, including
Python workers Flink forks, can be stopped by one pid), its pid is written
to a file we own, health is polled rather than slept on, and a port that is
already taken is reported with the pid that holds it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from citystream.errors import UserError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def port_owner(port: int) -> int | None:
    """Pid of the process listening on ``port`` (Linux /proc), or None when unknown."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (pid_dir / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(pid_dir.name)
    return None


def ensure_port_free(port: int, what: str, env_var: str) -> None:
    """Fail with a message naming the holder and the fix when ``port`` is taken."""
    if port_in_use(port):
        owner = port_owner(port)
        held = f" by pid {owner}" if owner else ""
        raise UserError(f"{what} port {port} is already in use{held}: stop that process or set {env_var}")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid``."""
    members = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = pid_dir.joinpath("stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(pid_dir.name))
    return members


def stop_group(pgid: int, timeout_s: float = 30.0) -> bool:
    """SIGTERM a process group, SIGKILL what is left after ``timeout_s``; True when it is gone."""
    if not group_members(pgid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    if wait_until(lambda: not group_members(pgid), timeout_s, interval_s=0.2):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return wait_until(lambda: not group_members(pgid), 10.0, interval_s=0.2)


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``check`` until it is true or ``timeout_s`` passes (a health check, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            if check():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


#: What a process that ran a PyFlink job in-process (loopback mode) carries in its environment.
#: A child that inherited PYTHON_LOOPBACK_SERVER_ADDRESS would run its Python functions in the
#: parent's worker pool, which then takes over the child's variables (FLINK_CONF_DIR of a
#: cluster ...): seen as a later local job failing with "bin/java" not found.
PYFLINK_PROCESS_VARS = (
    "PYFLINK_GATEWAY_DISABLED",
    "PYTHON_LOOPBACK_SERVER_ADDRESS",
    "_PYFLINK_CONN_INFO_PATH",
    "_PYTHON_WORKER_MEMORY_LIMIT",
    "BOOT_LOG_DIR",
    "SEMI_PERSISTENT_DIRECTORY",
    "WORKER_ID",
    "PIPELINE_OPTIONS",
    "FLINK_INHERITED_LOGS",
    "FLINK_CONF_DIR",
)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child process, minus PyFlink's in-process state."""
    env = {k: v for k, v in os.environ.items() if k not in PYFLINK_PROCESS_VARS}
    env.update(extra or {})
    return env
