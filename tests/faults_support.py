"""What the fault tests need around the real processes: kill -9, restart, stream, read back, compare.

Why a module of its own: tests/test_faults.py reads as the scenarios (what is killed,
how often, what must hold afterwards); the mechanics - which pid is the TaskManager,
how a broker comes back on its data dir, a producer that counts delivery callbacks,
reading a topic at read_committed - live here. Every process started here is
remembered and stopped by its own pid or process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from citystream import contracts, proc
from citystream.settings import ROOT, Settings
from citystream.stack import Flink, Kafka, Store
from citystream.store.client import connect

#: A wait longer than this is a hang, not a slow machine (a guard, never an assertion on time).
GUARD_S = 600.0
#: The domain job's options in every run: watermarks per reading, so lateness depends on order only.
JOB_ARGS = ["--parallelism", "1", "--watermark-on-event", "--out-of-order-s", "30"]
#: Value fields of a water reading that are their own metric (samples counted per field).
WATER_VALUES = ("pressure_bar", "flow_lps", "tank_level_m", "ph", "turbidity_ntu", "chlorine_mgl")


def _last_pid(pid_file: Path) -> int | None:
    """The newest pid Flink's daemon script appended (a restarted daemon adds a line)."""
    with contextlib.suppress(OSError, ValueError):
        lines = [line for line in pid_file.read_text().split() if line.strip()]
        return int(lines[-1]) if lines else None
    return None


def quiet_port(low: int = 20_000, high: int = 32_000) -> int:
    """A free port below Linux's ephemeral range (32768-60999).

    Why: clients keep reconnecting to a killed server's port; with the port inside the
    ephemeral range one of them can be given it as its own source port and connect to
    itself (seen: the broker could not come back on its port).
    """
    import socket

    rng = random.Random()
    while True:
        port = rng.randrange(low, high)
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return port


def kill9(pid: int | None) -> None:
    """SIGKILL one process and wait until it is gone (no handler, no flush, no goodbye)."""
    assert pid and proc.pid_alive(pid), f"nothing to kill (pid {pid})"
    os.kill(pid, signal.SIGKILL)
    assert proc.wait_until(lambda: not proc.pid_alive(pid), 60), f"pid {pid} survived SIGKILL"


class FaultStack:
    """The stack's broker, Flink cluster and store, each killable and restartable in place.

    Daemons restarted here (a TaskManager, a JobManager) run in process groups of their own,
    which :meth:`stop` stops too; the stack's services stop their recorded groups.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = Kafka(settings)
        self.flink = Flink(settings)
        self.store = Store(settings, loader=False)
        self.extra_groups: list[int] = []

    def start(self) -> None:
        for svc in (self.store, self.kafka, self.flink):
            svc.start(timeout_s=GUARD_S)

    def stop(self) -> None:
        for pgid in self.extra_groups:
            proc.stop_group(pgid, timeout_s=15)
        for svc in (self.flink, self.kafka, self.store):
            with contextlib.suppress(Exception):
                svc.stop()

    # -- Flink daemons -------------------------------------------------------------------

    def _daemon_pid(self, daemon: str) -> int | None:
        # flink-<FLINK_IDENT_STRING, i.e. $USER, empty in the cluster's scrubbed environment>-<daemon>.pid
        found = sorted(self.flink.dir.glob(f"flink-*-{daemon}.pid"))
        return _last_pid(found[0]) if found else None

    def taskmanager_pid(self) -> int | None:
        return self._daemon_pid("taskexecutor")

    def jobmanager_pid(self) -> int | None:
        return self._daemon_pid("standalonesession")

    def _start_daemon(self, script: str) -> None:
        """Flink's own start script, in a group of ours; returns once the daemon is forked."""
        launcher = subprocess.Popen(
            ["bash", str(self.flink.home() / "bin" / script), "start"],
            env=self.flink.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.extra_groups.append(launcher.pid)
        assert launcher.wait(timeout=120) == 0, f"{script} start failed"
        if not self.flink.running():  # the recorded group is empty: this one is the cluster now
            self.flink.state_file.write_text(json.dumps({"pgid": launcher.pid, "port": self.flink.port}))

    def restart_taskmanager(self) -> None:
        self._start_daemon("taskmanager.sh")
        assert proc.wait_until(self.flink.healthy, GUARD_S, 1.0), "no TaskManager registered after restart"

    def restart_jobmanager(self) -> None:
        self._start_daemon("jobmanager.sh")
        assert proc.wait_until(self.flink.healthy, GUARD_S, 1.0), (
            "the TaskManager never joined the new JobManager"
        )

    # -- broker and store ----------------------------------------------------------------

    def restart_broker(self) -> None:
        """The same port and data dir: ``Kafka.start`` finds the formatted storage and reuses it."""
        # Clients reconnecting to a dead port can hold it a moment (a socket connected to itself).
        assert proc.wait_until(lambda: not proc.port_in_use(self.kafka.port), GUARD_S, 0.5)
        self.kafka.start(timeout_s=GUARD_S)

    def kill_store(self) -> None:
        """SIGKILL the store's whole process group (the server and anything it forked)."""
        pgid = self.store._state().get("pgid")
        assert pgid and proc.group_members(pgid), "the store is not running"
        os.killpg(pgid, signal.SIGKILL)
        assert proc.wait_until(lambda: not proc.group_members(pgid), 60), "the store survived SIGKILL"

    def restart_store(self) -> None:
        assert proc.wait_until(lambda: not proc.port_in_use(self.store.port), GUARD_S, 0.5)
        self.store.start(timeout_s=GUARD_S)


# --------------------------------------------------------------------------- the loader process


class LoaderProcess:
    """The loader in a process of its own (the store's built-in one would die with the store)."""

    CODE = (
        "import sys; from citystream.settings import load as s; "
        "from citystream.connectors.loader import load; "
        "load(s(), until_end=False, group_id=sys.argv[1], batch_rows=200, batch_ms=300, max_backoff_s=2.0)"
    )

    def __init__(self, settings: Settings, group: str, log: Path) -> None:
        self.settings, self.group, self.log = settings, group, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = proc.child_env(self.settings.to_env())
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.CODE, self.group],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill(self) -> None:
        kill9(self.pid)
        assert self.proc is not None
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


# --------------------------------------------------------------------------- the input


@dataclass
class Acked:
    """What the broker acknowledged, in delivery-callback order (not what was attempted)."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    failed: int = 0
    attempted: int = 0


class AckingSink:
    """A simulator sink that produces like ``ReadingProducer`` but keeps every delivery callback.

    Why not ReadingProducer: it reports failures only; the fault checks need the records the
    broker acknowledged, in the order it acknowledged them (per partition, the log's order).
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        from confluent_kafka import Producer

        self.topic, self.acked = topic, Acked()
        self._lock = threading.Lock()
        self._producer = Producer(
            {"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True,
             "linger.ms": 20, "compression.type": "zstd", "partitioner": "murmur2_random",
             # Long enough to ride out a broker that is down for a restart.
             "message.timeout.ms": 600_000, "logger": _quiet_logger()}
        )  # fmt: skip

    def _delivered(self, err: object, msg: object) -> None:
        with self._lock:
            if err is None:
                self.acked.records.append((msg.key(), msg.value()))  # type: ignore[attr-defined]
            else:
                self.acked.failed += 1

    def emit(self, topic: str, keys: list[bytes], values: list[bytes]) -> None:
        if topic != self.topic:  # labels: not part of the pipeline under test
            return
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    self._producer.produce(topic, value, key, on_delivery=self._delivered)
                    break
                except BufferError:
                    self._producer.poll(0.05)
            self.acked.attempted += 1
        self._producer.poll(0)

    def register(self, topic: str, sensors: list) -> int:
        """The run's sensor registry entries, delivered before any reading (jobs check them)."""
        for sensor in sensors:
            self._producer.produce(topic, sensor.encode(), sensor.sensor_id.encode("utf-8"))
        self.flush()
        return len(sensors)

    def flush(self) -> None:
        while len(self._producer):
            self._producer.flush(1.0)


def _quiet_logger() -> object:
    import logging

    log = logging.getLogger("faults.librdkafka")
    log.setLevel(logging.CRITICAL)  # connection refused while the broker restarts: expected
    return log


def simulation(settings: Settings, seed: int, sensors: int, minutes: int, speed: float | None) -> object:
    """The seeded water city: in-order within the watermark (never late), 2 % duplicates."""
    from citystream.simulator.engine import SimConfig, Simulation
    from citystream.simulator.imperfections import Rates

    cfg = SimConfig(
        seed=seed, start_ms=T0_MS, duration_ms=minutes * 60_000, sensors=sensors, domains=("water",),
        rates=Rates(out_of_order=0.05, duplicates=0.02, watermark_s=10), anomalies_per_hour=30.0,
        topic_prefix=settings.topic_prefix, speed=speed,
    )  # fmt: skip
    return Simulation(cfg)


T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
#: The city streams MINUTES of event time from T0; every window of it ends by CUTOFF_MS (5-minute
#: hops); the tick (see Streamer._tick) comes later, so its own windows all end after the cutoff.
MINUTES = 45
CUTOFF_MS = T0_MS + (MINUTES + 5) * 60_000
TICK_MS = T0_MS + (MINUTES + 15) * 60_000


class Streamer(threading.Thread):
    """The simulator producing in the background while processes are killed."""

    def __init__(
        self, settings: Settings, seed: int, sensors: int, minutes: int, speed: float | None
    ) -> None:
        super().__init__(daemon=True)
        self.sink = AckingSink(settings, settings.topic("readings.water"))
        self.sim = simulation(settings, seed, sensors, minutes, speed)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sim.run(self.sink)  # type: ignore[attr-defined]
            self.sink.flush()
            self._tick()
        except BaseException as exc:  # re-raised by the test through .error
            self.error = exc

    def _tick(self) -> None:
        """One reading :data:`TICK_MS` after the city's end: the live watermark passes every window.

        Why: an unbounded job closes a window only when a later reading moves its watermark;
        ``jobs stop --drain`` did not emit the last windows (measured: the final minute and the
        last hops never reached the topic). The tick is in both runs' input; rows from
        :data:`CUTOFF_MS` on (the tick's own windows) are left out of every comparison.
        """
        key, value = self.sink.acked.records[-1]
        record = contracts.decode("citystream.WaterReading", value)
        sensor = record["envelope"]["sensor_id"]
        seqs = [
            r["envelope"]["seq"]
            for r in readings(self.sink.acked.records)
            if r["envelope"]["sensor_id"] == sensor
        ]
        record["envelope"].update(event_time=TICK_MS, seq=max(seqs) + 1)
        self.sink.emit(self.sink.topic, [key], [contracts.encode("citystream.WaterReading", record)])
        self.sink.flush()


# --------------------------------------------------------------------------- reading back


def read_committed(settings: Settings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every committed record of ``topic`` (all partitions, each in log order), as the loader reads."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": "faults-readback",
         "isolation.level": "read_committed", "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    )  # fmt: skip
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        out: list[tuple[bytes, bytes]] = []
        for p in sorted(parts):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high <= low:
                continue
            consumer.assign([TopicPartition(topic, p, low)])
            idle = 0
            while idle < 10:
                msg = consumer.poll(1.0)
                if msg is None:
                    idle += 1
                    continue
                if msg.error():
                    continue
                idle = 0
                out.append((msg.key(), msg.value()))
                if msg.offset() >= high - 1:
                    break
        return out
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
    return {tp.partition: tp.offset for tp in got.topic_partitions if tp.topic == topic}


def log_ends(settings: Settings, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "faults-ends"})
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts}
    finally:
        consumer.close()


def wait_consumed(settings: Settings, group: str, topic: str, slack: int, why: str) -> None:
    """Until ``group`` committed (on a checkpoint) every partition of ``topic`` to within ``slack``.

    ``slack`` 1 for a transactional topic: its last offset is a commit marker, not a record.
    """

    def done() -> bool:
        ends, got = log_ends(settings, topic), committed_offsets(settings, group, topic)
        return all(got.get(p, -1) >= end - slack for p, end in ends.items())

    assert proc.wait_until(done, GUARD_S, 2.0), f"{group} never consumed {topic} ({why})"


#: Per compared table, the event time that puts a row before the tick (the whole city's run).
BEFORE_TICK = {
    "window_aggregates": "window_end",
    "anomalies": "event_time",
    "alerts": "last_seen",
    "late_events": "event_time",
}


def table_rows(settings: Settings, table: str) -> list[tuple]:
    """The table as queries see it (FINAL) before :data:`CUTOFF_MS`, without load times, sorted."""
    client = connect(settings)
    try:
        rows = client.query(
            f"SELECT * EXCEPT (loaded_at) FROM {table} FINAL "
            f"WHERE toUnixTimestamp64Milli({BEFORE_TICK[table]}) <= {{cut:Int64}}",
            parameters={"cut": CUTOFF_MS},
        ).result_rows
        # A mean is a float sum: after a restore Flink adds the same readings in other groups
        # (bundles), so the last bit may differ (measured: 62 of 4,590 DMA means after three
        # TaskManager kills). Compared to 12 significant digits, as tests/test_loader.py does.
        return sorted(
            (tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in r) for r in rows), key=repr
        )
    finally:
        client.close()


def raw_copies(settings: Settings, table: str) -> int:
    """Raw rows that are exact copies of another (a batch inserted twice would show here)."""
    client = connect(settings)
    try:
        names = client.query(
            "SELECT name FROM system.columns WHERE table = {t:String} "
            "AND database = currentDatabase() AND name != 'loaded_at'",
            parameters={"t": table},
        ).result_rows
        cols = [c for (c,) in names]
        return int(client.command(f"SELECT count() - uniqExact(tuple({', '.join(cols)})) FROM {table}"))
    finally:
        client.close()


# --------------------------------------------------------------------------- the checks


def readings(records: list[tuple[bytes, bytes]]) -> list[dict]:
    return [contracts.decode("citystream.WaterReading", v) for _, v in records]


def per_sensor_order(records: list[tuple[bytes, bytes]]) -> dict[str, list[int]]:
    """Each sensor's seq numbers in the order given (acknowledged, or as in the log)."""
    out: dict[str, list[int]] = defaultdict(list)
    for r in readings(records):
        out[r["envelope"]["sensor_id"]].append(r["envelope"]["seq"])
    return dict(out)


def expected_windows(records: list[tuple[bytes, bytes]]) -> dict[tuple[str, str, int], tuple[int, int]]:
    """(sensor, metric, minute start) -> (samples, duplicates) the acknowledged readings make.

    A reading counts once per seq (a resent seq is a duplicate, counted apart); a metric's
    samples are the distinct readings carrying that field.
    """
    seen: dict[tuple[str, int], Counter] = defaultdict(Counter)
    fields: dict[tuple[str, int, int], dict] = {}
    for r in readings(records):
        env = r["envelope"]
        key = (env["sensor_id"], env["event_time"] // 60_000 * 60_000)
        seen[key][env["seq"]] += 1
        fields.setdefault((*key, env["seq"]), r)
    out: dict[tuple[str, str, int], tuple[int, int]] = {}
    for (sensor, minute), seqs in seen.items():
        if minute >= CUTOFF_MS - 60_000:
            continue
        dups = sum(n - 1 for n in seqs.values())
        for metric in WATER_VALUES:
            n = sum(1 for s in seqs if fields[(sensor, minute, s)].get(metric) is not None)
            if n:
                out[(sensor, metric, minute)] = (n, dups)
    return out


def stored_windows(settings: Settings) -> dict[tuple[str, str, int], tuple[int, int]]:
    client = connect(settings)
    try:
        rows = client.query(
            "SELECT key_id, metric, toUnixTimestamp64Milli(window_start), samples, duplicates "
            "FROM window_aggregates FINAL WHERE key_kind = 'sensor' "
            "AND dateDiff('second', window_start, window_end) = 60 AND metric IN {m:Array(String)} "
            "AND toUnixTimestamp64Milli(window_end) <= {cut:Int64}",
            parameters={"m": list(WATER_VALUES), "cut": CUTOFF_MS},
        ).result_rows
    finally:
        client.close()
    return {(k, m, int(w)): (int(n), int(d)) for k, m, w, n, d in rows}


def timed(fn: Callable[[], object]) -> float:
    began = time.monotonic()
    fn()
    return time.monotonic() - began
