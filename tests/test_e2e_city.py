"""A simulated city through all three domain jobs into ClickHouse, counted against what was injected.

The path is the user's: ``citystream simulate`` into the real broker, the
three jobs by ``citystream jobs run <job> --bounded`` (each its own MiniCluster
at parallelism 2), the loader into the real ClickHouse engine. Expectations
come from the simulator's own counts and from reading the topics back:

* one sensor row per 1-minute window for every (sensor, minute) that
  received an accepted reading, and no other;
* late readings (in windows' ``late`` plus the late-events table) equal the
  simulator's injected ``late``, per domain; duplicates likewise;
* dead letters equal the poisoned readings, per domain;
* a sensor that stopped long enough before the end is reported silent, and
  only such sensors are.

Why exact counts can hold: the readings topics get one partition, so the
delivery order is the simulator's arrival order; the jobs emit a watermark
after every reading (``--watermark-on-event``) with the simulator's
out-of-order bound, so a reading is behind the watermark exactly when the
simulator delayed it past that bound.

Secured as a deployment should be: a broker of its own over SASL_SSL with the
ACLs (the simulator writes as ``producer``, the jobs read and write as
``jobs``, the loader reads as ``loader``), and a store with generated
passwords. The children get the settings without any secret in their
environment; a last test greps every output and log of the run for each secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from citystream import demo, kafkaconf
from citystream.catalog import DOMAIN_NAMES
from citystream.connectors.loader import load
from citystream.proc import child_env
from citystream.settings import ROOT, Settings
from citystream.stack import Kafka, Store, acl
from citystream.stack.store import credentials
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics, list_topics
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration

DOMAINS = DOMAIN_NAMES
WATERMARK_S = 30
MINUTE = 60_000
SIM = [
    "--seed", "5", "--duration", "20m", "--sensors", "150", "--anomalies-per-hour", "6",
    "--imperfections", "none", "--out-of-order", "0.05", "--late", "0.02", "--duplicates", "0.02",
    "--poison", "0.01", "--gaps", "0.01", "--silent", "0.03", "--clock-skew", "0",
    "--watermark-s", str(WATERMARK_S), "--late-max-s", "300",
]  # fmt: skip


def _cli() -> str:
    return str(Path(sys.executable).parent / "citystream")


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A secured broker and store; simulate, run the three jobs, load: settings, summary, readings."""
    tmp = tmp_path_factory.mktemp("e2e")
    # One partition per topic: the topic's order is then the simulator's arrival order.
    spec = tmp / "topics.toml"
    text = (ROOT / "infra" / "topics.toml").read_text()
    assert "partitions = 3" in text
    spec.write_text(text.replace("partitions = 3", "partitions = 1"))
    settings = stack_settings(
        tmp / "run", topic_prefix="e2e.", clickhouse_database="e2e", topics_spec=spec,
        kafka_security=kafkaconf.SASL_SSL,
    )  # fmt: skip
    settings = credentials(settings)  # the store users' passwords, generated
    broker, store = Kafka(settings), Store(settings, loader=False)
    try:
        broker.start()
        store.start()
        yield _run_city(settings, tmp)
    finally:
        store.stop()
        broker.stop()


def _run_city(settings: Settings, tmp: Path) -> dict:
    admin = kafkaconf.kafka_python(settings, "admin")
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec, security=admin)
    acl.grant(settings)
    migrate(settings)

    # No secret in the children's environment: the jobs read their Kafka user from the run dir.
    env = child_env(settings.to_env(secrets=False))  # without the in-process PyFlink state of earlier tests
    summary_file = tmp / "summary.json"
    done = subprocess.run(
        [_cli(), "simulate", *SIM, "--summary-json", str(summary_file), "--labels-file", str(tmp / "lb")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(summary_file.read_text())

    job_args = ["--", "--watermark-on-event", "--out-of-order-s", str(WATERMARK_S), "--parallelism", "2"]
    jobs = {
        name: subprocess.Popen(
            [_cli(), "jobs", "run", name, "--bounded", *job_args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in DOMAINS
    }
    failed, outputs = {}, {"simulate": done.stdout + done.stderr}
    for name, proc in jobs.items():
        out, _ = proc.communicate(timeout=1200)
        outputs[f"jobs run {name}"] = out
        if proc.returncode != 0:
            failed[name] = out[-3000:]
    assert not failed, failed

    spec = settings.topics_spec
    topics = list_topics(settings.kafka_bootstrap, settings.topic_prefix, spec, security=admin)
    parts = {t.name: t.partitions for t in topics}
    assert set(parts.values()) == {1}, parts  # nothing grew them back to the default spec

    stats = load(settings, until_end=True, group_id="citystream-loader-e2e")
    assert stats.undecodable == 0
    readings = demo.read_back(settings, DOMAINS)
    return {"settings": settings, "summary": summary, "readings": readings, "outputs": outputs}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_dead_letters_equal_poisoned_readings(city: dict, domain: str) -> None:
    settings, summary = city["settings"], city["summary"]
    poisoned = sum(summary["domains"][domain]["imperfections"]["poison"].values())
    rows = demo.query(
        settings,
        "SELECT reason, count() FROM dead_letters FINAL WHERE source_topic = {t:String} GROUP BY reason",
        t=settings.topic(f"readings.{domain}"),
    )
    assert poisoned > 0
    assert sum(n for _, n in rows) == poisoned, rows
    assert {r for r, _ in rows} <= {"undecodable", "invalid_value"}


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_late_and_duplicate_counts_equal_injected(city: dict, domain: str) -> None:
    settings, summary = city["settings"], city["summary"]
    injected = summary["domains"][domain]["imperfections"]
    # A sensor's 1-minute rows (one per metric) share its window's late and duplicate counts.
    per_window = demo.query(
        settings,
        """SELECT key_id, window_start, max(late), max(duplicates), uniqExact(late), uniqExact(duplicates)
           FROM window_aggregates FINAL
           WHERE domain = {d:String} AND key_kind = 'sensor'
             AND toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
           GROUP BY key_id, window_start""",
        d=domain,
    )
    assert all(u1 == 1 and u2 == 1 for *_, u1, u2 in per_window)
    in_windows = sum(r[2] for r in per_window)
    beyond = demo.query(
        settings,
        "SELECT count() FROM late_events FINAL WHERE source_topic = {t:String}",
        t=settings.topic(f"readings.{domain}"),
    )[0][0]
    assert injected["late"] > 0 and in_windows > 0
    assert in_windows + beyond == injected["late"]
    assert sum(r[3] for r in per_window) == injected["duplicates"] > 0


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_one_row_per_sensor_per_covered_window(city: dict, domain: str) -> None:
    settings = city["settings"]
    covered = demo.covered_minutes(city["readings"][domain], demo.rejected(settings, domain))
    rows = demo.query(
        settings,
        """SELECT key_id, toUnixTimestamp64Milli(window_start), metric, count()
           FROM window_aggregates_latest
           WHERE domain = {d:String} AND key_kind = 'sensor'
             AND toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
           GROUP BY key_id, window_start, metric""",
        d=domain,
    )
    assert all(n == 1 for *_, n in rows)
    assert {(k, w) for k, w, _, _ in rows} == covered
    assert len(covered) > 100


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_silent_sensors_reported(city: dict, domain: str) -> None:
    """Silence needs 5 min of event time past a sensor's last minute, seen by the watermark."""
    settings, summary = city["settings"], city["summary"]
    last: dict[str, int] = defaultdict(int)
    for r in city["readings"][domain]:
        if r["record"] is not None:
            env = r["record"]["envelope"]
            last[env["sensor_id"]] = max(last[env["sensor_id"]], env["event_time"])
    end = summary["end_ms"]
    long_quiet = {s for s, t in last.items() if t < end - 7 * MINUTE}
    quiet = {s for s, t in last.items() if t < end - 5 * MINUTE}
    reported = {
        s
        for (s,) in demo.query(
            settings,
            "SELECT DISTINCT sensor_id FROM sensor_health WHERE domain = {d:String} AND status = 'silent'",
            d=domain,
        )
    }
    assert long_quiet <= reported <= quiet


@pytest.mark.security
def test_no_secret_in_the_run_output(city: dict) -> None:
    """The simulator's and jobs' output, the broker's and the store's logs: no secret of the run."""
    settings: Settings = city["settings"]
    store = [settings.clickhouse_password, settings.clickhouse_viewer_password]
    found = [*kafkaconf.secret_values(settings), *store]
    assert len(found) == 9 and all(found)
    texts = dict(city["outputs"])
    for log in (settings.run_dir / "kafka" / "kafka.log", settings.run_dir / "store" / "store.log"):
        texts[log.name] = log.read_text(errors="replace")
    assert "jobs run detect" not in texts and len(texts) == 6
    for where, text in texts.items():
        for secret in found:
            assert secret not in text, f"a secret of the run appears in {where}"
