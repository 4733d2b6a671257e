"""``citystream simulate``: a seeded city feeding the readings and labels topics.

Why a thin layer: everything that decides the bytes lives in ``simulator.engine``
(and is tested there); this module only turns flags into a ``SimConfig``,
refuses bad input with one line, opens the producer and prints the summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citystream import kafkaconf, settings
from citystream.catalog import DOMAIN_NAMES
from citystream.errors import UserError
from citystream.simulator.params import (
    DEFAULT_START,
    iso,
    parse_domains,
    parse_duration,
    parse_speed,
    parse_time,
)

if TYPE_CHECKING:
    from citystream.simulator.engine import SimConfig

_RATE_HELP = {
    "out_of_order": "share of readings delivered late but within --watermark-s",
    "late": "share of readings delivered behind the watermark (2x --watermark-s .. --late-max-s)",
    "duplicates": "share of readings delivered twice (same sensor_id + seq, same bytes)",
    "gaps": "share of readings lost in transit, in runs of 2-10",
    "clock_skew": "share of sensors whose clock is 5-120 s off",
    "silent": "share of sensors that stop reporting part-way",
    "poison": "share of readings made undecodable, NaN or physically impossible (dead-letter tests)",
}
_RATE_FLAGS = tuple(_RATE_HELP)

_DESCRIPTION = """\
Simulate a city's traffic loop detectors, water network and electric grid
into the readings topics ({prefix}readings.traffic|water|grid), with labelled
anomalies on {prefix}labels. Same seed and flags give byte-identical payloads.

Imperfections (out-of-order, late, duplicates, gaps, clock skew, silent
sensors, poisoned records) are injected at the given rates and the summary
says exactly how many of each were injected, per domain."""


class Progress:
    """One self-overwriting stderr line: share done, simulated time, events and events/s."""

    def __init__(self, stream: Any = None, min_interval_s: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.began = time.monotonic()
        self.last = 0.0
        self.min_interval_s = min_interval_s

    def __call__(self, share: float, sim_ms: int, sent: int) -> None:
        now = time.monotonic()
        if share < 1.0 and now - self.last < self.min_interval_s:
            return
        self.last = now
        elapsed = max(now - self.began, 1e-9)
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\r[{bar:<30}] {share * 100:5.1f}%  {iso(sim_ms)}  "
            f"{sent:>11,} events  {sent / elapsed:>9,.0f} ev/s"
        )
        if share >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def format_summary(summary: dict[str, Any], labels_file: Path | None, dry_run: bool) -> str:
    """The human summary: per domain readings and exactly what was injected."""
    lines = [
        f"simulated {iso(summary['start_ms'])} .. {iso(summary['end_ms'])}, {summary['sensors']} sensors, "
        f"one reading each every {summary['interval_ms'] / 1000:g} s, seed {summary['seed']}"
        + (" (dry run: nothing sent)" if dry_run else ""),
        f"{'domain':8} {'sensors':>7} {'readings':>9} {'ooo':>6} {'late':>5} {'dups':>5} {'gaps':>11} "
        f"{'skewed':>11} {'silent':>10} {'poison u/n/i':>13}  anomalies",
    ]
    for domain, d in summary["domains"].items():
        imp = d["imperfections"]
        p = imp["poison"]
        anomalies = ", ".join(f"{k} {v}" for k, v in sorted(d["anomalies"].items())) or "-"
        lines.append(
            f"{domain:8} {d['sensors']:>7} {d['readings_sent']:>9} {imp['out_of_order']:>6} {imp['late']:>5} "
            f"{imp['duplicates']:>5} {imp['gap_readings']:>5} in {imp['gap_episodes']:>2} "
            f"{imp['skewed_readings']:>5} of {imp['skewed_sensors']:>2} "
            f"{imp['silent_readings']:>4} of {imp['silent_sensors']:>2} "
            f"{p['undecodable']:>4}/{p['nan']}/{p['impossible']}  {anomalies}"
        )
    where = f" and {labels_file}" if labels_file else ""
    if summary.get("registered"):
        lines.append(f"registry: {summary['registered']} sensors registered on {summary['sensors_topic']}")
    lines.append(
        f"labels: {summary['labels']} -> {'(dry run)' if dry_run else summary['labels_topic']}{where}"
    )
    eps = summary.get("events_per_s")
    lines.append(
        f"readings: {summary['readings_sent']} in {summary['elapsed_s']:.2f} s"
        + (f" ({eps:,} events/s)" if eps else "")
    )
    return "\n".join(lines)


def _rate(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return v


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream simulate``."""
    p = sub.add_parser(
        "simulate",
        help="simulate a city's traffic, water and grid sensors into Kafka (seeded, with labelled anomalies)",
        description=_DESCRIPTION.format(prefix="PREFIX."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=7, help="random seed: same seed, same bytes (default 7)")
    p.add_argument("--duration", default="10m", help="simulated time span: 10m, 1h30m, 90s, 2d (default 10m)")
    p.add_argument(
        "--start", default=DEFAULT_START, help=f"simulated start, ISO 8601 (default {DEFAULT_START})"
    )
    p.add_argument(
        "--speed", default="max", help="realtime, max (as fast as possible) or a factor like 60 (default max)"
    )
    p.add_argument("--rate", type=_rate, default=3.0, help="readings per sensor per minute (default 3)")
    p.add_argument(
        "--sensors", type=int, default=300, help="sensors in the city, split over domains (default 300)"
    )
    p.add_argument("--domains", default=",".join(DOMAIN_NAMES), help="comma-separated (default all three)")
    p.add_argument(
        "--labels-file",
        type=Path,
        default=None,
        help="also write the labels as JSONL here (default: RUN_DIR/labels/sim-seedSEED.jsonl)",
    )
    p.add_argument("--dry-run", action="store_true", help="generate and count, send nothing")
    p.add_argument(
        "--imperfections",
        choices=("none", "light", "heavy"),
        default="light",
        help="preset imperfection rates; the flags below override single rates (default light)",
    )
    for name in _RATE_FLAGS:
        p.add_argument(
            f"--{name.replace('_', '-')}", type=_rate, default=None, metavar="SHARE", help=_RATE_HELP[name]
        )
    p.add_argument("--watermark-s", type=_rate, default=30.0, help="out-of-order bound, seconds (default 30)")
    p.add_argument(
        "--late-max-s", type=_rate, default=300.0, help="latest late arrival, seconds (default 300)"
    )
    p.add_argument(
        "--anomalies-per-hour",
        type=_rate,
        default=12.0,
        help="per domain per simulated hour; 0 = none (default 12)",
    )
    p.add_argument("--bootstrap", default=None, help="Kafka HOST:PORT (default: CITYSTREAM_KAFKA_BOOTSTRAP)")
    p.add_argument("--summary-json", type=Path, default=None, help="write the summary as JSON here")
    p.add_argument("--city-json", type=Path, default=None, help="write the city model (ids, topology) here")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal)",
    )
    p.set_defaults(handler=_cmd_simulate)


def build_config(args: argparse.Namespace, topic_prefix: str) -> SimConfig:
    """SimConfig from parsed flags; every problem is a one-line UserError."""
    from citystream.simulator.engine import SimConfig  # numpy, fastavro: not paid by --help
    from citystream.simulator.imperfections import Rates

    if args.rate <= 0 or args.rate > 600:
        raise UserError(f"--rate must be between 0 and 600 readings per sensor per minute, got {args.rate:g}")
    domains = parse_domains(args.domains)
    if args.sensors < len(domains):
        raise UserError(f"--sensors must be at least {len(domains)} (one per domain), got {args.sensors}")
    if args.sensors > 1_000_000:
        raise UserError(f"--sensors {args.sensors} is more than this simulator is meant for (1,000,000)")
    if args.anomalies_per_hour < 0:
        raise UserError(f"--anomalies-per-hour must not be negative, got {args.anomalies_per_hour:g}")
    rates = Rates.preset(
        args.imperfections,
        watermark_s=args.watermark_s,
        late_max_s=args.late_max_s,
        **{name: getattr(args, name) for name in _RATE_FLAGS},
    )
    problems = rates.validate()
    if problems:
        raise UserError(problems[0])
    cfg = SimConfig(
        seed=args.seed,
        start_ms=parse_time(args.start),
        duration_ms=parse_duration(args.duration),
        rate_per_min=args.rate,
        sensors=args.sensors,
        domains=domains,
        speed=parse_speed(args.speed),
        rates=rates,
        anomalies_per_hour=args.anomalies_per_hour,
        topic_prefix=topic_prefix,
    )
    if cfg.n_steps < 1:
        raise UserError(
            f"--duration {args.duration} is shorter than one reading interval "
            f"({cfg.dt_ms / 1000:g} s at --rate {args.rate:g})"
        )
    return cfg


def _cmd_simulate(args: argparse.Namespace) -> int:
    # numpy, fastavro, confluent-kafka, kafka-python: ~0.6 s that --help must not pay
    from citystream.connectors.producer import ReadingProducer
    from citystream.simulator.engine import CountingSink, KafkaSink, Simulation
    from citystream.topics import prepare_topics

    try:
        current = settings.load()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cfg = build_config(args, current.topic_prefix)
    if args.labels_file is None:
        args.labels_file = current.run_dir / "labels" / f"sim-seed{cfg.seed}.jsonl"
    sim = Simulation(cfg)
    if args.city_json:
        _write_json(args.city_json, sim.city.to_dict())
    show = sys.stderr.isatty() if args.progress is None else args.progress
    progress = Progress() if show else None
    if args.dry_run:
        summary = sim.run(CountingSink(), labels_file=args.labels_file, progress=progress)
    else:
        bootstrap = args.bootstrap or current.kafka_bootstrap
        admin = kafkaconf.kafka_python(current, "admin")
        compression = prepare_topics(bootstrap, cfg.topic_prefix, current.topics_spec, security=admin)
        with ReadingProducer(
            bootstrap,
            compression=compression,
            client_id="citystream-simulator",
            security=kafkaconf.confluent_security(current, "producer"),
        ) as producer:
            summary = sim.run(KafkaSink(producer), labels_file=args.labels_file, progress=progress)
            producer.flush()
            expected = summary["readings_sent"] + summary["labels"]
            # the registry entries went through the same producer, before the first reading
            if producer.sent != expected + summary["registered"]:
                raise UserError(
                    f"Kafka acknowledged {producer.sent} of {expected + summary['registered']} records"
                )
        summary["acknowledged"] = expected
    if args.summary_json:
        _write_json(args.summary_json, summary)
    print(format_summary(summary, args.labels_file, args.dry_run))
    return 0


def _write_json(path: Path, data: Any) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
