"""Operating a job on the real standalone cluster through ``citystream jobs``: list, status,
savepoint, cancel --savepoint, restore, JobManager kill -9, recover.

The acceptance: however the job is interrupted - a savepoint and cancel, a
JobManager killed and the cluster restarted - after draining, the topic holds
exactly the aggregates of one uninterrupted bounded run over the same
simulator input, and no (key, window, revision) twice. The readers use
``read_committed``, as the loader does: what an aborted transaction wrote
before a crash never counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from citystream import contracts
from citystream.connectors.producer import ReadingProducer
from citystream.jobs import flinkrest, ops
from citystream.proc import child_env, free_port, wait_until
from citystream.simulator.engine import CaptureSink, SimConfig, Simulation
from citystream.simulator.imperfections import Rates
from citystream.stack import Flink
from citystream.topics import ensure_topics

pytestmark = pytest.mark.integration

T0 = 1_767_571_200_000  # 2026-01-05 00:00 UTC
MIN = 60_000
CUTS = (T0 + 3 * MIN, T0 + 5 * MIN, T0 + 7 * MIN)  # four segments of event time
CLI = Path(sys.executable).parent / "citystream"
JOB_ARGS = ["--", "--out-of-order-s", "30"]  # > the simulator's per-sensor phase: nothing late


def readings() -> tuple[list[tuple[bytes, bytes]], list[tuple[int, bytes, bytes]]]:
    """A seeded traffic city for 9 minutes, with duplicates.

    Returns its registry entries (key, value) and its readings (event time, key, value) in send order.
    """
    cfg = SimConfig(
        seed=7, start_ms=T0, duration_ms=9 * MIN, sensors=24, domains=("traffic",),
        rates=Rates(duplicates=0.02), anomalies_per_hour=0.0,
    )  # fmt: skip
    sink = CaptureSink()
    sim = Simulation(cfg)
    sim.run(sink)
    registry = [(s.sensor_id.encode(), s.encode()) for s in sim.sensors()]
    return registry, [
        (contracts.decode("citystream.TrafficReading", v)["envelope"]["event_time"], k, v)
        for topic, k, v in sink.records
        if topic.endswith("readings.traffic")
    ]


def produce(settings, rows: list[tuple[int, bytes, bytes]], registry: list[tuple[bytes, bytes]] = ()) -> None:
    """Readings to the traffic topic; registry entries first (the jobs dead-letter unknown sensors)."""
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        if registry:
            producer.send_many(settings.topic("sensors"), [k for k, _ in registry], [v for _, v in registry])
            producer.flush()
        producer.send_many(settings.topic("readings.traffic"), [k for _, k, _ in rows], [v for *_, v in rows])


def segment(rows, i: int) -> list:
    lo = ([T0 - 10 * MIN, *CUTS])[i]
    hi = ([*CUTS, T0 + 60 * MIN])[i]
    return [r for r in rows if lo <= r[0] < hi]


def read_committed(settings, topic: str, record: str) -> list[dict]:
    consumer = KafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, isolation_level="read_committed",
    )  # fmt: skip
    try:
        return [contracts.decode(record, m.value) for m in consumer]
    finally:
        consumer.close()


def wait_consumed(settings, group: str = "citystream-traffic") -> None:
    """Offsets are committed when a checkpoint completes: everything read is in a checkpoint."""
    topic = settings.topic("readings.traffic")
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        parts = consumer.partitions_for_topic(topic)
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])

        def done() -> bool:
            got = admin.list_group_offsets(group).get(group, {})
            return all(got.get(tp) is not None and got[tp].offset == end for tp, end in ends.items())

        assert wait_until(done, 600, interval_s=1.0), "the job never checkpointed all of its input"
    finally:
        consumer.close()
        admin.close()


@pytest.fixture(scope="module")
def cluster(kafka, tmp_path_factory: pytest.TempPathFactory):
    """The stack's standalone Flink cluster on free ports, one for the module."""
    settings = kafka.settings_.replace(
        run_dir=tmp_path_factory.mktemp("opsflink"), flink_rest_port=free_port(), topic_prefix="ops."
    )
    flink = Flink(settings)
    flink.start()
    try:
        yield settings, flink
    finally:
        flink.stop()


def duplicates(settings) -> tuple[int, int]:
    """(rows, rows whose (key, window, revision) came before) of the committed aggregates so far."""
    got = read_committed(settings, "aggregates", "citystream.WindowAggregate")
    keys = [
        (r["key_kind"], r["key_id"], r["metric"], r["window_start"], r["window_end"], r["revision"])
        for r in got
    ]
    return len(keys), len(keys) - len(set(keys))


def cli(settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = child_env(settings.to_env())  # without the in-process PyFlink state of earlier tests
    done = subprocess.run(
        [str(CLI), "jobs", *args],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def capture(settings, out: Path) -> dict:
    """The REST replies ``jobs status`` reads, saved for the parser tests (tests/data/flinkrest/)."""
    rest = ops.client(settings)
    jid = ops.resolve(rest, "traffic").jid
    job = rest.call(f"/jobs/{jid}")
    docs = {
        "overview": rest.call("/jobs/overview"),
        "job": job,
        "checkpoints": rest.call(f"/jobs/{jid}/checkpoints"),
        "exceptions": rest.call(f"/jobs/{jid}/exceptions"),
    }
    for v in job["vertices"]:
        if not v["name"].startswith("Source"):
            docs["watermarks"] = rest.call(f"/jobs/{jid}/vertices/{v['id']}/watermarks")
            docs["backpressure"] = rest.call(f"/jobs/{jid}/vertices/{v['id']}/backpressure")
            break
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=1, sort_keys=True))
    return docs


@pytest.mark.faults  # not yet passing: duplicates after cancel --savepoint + restore (README, known gaps)
def test_savepoint_cancel_restore_and_jobmanager_loss_keep_windows_exact(cluster, tmp_path) -> None:
    settings, flink = cluster
    registry, rows = readings()
    assert all(len(segment(rows, i)) > 0 for i in range(4)) and sum(
        len(segment(rows, i)) for i in range(4)
    ) == len(rows)

    # The uninterrupted reference: the same job on the same cluster over the same input, in one
    # run (unbounded, then drained like the interrupted one), under its own topic prefix.
    ref = settings.replace(topic_prefix="opsref.")
    ensure_topics(ref.kafka_bootstrap, ref.topic_prefix)
    produce(ref, rows, registry)
    cli(ref, "submit", "traffic", "--detached", *JOB_ARGS)
    wait_consumed(ref)
    cli(ref, "stop", "traffic", "--drain", "--savepoint-dir", str(tmp_path / "refsp"))
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)
    produce(settings, segment(rows, 0), registry)
    cli(settings, "submit", "traffic", "--detached", *JOB_ARGS)
    wait_consumed(settings)
    rest = ops.client(settings)
    assert wait_until(lambda: (ops.status(rest, "traffic").watermark_ms or 0) >= T0 + 2 * MIN, 120)

    listed = cli(settings, "list").stdout
    assert "citystream-traffic" in listed and "RUNNING" in listed, listed
    status = cli(settings, "status", "traffic").stdout
    st = ops.status(rest, "traffic")
    assert st.job.state == "RUNNING" and st.checkpoints.completed >= 1, status
    assert st.watermark_ms is not None and st.watermark_ms >= T0 + 2 * MIN, status
    assert st.watermark_lag_ms == st.job.now_ms - st.watermark_ms
    assert f"{st.checkpoints.completed} completed" in status or "completed" in status
    assert "lag " in status and "(now - watermark)" in status, status
    assert "path         file:" in status, status
    phases = [("first run", duplicates(settings))]
    docs = capture(settings, tmp_path / "rest")
    assert flinkrest.parse_checkpoints(docs["checkpoints"]).last_path is not None

    # A savepoint while it runs, then more input, then cancel with a savepoint and restore.
    sp1 = cli(settings, "savepoint", "traffic", "--savepoint-dir", str(tmp_path / "sp")).stdout.strip()
    assert sp1.startswith("file:") and Path(sp1[5:], "_metadata").exists(), sp1
    produce(settings, segment(rows, 1))
    wait_consumed(settings)
    sp2 = cli(settings, "cancel", "traffic", "--savepoint", "--savepoint-dir", str(tmp_path / "sp")).stdout
    sp2 = sp2.strip()
    assert sp2 != sp1 and Path(sp2[5:], "_metadata").exists(), sp2
    assert not any(j.state == "RUNNING" for j in ops.list_jobs(rest))
    logs = cli(settings, "logs", "traffic").stdout
    assert "citystream-traffic" in logs, logs[-2000:]

    produce(settings, segment(rows, 2))
    cli(settings, "submit", "traffic", "--detached", "--from-savepoint", sp2, *JOB_ARGS)
    wait_consumed(settings)
    assert (ops.status(rest, "traffic").checkpoints.restored_from or "").endswith(Path(sp2).name)

    # JobManager loss: kill -9 the JobManager alone, restart the cluster, recover from disk.
    phases.append(("restored from cancel savepoint", duplicates(settings)))
    jm = flink.jobmanager_pid()
    assert jm is not None
    os.kill(jm, signal.SIGKILL)
    assert wait_until(lambda: not Path(f"/proc/{jm}").exists(), 30)
    produce(settings, segment(rows, 3))
    flink.stop()
    flink.start()
    assert ops.list_jobs(rest) == []  # no HA: the new JobManager knows no job
    out = cli(settings, "recover", "traffic", *JOB_ARGS).stdout
    assert "found in the checkpoint directory" in out and "/chk-" in out, out
    chk = out.split(" from ", 1)[1].split(" (found", 1)[0]
    assert chk.startswith("file:") and Path(chk[5:], "_metadata").exists()
    wait_consumed(settings)
    assert (ops.status(rest, "traffic").checkpoints.restored_from or "").endswith(Path(chk).name)
    phases.append(("recovered", duplicates(settings)))
    cli(settings, "stop", "traffic", "--drain", "--savepoint-dir", str(tmp_path / "sp"))

    def norm(recs: list[dict]) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in recs)

    got = read_committed(settings, "aggregates", "citystream.WindowAggregate")
    want = read_committed(ref, "aggregates", "citystream.WindowAggregate")
    keys = [
        (r["key_kind"], r["key_id"], r["metric"], r["window_start"], r["window_end"], r["revision"])
        for r in got
    ]
    (tmp_path / "got.json").write_text("\n".join(norm(got)))
    (tmp_path / "want.json").write_text("\n".join(norm(want)))
    assert len(keys) == len(set(keys)), f"a (key, window, revision) row was written twice: {phases}"
    assert len(want) > 300 and norm(got) == norm(want)
    assert read_committed(ref, "dead-letter", "citystream.DeadLetter") == []  # every sensor registered
    for topic, record in (("late-events", "citystream.LateEvent"), ("dead-letter", "citystream.DeadLetter")):
        assert norm(read_committed(settings, topic, record)) == norm(read_committed(ref, topic, record))
