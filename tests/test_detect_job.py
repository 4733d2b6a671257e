"""The detect job on a real Flink MiniCluster: bounded aggregates in, exact records out.

Expectations: the job must emit exactly what the pure two-stage code
(citystream.detection.Detection) emits for the same rows - that is what makes the
quality report's numbers the job's - at parallelism 1 and 2, and the
hand-checked facts of the scenario (a step on one pressure gauge opens one
alert; a flat-lined gauge gives one health event and one sensor_fault alert).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from pyflink.common import Row

from citystream import contracts
from citystream.detection import Detection, load_config
from citystream.jobs.detect import INPUT_FIELDS, INPUT_TYPE, detect, environment, run, with_window_watermarks
from citystream.proc import child_env, free_port, wait_until
from citystream.settings import Settings
from citystream.stack import Flink
from citystream.topics import ensure_topics

pytestmark = pytest.mark.integration

T0 = 1_767_571_200_000  # 2026-01-05 00:00 UTC
W = 60_000


def scenario() -> list[dict]:
    """Three pressure gauges of DMA z01 for 40 windows; j01 steps down at 30, j02 freezes at 25."""
    rows = []
    for k in range(40):
        for j, base in (("j01", 4.0), ("j02", 3.5), ("j03", 3.8)):
            wiggle = 0.01 * math.sin(k * 1.3 + len(j) + base)
            mean = base + wiggle - (0.5 if j == "j01" and k >= 30 else 0.0)
            lo, hi = mean - 0.004 - 0.001 * (k % 3), mean + 0.005
            if j == "j02" and k >= 25:
                mean = lo = hi = 3.5
            rows.append(
                {"domain": "water", "key_kind": "sensor", "key_id": f"water-z01-{j}-pressure",
                 "metric": "pressure_bar", "window_start": T0 + k * W, "window_end": T0 + (k + 1) * W,
                 "samples": 3, "mean": round(mean, 6), "min": round(lo, 6), "max": round(hi, 6)}
            )  # fmt: skip
    return rows


def expected() -> list[tuple[str, str]]:
    out = Detection(load_config()).run(scenario())
    recs = [("health", r) for r in out["health"]] + [("anomaly", r) for r in out["anomalies"]]
    recs += [("alert", r) for r in out["alerts"]]
    return sorted((k, json.dumps(r, separators=(",", ":"), sort_keys=True)) for k, r in recs)


def run_job(parallelism: int) -> list[tuple[str, str]]:
    env, _ = environment(Settings(), parallelism=parallelism)
    rows = [Row(*[r[f] for f in INPUT_FIELDS]) for r in scenario()]
    out = detect(with_window_watermarks(env.from_collection(rows, type_info=INPUT_TYPE)))
    with out.execute_and_collect() as results:
        return sorted((k, v) for k, v in results)


def test_pure_expectations_hand_checked() -> None:
    recs = expected()
    alerts = [json.loads(v) for k, v in recs if k == "alert"]
    health = [json.loads(v) for k, v in recs if k == "health"]
    assert [(h["sensor_id"], h["status"], h["since"]) for h in health] == [
        ("water-z01-j02-pressure", "stuck", T0 + 27 * W)  # windows 25, 26 identical (stuck_windows = 2)
    ]
    opened = {a["alert_id"]: a for a in alerts if a["state"] == "open"}
    assert sorted(opened) == [
        f"sensor_fault:water-z01-j02-pressure:{T0 + 27 * W}",
        f"water:water-z01:{T0 + 31 * W}",
    ]
    step = opened[f"water:water-z01:{T0 + 31 * W}"]
    assert step["affected_keys"] == ["water-z01-j01-pressure"] and step["kind"] == "leak"


@pytest.mark.parametrize("parallelism", [1, 2])
def test_job_matches_pure_detection(parallelism: int) -> None:
    assert run_job(parallelism) == expected()


def _produce(settings, rows: list[dict]) -> None:
    """Each gauge on a partition of its own, written gauge by gauge (see the Kafka test)."""
    gauges = sorted({r["key_id"] for r in scenario()})
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        for r in sorted(rows, key=lambda r: (r["key_id"], r["window_start"])):
            rec = {**r, "late": 0, "duplicates": 0, "revision": 0}
            producer.send(
                settings.topic("aggregates"),
                contracts.encode("citystream.WindowAggregate", rec),
                key=r["key_id"].encode(),
                partition=gauges.index(r["key_id"]),
            )
        producer.flush()
    finally:
        producer.close()


def _consume(settings, topic: str, record: str) -> list[dict]:
    """Committed records of a result topic, checking each is keyed as infra/topics.toml says."""
    consumer = KafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, isolation_level="read_committed",
    )  # fmt: skip
    try:
        got = [(m.key, contracts.decode(record, m.value)) for m in consumer]
    finally:
        consumer.close()
    # Keyed like infra/topics.toml says (alerts and sensor-health are compacted: no key, no write).
    key = {"alerts": "alert_id", "sensor-health": "sensor_id", "anomalies": "key_id"}[topic]
    assert [k for k, _ in got] == [r[key].encode() for _, r in got]
    return [r for _, r in got]


def _assert_outputs_match_pure(settings) -> None:
    want = Detection(load_config()).run(scenario())

    def norm(recs: list[dict]) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in recs)

    assert norm(_consume(settings, "alerts", "citystream.Alert")) == norm(want["alerts"])
    assert norm(_consume(settings, "sensor-health", "citystream.SensorHealth")) == norm(want["health"])
    got = _consume(settings, "anomalies", "citystream.Anomaly")
    assert len(got) == len(want["anomalies"]) > 0
    order = lambda a: (a["event_time"], a["key_id"], a["metric"])  # noqa: E731
    for g, w in zip(sorted(got, key=order), sorted(want["anomalies"], key=order), strict=True):
        exact = [k for k in w if k not in ("score", "observed", "expected")]
        assert {k: g[k] for k in exact} == {k: w[k] for k in exact}
        assert g["score"] == pytest.approx(w["score"]) and g["observed"] == pytest.approx(w["observed"])


def test_kafka_in_kafka_out_matches_pure_detection(kafka) -> None:
    """aggregates topic -> jobs.detect.run -> anomalies/alerts/sensor-health topics, Avro both ways.

    Each gauge gets a partition of its own and the topic is written gauge by
    gauge (all of j01's windows, then j02's, then j03's): every partition is
    in order, the topic as a whole is 40 windows out of order. Watermarks
    made downstream of the source would call j02's and j03's rows late; the
    source's per-partition watermarks must not.
    """

    settings = kafka.settings_.replace(topic_prefix="detectjob.")
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)
    _produce(settings, scenario())
    run(settings, load_config(), bounded=True, parallelism=2)
    _assert_outputs_match_pure(settings)


@pytest.fixture(scope="module")
def cluster(kafka, tmp_path_factory: pytest.TempPathFactory):
    """The project's standalone Flink cluster (the one `citystream stack up` starts), on free ports."""
    settings = kafka.settings_.replace(run_dir=tmp_path_factory.mktemp("flink"), flink_rest_port=free_port())
    flink = Flink(settings)
    flink.start()
    try:
        yield settings
    finally:
        flink.stop()


def test_stop_with_savepoint_then_restore_equals_one_uninterrupted_run(cluster, tmp_path) -> None:
    """Half the windows, ``jobs stop`` (a savepoint), ``jobs submit --from-savepoint``: as one run.

    This is how a running job is upgraded. The savepoint carries every
    detector's baseline, the verdicts waiting for the watermark (the job is
    stopped without advancing it) and the Kafka offsets; a restore that lost
    any of them would re-warm, drop or repeat records.
    """

    settings = cluster.replace(topic_prefix="detectsp.", flink_parallelism=2)
    env = child_env(settings.to_env())  # without the in-process PyFlink state of earlier tests

    def cli(*args: str) -> str:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "citystream"), "jobs", *args],
            env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)

    def wait_until_checkpointed_to_end() -> None:
        """The source commits offsets when a checkpoint completes: all read, state checkpointed."""
        topic = settings.topic("aggregates")
        consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
        admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])

            def done() -> bool:
                got = admin.list_group_offsets("citystream-detect").get("citystream-detect", {})
                return all(got.get(tp) is not None and got[tp].offset == end for tp, end in ends.items())

            assert wait_until(done, 600, interval_s=1.0), "the job never checkpointed all of its input"
        finally:
            consumer.close()
            admin.close()

    rows = scenario()
    cut = T0 + 22 * W  # inside j02's flat stretch and before j01's step
    _produce(settings, [r for r in rows if r["window_start"] < cut])
    cli("submit", "detect", "--detached")
    wait_until_checkpointed_to_end()
    savepoint = cli("stop", "detect", "--savepoint-dir", str(tmp_path / "sp")).strip()
    assert savepoint.startswith("file:") and "savepoint-" in savepoint

    # The upgrade: the same job from the savepoint, reading on where the first stopped. Restored
    # Kafka splits keep the unbounded end they were read with, so this run is stopped by hand,
    # draining: every window still open is judged, as at the end of one uninterrupted run.
    _produce(settings, [r for r in rows if r["window_start"] >= cut])
    cli("submit", "detect", "--detached", "--from-savepoint", savepoint)
    wait_until_checkpointed_to_end()
    cli("stop", "detect", "--drain", "--savepoint-dir", str(tmp_path / "sp"))
    _assert_outputs_match_pure(settings)
