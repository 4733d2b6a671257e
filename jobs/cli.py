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
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

W = TypeVar("W")

#: topic -> partition -> (start, end): exactly the records ``start <= offset < end`` of each partition.
Offsets = Mapping[str, Mapping[int, tuple[int, int]]]


def load_offsets(path: Path) -> dict[str, dict[int, tuple[int, int]]]:
    """Read an offsets file: JSON ``{topic: {partition: [start, end]}}`` (end exclusive).

    Why here: a job run with ``flink run -py`` reads it without the ``citystream``
    command, and ``citystream replay --offsets FILE`` reads the same format.
    """
    try:
        raw = json.loads(Path(path).read_text())
        out = {
            str(topic): {int(p): (int(r[0]), int(r[1])) for p, r in parts.items()}
            for topic, parts in raw.items()
        }
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{path}: not a JSON {{topic: {{partition: [start, end]}}}} file: {exc}") from None
    for topic, parts in out.items():
        if not parts or any(not 0 <= s <= e for s, e in parts.values()):
            raise ValueError(f"{path}: {topic}: need 0 <= start <= end for at least one partition")
    return out


def _pick(offsets: Offsets | None, topic: str) -> dict[int, tuple[int, int]] | None:
    if offsets is None:
        return None
    if topic not in offsets:
        raise ValueError(f"the offsets name no range of the input topic {topic} (only {sorted(offsets)})")
    return dict(offsets[topic])


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
    offsets: Offsets | None = None
    output_suffix: str = ""
    #: Suffix of the readings topic read (a replay's paced copy); default: the live topic.
    input_suffix: str = ""

    def input_offsets(self, topic: str) -> dict[int, tuple[int, int]] | None:
        """The exact range of ``topic`` to read (None: the usual earliest/latest reading)."""
        return _pick(self.offsets, topic)


@dataclass(frozen=True)
class DetectJobArgs:
    """The detect job's run."""

    bounded: bool
    config: Path | None
    parallelism: int | None
    savepoint: str | None
    offsets: Offsets | None = None
    output_suffix: str = ""
    #: Suffix of the aggregates topic read (a domain replay's ``.replay.<run id>``); default: live.
    input_suffix: str = ""

    def input_offsets(self, topic: str) -> dict[int, tuple[int, int]] | None:
        """The exact range of ``topic`` to read (None: the usual earliest/latest reading)."""
        return _pick(self.offsets, topic)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets current at start")
    parser.add_argument("--parallelism", type=int, default=None, help="default: the settings' parallelism")
    parser.add_argument(
        "--from-savepoint", default=None, metavar="PATH",
        help="resume from this savepoint when running locally (`flink run -s PATH` on a cluster)",
    )  # fmt: skip
    parser.add_argument(
        "--offsets", type=Path, default=None, metavar="FILE",
        help="read exactly these offsets of the input topic and stop: JSON {topic: {partition: "
        "[start, end]}}, end exclusive (what `citystream replay` passes)",
    )  # fmt: skip
    parser.add_argument(
        "--output-suffix", default="", metavar="SUFFIX",
        help="appended to every result topic, the consumer group and the transactional ids "
        "(a replay's `.replay.RUN_ID`: live topics and groups stay untouched)",
    )  # fmt: skip
    parser.add_argument(
        "--input-suffix", default="", metavar="SUFFIX",
        help="read the input topic with this suffix (a replay's paced copy, or for detect "
        "a domain replay's aggregates)",
    )  # fmt: skip


def _offsets(args: argparse.Namespace) -> Offsets | None:
    return load_offsets(args.offsets) if args.offsets is not None else None


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
        offsets=_offsets(args), output_suffix=args.output_suffix, input_suffix=args.input_suffix,
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
        bounded=args.bounded, config=args.config, parallelism=args.parallelism, savepoint=args.from_savepoint,
        offsets=_offsets(args), output_suffix=args.output_suffix, input_suffix=args.input_suffix,
    )  # fmt: skip
