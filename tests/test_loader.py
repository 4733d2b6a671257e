"""The loader: every result topic into its table, dead letters, crash safety, replays and back-pressure.

Real broker (the session ``kafka``), real store processes (``citystream store
serve``) on free ports, fixed epochs; every process started here is stopped
by pid in a finalizer. Waits poll a condition with a generous guard deadline
that only turns a hang into a failure: nothing asserts on durations.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from citystream import contracts
from citystream.connectors.avroframe import Framer, container
from citystream.connectors.loader import ROUTES, routes
from citystream.proc import free_port
from citystream.settings import Settings

T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC: fixed epoch for every record
GUARD_S = 120  # a wait that takes longer than this is a hang, not a slow machine

# Tables compared row by row (loaded_at differs between runs by design) and the views on top.
TABLES = [table for _, table in ROUTES.values()]
VIEWS = ["alerts_latest", "sensor_health_latest", "window_aggregates_hourly", "window_aggregates_daily"]


# --------------------------------------------------------------------------- unit: no servers


def test_every_result_topic_has_a_route() -> None:
    from citystream.topics import load_spec

    results = {s.suffix for s in load_spec() if not s.suffix.startswith("readings.")}
    assert set(ROUTES) == results
    for spec in load_spec():
        if spec.suffix in ROUTES:
            assert ROUTES[spec.suffix][0] == spec.value


def test_route_columns_are_the_avro_fields() -> None:
    by_table = {r.table: r for r in routes(Settings())}
    assert by_table["window_aggregates"].columns[:3] == ("domain", "key_kind", "key_id")
    assert by_table["anomalies"].timestamp_columns == ("event_time", "window_start", "window_end")


def _samples(name: str, n: int, rng: random.Random) -> list[bytes]:
    rows = {
        "citystream.WindowAggregate": lambda i: _aggregate(i % 7, i // 7),
        "citystream.Alert": lambda i: _alert(i, "open", ["a"] * (i % 4)),
        "citystream.Anomaly": lambda i: _anomaly(i, window=i % 2 == 0),
        "citystream.DeadLetter": lambda i: _dead(i, key=None if i % 2 else b"k"),
    }[name]
    return contracts.encode_many(name, [rows(i) for i in range(n)])


@pytest.mark.parametrize(
    "name", ["citystream.WindowAggregate", "citystream.Alert", "citystream.Anomaly", "citystream.DeadLetter"]
)
def test_framer_accepts_exactly_what_decodes(name: str) -> None:
    rng = random.Random(11)
    good = _samples(name, 300, rng)
    framer = Framer(contracts.schema(name))
    assert framer.check(good).all()
    mutated = []
    for v in good:
        b = bytearray(v)
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            b += bytes([rng.randrange(256)])
        elif op == 2 and b:
            del b[rng.randrange(len(b)) :]
        else:
            b = bytearray(rng.randbytes(rng.randrange(40)))
        mutated.append(bytes(b))
    verdicts = framer.check(mutated)
    for value, ok in zip(mutated, verdicts, strict=True):
        try:
            contracts.decode(name, value)
            decodes = True
        except ValueError as exc:
            decodes = False
            if ok:  # the one thing the framer does not check
                assert "utf-8" in str(exc).lower() or "codec" in str(exc).lower(), str(exc)
        if not ok and decodes:
            # fastavro is laxer (e.g. union index -1 picks the last branch); such bytes are not a
            # canonical encoding, and the loader re-encodes what fastavro read.
            assert contracts.encode(name, contracts.decode(name, value)) != value
    assert not verdicts.all()
    # Alone, a record's varints are all one byte or not: the one-byte fast path and the general
    # walk must agree with the verdicts the whole mixed batch got.
    alone = [bool(framer.check([v])[0]) for v in mutated + good]
    assert alone == list(verdicts) + [True] * len(good)


def test_framer_reads_negative_and_multi_byte_varints() -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "u", "type": ["null", "long"]}]}
    framer = Framer(schema)
    # zigzag: 0x01 is -1 (no such branch), 0x02 branch 1, then longs -1, 64 (two bytes), -65.
    values = [b"\x01", b"\x00", b"\x02\x01", b"\x02\x80\x01", b"\x02\x81\x01", b"\x02", b"\x00\x00"]
    want = [False, True, True, True, True, False, False]
    assert list(framer.check(values)) == want
    assert [bool(framer.check([v])[0]) for v in values] == want


def test_container_holds_the_records_in_order() -> None:
    import io

    import fastavro

    values = _samples("citystream.WindowAggregate", 50, random.Random(3))
    got = list(fastavro.reader(io.BytesIO(container(contracts.schema("citystream.WindowAggregate"), values))))
    want = [contracts.decode("citystream.WindowAggregate", v) for v in values]
    for g in got:
        g["window_start"] = int(g["window_start"].timestamp() * 1000)
        g["window_end"] = int(g["window_end"].timestamp() * 1000)
    assert got == want
    assert Framer(contracts.schema("citystream.WindowAggregate")).check([]).dtype == np.bool_


# --------------------------------------------------------------------------- records


def _aggregate(sensor: int, minute: int, revision: int = 0) -> dict:
    start = T0 + minute * 60_000
    return {
        "domain": "grid", "key_kind": "sensor", "key_id": f"grid-{sensor:04d}", "metric": "voltage_v",
        "window_start": start, "window_end": start + 60_000, "samples": 12 + revision,
        "mean": 230.0 + sensor / 10 + minute / 1000 + revision, "min": 229.0, "max": 231.5,
        "late": revision, "duplicates": 0, "revision": revision,
    }  # fmt: skip


def _anomaly(i: int, window: bool = True) -> dict:
    return {
        "domain": "water", "key_kind": "sensor", "key_id": f"water-{i % 5:04d}", "metric": "pressure_bar",
        "detector": "robust_z", "event_time": T0 + i * 1000,
        "window_start": T0 + i * 1000 if window else None,
        "window_end": T0 + i * 1000 + 60_000 if window else None,
        "score": 4.5 + i, "severity": "warning", "observed": 1.0 * i if i % 3 else None, "expected": 2.0,
        "explanation": f"z={4.5 + i:.1f}",
    }  # fmt: skip


def _alert(i: int, state: str, keys: list[str], step: int = 0) -> dict:
    return {
        "alert_id": f"alert-{i:03d}", "state": state, "domain": "traffic", "kind": "congestion",
        "key_kind": "zone", "affected_keys": keys, "first_seen": T0 + i * 60_000,
        "last_seen": T0 + i * 60_000 + step * 60_000, "severity": "critical", "anomaly_count": 1 + step,
        "explanation": f"{state} step {step}",
    }  # fmt: skip


def _health(sensor: int, step: int) -> dict:
    return {
        "sensor_id": f"grid-{sensor:04d}", "site_id": "site-1", "zone_id": "zone-a", "domain": "grid",
        "status": "stuck" if step % 2 else "ok", "since": T0 + step * 60_000, "details": f"step {step}",
    }  # fmt: skip


def _late(i: int) -> dict:
    return {
        "source_topic": "readings.grid", "source_partition": i % 3, "source_offset": 1000 + i,
        "sensor_id": f"grid-{i % 4:04d}", "event_time": T0 + i * 1000, "watermark": T0 + i * 1000 + 9000,
        "lateness_ms": 9000, "original": bytes([i % 256]) * 3,
    }  # fmt: skip


def _dead(i: int, key: bytes | None = b"k") -> dict:
    return {
        "source_topic": "readings.water", "source_partition": 0, "source_offset": i, "original_key": key,
        "original_value": b"\x00\x01garbage", "reason": "undecodable", "error": "bad bytes",
        "received_at": T0 + i,
    }  # fmt: skip


def _label(i: int) -> dict:
    return {
        "label_id": f"label-{i}", "domain": "grid", "kind": "spike", "sensor_ids": [f"grid-{i:04d}"],
        "start_time": T0 + i * 60_000, "end_time": T0 + (i + 5) * 60_000, "source": "simulator",
        "details": "",
    }  # fmt: skip


def dataset(sensors: int, minutes: int) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    """Records for every result topic: (key, value) in produce order; fixed content."""
    enc = contracts.encode_many
    aggs = [_aggregate(s, m) for m in range(minutes) for s in range(sensors)]
    aggs += [_aggregate(s, m, revision=1) for m in range(0, minutes, 7) for s in range(0, sensors, 3)]
    alerts = []
    for i in range(6):
        alerts += [
            _alert(i, "open", ["z1"]),
            _alert(i, "update", ["z1", "z2"], 1),
            _alert(i, "resolve", ["z1"], 2),
        ]
    health = [_health(s, k) for k in range(4) for s in range(5)]
    labels = [_label(i) for i in range(4)]

    def keyed(name: str, rows: list[dict], key: str) -> list[tuple[bytes | None, bytes | None]]:
        return [(r[key].encode(), v) for r, v in zip(rows, enc(name, rows), strict=True)]

    return {
        "aggregates": keyed("citystream.WindowAggregate", aggs, "key_id"),
        "anomalies": keyed("citystream.Anomaly", [_anomaly(i) for i in range(40)], "key_id"),
        "alerts": keyed("citystream.Alert", alerts, "alert_id"),
        "sensor-health": keyed("citystream.SensorHealth", health, "sensor_id"),
        "late-events": keyed("citystream.LateEvent", [_late(i) for i in range(30)], "sensor_id"),
        "dead-letter": keyed("citystream.DeadLetter", [_dead(i) for i in range(5)], "source_topic"),
        "labels": keyed("citystream.Label", labels, "label_id"),
    }


def produce(settings: Settings, records: dict[str, list[tuple[bytes | None, bytes | None]]]) -> None:
    from confluent_kafka import Producer

    from citystream.topics import ensure_topics

    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix)
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 20,
         "compression.type": "zstd", "queue.buffering.max.messages": 1_000_000}
    )  # fmt: skip
    failures: list[object] = []
    for suffix, pairs in records.items():
        for key, value in pairs:
            producer.produce(
                settings.topic(suffix), key=key, value=value,
                on_delivery=lambda err, _m: failures.append(err) if err else None,
            )  # fmt: skip
            producer.poll(0)
    assert producer.flush(60) == 0 and not failures


# --------------------------------------------------------------------------- store processes


class StoreProcess:
    """``citystream store serve`` as a child process, stopped by pid."""

    def __init__(self, settings: Settings, data_dir: Path, log: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        cmd = [sys.executable, "-m", "citystream.cli", "store", "serve", "--data", str(self.data_dir)]
        cmd += ["--port", str(self.settings.store_port), *extra]
        env = {**os.environ, **self.settings.to_env()}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        wait_for(self.healthy, "the store to answer", alive=self.alive)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self) -> bool:
        from citystream.store.client import connect

        with contextlib.suppress(Exception):
            client = connect(self.settings, connect_timeout=2)
            try:
                return client.command("SELECT 1") == 1
            finally:
                client.close()
        return False

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.proc.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_for(check: Callable[[], bool], what: str, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + GUARD_S
    while not check():
        if not alive():
            pytest.fail(f"process died while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} (a hang guard, not a performance check)")
        time.sleep(0.02)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[Callable[[Settings, str], StoreProcess]]:
    started: list[StoreProcess] = []

    def make(settings: Settings, name: str) -> StoreProcess:
        store = StoreProcess(settings, tmp_path / name / "data", tmp_path / f"{name}.log")
        store.data_dir.mkdir(parents=True)
        started.append(store)
        return store

    try:
        yield make
    finally:
        for store in started:
            store.stop()


def _unique(kafka, **changes: object) -> Settings:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    return kafka.settings_.replace(topic_prefix=f"ld{tag}.", clickhouse_database=f"ld_{tag}", **changes)


def snapshot(settings: Settings) -> dict[str, list[tuple]]:
    """Every result table as queries see it (FINAL) and every view, sorted, without loaded_at.

    Raw contents are not comparable between two stores: background merges of
    ReplacingMergeTree collapse a window's older revision whenever they run.
    :func:`duplicates` covers what raw rows can still show.
    """
    from citystream.store.client import connect

    client = connect(settings)
    try:
        out = {}
        for table in TABLES:
            out[table] = client.query(
                f"SELECT * EXCEPT loaded_at FROM {table} FINAL ORDER BY ALL"
            ).result_rows
        for view in VIEWS:
            cols = "* EXCEPT loaded_at" if view.endswith("_latest") else "*"
            rows = client.query(f"SELECT {cols} FROM {view} ORDER BY ALL").result_rows
            # The rollup views' means are float sums over windows, added in whatever order the
            # engine reads them: the last bit may differ between two loads of the same records.
            out[view] = [tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in r) for r in rows]
        return out
    finally:
        client.close()


def duplicates(settings: Settings) -> dict[str, int]:
    """Per table, raw rows that are exact copies of another (all columns but loaded_at)."""
    from citystream.store.client import connect

    client = connect(settings)
    try:
        out = {}
        for route in routes(settings):
            cols = ", ".join(route.columns)
            out[route.table] = int(
                client.command(f"SELECT count() - uniqExact(tuple({cols})) FROM {route.table}")
            )
        return out
    finally:
        client.close()


def _lag_recorded(settings: Settings, instance: str) -> float:
    """The last lag_records the loader wrote to pipeline_metrics (-1: none yet)."""
    from citystream.store.client import connect

    client = connect(settings)
    try:
        value = client.command(
            "SELECT argMaxOrNull(value, ts) FROM pipeline_metrics "
            "WHERE component = 'loader' AND instance = {i:String} AND metric = 'lag_records'",
            parameters={"i": instance},
        )
        return -1.0 if value in (None, "\\N", "") else float(value)
    finally:
        client.close()


def _count(settings: Settings, table: str) -> int:
    from citystream.store.client import connect

    with contextlib.suppress(Exception):
        client = connect(settings, connect_timeout=2)
        try:
            return int(client.command(f"SELECT count() FROM {table}"))
        finally:
            client.close()
    return -1


def _group_offsets(settings: Settings, group: str) -> tuple[int, int]:
    """(records the group has committed, records in the result topics), summed over partitions."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        tps = []
        for topic in (r.topic for r in routes(settings)):
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            tps += [TopicPartition(topic, p) for p in meta.partitions]
        committed = end = 0
        for tp in consumer.committed(tps, timeout=10):
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            committed += max(tp.offset, low, 0) - low
            end += high - low
        return committed, end
    finally:
        consumer.close()


def _group_caught_up(settings: Settings, group: str) -> bool:
    committed, end = _group_offsets(settings, group)
    return committed == end


def _group_detail(settings: Settings, group: str) -> list[tuple[str, int, int, int]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        tps = []
        for topic in (r.topic for r in routes(settings)):
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            tps += [TopicPartition(topic, p) for p in meta.partitions]
        return [
            (tp.topic, tp.partition, tp.offset, consumer.get_watermark_offsets(tp, timeout=10)[1])
            for tp in consumer.committed(tps, timeout=10)
        ]
    finally:
        consumer.close()


# --------------------------------------------------------------------------- integration


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citystream.cli", *args],
        env={**os.environ, **settings.to_env()},
        capture_output=True,
        text=True,
        timeout=GUARD_S,
        check=False,
    )


@pytest.mark.integration
def test_load_command_runs_the_loader_standalone(kafka, store) -> None:
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    records = dataset(sensors=3, minutes=4)
    produce(settings, records)
    migrate(settings)
    # Against the embedded store only a one-off catch-up makes sense: the store loads by itself.
    refused = _cli(settings, "load")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    done = _cli(settings, "load", "--until-end", "--group", "cli", "--batch-rows", "10")
    assert done.returncode == 0, done.stderr
    total = sum(len(v) for v in records.values())
    assert f"loaded {total:,} rows in" in done.stderr, done.stderr
    assert _count(settings, "window_aggregates FINAL") == 3 * 4
    bad = _cli(settings, "load", "--until-end", "--batch-rows", "0")
    assert bad.returncode == 2 and "--batch-rows" in bad.stderr


@pytest.mark.integration
def test_every_topic_lands_and_bad_records_become_dead_letters(kafka, store) -> None:
    from citystream.connectors.loader import load
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    records = dataset(sensors=4, minutes=5)
    garbage = [(b"x", b"\x01\x02not avro"), (b"y", records["aggregates"][0][1] + b"\x00")]
    records["aggregates"] = records["aggregates"][:3] + garbage + records["aggregates"][3:]
    records["alerts"].append((b"alert-000", None))  # a tombstone: deletes nothing, counted
    produce(settings, records)
    migrate(settings)
    stats = load(settings, until_end=True, group_id="once", batch_rows=7)
    assert stats.undecodable == 2 and stats.tombstones == 1
    client = connect(settings)
    try:
        for suffix, (_, table) in ROUTES.items():
            expected = len([v for _, v in records.get(suffix, []) if v is not None])  # sensors: own tests
            final = ""
            if suffix == "aggregates":
                # Revisions of one window share its key: a background merge may already have kept
                # only the highest, so count windows (FINAL), not rows.
                good = [v for v in records[suffix] if v not in garbage]
                decoded = [contracts.decode("citystream.WindowAggregate", v) for _, v in good]
                key = ("domain", "key_kind", "key_id", "metric", "window_start", "window_end")
                expected = len({tuple(d[k] for k in key) for d in decoded})
                final = " FINAL"
            got = client.command(f"SELECT count() FROM {table}{final}")
            assert int(got) >= expected, table
        # The dead letters went to the topic with their reason; a second pass loads them from there.
        load(settings, until_end=True, group_id="once")
        rows = client.query(
            "SELECT source_topic, reason, hex(original_value), error FROM dead_letters FINAL "
            "WHERE source_topic = {t:String} ORDER BY source_offset",
            parameters={"t": settings.topic("aggregates")},
        ).result_rows
        assert [(r[0], r[1]) for r in rows] == [(settings.topic("aggregates"), "undecodable")] * 2
        assert b"\x01\x02not avro".hex().upper() in {r[2] for r in rows}
        assert all("cannot decode" in r[3] for r in rows)
        # Nothing else was lost: every window is there (counted with FINAL, as windows, because
        # a background merge may already have folded a window's revisions into one row).
        good = [
            contracts.decode("citystream.WindowAggregate", v)
            for k, v in records["aggregates"]
            if (k, v) not in garbage
        ]
        windows = {
            (
                d["domain"],
                d["key_kind"],
                d["key_id"],
                d["metric"],
                d["window_start"],
                d["window_end"],
            )
            for d in good
        }
        got = client.query(
            "SELECT domain, key_kind, key_id, metric, toUnixTimestamp64Milli(window_start), "
            "toUnixTimestamp64Milli(window_end) FROM window_aggregates FINAL"
        ).result_rows
        assert len(got) == len(windows) and set(map(tuple, got)) == windows
    finally:
        client.close()


@pytest.mark.integration
def test_loading_the_same_range_twice_changes_nothing_visible(kafka, store) -> None:
    from citystream.connectors.loader import load
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    records = dataset(sensors=20, minutes=30)
    produce(settings, records)
    migrate(settings)
    first = load(settings, until_end=True, group_id="first", batch_rows=997)
    once = snapshot(settings)
    again = load(settings, until_end=True, group_id="second", batch_rows=500)
    assert again.loaded == first.loaded == sum(len(v) for v in records.values())
    assert snapshot(settings) == once
    assert len(once["window_aggregates"]) == 20 * 30  # one row per window: its latest revision


@pytest.mark.integration
def test_kill_9_mid_load_then_restart_holds_exactly_the_rows_of_a_clean_run(kafka, store, stores) -> None:
    from citystream.connectors.loader import load
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=store.settings.store_port)
    records = dataset(sensors=50, minutes=600)  # 30,000 windows + revisions: many batches of 500
    total_aggregates = len(records["aggregates"])
    produce(settings, records)

    # The reference: a clean load of the same topics into another database of the session store.
    reference = settings.replace(clickhouse_database=settings.clickhouse_database + "_ref")
    migrate(reference)
    load(reference, until_end=True, group_id="reference")
    want = snapshot(reference)
    assert len(want["window_aggregates"]) == 50 * 600

    # The store under test runs its own loader; it is killed -9 while loading.
    crashing = settings.replace(store_port=free_port())
    server = stores(crashing, "crash")
    loader_args = ("--loader", "--loader-group", "crash", "--batch-rows", "500", "--batch-ms", "200")
    server.start(*loader_args)
    migrate(crashing)
    # More rows than one batch holds: the batch before was committed (batches go one after the other).
    wait_for(lambda: _count(crashing, "window_aggregates") > 1000, "the first batches", alive=server.alive)
    server.kill()
    committed, end = _group_offsets(crashing, "crash")
    assert 0 < committed < end

    # Restarted without the loader: the kill really landed in the middle (the directory lock is gone).
    server.start("--no-loader")
    partial = _count(crashing, "window_aggregates")
    assert 0 < partial < total_aggregates
    assert server.stop() == 0

    # Restarted with the loader: it resumes from the committed offsets and replays the planned batch.
    server.start(*loader_args)
    try:
        wait_for(lambda: _group_caught_up(crashing, "crash"), "the loader to catch up", alive=server.alive)
    except BaseException:
        print(_group_detail(crashing, "crash"))
        raise
    got = snapshot(crashing)
    copies = duplicates(crashing)
    wait_for(lambda: _lag_recorded(crashing, "crash") == 0, "the loader to record that it caught up")
    status = _cli(crashing, "store", "status")
    assert server.stop() == 0
    assert "loader   crash: last load" in status.stdout and "0 records behind" in status.stdout, status.stdout
    for name in want:
        assert got[name] == want[name], name
    assert copies == dict.fromkeys(TABLES, 0)


@pytest.mark.integration
def test_store_down_means_retries_with_backoff_nothing_lost_order_kept(kafka, stores) -> None:
    from citystream.connectors.loader import Loader, LoadStats
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings = _unique(kafka, store_port=free_port())
    # One key, one partition, many versions of the same row: the last one produced must win.
    health = [dict(_health(1, 0), details=f"version {i:04d}") for i in range(400)]
    late = [_late(i) for i in range(400)]
    records = {
        "sensor-health": [
            (b"grid-0001", v) for v in contracts.encode_many("citystream.SensorHealth", health)
        ],
        "late-events": [(b"s", v) for v in contracts.encode_many("citystream.LateEvent", late)],
    }
    produce(settings, records)
    server = stores(settings, "flaky")
    server.start("--no-loader")
    migrate(settings)

    seen: list[LoadStats] = []
    loader = Loader(settings, group_id="flaky", batch_rows=20, batch_ms=100, max_backoff_s=1.0)
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["stats"] = loader.run(until_end=True, progress=lambda s: seen.append(s))
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: loader.stats.batches >= 3, "a few batches")
        server.kill()
        wait_for(lambda: loader.stats.retries >= 3, "the loader to retry against the dead store")
        assert thread.is_alive() and loader.stats.loaded < 800
        server.start("--no-loader")
    finally:
        thread.join(GUARD_S)
    assert not thread.is_alive() and "error" not in result, result
    client = connect(settings)
    try:
        assert int(client.command("SELECT count() FROM late_events")) == 400
        latest = client.query("SELECT details FROM sensor_health_latest").result_rows
        assert latest == [("version 0399",)]
        final = client.query("SELECT details FROM sensor_health FINAL").result_rows
        assert final == [("version 0399",)]
        # Order within the key: load times never go backwards along the Kafka order.
        stamps = client.query("SELECT loaded_at FROM late_events ORDER BY source_offset").result_rows
        assert [s for (s,) in stamps] == sorted(s for (s,) in stamps)
    finally:
        client.close()
    assert result["stats"].retries >= 3  # type: ignore[union-attr]
