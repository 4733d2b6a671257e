"""A replay beside running live jobs: live tables, offsets and topics stay as they were.

Why its own module: tests/test_replay.py proves equivalence with live jobs that
have finished (bounded); what an operator does is replay while the city's
unbounded jobs keep running - their Flink sources committing offsets on every
checkpoint, the live loader polling its topics. A replay that shared a
consumer group, a transactional id, a checkpoint folder or a topic pattern
with them would show only here. The live side is made quiet first (no new
input, every checkpoint and commit settled), so anything that moves during
the replay was moved by the replay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from citystream.connectors.loader import load
from citystream.proc import child_env
from citystream.replay import current_ranges, replay
from citystream.settings import ROOT
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics
from tests.test_replay import JOB_ARGS, T0_MS, _fingerprint, _group_offsets, _rows, _simulate

pytestmark = pytest.mark.integration

#: Polls of an unchanged live side, further apart than a checkpoint (10 s), before it counts as quiet.
QUIET_POLLS, POLL_S, QUIET_TIMEOUT_S = 3, 12.0, 900.0


def _start_job(settings, name: str, *args: str) -> subprocess.Popen:
    """An unbounded live job in its own process group (its JVM and Python workers stop with it)."""
    log = open(settings.run_dir / f"live-{name}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", f"citystream.jobs.{name}", "--parallelism", "1", *args],
        env=child_env(settings.to_env()),  # the production job name: a replay must not share its checkpoints
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _stop_job(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _live_topics(settings) -> list[str]:
    suffixes = ("readings.water", "aggregates", "late-events", "dead-letter", "sensor-health")
    suffixes += ("anomalies", "alerts")
    return [settings.topic(t) for t in suffixes]


def _snapshot(settings) -> tuple:
    """Everything live a replay must not move: table contents, group offsets, live topics' ends."""
    topics = [t for t in _live_topics(settings) if t in _existing(settings)]
    return _fingerprint(settings), _group_offsets(settings), current_ranges(settings, topics)


def _existing(settings) -> set[str]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    return set(admin.list_topics(timeout=30).topics)


def _wait_quiet(settings, procs: dict[str, subprocess.Popen], why: str) -> tuple:
    """Poll until the live side stops changing; fail (with the jobs' logs) if it never does."""
    deadline, last, same = time.monotonic() + QUIET_TIMEOUT_S, None, 0
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, f"live {name} job exited ({why}): " + _log(settings, name)
        snap = _snapshot(settings)
        same = same + 1 if snap == last else 0
        if same >= QUIET_POLLS - 1 and snap[0]["window_aggregates"][0] > 0:
            return snap
        last = snap
        time.sleep(POLL_S)
    pytest.fail(f"the live side never became quiet ({why})")


def _log(settings, name: str) -> str:
    path = settings.run_dir / f"live-{name}.log"
    return path.read_text()[-3000:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def live_running(kafka, store, tmp_path_factory: pytest.TempPathFactory):
    """Live water + detect jobs and a live loader, running unbounded over 40 simulated minutes."""
    tmp = tmp_path_factory.mktemp("replay_live")
    spec = tmp / "topics.toml"
    spec.write_text((ROOT / "infra" / "topics.toml").read_text().replace("partitions = 3", "partitions = 1"))
    settings = kafka.settings_.replace(
        topic_prefix="rpll.", clickhouse_database="rpll", run_dir=tmp / "run", topics_spec=spec,
        store_port=store.settings.store_port,
    )  # fmt: skip
    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)
    migrate(settings)
    _simulate(settings, T0_MS, 40, seed=21)
    readings = current_ranges(settings, [settings.topic("readings.water")])
    procs = {"water": _start_job(settings, "water", *JOB_ARGS), "detect": _start_job(settings, "detect")}
    stop = threading.Event()
    # Metrics only when forced: a periodic row in pipeline_metrics would look like a change.
    options = {"until_end": False, "group_id": "rpll-live-loader", "stop": stop.is_set}
    options["metrics_every_s"] = 1e9
    loader = threading.Thread(target=load, args=(settings,), kwargs=options, daemon=True)
    loader.start()
    try:
        yield {"settings": settings, "procs": procs, "readings": readings}
    finally:
        stop.set()
        for proc in procs.values():
            _stop_job(proc)
        loader.join(60)


@pytest.fixture(scope="module")
def replayed_beside_live(live_running) -> dict:
    settings, procs = live_running["settings"], live_running["procs"]
    before = _wait_quiet(settings, procs, "before the replay")
    readings = live_running["readings"]
    result = replay(settings, "water", readings, run_id="lv1", detect=True, job_args=JOB_ARGS, parallelism=1)
    after = _snapshot(settings)
    alive = {name: proc.poll() is None for name, proc in procs.items()}
    return {"before": before, "after": after, "result": result, "alive": alive}


def test_a_replay_beside_running_live_jobs_moves_nothing_live(live_running, replayed_beside_live) -> None:
    r = replayed_beside_live
    (tables_b, groups_b, ends_b), (tables_a, groups_a, ends_a) = r["before"], r["after"]
    assert r["alive"] == {"water": True, "detect": True}, "a live job died during the replay"
    # The live Flink sources and the live loader committed offsets: there is something to protect.
    assert {"citystream-water", "citystream-detect", "rpll-live-loader"} <= set(groups_b)
    assert tables_b["anomalies"][0] > 0 and tables_b["alerts"][0] > 0
    assert tables_a == tables_b
    assert {g: groups_a.get(g) for g in groups_b} == groups_b
    assert ends_a == ends_b
    # The replay did its work, in its own database, and its only consumer group is its own loader.
    assert r["result"].loaded > 0
    assert set(groups_a) - set(groups_b) == {"citystream-replay-lv1-loader"}


def test_the_replay_equals_what_the_running_live_jobs_produced(live_running, replayed_beside_live) -> None:
    """The live jobs are unbounded, so only windows their watermark closed are in both: compare those."""
    settings, database = live_running["settings"], replayed_beside_live["result"].database
    for table in ("window_aggregates", "anomalies"):
        live_rows, replay_rows = _rows(settings, "rpll", table), _rows(settings, database, table)
        assert live_rows, f"the live jobs produced no {table}"
        assert set(live_rows) <= set(replay_rows), f"{table}: live rows missing from the replay"


def test_live_jobs_keep_consuming_after_the_replay(live_running, replayed_beside_live) -> None:
    settings, procs = live_running["settings"], live_running["procs"]
    tables_before = replayed_beside_live["after"][0]
    _simulate(settings, T0_MS + 40 * 60_000, 5, seed=22)
    tables_after, groups_after, _ = _wait_quiet(settings, procs, "after new live data")
    assert tables_after["window_aggregates"][0] > tables_before["window_aggregates"][0]
    # No live consumer group reads a replay topic (only replays' own loaders do: other tests' too).
    live_groups = {g: tps for g, tps in groups_after.items() if not g.startswith("citystream-replay-")}
    assert {"citystream-water", "citystream-detect", "rpll-live-loader"} <= set(live_groups)
    assert not {t for tps in live_groups.values() for (t, _) in tps if ".replay." in t}
