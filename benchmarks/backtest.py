"""Readings/s of a full backtest through a replay (domain job, detect job, load, score), per stage.

A benchmark, not a test: numbers depend on the machine and on what else runs.
The target it measures against (issue "replay and backtest", item 7): one
simulated day of 1,000 sensors at 1 Hz - 86.4 M readings - backtested in
under 10 minutes on the 2-core machine, i.e. 144,000 readings/s end to end.

What it does: starts a private Kafka broker and store on free 127.0.0.1
ports, writes ``--minutes`` of the seeded simulator at 1 Hz for ``--sensors``
sensors (spread over the three departments, with its usual imperfections and
injected anomalies), then per department runs ``citystream replay --detect``
as a backtest does: the domain job bounded over exactly those offsets, the
detect job over the replay's aggregates, the load of every result topic into
the run's shadow database, then the alerts read back and scored against the
simulator's labels. Every stage is timed; a Flink stage's fixed cost (JVM,
planning, MiniCluster, the last checkpoint) is measured by replaying an empty
range once and reported apart, so the per-reading rate is the marginal one::

    readings/s = readings / (wall time of the stage - wall time of the empty stage)

The extrapolation to 86.4 M readings assumes that marginal rate holds (state
is per sensor and window, so it does not grow with the day's length).

Usage: ``python -m benchmarks.backtest [--sensors 1000] [--minutes 5] [--parallelism 1]``

Measured 2026-12-07, ``--minutes 15`` (900k readings), parallelism 1, while four
other sessions shared the 2 cores (load average ~13; absolute numbers are low)::

    fixed cost of an empty replay: domain job 60 s, detect 89 s, load 2 s
    traffic  300,600 readings: domain job 194 s, detect  85 s, load 38 s (1.10 M rows)
    water    299,700 readings: domain job 193 s, detect 114 s, load  5 s (0.37 M rows)
    grid     299,700 readings: domain job 137 s, detect 112 s, load 29 s (1.24 M rows)
    marginal: job 344 s (75 %), detect 44 s (10 %), load 72 s (16 %), score 0.2 s
    1,959 readings/s; the target is 144,000/s: a day would take ~12 h.

Where the time goes: the domain jobs (window operators with late firing, the
5-minute hop, per-reading duplicate state: see ``benchmarks.jobs``), then the
loader (traffic and grid emit ~4 aggregate rows per reading: sensor, lane/phase
and zone windows). Detect is cheap per reading: it sees aggregates only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from citystream.backtest.events import TimeRange
from citystream.backtest.runner import result_of
from citystream.backtest.sources import stored_detections
from citystream.catalog import DOMAIN_NAMES
from citystream.connectors.producer import ReadingProducer
from citystream.proc import free_port
from citystream.replay import current_ranges, discard, replay
from citystream.settings import Settings
from citystream.simulator.engine import KafkaSink, SimConfig, Simulation
from citystream.stack import Kafka, Store
from citystream.store.client import connect
from citystream.store.migrate import migrate
from citystream.topics import ensure_topics

T0_MS = 1_767_571_200_000  # 2026-01-05 00:00 UTC
TARGET_READINGS, TARGET_S = 86_400_000, 600.0


def _simulate(settings: Settings, sensors: int, minutes: float) -> tuple[Simulation, float]:
    cfg = SimConfig(
        seed=7, start_ms=T0_MS, duration_ms=int(minutes * 60_000), rate_per_min=60.0, sensors=sensors,
        domains=DOMAIN_NAMES, anomalies_per_hour=6.0, topic_prefix=settings.topic_prefix,
    )  # fmt: skip
    sim = Simulation(cfg)
    began = time.monotonic()
    with ReadingProducer(settings.kafka_bootstrap) as producer:
        sim.run(KafkaSink(producer))
        producer.flush()
    return sim, time.monotonic() - began


def _readings(settings: Settings, domain: str) -> dict:
    return current_ranges(settings, [settings.topic(f"readings.{domain}")])


def _count(ranges: dict) -> int:
    return sum(end - start for parts in ranges.values() for start, end in parts.values())


def _stage_times(settings: Settings, domain: str, ranges: dict, run_id: str, parallelism: int) -> dict:
    began = time.monotonic()
    result = replay(settings, domain, ranges, run_id=run_id, detect=True, parallelism=parallelism)
    times = {**result.seconds, "total": time.monotonic() - began, "loaded": float(result.loaded)}
    times["database"] = result.database  # type: ignore[assignment]
    return times


def _empty(ranges: dict) -> dict:
    """The same partitions, nothing in them: a replay that pays only the fixed costs."""
    return {t: {p: (start, start) for p, (start, _end) in parts.items()} for t, parts in ranges.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.backtest", description=__doc__.split("\n")[0])
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--parallelism", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        settings = Settings(
            run_dir=Path(tmp), kafka_port=free_port(), kafka_controller_port=free_port(),
            flink_rest_port=free_port(), store_port=free_port(), topic_prefix="bench.",
            clickhouse_database="bench",
        )  # fmt: skip
        broker, store = Kafka(settings), Store(settings, loader=False)
        broker.start()
        store.start()
        try:
            return _run(settings, args)
        finally:
            store.stop()
            broker.stop()


def _run(settings: Settings, args: argparse.Namespace) -> int:
    ensure_topics(settings.kafka_bootstrap, settings.topic_prefix, settings.topics_spec)
    migrate(settings)
    sim, sim_s = _simulate(settings, args.sensors, args.minutes)
    ranges = {d: _readings(settings, d) for d in DOMAIN_NAMES}
    total = sum(_count(r) for r in ranges.values())
    print(
        f"simulated {args.sensors} sensors x {args.minutes} min at 1 Hz: {total:,} readings "
        f"produced in {sim_s:.1f} s ({total / sim_s:,.0f}/s; the simulator, not the backtest)",
        flush=True,
    )
    fixed = _stage_times(settings, "water", _empty(ranges["water"]), "bench_empty", args.parallelism)
    discard(settings, "bench_empty")
    print(
        f"fixed cost of an empty replay: domain job {fixed.get('water', 0):.1f} s, "
        f"detect {fixed.get('detect', 0):.1f} s, load {fixed.get('load', 0):.1f} s",
        flush=True,
    )
    client = connect(settings)
    rng = TimeRange(T0_MS, T0_MS + int(args.minutes * 60_000))
    sums = {"job": 0.0, "detect": 0.0, "load": 0.0, "score": 0.0, "total": 0.0}
    detections = []
    for domain in DOMAIN_NAMES:
        n = _count(ranges[domain])
        times = _stage_times(settings, domain, ranges[domain], f"bench_{domain}", args.parallelism)
        began = time.monotonic()
        detections += stored_detections(client, rng, database=str(times["database"]))
        score_s = time.monotonic() - began  # reading the alerts back is the scoring's input
        sums["job"] += times.get(domain, 0.0) - fixed.get("water", 0.0)
        sums["detect"] += times.get("detect", 0.0) - fixed.get("detect", 0.0)
        sums["load"] += times.get("load", 0.0)
        sums["score"] += score_s
        sums["total"] += times["total"] + score_s
        print(
            f"{domain:8s} {n:>10,} readings: domain job {times.get(domain, 0):6.1f} s, "
            f"detect {times.get('detect', 0):6.1f} s, load {times.get('load', 0):5.1f} s "
            f"({int(times['loaded']):,} rows), read back {score_s:.1f} s",
            flush=True,
        )
        discard(settings, f"bench_{domain}")
    began = time.monotonic()
    scored = result_of(detections, [], rng, config="shipped")
    sums["score"] += time.monotonic() - began
    client.close()
    print(f"{len(scored.detections)} detections over {len(sim.labels)} injected anomalies")
    _summary(total, sums)
    return 0


def _summary(total: int, sums: dict) -> None:
    marginal = sums["job"] + sums["detect"] + sums["load"] + sums["score"]
    rate = total / marginal if marginal > 0 else float("inf")
    print(f"\nwall time of the backtest (all stages, fixed costs included): {sums['total']:.1f} s")
    for stage in ("job", "detect", "load", "score"):
        share = sums[stage] / marginal if marginal else 0.0
        print(f"  {stage:7s} {sums[stage]:7.1f} s marginal  ({share:5.1%})")
    print(f"marginal rate: {rate:,.0f} readings/s; target {TARGET_READINGS / TARGET_S:,.0f}/s "
          f"(86.4 M in 10 min): {rate / (TARGET_READINGS / TARGET_S):.2f}x of it; "
          f"86.4 M readings would take ~{TARGET_READINGS / rate / 60:,.0f} min")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
