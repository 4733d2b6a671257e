"""``citystream demo``: one reading's whole journey, checked end to end.

simulate -> Kafka -> Flink (the standalone cluster) -> Kafka -> loader ->
ClickHouse -> this terminal. The demo knows every value it produced, so it
computes the expected window averages itself and compares them with what it
reads back from ClickHouse; it exits non-zero on any difference. It starts
the stack if needed and stops it again afterwards unless the stack was
already running (or ``--keep-running`` is given).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass

from citystream.errors import UserError
from citystream.settings import Settings
from citystream.settings import load as load_settings

#: Fixed simulated start (2026-01-05T00:00:00Z): demo output is identical on every run.
T0_MS = 1_767_571_200_000
STEP_MS = 5_000
DEMO_PREFIX = "citystream.demo."


@dataclass(frozen=True)
class Expected:
    samples: int
    mean: float
    min: float
    max: float


def readings(sensors: int, minutes: int) -> list[dict]:
    """Deterministic grid readings: each sensor has its own level, a daily-ish ripple and no noise."""
    out = []
    per_minute = 60_000 // STEP_MS
    for s in range(sensors):
        sensor_id = f"demo-grid-{s + 1:02d}"
        for i in range(minutes * per_minute):
            phase = 2 * math.pi * i / (per_minute * 7)
            out.append(
                {
                    "envelope": {
                        "sensor_id": sensor_id, "site_id": f"demo-ss{s // 2 + 1:02d}", "zone_id": "demo-z01",
                        "domain": "grid", "event_time": T0_MS + i * STEP_MS, "seq": i,
                        "lat": 52.52 + 0.01 * s, "lon": 13.40, "quality": 0,
                    },
                    "phase": "abc"[s % 3],
                    "voltage_v": round(230.0 + 2.0 * s + 1.5 * math.sin(phase), 3),
                    "current_a": 40.0 + s,
                    "frequency_hz": round(50.0 + 0.02 * math.cos(phase), 4),
                    "active_power_kw": round(8.0 + s + 0.5 * math.sin(phase + 1.0), 3),
                    "reactive_power_kvar": 1.0,
                    "power_factor": 0.97,
                }
            )  # fmt: skip
    return out


def expected(rows: list[dict], metrics: tuple[str, ...], window_ms: int = 60_000) -> dict[tuple, Expected]:
    """(sensor, metric, window_start_ms) -> the statistics Flink must produce, computed independently."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        start = r["envelope"]["event_time"] // window_ms * window_ms
        for m in metrics:
            groups[(r["envelope"]["sensor_id"], m, start)].append(r[m])
    return {k: Expected(len(v), math.fsum(v) / len(v), min(v), max(v)) for k, v in groups.items()}


def run(settings: Settings, *, sensors: int, minutes: int, keep_running: bool, echo=print) -> int:
    from citystream import stack
    from citystream.jobs.windows import GRID_METRICS

    if sensors < 1 or minutes < 1:
        raise UserError("--sensors and --minutes must be at least 1")
    demo = settings.replace(topic_prefix=DEMO_PREFIX)
    was_up = all(s.running() for s in stack.services(settings))
    echo("== starting the stack")
    stack.up(settings, echo=echo)
    try:
        t = time.monotonic()
        _fresh_topics(demo, [demo.topic("readings.grid"), demo.topic("aggregates")])
        _migrate(demo)
        rows = readings(sensors, minutes)
        echo(
            f"== producing {len(rows)} grid readings ({sensors} sensors x {minutes} min) to "
            f"{demo.topic('readings.grid')}"
        )
        from citystream.connectors.producer import ReadingProducer

        with ReadingProducer(demo.kafka_bootstrap) as producer:
            for r in rows:
                producer.send(demo.topic("readings.grid"), "citystream.GridReading", r)
            producer.flush()
        echo("== running the windows job on the Flink cluster (bounded: stops at the end of the topic)")
        from citystream.jobscli import submit

        submit(demo, "windows", ["--bounded"])
        echo("== loading results from Kafka into ClickHouse")
        from citystream.connectors.loader import load

        stats = load(demo, until_end=True, group_id="citystream-demo-loader")
        echo(f"   loaded {stats.loaded} rows in {stats.batches} batches")
        got = _read_back(demo, [f"demo-grid-{s + 1:02d}" for s in range(sensors)])
        want = expected(rows, GRID_METRICS)
        _print_table(got, echo)
        problems = _compare(want, got)
        if problems:
            for p in problems[:10]:
                echo(f"MISMATCH {p}")
            echo(f"FAILED: {len(problems)} of {len(want)} windows differ from what was produced")
            return 1
        echo(
            f"OK: all {len(want)} (sensor, metric, window) rows read back from ClickHouse equal the "
            f"averages of the readings produced ({time.monotonic() - t:.0f}s)"
        )
        return 0
    finally:
        if keep_running or was_up:
            echo("== leaving the stack running (`make down` stops it)")
        else:
            echo("== stopping the stack")
            stack.down(settings, echo=echo)


def _fresh_topics(settings: Settings, topics: list[str]) -> None:
    """Recreate the demo's own topics (layout from infra/topics.toml) so a demo reads only its own data."""
    from kafka import KafkaAdminClient
    from kafka.errors import UnknownTopicOrPartitionError

    from citystream.proc import wait_until
    from citystream.topics import ensure_topics

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="citystream-demo")
    try:
        doomed = [t for t in topics if t in set(admin.list_topics())]
        if doomed:
            with contextlib.suppress(UnknownTopicOrPartitionError):
                admin.delete_topics(doomed)
            if not wait_until(lambda: not set(doomed) & set(admin.list_topics()), 60):
                raise UserError(f"Kafka did not delete the old demo topics {doomed}")
    finally:
        admin.close()
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)


def _migrate(settings: Settings) -> None:
    from citystream.store.migrate import migrate

    migrate(settings)


def _read_back(settings: Settings, sensor_ids: list[str]) -> dict[tuple, Expected]:
    from citystream.store.client import connect

    client = connect(settings, readonly=True)
    try:
        result = client.query(
            "SELECT key_id, metric, toUnixTimestamp64Milli(window_start) AS ws, samples, mean, min, max "
            "FROM window_aggregates FINAL WHERE domain = 'grid' AND key_kind = 'sensor' "
            "AND key_id IN {ids:Array(String)} ORDER BY key_id, metric, ws",
            parameters={"ids": sensor_ids},
        )
        return {(r[0], r[1], int(r[2])): Expected(int(r[3]), r[4], r[5], r[6]) for r in result.result_rows}
    finally:
        client.close()


def _compare(want: dict[tuple, Expected], got: dict[tuple, Expected]) -> list[str]:
    problems = []
    for key, w in sorted(want.items()):
        g = got.get(key)
        if g is None:
            problems.append(f"{key}: missing in ClickHouse")
        elif g.samples != w.samples or any(
            not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
            for a, b in ((g.mean, w.mean), (g.min, w.min), (g.max, w.max))
        ):
            problems.append(f"{key}: got {g}, expected {w}")
    problems += [f"{key}: unexpected row in ClickHouse" for key in sorted(set(got) - set(want))]
    return problems


def _print_table(got: dict[tuple, Expected], echo) -> None:
    import datetime as dt

    echo(
        f"{'sensor':14} {'metric':16} {'window (UTC)':17} {'samples':>7} {'mean':>12} {'min':>10} {'max':>10}"
    )
    for (sensor, metric, ws), e in sorted(got.items()):
        when = dt.datetime.fromtimestamp(ws / 1000, tz=dt.UTC).strftime("%Y-%m-%d %H:%M")
        echo(f"{sensor:14} {metric:16} {when:17} {e.samples:7d} {e.mean:12.4f} {e.min:10.4f} {e.max:10.4f}")


def _cmd(args: argparse.Namespace) -> int:
    return run(load_settings(), sensors=args.sensors, minutes=args.minutes, keep_running=args.keep_running)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the end-to-end slice on the local stack and check the result",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sensors", type=int, default=4, help="grid sensors to simulate (default 4)")
    p.add_argument("--minutes", type=int, default=3, help="minutes of readings, one every 5 s (default 3)")
    p.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    p.set_defaults(handler=_cmd)
