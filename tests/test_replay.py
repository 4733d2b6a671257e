"""Replays: offsets planned exactly, results equal to the live run's, nothing live touched.

Why these tests: a backtest is only worth something if the replay is the
live job - the same rows and values from the same input offsets - and a
replay that moved a live consumer group or wrote a live table would corrupt
the city's own alerting. The live run and the replay both run the real job
files on a Flink MiniCluster against the real broker and the real store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from citystream.cli import build_parser
from citystream.cli.replay import _split
from citystream.connectors.loader import load
from citystream.connectors.producer import ReadingProducer
from citystream.errors import UserError
from citystream.jobs.sql import offset_options
from citystream.proc import child_env
from citystream.replay import current_ranges, read_ranges, replay, replay_detect, resolve_times, write_ranges
from citystream.replay.pace import Pacer, copy_ranges, read_range
from citystream.replay.ranges import parse_time, plan
from citystream.replay.run import shadow_database
from citystream.settings import ROOT, Settings
from citystream.simulator.engine import KafkaSink, SimConfig, Simulation
from citystream.simulator.imperfections import Rates
from citystream.store.client import connect
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics

T0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
WATERMARK_S = 30
JOB_ARGS = ["--watermark-on-event", "--out-of-order-s", str(WATERMARK_S)]
TABLES = ("window_aggregates", "late_events", "dead_letters", "sensor_health", "anomalies", "alerts")

# --------------------------------------------------------------------------- planning (pure)


def test_plan_takes_first_offset_at_or_after_each_time() -> None:
    bounds = {("t", 0): (0, 10), ("t", 1): (0, 8)}
    got = plan(bounds, {("t", 0): 3, ("t", 1): 2}, {("t", 0): 7, ("t", 1): 5})
    assert got == {"t": {0: (3, 7), 1: (2, 5)}}


def test_plan_without_records_after_a_time_uses_the_log_end() -> None:
    bounds = {("t", 0): (0, 10), ("t", 1): (0, 8)}
    # None and -1 (librdkafka's OFFSET_END) both mean "every record is older".
    got = plan(bounds, {("t", 0): 4, ("t", 1): None}, {("t", 0): None, ("t", 1): -1})
    assert got == {"t": {0: (4, 10), 1: (8, 8)}}


def test_plan_clamps_to_retention_and_never_ends_before_it_starts() -> None:
    bounds = {("t", 0): (5, 10), ("u", 0): (0, 3)}
    got = plan(bounds, {("t", 0): 2, ("u", 0): 3}, {("t", 0): 4, ("u", 0): 1})
    assert got == {"t": {0: (5, 5)}, "u": {0: (3, 3)}}


def test_offsets_file_round_trips_and_bad_files_are_refused(tmp_path: Path) -> None:
    ranges = {"a": {0: (1, 5), 2: (0, 0)}, "b": {1: (7, 9)}}
    assert read_ranges(write_ranges(ranges, tmp_path / "o.json")) == ranges
    (tmp_path / "bad.json").write_text(json.dumps({"a": {"0": [5, 1]}}))
    with pytest.raises(UserError, match="start <= end"):
        read_ranges(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(UserError):
        read_ranges(tmp_path / "junk.json")


def test_offset_options_bound_both_ends_and_commit_nothing() -> None:
    opts = offset_options({1: (5, 9), 0: (0, 3)})
    assert opts["scan.startup.specific-offsets"] == "partition:0,offset:0;partition:1,offset:5"
    assert opts["scan.bounded.specific-offsets"] == "partition:0,offset:3;partition:1,offset:9"
    assert opts["scan.startup.mode"] == opts["scan.bounded.mode"] == "specific-offsets"
    assert opts["properties.commit.offsets.on.checkpoint"] == "false"


def test_parse_time_reads_zones_and_defaults_to_utc() -> None:
    assert parse_time("2026-01-05T00:00:00Z") == T0_MS
    assert parse_time("2026-01-05T01:00:00+01:00") == T0_MS
    assert parse_time("2026-01-05") == T0_MS
    with pytest.raises(UserError):
        parse_time("yesterday")


def test_cli_takes_its_options_back_from_the_job_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["replay", "water", "--from", "2026-01-05T10:00Z", "--to", "2026-01-05T11:00Z", "--speed", "realtime",
         "--", "--watermark-on-event", "--out-of-order-s", "30"]
    )  # fmt: skip
    assert _split(args) == ["--watermark-on-event", "--out-of-order-s", "30"]
    assert (args.job, args.start, args.end) == ("water", "2026-01-05T10:00Z", "2026-01-05T11:00Z")
    assert args.speed == 1.0
    args = parser.parse_args(["replay", "detect", "--offsets", "f.json", "--speed", "10"])
    assert _split(args) == [] and args.speed == 10.0 and args.offsets == Path("f.json")


def test_replay_refuses_offsets_of_another_topic_and_bad_run_ids(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path, topic_prefix="x.")
    with pytest.raises(UserError, match=r"no range of x\.readings\.water"):
        replay(settings, "water", {"x.readings.grid": {0: (0, 1)}}, run_id="a1")
    with pytest.raises(UserError, match="run id"):
        replay(settings, "water", {"x.readings.water": {0: (0, 1)}}, run_id="Bad-Id")


# --------------------------------------------------------------------------- planning on a broker


@pytest.mark.integration
def test_times_resolve_to_offsets_on_the_broker(kafka) -> None:
    settings = kafka.settings_.replace(topic_prefix="rplt.")
    topic = "rplt.times"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(10):  # record i at T0 + i s, alternating partitions
        producer.produce(topic, value=b"%d" % i, partition=i % 2, timestamp=T0_MS + i * 1000)
    assert producer.flush(30) == 0
    # [T0+3 s, T0+7 s): i = 4, 6 on partition 0 (offsets 2, 3) and i = 3, 5 on partition 1 (1, 2).
    assert resolve_times(settings, [topic], T0_MS + 3000, T0_MS + 7000) == {topic: {0: (2, 4), 1: (1, 3)}}
    # A range past the last record ends at the log end; one before everything is empty.
    assert resolve_times(settings, [topic], T0_MS + 8000, T0_MS + 60_000) == {topic: {0: (4, 5), 1: (4, 5)}}
    assert resolve_times(settings, [topic], T0_MS - 9000, T0_MS) == {topic: {0: (0, 0), 1: (0, 0)}}
    with pytest.raises(UserError, match="does not exist"):
        resolve_times(settings, ["rplt.missing"], T0_MS, T0_MS + 1)


@pytest.mark.integration
def test_paced_copy_holds_exactly_the_range_where_the_job_will_look(kafka) -> None:
    settings = kafka.settings_.replace(topic_prefix="rplp.")
    src, dest = "rplp.src", "rplp.src.replay.p1"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for topic in (src, dest):
        admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(12):
        producer.produce(src, key=b"k%d" % i, value=b"v%d" % i, partition=i % 2, timestamp=T0_MS + i * 1000)
    assert producer.flush(30) == 0
    records = read_range(settings, src, {0: (1, 5), 1: (0, 6)})
    # Partition 0 offsets 1-4 (i = 2, 4, 6, 8) and all of partition 1 (i = 1, 3, ... 11), by time.
    assert [r[3] for r in records] == [b"v1", b"v2", b"v3", b"v4", b"v5", b"v6", b"v7", b"v8", b"v9", b"v11"]
    want = copy_ranges(records, dest, 2)
    assert want == {dest: {0: (0, 4), 1: (0, 6)}}
    pacer = Pacer(settings, records, dest, speed=1000.0)
    pacer.start()
    pacer.join(60)
    assert pacer.error is None and pacer.sent == len(records)
    assert current_ranges(settings, [dest]) == want
    copied = read_range(settings, dest, want[dest])
    assert sorted((p, k, v) for _, p, k, v in copied) == sorted((p, k, v) for _, p, k, v in records)


# --------------------------------------------------------------------------- equivalence


def _simulate(settings, start_ms: int, minutes: int, seed: int) -> None:
    cfg = SimConfig(
        seed=seed, start_ms=start_ms, duration_ms=minutes * 60_000, sensors=40, domains=("water",),
        rates=Rates(out_of_order=0.05, duplicates=0.02, gaps=0.01, poison=0.02, watermark_s=WATERMARK_S),
        anomalies_per_hour=30.0, topic_prefix=settings.topic_prefix,
    )  # fmt: skip
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        Simulation(cfg).run(KafkaSink(producer))
        producer.flush()


def _job(settings, name: str, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", f"citystream.jobs.{name}", *args],
        env=child_env(settings.to_env()), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def _rows(settings, database: str, table: str) -> list[tuple]:
    """Every row of ``table`` but the load time (and a dead letter's receive time), sorted."""
    drop = "loaded_at, received_at" if table == "dead_letters" else "loaded_at"
    client = connect(settings.replace(clickhouse_database=database))
    try:
        rows = client.query(f"SELECT * EXCEPT ({drop}) FROM {table} FINAL").result_rows
    finally:
        client.close()
    return sorted(rows, key=repr)


def _fingerprint(settings) -> dict[str, tuple]:
    """Row count and content hash of every live table."""
    client = connect(settings)
    try:
        return {
            t: tuple(client.query(f"SELECT count(), sum(cityHash64(*)) FROM {t}").result_rows[0])
            for t in (*TABLES, "pipeline_metrics")
        }
    finally:
        client.close()


def _group_offsets(settings) -> dict[str, dict[tuple[str, int], int]]:
    """Committed offsets of every consumer group on the broker."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    groups = [g.group_id for g in admin.list_consumer_groups().result(30).valid]
    out = {}
    for group in groups:
        result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(30)
        out[group] = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
    return out


@pytest.fixture(scope="module")
def live(kafka, store, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A live water + detect run, loaded; then more live data arrives. Returns what it consumed."""
    tmp = tmp_path_factory.mktemp("replay")
    # One partition per topic (as tests/test_e2e_city.py): which reading is late then depends only
    # on the topic's order, in the live run and in the replay alike.
    spec = tmp / "topics.toml"
    spec.write_text((ROOT / "infra" / "topics.toml").read_text().replace("partitions = 3", "partitions = 1"))
    settings = kafka.settings_.replace(
        topic_prefix="rpl.", clickhouse_database="rpl", run_dir=tmp / "run", topics_spec=spec,
        store_port=store.settings.store_port,
    )  # fmt: skip
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)
    migrate(settings)
    _simulate(settings, T0_MS, 60, seed=11)
    readings = current_ranges(settings, [settings.topic("readings.water")])
    _job(settings, "water", "--bounded", "--parallelism", "1", *JOB_ARGS)
    aggregates = current_ranges(settings, [settings.topic("aggregates")])
    _job(settings, "detect", "--bounded", "--parallelism", "1")
    stats = load(settings, until_end=True, group_id="rpl-live-loader")
    assert stats.undecodable == 0
    # Live data goes on after the range the replay will read.
    _simulate(settings, T0_MS + 3_600_000, 5, seed=12)
    return {"settings": settings, "readings": readings, "aggregates": aggregates}


@pytest.fixture(scope="module")
def replayed(live) -> dict:
    settings = live["settings"]
    before = (_fingerprint(settings), _group_offsets(settings))
    result = replay(
        settings, "water", live["readings"], run_id="eq1", detect=True, job_args=JOB_ARGS, parallelism=1
    )
    after = (_fingerprint(settings), _group_offsets(settings))
    print(f"replay eq1 seconds: {result.seconds}, rows loaded: {result.loaded}")  # shown with -s
    return {"result": result, "before": before, "after": after}


@pytest.mark.integration
@pytest.mark.parametrize("table", TABLES)
def test_replay_of_the_consumed_offsets_equals_the_live_rows(live, replayed, table: str) -> None:
    settings, result = live["settings"], replayed["result"]
    assert result.database == shadow_database(settings, "eq1")
    want = _rows(settings, "rpl", table)
    got = _rows(settings, result.database, table)
    if table in ("window_aggregates", "dead_letters", "sensor_health", "anomalies", "alerts"):
        assert want, f"the live run produced no {table}: the comparison would prove nothing"
    assert got == want


@pytest.mark.integration
def test_replay_read_exactly_the_live_ranges(live, replayed) -> None:
    result = replayed["result"]
    assert result.offsets["water"] == live["readings"]
    # Detect read all of the replay's own aggregates (not the live topic). Offsets, not record counts:
    # transaction markers take offsets too, as many as the job happened to commit transactions.
    (topic,) = result.offsets["detect"]
    assert topic == live["settings"].topic("aggregates") + ".replay.eq1"
    assert result.offsets["detect"] == current_ranges(live["settings"], [topic])


@pytest.mark.integration
def test_replay_leaves_live_tables_and_consumer_groups_unchanged(live, replayed) -> None:
    (tables_before, groups_before), (tables_after, groups_after) = replayed["before"], replayed["after"]
    assert tables_after == tables_before
    assert groups_before, "no live consumer group to protect: the check would prove nothing"
    assert {g: groups_after.get(g) for g in groups_before} == groups_before
    # The only new group is the replay's own loader; the Flink sources committed nothing.
    assert set(groups_after) - set(groups_before) == {"citystream-replay-eq1-loader"}


@pytest.mark.integration
def test_detect_replayed_over_an_earlier_replay_equals_the_live_verdicts(live, replayed) -> None:
    """A backtest's shape: the domain job once, then detect again over that replay's aggregates."""
    settings = live["settings"]
    again = replay_detect(settings, "eq1", run_id="eq2", parallelism=1)
    assert set(again.offsets["detect"]) == {settings.topic("aggregates") + ".replay.eq1"}
    for table in ("anomalies", "alerts"):
        want = _rows(settings, "rpl", table)
        assert want and _rows(settings, again.database, table) == want
    with pytest.raises(UserError, match="was used before"):
        replay_detect(settings, "eq1", run_id="eq2")


@pytest.mark.integration
def test_a_paced_replay_through_flink_equals_the_live_rows(live) -> None:
    """``--speed``: the job reads a paced copy of its input; the copy holds the same records in order."""
    settings = live["settings"]
    result = replay(
        settings, "water", live["readings"], run_id="pc1", speed=50.0, job_args=JOB_ARGS, parallelism=1
    )
    assert result.topics["aggregates"] == settings.topic("aggregates") + ".replay.pc1"
    for table in ("window_aggregates", "late_events", "dead_letters"):
        want = _rows(settings, "rpl", table)
        assert want or table == "late_events", f"the live run produced no {table}"
        got = _rows(settings, result.database, table)
        if table == "dead_letters":  # a dead letter names the topic it was read from: here the paced copy
            copy = settings.topic("readings.water") + ".replay.pc1"
            assert got and {r[0] for r in got} == {copy}
            got = sorted(((settings.topic("readings.water"), *r[1:]) for r in got), key=repr)
        assert got == want
