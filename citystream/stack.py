"""The local stack: one Kafka broker (KRaft), one Flink cluster, one ClickHouse store.

Contract of ``citystream stack up | down | status``:

* ``up`` starts what is not running, waits until each service answers its
  health check (broker metadata, Flink ``/overview`` with a TaskManager,
  store ``SELECT 1``) and is idempotent. A port held by another process, a
  service that dies while starting, or a missing ``make setup`` is reported
  in one line that names the fix.
* ``down`` stops exactly the process groups ``up`` started (pids recorded
  under the run directory) and keeps the data; ``down --purge`` deletes it.
* ``status`` prints each service's state, pid, port and health.

Every service runs in its own session, so stopping its process group also
stops the children it forked (Flink's Python workers, the JVM behind a
script). Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from citystream import proc
from citystream.errors import UserError
from citystream.settings import Settings
from citystream.settings import load as load_settings


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


def _merge(base: dict, override: dict) -> dict:
    """Deep merge of nested config dicts; ``override`` wins."""
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _venv_python() -> str:
    return sys.executable


def _http_json(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Kafka(Service):
    """Apache Kafka 4.x, one combined broker+controller in KRaft mode, from Maven Central jars."""

    name = "kafka"
    port_env = "CITYSTREAM_KAFKA_PORT"

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def _classpath(self) -> str:
        jars = self.settings.jars_dir / "kafka"
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise UserError(f"Kafka broker jars missing in {jars}: run `make setup`")
        return f"{jars}/*"

    def _write_config(self) -> Path:
        s = self.settings
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "2",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
        }
        path = self.dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.dir / "log4j2.properties"
        log4j.write_text(
            "rootLogger.level = INFO\nrootLogger.appenderRef.out.ref = out\n"
            "appender.out.type = Console\nappender.out.name = out\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "logger.kafka.name = kafka\nlogger.kafka.level = WARN\n"
            "logger.apache.name = org.apache.kafka\nlogger.apache.level = WARN\n"
            "logger.started.name = kafka.server.KafkaRaftServer\nlogger.started.level = INFO\n"
        )
        return path

    def _java(self, *args: str, heap: str = "512m") -> list[str]:
        java = shutil.which("java")
        if not java:
            raise UserError("java not found: install OpenJDK 17 (apt-get install openjdk-17-jdk-headless)")
        return [
            java,
            f"-Xmx{heap}",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            self._classpath(),
            *args,
        ]

    def _launch(self) -> subprocess.Popen[bytes]:
        config = self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            cluster_id = "-"
            while cluster_id.startswith("-"):  # kafka-storage would take "-..." for an option
                cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            fmt = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise UserError(f"formatting Kafka storage failed: {fmt.stdout.strip()} {fmt.stderr.strip()}")
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                self._java("kafka.Kafka", str(config), heap="768m"),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def healthy(self) -> bool:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap,
            request_timeout_ms=3000,
            client_id="citystream-health",
        )
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()

    def detail(self) -> str:
        return f"KRaft broker+controller, data {self.data_dir}"


class Flink(Service):
    """A Flink standalone session cluster from the scripts and jars inside the PyFlink package."""

    name = "flink"
    port_env = "CITYSTREAM_FLINK_PORT"

    @property
    def port(self) -> int:
        return self.settings.flink_rest_port

    @staticmethod
    def home() -> Path:
        import pyflink

        return Path(pyflink.__file__).resolve().parent

    def purge_paths(self) -> list[Path]:
        return [self.dir]

    def env(self) -> dict[str, str]:
        """Environment for the bundled ``bin/`` scripts (also used by ``flink run``)."""
        venv_bin = str(Path(sys.executable).parent)
        env = proc.child_env()
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
        python = _venv_python()
        config = {
            "jobmanager": {
                "rpc": {"address": "127.0.0.1", "port": proc.free_port()},
                "bind-host": "127.0.0.1",
                "memory": {"process": {"size": "1600m"}},
            },
            "taskmanager": {
                "bind-host": "127.0.0.1",
                "host": "127.0.0.1",
                "numberOfTaskSlots": 2,
                "memory": {"process": {"size": "4096m"}},
            },
            "rest": {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": self.port},
            "parallelism": {"default": 1},
            "execution": {"checkpointing": {"dir": (self.dir / "checkpoints").as_uri()}},
            "python": {"executable": python, "client": {"executable": python}},
        }
        # Start from the bundled config (it carries the --add-opens flags Java 17 needs).
        import yaml

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

    def healthy(self) -> bool:
        return _http_json(f"http://127.0.0.1:{self.port}/overview").get("taskmanagers", 0) >= 1

    def detail(self) -> str:
        try:
            o = _http_json(f"http://127.0.0.1:{self.port}/overview")
            return (
                f"{o['taskmanagers']} taskmanager, {o['slots-available']}/{o['slots-total']} slots free, "
                f"{o['jobs-running']} jobs running, UI http://127.0.0.1:{self.port}"
            )
        except Exception:
            return ""


class Store(Service):
    """The embedded ClickHouse engine (chdb), owned by one process that serves ClickHouse HTTP."""

    name = "store"
    port_env = "CITYSTREAM_STORE_PORT"

    def __init__(self, settings: Settings, loader: bool = True) -> None:
        super().__init__(settings)
        #: Whether the store process also runs the Kafka loader of the result topics.
        self.loader = loader

    @property
    def port(self) -> int:
        return self.settings.store_port

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def _launch(self) -> subprocess.Popen[bytes]:
        cmd = [
            _venv_python(),
            "-m",
            "citystream.cli",
            "store",
            "serve",
            "--data",
            str(self.data_dir),
            "--port",
            str(self.port),
            "--loader" if self.loader else "--no-loader",
        ]
        with open(self.log, "ab") as log:
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # The loader inside must find the same broker, topics and database as this stack.
                env=proc.child_env(self.settings.to_env()),
            )

    def healthy(self) -> bool:
        from citystream.store.client import connect

        client = connect(self.settings)
        try:
            return client.command("SELECT 1") == 1
        finally:
            client.close()

    def detail(self) -> str:
        return f"chdb, data {self.data_dir}, {self.settings.clickhouse_url}"


def _quiet_client_logs() -> None:
    """Health polls fail until a server is up; the clients' own error logs would only be noise."""
    import logging

    for name in ("clickhouse_connect", "kafka"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def services(settings: Settings) -> list[Service]:
    """The services ``up`` starts, in start order (a real ClickHouse server is not ours to start)."""
    _quiet_client_logs()
    found: list[Service] = []
    if settings.embedded_store:
        found.append(Store(settings))
    found += [Kafka(settings), Flink(settings)]
    return found


def up(settings: Settings, echo=print) -> None:
    for svc in services(settings):
        echo(f"{svc.name:6} ... ", end="", flush=True)
        echo(f"{svc.start()} (port {svc.port})")
    if settings.embedded_store:
        # Ours to keep current, like the topics: `up` leaves a store the jobs and loader can use.
        from citystream.store.migrate import migrate

        applied = migrate(settings)
        echo(f"schema {len(applied)} migration(s) applied" if applied else "schema up to date")
    else:
        echo(f"store  ... external ClickHouse at {settings.clickhouse_url} (`citystream store migrate`)")
    from citystream.topics import ensure_topics

    changes = ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)
    echo(
        f"topics {len(changes)} change(s) from {settings.topics_spec.name}"
        if changes
        else "topics up to date"
    )


def down(settings: Settings, purge: bool = False, echo=print) -> None:
    for svc in reversed(services(settings)):
        echo(f"{svc.name:6} {svc.stop()}")
        if purge:
            for path in svc.purge_paths():
                shutil.rmtree(path, ignore_errors=True)
            echo(f"{svc.name:6} data purged")


def status(settings: Settings) -> list[Status]:
    found = [svc.status() for svc in services(settings)]
    if not settings.embedded_store:
        from citystream.store.client import connect

        try:
            ok = connect(settings).command("SELECT 1") == 1
        except Exception:
            ok = False
        found.insert(
            0, Status("store", "external" if ok else "unreachable", None, 0, settings.clickhouse_url)
        )
    return found


def _cmd_up(args: argparse.Namespace) -> int:
    up(load_settings())
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down(load_settings(), purge=args.purge)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = status(load_settings())
    print(f"{'SERVICE':8} {'STATE':10} {'PID':>8} {'PORT':>6}  DETAIL")
    for r in rows:
        print(f"{r.name:8} {r.state:10} {r.pid or '-':>8} {r.port or '-':>6}  {r.detail}")
    return 0 if all(r.state in ("healthy", "external") for r in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    stack = sub.add_parser(
        "stack",
        help="start, stop and inspect the local Kafka + Flink + ClickHouse stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = stack.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    p = cmds.add_parser("up", help="start every service and wait until healthy (idempotent)")
    p.set_defaults(handler=_cmd_up)
    p = cmds.add_parser("down", help="stop the services this stack started; keeps data unless --purge")
    p.add_argument("--purge", action="store_true", help="also delete broker, store and checkpoint data")
    p.set_defaults(handler=_cmd_down)
    p = cmds.add_parser(
        "status", help="state, pid, port and health of each service (exit 1 unless all healthy)"
    )
    p.set_defaults(handler=_cmd_status)
