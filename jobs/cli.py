"""The job scripts' own command line: what ``flink run -py jobs/NAME.py -- ARGS`` hands a job.

Why here and not in citystream/cli: a job file runs on any Flink cluster
without the ``citystream`` command, so it parses its arguments itself; every
job parses them in this one module, into typed values its ``main`` passes on.
Nothing here imports the jobs (they import this), so the defaults come in
as arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

W = TypeVar("W")


@dataclass(frozen=True)
class DomainJobArgs(Generic[W]):
    """A domain job's run: input bound, parallelism, windows and delivery."""

    bounded: bool
    parallelism: int | None
    windows: W
    out_of_order_s: int
    exactly_once: bool
    watermark_on_event: bool
    savepoint: str | None


@dataclass(frozen=True)
class DetectJobArgs:
    """The detect job's run."""

    bounded: bool
    config: Path | None
    parallelism: int | None
    savepoint: str | None


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets current at start")
    parser.add_argument("--parallelism", type=int, default=None, help="default: the settings' parallelism")
    parser.add_argument(
        "--from-savepoint", default=None, metavar="PATH",
        help="resume from this savepoint when running locally (`flink run -s PATH` on a cluster)",
    )  # fmt: skip


def parse_domain_args(
    name: str, topic: str, windows: W, out_of_order_s: int, argv: Sequence[str] | None = None
) -> DomainJobArgs[W]:
    """Arguments of ``jobs/<name>.py``; ``windows`` (a ``jobs.common.Windows``) gives the defaults."""
    d: Any = windows
    parser = argparse.ArgumentParser(
        prog=f"citystream.jobs.{name}",
        description=f"citystream {name} job: {topic} -> aggregates, late events, "
        "dead letters, sensor health (Kafka topics from the CITYSTREAM_* settings).",
    )
    _common(parser)
    parser.add_argument("--tumble-s", type=int, default=d.tumble_s, help="per-sensor tumbling window, s")
    parser.add_argument("--hop-size-s", type=int, default=d.hop_size_s, help="hopping window size, s")
    parser.add_argument("--hop-slide-s", type=int, default=d.hop_slide_s, help="hop window slide, s")
    parser.add_argument("--zone-s", type=int, default=d.zone_s, help="per-zone tumbling window, s")
    parser.add_argument(
        "--allowed-lateness-s", type=int, default=d.allowed_lateness_s,
        help="a reading this far behind its window's end still revises it; later ones go to late-events",
    )  # fmt: skip
    parser.add_argument(
        "--out-of-order-s", type=int, default=out_of_order_s,
        help="watermark lag behind the newest event time: disorder within it is not late",
    )  # fmt: skip
    parser.add_argument(
        "--silence-s", type=int, default=d.silence_s, help="event-time gap that reports a sensor silent"
    )
    parser.add_argument("--at-least-once", action="store_true", help="non-transactional Kafka sinks")
    parser.add_argument(
        "--watermark-on-event", action="store_true",
        help="a watermark after every reading instead of every 200 ms: which readings count as late "
        "then depends only on the topic's order (replays, backtests), at some throughput cost",
    )  # fmt: skip
    args = parser.parse_args(argv)
    chosen = dataclasses.replace(
        d, tumble_s=args.tumble_s, hop_size_s=args.hop_size_s, hop_slide_s=args.hop_slide_s,
        zone_s=args.zone_s, allowed_lateness_s=args.allowed_lateness_s, silence_s=args.silence_s,
    )  # fmt: skip
    return DomainJobArgs(
        bounded=args.bounded, parallelism=args.parallelism, windows=chosen,
        out_of_order_s=args.out_of_order_s, exactly_once=not args.at_least_once,
        watermark_on_event=args.watermark_on_event, savepoint=args.from_savepoint,
    )  # fmt: skip


def parse_detect_args(description: str, argv: Sequence[str] | None = None) -> DetectJobArgs:
    """Arguments of ``jobs/detect.py``."""
    parser = argparse.ArgumentParser(
        prog="citystream.jobs.detect", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _common(parser)
    parser.add_argument(
        "--config", type=Path, default=None, help="detection config (default infra/detection.toml)"
    )
    args = parser.parse_args(argv)
    return DetectJobArgs(
        bounded=args.bounded, config=args.config, parallelism=args.parallelism, savepoint=args.from_savepoint
    )
