"""``citystream demo``: a small seeded city on the real path, checked against what was produced.

simulate (traffic, water, grid; out-of-order, duplicate and poisoned
readings) -> Kafka -> the three domain jobs on the stack's Flink cluster, all
at once -> Kafka -> the detect job -> Kafka -> loader -> ClickHouse -> a
per-department summary in this terminal. The demo knows what the simulator
produced, so it checks what it reads back: exactly one 1-minute row per
sensor, metric and minute the sensor reported in, and none other; dead
letters equal the poisoned readings; duplicates counted in the windows equal
the injected duplicates; nothing late (none was injected). Any difference
fails the demo. The functions that read the readings topics back and
compute the covered minutes are shared with tests/test_e2e_city.py.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import UnknownTopicOrPartitionError

from citystream import contracts, kafkaconf, stack
from citystream.catalog import DOMAIN_NAMES, domain
from citystream.connectors.loader import load
from citystream.connectors.producer import ReadingProducer
from citystream.errors import UserError
from citystream.jobs.deploy import submit
from citystream.proc import wait_until
from citystream.settings import Settings
from citystream.simulator.engine import KafkaSink, SimConfig, Simulation
from citystream.simulator.imperfections import Rates
from citystream.store.client import connect
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics, prepare_topics

DEMO_PREFIX = "citystream.demo."
#: Fixed simulated start (2026-01-04T00:00:00Z, a day before `citystream simulate`'s default, so a
#: user's own simulated data never shares the demo's windows): output is identical on every run.
START_MS = 1_767_484_800_000
MINUTE = 60_000
#: The simulator's out-of-order bound; the jobs' watermarks lag by as much, so none of it is late.
WATERMARK_S = 30
#: Imperfections the demo injects: each has a count the result is checked against.
RATES = Rates(out_of_order=0.05, duplicates=0.02, gaps=0.01, poison=0.02, watermark_s=WATERMARK_S)

Echo = Callable[..., object]


@dataclass
class DomainReport:
    """What one department's run produced and what the store holds of it."""

    readings: int = 0
    poisoned: int = 0
    duplicates_injected: int = 0
    sensor_minutes: int = 0
    windows: int = 0
    dead_letters: int = 0
    late: int = 0
    duplicates: int = 0
    anomalies: int = 0
    alerts: int = 0


@dataclass
class DemoReport:
    """The demo's outcome: per department counts and every failed check (empty: success)."""

    domains: dict[str, DomainReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def windows(self) -> int:
        """Per-sensor 1-minute rows (one per metric) in the store, all departments."""
        return sum(d.windows for d in self.domains.values())


# --------------------------------------------------------------------------- producing


def simulate(settings: Settings, *, seed: int, sensors: int, minutes: int) -> dict[str, Any]:
    """The seeded city into the readings topics (created from the spec if missing); the summary."""
    cfg = SimConfig(
        seed=seed, start_ms=START_MS, duration_ms=minutes * MINUTE, sensors=sensors, domains=DOMAIN_NAMES,
        rates=RATES, anomalies_per_hour=30.0, topic_prefix=settings.topic_prefix,
    )  # fmt: skip
    compression = prepare_topics(
        settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec,
        security=kafkaconf.kafka_python(settings, "admin"),
    )  # fmt: skip
    with ReadingProducer.from_settings(settings, compression=compression) as producer:
        summary = Simulation(cfg).run(KafkaSink(producer))
        producer.flush()
    return summary


def fresh_topics(settings: Settings) -> None:
    """Recreate every topic under the settings' prefix (and its ACLs), so a run reads only its own data."""
    security = kafkaconf.kafka_python(settings, "admin")
    admin = KafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id="citystream-demo", **security
    )
    try:
        doomed = [t for t in admin.list_topics() if t.startswith(settings.topic_prefix)]
        if doomed:
            with contextlib.suppress(UnknownTopicOrPartitionError):
                admin.delete_topics(doomed)
            if not wait_until(lambda: not set(doomed) & set(admin.list_topics()), 60):
                raise UserError(f"Kafka did not delete the old demo topics {doomed}")
    finally:
        admin.close()
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec, security=security)
    stack.acl.grant(settings)  # the demo's prefix is not the one `stack up` granted


# --------------------------------------------------------------------------- the jobs


def run_jobs(settings: Settings, cluster: stack.Flink, echo: Echo = print) -> None:
    """The three domain jobs at once, bounded, then the detect job over what they wrote."""
    args = ["--bounded", "--out-of-order-s", str(WATERMARK_S)]
    with ThreadPoolExecutor(max_workers=len(DOMAIN_NAMES)) as pool:
        futures = {name: pool.submit(submit, settings, cluster, name, args) for name in DOMAIN_NAMES}
        for name, future in futures.items():
            future.result()
            echo(f"   {name} job finished")
    # Bounded means "up to the offsets current at start": detect starts once the aggregates are in.
    submit(settings, cluster, "detect", ["--bounded"])
    echo("   detect job finished")


# --------------------------------------------------------------------------- reading back


def read_back(settings: Settings, domains: Iterable[str] = DOMAIN_NAMES) -> dict[str, list[dict]]:
    """Every delivered reading per domain with its partition and offset (``record`` None: undecodable)."""
    out: dict[str, list[dict]] = {}
    for name in domains:
        topic = settings.topic(domain(name).topic)
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
            consumer_timeout_ms=5000, enable_auto_commit=False, **kafkaconf.kafka_python(settings, "admin"),
        )  # fmt: skip
        try:
            consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
            rows = []
            for m in consumer:
                try:
                    rec = contracts.decode(domain(name).record, m.value)
                except Exception:  # a poisoned, undecodable reading
                    rec = None
                rows.append({"partition": m.partition, "offset": m.offset, "record": rec})
        finally:
            consumer.close()
        out[name] = rows
    return out


def query(settings: Settings, sql: str, **params: object) -> list[tuple]:
    """Rows of one read-only query against the store."""
    client = connect(settings, readonly=True)
    try:
        return client.query(sql, parameters=params).result_rows
    finally:
        client.close()


def rejected(settings: Settings, name: str) -> set[tuple[int, int]]:
    """(partition, offset) of the domain's readings the job sent to dead letters or late events."""
    return {
        (int(p), int(o))
        for table in ("dead_letters", "late_events")
        for p, o in query(
            settings,
            f"SELECT source_partition, source_offset FROM {table} WHERE source_topic = {{t:String}}",
            t=settings.topic(domain(name).topic),
        )
    }  # fmt: skip


def covered_minutes(readings: list[dict], refused: set[tuple[int, int]]) -> set[tuple[str, int]]:
    """(sensor, minute start ms) of every accepted reading: where a 1-minute sensor row must exist."""
    return {
        (r["record"]["envelope"]["sensor_id"], r["record"]["envelope"]["event_time"] // MINUTE * MINUTE)
        for r in readings
        if r["record"] is not None and (r["partition"], r["offset"]) not in refused
    }


def sensor_minute_rows(settings: Settings, name: str, sensors: set[str]) -> list[tuple[str, int, str, int]]:
    """(sensor, minute start ms, metric, rows) of the domain's latest 1-minute sensor windows."""
    return query(
        settings,
        """SELECT key_id, toUnixTimestamp64Milli(window_start), metric, count()
           FROM window_aggregates_latest
           WHERE domain = {d:String} AND key_kind = 'sensor' AND key_id IN {ids:Array(String)}
             AND toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
           GROUP BY key_id, window_start, metric""",
        d=name,
        ids=sorted(sensors),
    )


def window_counts(settings: Settings, name: str, sensors: set[str]) -> tuple[int, int]:
    """(late, duplicates) summed over the domain's 1-minute sensor windows (each counted once)."""
    rows = query(
        settings,
        """SELECT sum(l), sum(d) FROM (
             SELECT max(late) AS l, max(duplicates) AS d FROM window_aggregates FINAL
             WHERE domain = {d:String} AND key_kind = 'sensor' AND key_id IN {ids:Array(String)}
               AND toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
             GROUP BY key_id, window_start)""",
        d=name,
        ids=sorted(sensors),
    )
    return int(rows[0][0] or 0), int(rows[0][1] or 0)


def results(settings: Settings, name: str, sensors: set[str]) -> tuple[int, int]:
    """(anomalies, alerts) the detect job wrote for the domain's sensors in the demo's time span."""
    anomalies = query(
        settings,
        "SELECT count() FROM anomalies FINAL WHERE domain = {d:String} AND key_id IN {ids:Array(String)}",
        d=name,
        ids=sorted(sensors),
    )[0][0]
    alerts = query(
        settings,
        """SELECT uniqExact(alert_id) FROM alerts FINAL
           WHERE domain = {d:String} AND toUnixTimestamp64Milli(first_seen) >= {t0:Int64}
             AND hasAny(affected_keys, {ids:Array(String)})""",
        d=name,
        t0=START_MS,
        ids=sorted(sensors),
    )[0][0]
    return int(anomalies), int(alerts)


# --------------------------------------------------------------------------- checking


def check_domain(
    settings: Settings, name: str, injected: dict[str, Any], readings: list[dict]
) -> tuple[DomainReport, list[str]]:
    """One department's store contents against what the simulator says it produced."""
    imp = injected["imperfections"]
    sensors = {r["record"]["envelope"]["sensor_id"] for r in readings if r["record"] is not None}
    report = DomainReport(
        readings=injected["readings_sent"], poisoned=sum(imp["poison"].values()),
        duplicates_injected=imp["duplicates"],
    )  # fmt: skip
    problems = []
    topic = settings.topic(domain(name).topic)
    refused = rejected(settings, name)
    covered = covered_minutes(readings, refused)
    rows = sensor_minute_rows(settings, name, sensors)
    report.sensor_minutes, report.windows = len({(k, w) for k, w, _, _ in rows}), len(rows)
    if any(n != 1 for *_, n in rows):
        problems.append(f"{name}: some (sensor, minute, metric) has more than one latest row")
    if {(k, w) for k, w, _, _ in rows} != covered:
        missing = len(covered - {(k, w) for k, w, _, _ in rows})
        extra = len({(k, w) for k, w, _, _ in rows} - covered)
        problems.append(
            f"{name}: {missing} covered sensor-minutes without a row, {extra} rows nobody covered"
        )
    report.dead_letters = query(
        settings, "SELECT count() FROM dead_letters FINAL WHERE source_topic = {t:String}", t=topic
    )[0][0]
    if report.dead_letters != report.poisoned:
        problems.append(f"{name}: {report.dead_letters} dead letters, {report.poisoned} readings poisoned")
    in_windows, report.duplicates = window_counts(settings, name, sensors)
    late_events = query(
        settings, "SELECT count() FROM late_events FINAL WHERE source_topic = {t:String}", t=topic
    )
    report.late = in_windows + int(late_events[0][0])
    if report.late != imp["late"]:
        problems.append(f"{name}: {report.late} readings late, {imp['late']} delivered late")
    if report.duplicates != report.duplicates_injected:
        problems.append(
            f"{name}: {report.duplicates} duplicates counted, {report.duplicates_injected} injected"
        )
    report.anomalies, report.alerts = results(settings, name, sensors)
    return report, problems


def summary_lines(report: DemoReport) -> list[str]:
    """The per-department table the demo prints."""
    lines = [
        f"{'department':10} {'readings':>8} {'sensor-min':>10} {'windows':>8} {'dups':>5} "
        f"{'dead':>5} {'anomalies':>9} {'alerts':>6}"
    ]
    for name, d in report.domains.items():
        lines.append(
            f"{domain(name).title:10} {d.readings:8d} {d.sensor_minutes:10d} {d.windows:8d} "
            f"{d.duplicates:5d} {d.dead_letters:5d} {d.anomalies:9d} {d.alerts:6d}"
        )
    return lines


# --------------------------------------------------------------------------- the whole demo


def run(
    settings: Settings,
    *,
    seed: int = 7,
    sensors: int = 30,
    minutes: int = 6,
    keep_running: bool = False,
    echo: Echo = print,
) -> DemoReport:
    """Start the stack (if needed), run the demo under the ``citystream.demo.`` prefix, check it.

    The stack is stopped again afterwards unless it was already running or
    ``keep_running``. Returns the report; ``report.ok`` says whether every check held.
    """
    if sensors < len(DOMAIN_NAMES) or minutes < 1:
        raise UserError(f"--sensors must be at least {len(DOMAIN_NAMES)} and --minutes at least 1")
    was_up = all(s.running() for s in stack.services(settings))
    echo("== starting the stack")
    settings = stack.up(settings, echo=echo)  # with the store's passwords
    demo = settings.replace(topic_prefix=DEMO_PREFIX)
    try:
        began = time.monotonic()
        fresh_topics(demo)
        migrate(demo)
        summary = simulate(demo, seed=seed, sensors=sensors, minutes=minutes)
        echo(
            f"== simulated {summary['sensors']} sensors x {minutes} min: {summary['readings_sent']} readings "
            f"to {DEMO_PREFIX}readings.*"
        )
        echo("== the traffic, water and grid jobs at once on the Flink cluster, then detect (bounded)")
        run_jobs(demo, stack.Flink(demo), echo)
        echo("== loading results from Kafka into ClickHouse")
        stats = load(demo, until_end=True, group_id="citystream-loader-demo")
        echo(f"   loaded {stats.loaded} rows in {stats.batches} batches")
        report = DemoReport()
        readings = read_back(demo)
        for name in DOMAIN_NAMES:
            report.domains[name], problems = check_domain(
                demo, name, summary["domains"][name], readings[name]
            )
            report.problems += problems
        report.seconds = time.monotonic() - began
        for line in summary_lines(report):
            echo(line)
        for problem in report.problems:
            echo(f"MISMATCH {problem}")
        if report.ok:
            echo(
                f"OK: all {report.windows} sensor window rows, dead letters and duplicates read back from "
                f"ClickHouse match what the simulator produced ({report.seconds:.0f}s)"
            )
        else:
            echo(f"FAILED: {len(report.problems)} check(s) differ from what was produced")
        return report
    finally:
        if keep_running or was_up:
            echo("== leaving the stack running (`make down` stops it)")
        else:
            echo("== stopping the stack")
            stack.down(settings, echo=echo)
