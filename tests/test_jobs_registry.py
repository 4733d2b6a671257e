"""The domain jobs judge readings by the sensor registry (issue 15): real broker, real Flink.

* Bounded, at parallelism 1 and 2 (``process`` on bounded Kafka tables): a reading of an
  unregistered sensor, of a sensor of another department, from before a sensor's
  installation and after its retirement, and with a channel outside the range its
  registry entry declares (narrower than the old constants, so the range can only come
  from the registry) is a dead letter with its reason and an error naming it; every other
  reading is aggregated.
* Unbounded: readings of a sensor nobody registered are dead letters; the sensor is
  registered while the job runs; its later readings are aggregated; the job was never
  restarted.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer

from citystream import contracts
from citystream.connectors.producer import ReadingProducer
from citystream.jobs.common import Windows, process, window_options
from citystream.jobs.kafka_io import add_inserts, build
from citystream.jobs.runtime import table_environment
from citystream.jobs.water import WATER
from citystream.settings import Settings
from tests.registry_helpers import publish, sensor_record

pytestmark = pytest.mark.integration

T0_MS = int(dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp() * 1000)  # fixed epoch
HOUR_MS = 3_600_000
RECORD = "citystream.WaterReading"
DEAD = "citystream.DeadLetter"


def reading(sensor: str, second: int, seq: int, pressure: float = 3.0) -> dict:
    return {
        "envelope": {"sensor_id": sensor, "site_id": "s1", "zone_id": "z1", "domain": "water",
                     "event_time": T0_MS + second * 1000, "seq": seq, "lat": None, "lon": None, "quality": 0},
        "sensor_type": "pressure", "dma_id": "dma1", "flow_lps": None, "pressure_bar": pressure,
        "tank_level_m": None, "pump_on": None, "ph": None, "turbidity_ntu": None, "chlorine_mgl": None,
    }  # fmt: skip


def readings_of(sensor: str, start_s: int, end_s: int) -> list[dict]:
    """One reading of ``sensor`` every 10 s in [start, end), its second as its seq."""
    return [reading(sensor, s, s) for s in range(start_s, end_s, 10)]


def in_time_order(readings: list[dict]) -> list[dict]:
    """Delivered in event-time order, so none is late."""
    return sorted(readings, key=lambda r: (r["envelope"]["event_time"], r["envelope"]["sensor_id"]))


def produce(settings: Settings, readings: list[dict]) -> None:
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        for r in readings:
            producer.send(settings.topic("readings.water"), RECORD, r)


def consume(settings: Settings, topic: str, record: str, timeout_ms: int = 4000) -> list[dict]:
    consumer = KafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=timeout_ms, isolation_level="read_committed",
    )  # fmt: skip
    try:
        return [contracts.decode(record, m.value) for m in consumer]
    finally:
        consumer.close()


def minute_samples(aggregates: list[dict], sensor: str) -> dict[int, int]:
    """Final pressure samples of ``sensor`` per 1-minute window start (seconds after T0)."""
    out: dict[int, tuple[int, int]] = {}
    for a in aggregates:
        if (a["key_id"], a["metric"], a["key_kind"]) == (sensor, "pressure_bar", "sensor") and (
            a["window_end"] - a["window_start"] == 60_000
        ):
            start = (a["window_start"] - T0_MS) // 1000
            if start not in out or a["revision"] > out[start][0]:
                out[start] = (a["revision"], a["samples"])
    return {k: v for k, (_, v) in sorted(out.items())}


def create_topics(settings: Settings) -> None:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for f in admin.create_topics([NewTopic(settings.topic("readings.water"), 1, 1)]).values():
        f.result()


# ----------------------------------------------------------------------------- bounded verdicts

#: sensor -> its registry versions (installed/retired in seconds after T0) and reading times.
REGISTRY = [
    sensor_record("w-ok", "water", installed_at=T0_MS - HOUR_MS),
    sensor_record("w-retired", "water", installed_at=T0_MS - HOUR_MS),
    sensor_record("w-retired", "water", installed_at=T0_MS - HOUR_MS, retired_at=T0_MS + 120_000),
    sensor_record("w-narrow", "water", installed_at=T0_MS - HOUR_MS, ranges={"pressure_bar": (0.0, 5.0)}),
    sensor_record("w-later", "water", installed_at=T0_MS + 120_000),
    sensor_record("g-other", "grid", installed_at=T0_MS - HOUR_MS),
]


def bounded_readings() -> list[dict]:
    out = []
    for i, second in enumerate(range(0, 300, 10)):
        out.append(reading("w-ok", second, i))  # moves the watermark through every window
        if second in (30, 150):
            out += [reading(s, second, i) for s in ("w-retired", "w-later", "w-unknown", "g-other")]
            out.append(reading("w-narrow", second, i, pressure=4.0 if second == 30 else 6.0))
    return out


@pytest.fixture(scope="module", params=[1, 2], ids=["p1", "p2"])
def verdicts(request, kafka) -> dict[str, list[dict]]:
    p = request.param
    settings = kafka.settings_.replace(topic_prefix=f"registry{p}.")
    create_topics(settings)
    produce(settings, bounded_readings())
    publish(settings, REGISTRY)
    windows = Windows()
    t_env = table_environment(
        settings, job="registry", parallelism=p, checkpoint_interval="2 s", overrides=window_options(windows)
    )
    sinks = build(t_env, settings, WATER, windows, bounded=True, watermark_on_event=True)
    out = process(t_env, WATER, t_env.from_path("water_raw"), t_env.from_path("water_registry"), windows)
    add_inserts(t_env.create_statement_set(), out, sinks).execute().wait()
    return {
        "aggregates": consume(settings, "aggregates", "citystream.WindowAggregate"),
        "dead": consume(settings, "dead-letter", DEAD),
        "late": consume(settings, "late-events", "citystream.LateEvent"),
    }


def _dead(verdicts: dict[str, list[dict]]) -> dict[tuple[str, int], tuple[str, str]]:
    out = {}
    for d in verdicts["dead"]:
        r = contracts.decode(RECORD, d["original_value"])
        second = (r["envelope"]["event_time"] - T0_MS) // 1000
        out[(r["envelope"]["sensor_id"], second)] = (d["reason"], d["error"])
    return out


def test_each_registry_verdict_is_a_dead_letter_with_its_reason(verdicts) -> None:
    dead = _dead(verdicts)
    assert {k: v[0] for k, v in dead.items()} == {
        ("w-unknown", 30): "unknown_sensor",
        ("w-unknown", 150): "unknown_sensor",
        ("g-other", 30): "unknown_sensor",
        ("g-other", 150): "unknown_sensor",
        ("w-later", 30): "unknown_sensor",  # before its installation
        ("w-retired", 150): "retired_sensor",  # after its retirement
        ("w-narrow", 150): "invalid_value",  # 6 bar: inside the old constant range, outside its own
    }
    unknown = "sensor w-unknown is not in the sensor registry at 2026-01-05 00:00:30"
    assert dead[("w-unknown", 30)][1].startswith(unknown)
    assert "registered as a grid sensor" in dead[("g-other", 30)][1]
    assert "not in the sensor registry" in dead[("w-later", 30)][1]  # no version yet at 30 s
    assert "retired at" in dead[("w-retired", 150)][1]
    assert dead[("w-narrow", 150)][1] == "pressure_bar 6 bar outside the registered range [0, 5]"
    assert verdicts["late"] == []


def test_readings_of_registered_sensors_in_service_are_aggregated(verdicts) -> None:
    aggs = verdicts["aggregates"]
    assert minute_samples(aggs, "w-ok") == {0: 6, 60: 6, 120: 6, 180: 6, 240: 6}
    assert minute_samples(aggs, "w-retired") == {0: 1}  # in service at 30 s
    assert minute_samples(aggs, "w-later") == {120: 1}  # installed at 120 s
    assert minute_samples(aggs, "w-narrow") == {0: 1}  # 4 bar is inside [0, 5]
    assert minute_samples(aggs, "w-unknown") == minute_samples(aggs, "g-other") == {}


# ----------------------------------------------------------------------------- while running


def wait_for(what: str, probe: Callable[[], object], timeout_s: float = 240.0) -> object:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` (no timing is asserted)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(1.0)
    pytest.fail(f"gave up waiting for {what}")


@pytest.fixture
def running_job(kafka) -> Iterator[tuple[Settings, object]]:
    """The water job, unbounded, on a MiniCluster in this process; cancelled at the end."""
    settings = kafka.settings_.replace(topic_prefix="registry-live.")
    create_topics(settings)
    publish(settings, [sensor_record("w-ok", "water", installed_at=T0_MS - HOUR_MS)])
    windows = Windows()
    t_env = table_environment(
        settings,
        job="registry-live",
        parallelism=1,
        checkpoint_interval="2 s",
        overrides=window_options(windows),
    )
    sinks = build(t_env, settings, WATER, windows, bounded=False, exactly_once=False, watermark_on_event=True)
    out = process(t_env, WATER, t_env.from_path("water_raw"), t_env.from_path("water_registry"), windows)
    result = add_inserts(t_env.create_statement_set(), out, sinks).execute()
    client = result.get_job_client()
    try:
        yield settings, client
    finally:
        client.cancel().result()


def test_a_sensor_registered_while_the_job_runs_counts_from_then_on(running_job) -> None:
    settings, client = running_job
    job_id = str(client.get_job_id())
    # Minutes 0-1: w-new is nobody's sensor (w-ok runs ahead, so the watermark passes 110 s).
    produce(settings, in_time_order(readings_of("w-ok", 0, 140) + readings_of("w-new", 0, 120)))
    dead = wait_for(
        "w-new's first readings in dead letters",
        lambda: (lambda d: d if len(d) >= 12 else None)(consume(settings, "dead-letter", DEAD, 2000)),
    )
    assert {d["reason"] for d in dead} == {"unknown_sensor"} and len(dead) == 12
    # Registered while the job runs, in service from 150 s.
    publish(settings, [sensor_record("w-new", "water", installed_at=T0_MS + 150_000)])
    time.sleep(5)  # let the registry source read it before readings past 150 s arrive
    produce(settings, in_time_order(readings_of("w-ok", 140, 400) + readings_of("w-new", 120, 400)))
    samples = wait_for(
        "w-new's aggregates after its registration",
        lambda: (lambda m: m if 300 in m else None)(
            minute_samples(consume(settings, "aggregates", "citystream.WindowAggregate", 2000), "w-new")
        ),
    )
    assert samples == {120: 3, 180: 6, 240: 6, 300: 6}  # from 150 s on, every reading
    assert consume(settings, "late-events", "citystream.LateEvent") == []
    dead = consume(settings, "dead-letter", DEAD)
    assert len(dead) == 12 + 3  # and 120-140 s, before its installation
    assert str(client.get_job_id()) == job_id and client.get_job_status().result().name == "RUNNING"
