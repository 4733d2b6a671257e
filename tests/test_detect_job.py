"""The detect job on a real Flink MiniCluster: bounded aggregates in, exact records out.

Expectations: the job must emit exactly what the pure two-stage code
(citystream.alerts.Detection) emits for the same rows - that is what makes the
quality report's numbers the job's - at parallelism 1 and 2, and the
hand-checked facts of the scenario (a step on one pressure gauge opens one
alert; a flat-lined gauge gives one health event and one sensor_fault alert).
"""

from __future__ import annotations

import json
import math

import pytest

from citystream.alerts import Detection, load_config

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
    from pyflink.common import Row
    from pyflink.datastream import StreamExecutionEnvironment

    from jobs.detect import INPUT_FIELDS, INPUT_TYPE, configure, detect, with_window_watermarks

    env = StreamExecutionEnvironment.get_execution_environment()
    configure(env, parallelism=parallelism)
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


def test_kafka_in_kafka_out_matches_pure_detection(kafka) -> None:
    """aggregates topic -> jobs.detect.run -> anomalies/alerts/sensor-health topics, Avro both ways.

    Each gauge gets a partition of its own and the topic is written gauge by
    gauge (all of j01's windows, then j02's, then j03's): every partition is
    in order, the topic as a whole is 40 windows out of order. Watermarks
    made downstream of the source would call j02's and j03's rows late; the
    source's per-partition watermarks must not.
    """
    from kafka import KafkaConsumer, KafkaProducer

    from citystream import contracts
    from citystream.topics import ensure_topics
    from jobs.detect import run

    settings = kafka.settings_.replace(topic_prefix="detectjob.")
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        gauges = sorted({r["key_id"] for r in scenario()})
        for r in sorted(scenario(), key=lambda r: (r["key_id"], r["window_start"])):
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
    run(settings, load_config(), bounded=True, parallelism=2)

    def consume(topic: str, record: str) -> list[dict]:
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

    want = Detection(load_config()).run(scenario())

    def norm(recs: list[dict]) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for r in recs)

    assert norm(consume("alerts", "citystream.Alert")) == norm(want["alerts"])
    assert norm(consume("sensor-health", "citystream.SensorHealth")) == norm(want["health"])
    got = consume("anomalies", "citystream.Anomaly")
    assert len(got) == len(want["anomalies"]) > 0
    for g, w in zip(sorted(got, key=lambda a: (a["event_time"], a["key_id"], a["metric"])),
                    sorted(want["anomalies"], key=lambda a: (a["event_time"], a["key_id"], a["metric"])),
                    strict=True):  # fmt: skip
        assert {k: g[k] for k in w if k not in ("score", "observed", "expected")} == {
            k: w[k] for k in w if k not in ("score", "observed", "expected")
        }
        assert g["score"] == pytest.approx(w["score"]) and g["observed"] == pytest.approx(w["observed"])
