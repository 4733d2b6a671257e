"""``citystream import``: real time series onto the reading topics, with their labels.

Why: a detector is only trustworthy once it has run on real data, and it
should not need a second code path for that. The importer maps public data
sets onto the same Avro schemas, topics, keys and ``citystream.Label`` ground
truth the simulator produces, so a detector cannot tell them apart:

* ``csv``: any CSV time series (one sensor, a ``--sensor-col`` column naming
  sensors, or ``--wide`` with one sensor per column), optional label column;
* ``nab``: Numenta Anomaly Benchmark files plus their anomaly windows
  (``labels/combined_windows.json``);
* ``batadal``: BATADAL C-Town SCADA files (tank levels, pumps, valve,
  junction pressures) plus the attack schedule (``attacks_training.csv``,
  else the ``ATT_FLAG`` column).

Values are taken as they are (``--scale`` converts units). Required schema
fields the data does not provide get a fixed neutral value (traffic: 0
vehicles, 0 % occupancy; grid: 230 V, 0 A, 50 Hz, 0 kW); nullable ones stay
null. Rows whose mapped value is missing are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citystream import kafkaconf, settings
from citystream.catalog import DOMAIN_NAMES
from citystream.errors import UserError
from citystream.simulator.params import iso, parse_duration, parse_speed, parse_time

if TYPE_CHECKING:
    from citystream.importer import Dataset

_DOMAIN_CHOICES = f"{', '.join(DOMAIN_NAMES[:-1])} or {DOMAIN_NAMES[-1]}"


def _mapping(items: Sequence[str]) -> dict[str, str]:
    """``--map COLUMN=FIELD`` flags as a column -> field table."""
    out = {}
    for item in items:
        col, sep, name = item.partition("=")
        if not sep or not col.strip() or not name.strip():
            raise UserError(f"--map {item!r}: use COLUMN=FIELD, e.g. --map speed=mean_speed_kmh")
        out[col.strip()] = name.strip()
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream import csv|nab|batadal``."""
    p = sub.add_parser(
        "import",
        help="send real time series (CSV, NAB, BATADAL) to the reading topics, with their labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = p.add_subparsers(dest="import_format", metavar="FORMAT", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dry-run", action="store_true", help="read and encode, send nothing")
        q.add_argument("--labels-file", type=Path, default=None, help="also write the labels as JSONL here")
        q.add_argument("--speed", default="max", help="max (default), realtime or a factor like 3600")
        q.add_argument(
            "--shift-to", default=None, help="move the first reading to this ISO time (labels move along)"
        )
        q.add_argument(
            "--bootstrap", default=None, help="Kafka HOST:PORT (default: CITYSTREAM_KAFKA_BOOTSTRAP)"
        )
        q.add_argument("--summary-json", type=Path, default=None, help="write the summary as JSON here")

    c = formats.add_parser(
        "csv", help="a CSV time series: one sensor, a sensor column, or one sensor per column"
    )
    c.add_argument("file", type=Path)
    c.add_argument("--domain", required=True, help=_DOMAIN_CHOICES)
    c.add_argument(
        "--time-col", default="timestamp", help="timestamp column (default 'timestamp'); '' = none"
    )
    c.add_argument(
        "--time-format", default=None, help="strftime format, e.g. '%%d/%%m/%%y %%H' (default: ISO)"
    )
    c.add_argument("--start", default=None, help="first timestamp when the file has none (with --interval)")
    c.add_argument("--interval", default=None, help="spacing when the file has no timestamps, e.g. 5m")
    c.add_argument("--sensor-col", default=None, help="column naming the sensor of each row")
    c.add_argument(
        "--sensor-id", default=None, help="sensor id for a single-sensor file (default DOMAIN-FILESTEM)"
    )
    c.add_argument(
        "--map", action="append", default=[], metavar="COLUMN=FIELD", help="value column -> schema field"
    )
    c.add_argument("--wide", default=None, metavar="FIELD", help="every other column is one sensor's FIELD")
    c.add_argument(
        "--label-col", default=None, help="column marking anomalous rows (non-zero or a kind name)"
    )
    c.add_argument("--zone", default="imported", help="zone_id of the sensors (default 'imported')")
    c.add_argument(
        "--scale", type=float, default=1.0, help="multiply every value, e.g. 1.609344 for mph -> km/h"
    )
    c.add_argument("--sep", default=",", help="field separator (default ','; SKAB uses ';')")
    c.add_argument(
        "--na-value",
        action="append",
        default=[],
        help="text that means 'missing' (repeatable), e.g. 0 for METR-LA",
    )
    common(c)
    c.set_defaults(handler=_cmd_csv)

    n = formats.add_parser("nab", help="Numenta Anomaly Benchmark series with their anomaly windows")
    n.add_argument("files", type=Path, nargs="+")
    n.add_argument(
        "--windows", type=Path, default=None, help="combined_windows.json (default: NAB's labels/)"
    )
    n.add_argument("--domain", default=None, help="domain for series without a default mapping")
    n.add_argument("--field", default=None, help="schema field the value goes to")
    common(n)
    n.set_defaults(handler=_cmd_nab)

    b = formats.add_parser("batadal", help="BATADAL C-Town SCADA (water) with its attack schedule")
    b.add_argument("file", type=Path)
    b.add_argument("--attacks", type=Path, default=None, help="attacks_training.csv (default: next to FILE)")
    common(b)
    b.set_defaults(handler=_cmd_batadal)


def _cmd_csv(args: argparse.Namespace) -> int:
    from citystream import importer  # numpy, fastavro (pandas on first read): not paid by --help

    start = parse_time(args.start, "--start") if args.start else None
    interval = parse_duration(args.interval) if args.interval else None
    ds = importer.read_csv(
        args.file,
        domain=args.domain,
        time_col=args.time_col or None,
        time_format=args.time_format,
        start_ms=start,
        interval_ms=interval,
        sensor_col=args.sensor_col,
        sensor_id=args.sensor_id,
        mapping=_mapping(args.map),
        wide=args.wide,
        label_col=args.label_col,
        zone=args.zone,
        scale=args.scale,
        sep=args.sep,
        na_values=args.na_value,
    )
    return _send(ds, args)


def _cmd_nab(args: argparse.Namespace) -> int:
    from citystream import importer  # numpy, fastavro (pandas on first read): not paid by --help

    return _send(
        importer.read_nab(args.files, windows=args.windows, domain=args.domain, field_name=args.field), args
    )


def _cmd_batadal(args: argparse.Namespace) -> int:
    from citystream import importer  # numpy, fastavro (pandas on first read): not paid by --help

    return _send(importer.read_batadal(args.file, attacks=args.attacks), args)


def _send(ds: Dataset, args: argparse.Namespace) -> int:
    # numpy, fastavro, confluent-kafka, kafka-python: ~0.6 s that --help must not pay
    from citystream.connectors.producer import ReadingProducer
    from citystream.importer import publish
    from citystream.simulator.engine import CountingSink, KafkaSink
    from citystream.topics import prepare_topics

    try:
        current = settings.load()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    speed = parse_speed(args.speed)
    shift = 0
    if args.shift_to:
        first = min((int(s.times[0]) for s in ds.series if s.times.size), default=0)
        shift = parse_time(args.shift_to, "--shift-to") - first
    prefix = current.topic_prefix
    if args.dry_run:
        summary = publish(
            ds, CountingSink(), prefix, speed=speed, shift_ms=shift, labels_file=args.labels_file
        )
    else:
        bootstrap = args.bootstrap or current.kafka_bootstrap
        admin = kafkaconf.kafka_python(current, "admin")
        compression = prepare_topics(bootstrap, prefix, current.topics_spec, security=admin)
        producer_security = kafkaconf.confluent_security(current, "producer")
        with ReadingProducer(
            bootstrap, compression=compression, client_id="citystream-importer", security=producer_security
        ) as producer:
            summary = publish(
                ds, KafkaSink(producer), prefix, speed=speed, shift_ms=shift, labels_file=args.labels_file
            )
            # the sensors' registry entries went through the same producer, first
            expected = summary["readings_sent"] + summary["labels"] + summary["registered"]
            if producer.sent != expected:
                raise UserError(f"Kafka acknowledged {producer.sent} of {expected} records")
    if args.summary_json:
        try:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(
                json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            raise UserError(f"cannot write {args.summary_json}: {exc.strerror}") from None
    print(_format(summary, args.dry_run))
    return 0


def _format(summary: dict[str, Any], dry_run: bool) -> str:
    """The human summary: what was read, sent per topic, skipped, and labelled."""

    def when(ms: int | None) -> str:
        return "-" if ms is None else iso(ms)

    per_topic = ", ".join(f"{t} {n}" for t, n in summary["readings"].items()) or "none"
    lines = [
        f"imported {summary['source']}: {summary['sensors']} sensors, {when(summary['first_event_ms'])} .. "
        f"{when(summary['last_event_ms'])}" + (" (dry run: nothing sent)" if dry_run else ""),
        f"readings: {summary['readings_sent']} ({per_topic}); skipped rows with missing values: "
        f"{summary['skipped_rows']}",
        f"labels: {summary['labels']} -> {summary['labels_topic'] if not dry_run else '(dry run)'}",
    ]
    if summary.get("registered"):
        lines.append(f"registry: {summary['registered']} sensors registered on {summary['sensors_topic']}")
    if summary.get("events_per_s"):
        lines.append(f"sent in {summary['elapsed_s']:.2f} s ({summary['events_per_s']:,} events/s)")
    return "\n".join(lines)
