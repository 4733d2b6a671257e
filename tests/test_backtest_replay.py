"""`citystream backtest --replay`: the detect job itself, replayed per configuration, scored.

Why these tests: the replay path is the one that scores the code as it runs
live (Flink's timers and watermarks, every revision of a window), so its
numbers must be the numbers of the shadow run's own alerts, agree with the
in-process path over the same stored range, and leave the live pipeline's
tables and consumer groups exactly as they were. A seeded live run (water job,
detect job, loader; bounded, on the real broker, Flink MiniCluster and store)
provides the range and the labels.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from citystream.backtest.events import TimeRange
from citystream.backtest.replayed import aggregates_offsets
from citystream.connectors.loader import load
from citystream.connectors.producer import ReadingProducer
from citystream.proc import child_env
from citystream.replay import current_ranges, discard, write_ranges
from citystream.replay.run import shadow_database
from citystream.settings import ROOT, Settings
from citystream.simulator.engine import KafkaSink, SimConfig, Simulation
from citystream.simulator.imperfections import Rates
from citystream.store.client import connect
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics

T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTES, SENSORS = 30, 20
MIN = 60_000
LIVE_TABLES = ("window_aggregates", "anomalies", "alerts", "sensor_health", "labels", "pipeline_metrics")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def _job(settings: Settings, name: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"citystream.jobs.{name}", "--bounded", "--parallelism", "1", *args],
        env=child_env(settings.to_env()), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def live(kafka: Any, store: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seeded live run: water + detect + loader over 30 minutes of 20 sensors, labels in the store."""
    tmp = tmp_path_factory.mktemp("btreplay")
    # One partition per topic: the live run and the replay then see the aggregates in one order.
    spec = tmp / "topics.toml"
    spec.write_text((ROOT / "infra" / "topics.toml").read_text().replace("partitions = 3", "partitions = 1"))
    settings = kafka.settings_.replace(
        topic_prefix="btr.", clickhouse_database="btr", run_dir=tmp / "run", topics_spec=spec,
        store_port=store.settings.store_port,
    )  # fmt: skip
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)
    migrate(settings)
    cfg = SimConfig(
        seed=5, start_ms=T0_MS, duration_ms=MINUTES * MIN, sensors=SENSORS, domains=("water",),
        rates=Rates(), anomalies_per_hour=30.0, topic_prefix=settings.topic_prefix,
    )  # fmt: skip
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        Simulation(cfg).run(KafkaSink(producer))
        producer.flush()
    produced_from = int(time.time() * 1000)
    _job(settings, "water")
    produced_to = int(time.time() * 1000) + 1
    aggregates = current_ranges(settings, [settings.topic("aggregates")])
    _job(settings, "detect")
    assert load(settings, until_end=True, group_id="btr-live-loader").undecodable == 0
    offsets = write_ranges(aggregates, tmp / "aggregates-offsets.json")
    return {
        "settings": settings, "aggregates": aggregates, "offsets": offsets, "tmp": tmp,
        "produced": TimeRange(produced_from, produced_to),
    }  # fmt: skip


def _fingerprint(settings: Settings) -> dict[str, tuple]:
    client = connect(settings)
    try:
        return {
            t: tuple(client.query(f"SELECT count(), sum(cityHash64(*)) FROM {t}").result_rows[0])
            for t in LIVE_TABLES
        }
    finally:
        client.close()


def _group_offsets(settings: Settings) -> dict[str, dict[tuple[str, int], int]]:
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    out = {}
    for g in admin.list_consumer_groups().result(30).valid:
        got = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g.group_id)])[g.group_id]
        out[g.group_id] = {(tp.topic, tp.partition): tp.offset for tp in got.result(30).topic_partitions}
    return out


def _table(out: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    return {
        r[0]: dict(zip(header, r, strict=True)) for r in (re.split(r"\s{2,}", ln.strip()) for ln in lines[2:])
    }


def _independent(settings: Settings, database: str, rng: TimeRange) -> tuple[float, float, int, int]:
    """Precision, recall, detected and false alerts from the shadow alerts and live labels, by a plain loop.

    An alert is raised at its first message's window end and stands until its
    last; it detects a label of its department when they share a sensor and it
    stands at some time from the label's start to 3 minutes after its end.
    """
    client = connect(settings)
    try:
        msgs = client.query(
            "SELECT alert_id, domain, affected_keys, toUnixTimestamp64Milli(last_seen) "
            f"FROM `{database}`.alerts"
        ).result_rows
        labels = client.query(
            "SELECT domain, sensor_ids, toUnixTimestamp64Milli(start_time), toUnixTimestamp64Milli(end_time) "
            "FROM labels FINAL"
        ).result_rows
    finally:
        client.close()
    raised: dict[str, int] = {}
    ended: dict[str, int] = {}
    keys: dict[str, set[str]] = {}
    domain: dict[str, str] = {}
    for alert_id, dom, affected, seen in msgs:
        raised[alert_id] = min(raised.get(alert_id, seen), seen)
        ended[alert_id] = max(ended.get(alert_id, seen), seen)
        keys.setdefault(alert_id, set()).update(affected)
        domain[alert_id] = dom
    alerts = [a for a in raised if rng.from_ms <= raised[a] < rng.to_ms]
    in_range = [lb for lb in labels if lb[3] >= rng.from_ms and lb[2] < rng.to_ms]
    detected, true_alerts = 0, set()
    for dom, sensors, start, end in in_range:
        hits = {
            a for a in alerts
            if domain[a] == dom and keys[a] & set(sensors)
            and raised[a] <= end + 3 * MIN and ended[a] >= start
        }  # fmt: skip
        detected += bool(hits)
        true_alerts |= hits
    false = len(alerts) - len(true_alerts)
    return detected / (detected + false), detected / len(in_range), detected, false


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--simulate", "1", "--replay"], "give --from/--to, not --simulate"),
        (["--from", "2026-01-05", "--to", "2026-01-06", "--keep"], "go with --replay"),
        (["--from", "2026-01-05", "--to", "2026-01-06", "--offsets", "o.json"], "go with --replay"),
    ],
)
def test_replay_options_are_refused_where_they_mean_nothing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main

    assert main(["backtest", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.integration
def test_range_resolves_to_the_aggregates_the_live_run_produced(live: dict[str, Any]) -> None:
    """--from/--to pick the aggregates by produce time: around the live water job, exactly its output."""
    assert aggregates_offsets(live["settings"], live["produced"]) == live["aggregates"]


@pytest.mark.integration
def test_backtest_replay_scores_the_shadow_alerts_and_leaves_live_untouched(
    live: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main
    from citystream.detection.config import DEFAULT_CONFIG

    settings, tmp = live["settings"], live["tmp"]
    for var, value in settings.to_env().items():
        monkeypatch.setenv(var, value)
    shipped, deaf = tmp / "shipped.toml", tmp / "deaf.toml"
    text = DEFAULT_CONFIG.read_text()
    shipped.write_text(text)
    deaf.write_text(re.sub(r"(?m)^(level_z|peak_z) = [0-9.]+", r"\1 = 1000.0", text))
    rng = TimeRange(T0_MS, T0_MS + MINUTES * MIN)
    span = ["--from", _iso(rng.from_ms), "--to", _iso(rng.to_ms), "--config", str(shipped)]
    before = (_fingerprint(settings), _group_offsets(settings))

    assert main(["backtest", *span, "--no-save"]) == 0
    in_process = capsys.readouterr().out
    replay_args = ["--replay", "--offsets", str(live["offsets"]), "--parallelism", "1"]
    assert main(["backtest", *span, *replay_args, "--keep"]) == 0
    captured = capsys.readouterr()
    assert main(["backtest", *span[:4], "--config", str(deaf), *replay_args]) == 0
    deaf_out = capsys.readouterr()
    after = (_fingerprint(settings), _group_offsets(settings))
    print(captured.err + captured.out + deaf_out.err + deaf_out.out)  # shown with -s

    (kept,) = re.findall(r"replay shipped \((bt[0-9a-f]{8}_c0)\) done in [0-9.]+ s", captured.err)
    (gone,) = re.findall(r"replay deaf \((bt[0-9a-f]{8}_c0)\) done in .*shadow run discarded", deaf_out.err)
    database = shadow_database(settings, kept)
    try:
        precision, recall, detected, false = _independent(settings, database, rng)
    finally:
        discard(settings, kept)
    got = _table(captured.out)["shipped"]
    assert detected > 0, "the live run raised no alert: the scores would prove nothing"
    assert (got["precision"], got["recall"]) == (f"{precision:.3f}", f"{recall:.3f}")
    assert (int(got["detected"]), int(got["false"])) == (detected, false)
    assert captured.out == in_process  # the job in Flink scores as its code in process
    assert int(_table(deaf_out.out)["deaf"]["detections"]) < int(got["detections"])

    client = connect(settings)
    try:
        stored = client.query(
            "SELECT run_id, dataset, precision, recall FROM backtest_runs FINAL "
            "WHERE run_id IN {r:Array(String)}",
            parameters={"r": [kept, gone]},
        ).result_rows
        databases = {r[0] for r in client.query("SHOW DATABASES").result_rows}
    finally:
        client.close()
    assert sorted(r[:2] for r in stored) == sorted([(kept, "replay"), (gone, "replay")])
    assert shadow_database(settings, gone) not in databases
    topics = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=10).topics
    assert not [t for t in topics if t.endswith(f".replay.{gone}")]

    (tables_before, groups_before), (tables_after, groups_after) = before, after
    assert tables_after == tables_before
    assert "btr-live-loader" in groups_before
    assert {g: groups_after.get(g) for g in groups_before} == groups_before
    assert set(groups_after) - set(groups_before) == {
        f"citystream-replay-{kept}-loader",
        f"citystream-replay-{gone}-loader",
    }
