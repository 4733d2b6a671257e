"""The stack's Flink: a standalone session cluster from the scripts and jars inside PyFlink.

The cluster's size (task slots, process memory) is set in ``Flink._write_config``.

Its processes (JobManager, TaskManager, their Python workers, the ``flink run``
clients) get an environment built from scratch (:meth:`Flink.env`): what the
JVM and the scripts need, and the settings with every secret present but empty.
The jobs never talk to the store or Grafana, and their Kafka password (the
``jobs`` user's) reaches the Kafka connector through the table options, not
the environment: nothing a job or a Flink log could reveal holds another
component's secret.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from citystream import proc
from citystream.errors import UserError
from citystream.stack.service import Service, http_json, venv_python
from citystream.stack.store import INHERITED_VARS

#: What Flink's processes inherit from ours: the store's list, plus what the JVM and the scripts read.
FLINK_INHERITED = (*INHERITED_VARS, "JAVA_HOME", "USER", "LOGNAME", "HOSTNAME")


class Flink(Service):
    """A Flink standalone session cluster from the scripts and jars inside the PyFlink package."""

    name = "flink"
    port_env = "CITYSTREAM_FLINK_PORT"

    @property
    def port(self) -> int:
        return self.settings.flink_rest_port

    @staticmethod
    def home() -> Path:
        import pyflink  # heavy (Flink's Python API): only where a cluster is started or submitted to

        return Path(pyflink.__file__).resolve().parent

    def purge_paths(self) -> list[Path]:
        return [self.dir]

    def env(self) -> dict[str, str]:
        """The whole environment of the bundled ``bin/`` scripts and ``flink run`` (not added to ours)."""
        venv_bin = str(Path(sys.executable).parent)
        env = {var: os.environ[var] for var in FLINK_INHERITED if var in os.environ}
        env.update(self.settings.to_env(secrets=False))
        env.update(
            FLINK_HOME=str(self.home()),
            FLINK_CONF_DIR=str(self.dir / "conf"),
            FLINK_LOG_DIR=str(self.dir / "log"),
            FLINK_PID_DIR=str(self.dir),
            PATH=f"{venv_bin}:{env.get('PATH', '')}",
        )
        return env

    def _write_config(self) -> None:
        conf = self.dir / "conf"
        conf.mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties"):
            shutil.copyfile(self.home() / "conf" / name, conf / name)
        python = venv_python()
        config = {
            "jobmanager": {
                "rpc": {"address": "127.0.0.1", "port": proc.free_port()},
                "bind-host": "127.0.0.1",
                "memory": {"process": {"size": "1600m"}},
            },
            "taskmanager": {
                "bind-host": "127.0.0.1",
                "host": "127.0.0.1",
                # Four slots: the three domain jobs and the detect job run at once (`citystream demo`)
                # at parallelism 1. One process of 4 GB: the domain jobs keep heap state only; the
                # detect job's Python worker takes its slot's share of managed memory.
                "numberOfTaskSlots": 4,
                "memory": {"process": {"size": "4096m"}},
            },
            "rest": {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": self.port},
            "parallelism": {"default": 1},
            # How many completed checkpoints stay on disk is the JobManager's to decide: a job's own
            # value is not used (measured: one kept), so the settings' value goes here.
            "execution": {
                "checkpointing": {
                    "dir": (self.dir / "checkpoints").as_uri(),
                    "num-retained": self.settings.retained_checkpoints,
                }
            },
            "python": {"executable": python, "client": {"executable": python}},
        }
        # Start from the bundled config (it carries the --add-opens flags Java 17 needs).
        bundled = yaml.safe_load((self.home() / "conf" / "config.yaml").read_text()) or {}
        (conf / "config.yaml").write_text(yaml.safe_dump(_merge(bundled, config), sort_keys=True))

    def _launch(self) -> subprocess.Popen[bytes]:
        self._write_config()
        bin_dir = self.home() / "bin"
        script = f"'{bin_dir}/jobmanager.sh' start && '{bin_dir}/taskmanager.sh' start"
        with open(self.log, "ab") as log:
            launcher = subprocess.Popen(
                ["bash", "-c", script],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        # The scripts background the JVMs (nohup) and return; the JVMs keep the launcher's group.
        if launcher.wait(timeout=60) != 0:
            raise UserError(f"Flink start scripts failed; see {self.log}:\n{proc.tail(self.log)}")
        return launcher

    def jobmanager_pid(self) -> int | None:
        """The JobManager JVM's pid, from the pid file Flink's scripts write (``FLINK_PID_DIR``).

        Why not the group's: the JobManager and TaskManager share one process
        group, and a JobManager-loss drill must kill the JobManager alone.
        """
        for pid_file in self.dir.glob("flink-*-standalonesession.pid"):
            pids = [int(p) for p in pid_file.read_text().split() if p.isdigit()]
            alive = [p for p in pids if p in proc.group_members(self._state().get("pgid", 0) or 0)]
            if alive:
                return alive[-1]
        return None

    def healthy(self) -> bool:
        return http_json(f"http://127.0.0.1:{self.port}/overview").get("taskmanagers", 0) >= 1

    def detail(self) -> str:
        try:
            o = http_json(f"http://127.0.0.1:{self.port}/overview")
            return (
                f"{o['taskmanagers']} taskmanager, {o['slots-available']}/{o['slots-total']} slots free, "
                f"{o['jobs-running']} jobs running, UI http://127.0.0.1:{self.port}"
            )
        except Exception:
            return ""


def _merge(base: dict, override: dict) -> dict:
    """Deep merge of nested config dicts; ``override`` wins."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out
