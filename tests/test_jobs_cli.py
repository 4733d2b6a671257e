"""``citystream jobs run traffic --bounded`` end to end: the real CLI, a MiniCluster, the real broker.

Proves the thin ``main()`` wiring (settings from the environment, raw
Kafka source, transactional sinks, JVM functions built and loaded) that the
golden tests bypass by calling the pure function.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from citystream import contracts
from citystream.cli import build_parser
from citystream.cli.jobs import _job_args
from citystream.connectors.producer import ReadingProducer
from citystream.jobs.deploy import flink_run_command
from citystream.proc import child_env
from citystream.stack import Flink

pytestmark = pytest.mark.integration

T0_MS = int(dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp() * 1000)


def _traffic(sensor: str, second: int, seq: int, count: int) -> dict:
    env = {"sensor_id": sensor, "site_id": "x1", "zone_id": "corridor-1", "domain": "traffic",
           "event_time": T0_MS + second * 1000, "seq": seq, "lat": None, "lon": None}  # fmt: skip
    return {"envelope": env, "lane": 1, "direction": "N", "interval_s": 20, "vehicle_count": count,
            "mean_speed_kmh": 50.0, "occupancy_pct": 10.0}  # fmt: skip


def test_jobs_run_traffic_bounded(kafka) -> None:
    settings = kafka.settings_.replace(topic_prefix="cli.")
    topic = settings.topic("readings.traffic")
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        for i in range(9):  # two sensors, three minutes, one duplicate
            producer.send(topic, "citystream.TrafficReading", _traffic("t1", 20 * i, i + 1, 3))
            producer.send(topic, "citystream.TrafficReading", _traffic("t2", 20 * i, i + 1, 6))
        producer.send(topic, "citystream.TrafficReading", _traffic("t1", 20, 2, 3))
        producer.send_encoded(topic, b"t1", b"\xff\xfe not avro")

    env = child_env(settings.to_env())  # without the in-process PyFlink state of earlier tests
    cli = Path(sys.executable).parent / "citystream"
    done = subprocess.run(
        [str(cli), "jobs", "run", "traffic", "--bounded"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    def read(name: str, record: str) -> list[dict]:
        consumer = KafkaConsumer(
            settings.topic(name), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
            consumer_timeout_ms=4000, isolation_level="read_committed",
        )  # fmt: skip
        try:
            return [contracts.decode(record, m.value) for m in consumer]
        finally:
            consumer.close()

    latest: dict[tuple, dict] = {}  # a late duplicate re-fires its window: keep the highest revision
    for r in read("aggregates", "citystream.WindowAggregate"):
        key = (r["key_kind"], r["key_id"], r["metric"], r["window_start"], r["window_end"])
        if key not in latest or r["revision"] > latest[key]["revision"]:
            latest[key] = r
    rows = list(latest.values())
    vehicles = {
        (r["key_id"], r["window_start"] - T0_MS): (r["mean"], r["samples"], r["duplicates"])
        for r in rows
        if r["metric"] == "vehicles"
        and r["window_end"] - r["window_start"] == 60_000
        and r["key_kind"] == "sensor"
    }
    assert vehicles == {
        ("t1", 0): (9.0, 3, 1), ("t1", 60_000): (9.0, 3, 0), ("t1", 120_000): (9.0, 3, 0),
        ("t2", 0): (18.0, 3, 0), ("t2", 60_000): (18.0, 3, 0), ("t2", 120_000): (18.0, 3, 0),
    }  # fmt: skip
    zone = [
        r
        for r in rows
        if r["key_kind"] == "zone" and r["metric"] == "flow_vph" and r["window_start"] == T0_MS
    ]
    assert [(r["key_id"], r["mean"]) for r in zone] == [("corridor-1", 27 * 60.0)]
    dead = read("dead-letter", "citystream.DeadLetter")
    assert [(d["reason"], d["original_value"]) for d in dead] == [("undecodable", b"\xff\xfe not avro")]


def test_job_arguments_after_the_separator_reach_the_job() -> None:
    import argparse

    want = ["--bounded", "--watermark-on-event", "--parallelism", "2"]
    for argv in (
        ["jobs", "run", "traffic", "--bounded", "--", "--watermark-on-event", "--parallelism", "2"],
        ["jobs", "run", "--bounded", "traffic", "--", "--watermark-on-event", "--parallelism", "2"],
        ["jobs", "submit", "--bounded", "traffic", "--watermark-on-event", "--parallelism", "2"],
    ):
        assert _job_args(build_parser().parse_args(argv)) == want, argv
    ns = build_parser().parse_args(
        ["jobs", "submit", "detect", "--detached", "--from-savepoint", "/sp", "--", "-x"]
    )
    assert _job_args(ns) == ["-x"] and ns.detached and ns.from_savepoint == "/sp" and not ns.bounded
    assert _job_args(argparse.Namespace(bounded=False, job_args=[])) == []


def test_flink_run_hands_the_job_its_arguments_unchanged(tmp_path: Path) -> None:
    # The real bundled Flink CLI (no cluster needed: the program only prints what it got). Without
    # the separator the CLI took a leading --parallelism 2 for itself and the job never saw it.

    program = tmp_path / "show_args.py"
    program.write_text("import sys\nprint('ARGS', sys.argv[1:])\n")
    job_args = ["--parallelism", "2", "--bounded", "-p", "3"]
    env = child_env()
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        FLINK_LOG_DIR=str(tmp_path),
        JVM_ARGS="-Xmx256m",
    )
    done = subprocess.run(
        flink_run_command(Flink.home(), program, job_args),
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ARGS {job_args!r}" in done.stdout, done.stdout
