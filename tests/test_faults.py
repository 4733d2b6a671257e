"""Fault tests with real processes (`make faults`): kill -9 a part of the pipeline, three times, mid-stream.

Why: exactly-once is a claim about crashes. While the seeded simulator streams a small
water city, one part is killed with SIGKILL at seeded random points and restarted: the
Flink TaskManager (the jobs restore their checkpoint), the JobManager (``citystream jobs
recover``), the Kafka broker (same port, same data dir), the store server, the loader.
After recovery and draining, ClickHouse must hold exactly what a failure-free run over
the same input holds - window aggregates, anomalies and alerts compared in full - and,
checked the way Flink's and Kafka's own suites check: the readings topic read back at
read_committed holds every acknowledged send (delivery callbacks, not attempts) once, in
each sensor's send order; every acknowledged reading's seq is counted in its window,
none twice. Out of the default run (``-m "not faults"``): at load average 15-30 on two
cores the reference took 6-12 minutes and each scenario 6-13 (2026-12-07).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from citystream import proc
from citystream.connectors.loader import load
from citystream.jobs import deploy
from citystream.settings import ROOT, Settings
from citystream.stack.service import http_json
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics
from tests.conftest import stack_settings
from tests.faults_support import (
    GUARD_S,
    JOB_ARGS,
    MINUTES,
    FaultStack,
    LoaderProcess,
    Streamer,
    expected_windows,
    kill9,
    per_sensor_order,
    quiet_port,
    raw_copies,
    read_committed,
    stored_windows,
    table_rows,
    wait_consumed,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration]

#: The seed of the kill points and of the city; printed with every scenario (`pytest -s`).
SEED = 20261207
KILLS = 3
SENSORS, SPEED = 40, 36.0  # MINUTES (45) of event time, detectors warmed up, streamed over ~75 s
COMPARED = ("window_aggregates", "anomalies", "alerts")
JOBS = ("water", "detect")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """One private broker, Flink cluster and store for the module, stopped by pid at the end."""
    tmp = tmp_path_factory.mktemp("faults")
    spec = tmp / "topics.toml"
    # One partition per topic: which reading is late depends only on the topic's order.
    spec.write_text((ROOT / "infra" / "topics.toml").read_text().replace("partitions = 3", "partitions = 1"))
    # Ports that are killed and reused: outside the ephemeral range (see quiet_port).
    ports = {"kafka_port": quiet_port(), "kafka_controller_port": quiet_port(), "store_port": quiet_port()}
    stack = FaultStack(stack_settings(tmp / "run", topics_spec=spec).replace(**ports))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def _scenario_settings(stack: FaultStack, name: str) -> Settings:
    settings = stack.settings.replace(topic_prefix=f"f{name}.", clickhouse_database=f"faults_{name}")
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)
    migrate(settings)
    return settings


# --------------------------------------------------------------------------- Flink jobs


def _jobs(settings: Settings) -> dict[str, dict]:
    overview = http_json(f"http://127.0.0.1:{settings.flink_rest_port}/jobs/overview", timeout=10)
    return {j["name"]: j for j in sorted(overview["jobs"], key=lambda j: j["start-time"])}


def _completed_checkpoints(settings: Settings, name: str) -> int:
    """Completed checkpoints of the running job ``citystream-NAME`` (-1: not running)."""
    job = _jobs(settings).get(f"citystream-{name}")
    if not job or job["state"] != "RUNNING" or job["tasks"]["running"] != job["tasks"]["total"]:
        return -1
    doc = http_json(f"http://127.0.0.1:{settings.flink_rest_port}/jobs/{job['jid']}/checkpoints", timeout=10)
    return int(doc["counts"]["completed"])


def _wait_checkpointed(settings: Settings, after: dict[str, int], why: str) -> dict[str, int]:
    """Until every job runs all its tasks and completed a checkpoint beyond ``after``."""
    now: dict[str, int] = {}

    def ready() -> bool:
        now.update({n: _completed_checkpoints(settings, n) for n in JOBS})
        return all(now[n] > after.get(n, 0) for n in JOBS)

    assert proc.wait_until(ready, GUARD_S, 1.0), f"jobs not running with a new checkpoint ({why}): {now}"
    return dict(now)


def _submit(stack: FaultStack, settings: Settings) -> None:
    deploy.submit(settings, stack.flink, "water", JOB_ARGS, detached=True)
    deploy.submit(settings, stack.flink, "detect", ["--parallelism", "1"], detached=True)


def _recover_cli(settings: Settings, name: str, job_args: list[str]) -> subprocess.CompletedProcess[str]:
    """``citystream jobs recover NAME -- ARGS``: what an operator runs after a JobManager loss."""
    env = proc.child_env(settings.to_env())
    return subprocess.run(
        [sys.executable, "-m", "citystream.cli", "jobs", "recover", name, "--", *job_args],
        env=env, capture_output=True, text=True, timeout=GUARD_S, check=False,
    )  # fmt: skip


def _drain(settings: Settings) -> None:
    """Close every window: the domain job once it consumed all readings, then detect likewise."""
    wait_consumed(settings, "citystream-water", settings.topic("readings.water"), 0, "before draining")
    deploy.stop(settings, "water", drain=True)
    wait_consumed(settings, "citystream-detect", settings.topic("aggregates"), 1, "before draining")
    deploy.stop(settings, "detect", drain=True)


# --------------------------------------------------------------------------- the reference


@pytest.fixture(scope="module")
def reference(stack: FaultStack) -> dict:
    """The failure-free run: the same seeded input, both jobs bounded on the same cluster, loaded."""
    settings = _scenario_settings(stack, "ref")
    streamer = Streamer(settings, SEED, SENSORS, MINUTES, speed=None)
    streamer.run()
    assert streamer.error is None and streamer.sink.acked.failed == 0 and streamer.sink.acked.records
    deploy.submit(settings, stack.flink, "water", ["--bounded", *JOB_ARGS])
    deploy.submit(settings, stack.flink, "detect", ["--bounded", "--parallelism", "1"])
    stats = load(settings, until_end=True, group_id="faults-loader")
    print(f"faults reference: {len(streamer.sink.acked.records)} readings, {stats.loaded} rows loaded")
    tables = {t: table_rows(settings, t) for t in (*COMPARED, "late_events")}
    assert tables["window_aggregates"] and tables["anomalies"] and tables["alerts"], {
        t: len(r) for t, r in tables.items()
    }
    # Never late (disorder within the watermark): recovery cannot change which reading is late.
    assert tables["late_events"] == []
    return {"input": read_committed(settings, settings.topic("readings.water")), "tables": tables}


# --------------------------------------------------------------------------- scenarios


@dataclass
class Report:
    kind: str
    kills: list[tuple[float, int]] = field(default_factory=list)  # (s since streaming began, acked then)
    seconds: float = 0.0

    def line(self) -> str:
        points = ", ".join(f"{s:.1f}s/{n} acked" for s, n in self.kills)
        return (
            f"faults {self.kind}: seed {SEED}, {len(self.kills)} kill -9 at [{points}], {self.seconds:.0f}s"
        )


class Fault:
    """One kind of process loss: how to kill it and how an operator (or the system) brings it back."""

    def __init__(self, kind: str, stack: FaultStack, settings: Settings, loader: LoaderProcess) -> None:
        self.kind, self.stack, self.settings, self.loader = kind, stack, settings, loader

    def pid(self) -> int | None:
        return {
            "taskmanager": self.stack.taskmanager_pid,
            "jobmanager": self.stack.jobmanager_pid,
            "broker": self.stack.kafka.pid,
            "store": self.stack.store.pid,
            "loader": lambda: self.loader.pid,
        }[self.kind]()

    def strike(self, checkpoints: dict[str, int]) -> dict[str, int]:
        """kill -9, restart, wait until the pipeline runs again; returns the checkpoint counts."""
        if self.kind == "loader":
            self.loader.kill()
            self.loader.start()
            return checkpoints
        if self.kind == "store":
            self.stack.kill_store()
            self.stack.restart_store()
            return checkpoints
        kill9(self.pid())
        if self.kind == "taskmanager":
            self.stack.restart_taskmanager()
        elif self.kind == "broker":
            self.stack.restart_broker()
        else:  # jobmanager: a new one knows no job (no HA); resubmit each from its retained checkpoint
            self.stack.restart_jobmanager()
            for name, args in (("water", JOB_ARGS), ("detect", ["--parallelism", "1"])):
                done = _recover_cli(self.settings, name, args)
                assert done.returncode == 0, done.stdout + done.stderr
            checkpoints = {}
        return _wait_checkpointed(self.settings, checkpoints, f"after killing the {self.kind}")


def _run(stack: FaultStack, kind: str, tmp: Path) -> tuple[Settings, Report, Streamer]:
    began = time.monotonic()
    settings = _scenario_settings(stack, kind)
    report, rng = Report(kind), random.Random(f"{SEED}-{kind}")
    loader = LoaderProcess(settings, "faults-loader", tmp / "loader.log")
    loader.start()
    try:
        _submit(stack, settings)
        checkpoints = _wait_checkpointed(settings, {}, "after submitting")
        streamer = Streamer(settings, SEED, SENSORS, MINUTES, SPEED)
        fault, start = Fault(kind, stack, settings, loader), time.monotonic()
        streamer.start()
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 12.0))
            report.kills.append((time.monotonic() - start, len(streamer.sink.acked.records)))
            checkpoints = fault.strike(checkpoints)
        streamer.join(GUARD_S)
        assert not streamer.is_alive() and streamer.error is None, streamer.error
        _drain(settings)
    finally:
        loader.stop()
    load(settings, until_end=True, group_id="faults-loader")  # drain the loader's rest in-process
    report.seconds = time.monotonic() - began
    print(report.line())
    return settings, report, streamer


@pytest.mark.parametrize("kind", ["taskmanager", "broker", "store", "loader", "jobmanager"])
def test_kill_9_three_times_leaves_exactly_the_failure_free_result(
    stack: FaultStack, reference: dict, kind: str, tmp_path: Path
) -> None:
    settings, report, streamer = _run(stack, kind, tmp_path)
    acked = streamer.sink.acked
    assert len(report.kills) == KILLS
    # The input: every acknowledged send once, in each sensor's send order, nothing unacknowledged.
    stored = read_committed(settings, settings.topic("readings.water"))
    assert len(stored) == len(acked.records) == acked.attempted and acked.failed == 0
    assert per_sensor_order(stored) == per_sensor_order(acked.records)
    assert [v for _, v in stored] == [v for _, v in reference["input"]], (
        "not the reference input, in its order"
    )
    # Every acknowledged reading counted in its window, none twice.
    assert stored_windows(settings) == expected_windows(acked.records)
    # Full contents: what the failure-free run holds, row for row; no raw row inserted twice.
    for table in COMPARED:
        got = table_rows(settings, table)
        assert got == reference["tables"][table], (
            f"{table}: {len(got)} rows vs {len(reference['tables'][table])}"
        )
        assert raw_copies(settings, table) == 0, table
    assert table_rows(settings, "late_events") == []
    print(f"faults {kind}: compared " + ", ".join(f"{t} {len(reference['tables'][t])}" for t in COMPARED))
