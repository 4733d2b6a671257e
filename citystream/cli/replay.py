"""``citystream replay JOB --from ISO --to ISO | --offsets FILE``: a job's code over past input.

Runs the job (traffic, water, grid or detect) as a bounded Flink run over
exactly the chosen offsets of its input topic and writes everything under a
run id: result topics ``<topic>.replay.RUN_ID``, store rows in the shadow
database ``<database>_replay_RUN_ID`` (the live schema: the same queries
work). Live topics, consumer groups, tables and alerts are never touched.

--from/--to select records by their Kafka timestamp (when they were
produced), resolved per partition with the broker's offsets-for-times; the
offsets used are written to RUN_DIR/replay/RUN_ID/JOB-offsets.json, which
--offsets takes to repeat the replay exactly. Give the job the options the
live job ran with after `--` (e.g. `-- --watermark-on-event --out-of-order-s 30`)
for identical results.

Examples:
  citystream replay water --from 2026-01-05T10:00Z --to 2026-01-05T11:00Z --detect
  citystream replay detect --offsets offsets.json --config candidate.toml --run-id cand1
  citystream replay --discard cand1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from citystream.errors import UserError
from citystream.replay import (
    discard,
    parse_time,
    read_ranges,
    replay,
    resolve_times,
)
from citystream.replay.run import JOBS, input_topic
from citystream.settings import load as load_settings


def _speed(text: str) -> float | None:
    if text == "fast":
        return None
    if text == "realtime":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError("use fast, realtime or a positive factor such as 10")
    return value


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _split(args: argparse.Namespace) -> list[str]:
    """The job's own arguments (after ``--``); options of ours written after the job name are taken back.

    argparse's REMAINDER starts right after the job name, so ``replay water
    --from X ...`` would hand ``--from`` to the job otherwise.
    """
    rest = list(args.job_args or [])
    ours, theirs = (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
    if ours:
        job = args.job
        args.replay_parser.parse_args(ours, namespace=args)
        args.job = job
    return theirs


def _cmd_replay(args: argparse.Namespace) -> int:
    job_args = _split(args)
    settings = load_settings()
    if args.discard:
        for name in discard(settings, args.discard):
            print(f"removed {name}")
        return 0
    if not args.job:
        raise UserError("name the job to replay (or --discard RUN_ID)")
    if args.offsets is not None:
        if args.start or args.end:
            raise UserError("give either --offsets or --from/--to, not both")
        offsets = read_ranges(args.offsets)
    elif args.start and args.end:
        offsets = resolve_times(
            settings, [input_topic(settings, args.job)], parse_time(args.start), parse_time(args.end)
        )
    else:
        raise UserError("give --from and --to, or --offsets FILE")
    result = replay(
        settings, args.job, offsets, run_id=args.run_id, detect=args.detect, config=args.config,
        job_args=job_args, parallelism=args.parallelism, speed=args.speed, load_results=not args.no_load,
        echo=_err,
    )  # fmt: skip
    print(f"run id     {result.run_id}")
    for suffix, topic in result.topics.items():
        print(f"topic      {suffix:14} {topic}")
    if result.database:
        print(f"database   {result.database} ({result.loaded} rows)")
    print(f"offsets    {result.run_dir}")
    print("seconds    " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream replay``."""
    p = sub.add_parser(
        "replay",
        help="run a job over past input under a run id, without touching anything live",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("job", nargs="?", choices=JOBS, help="the job to replay")
    p.add_argument("--from", dest="start", metavar="ISO", help="first produce time (UTC unless a zone)")
    p.add_argument("--to", dest="end", metavar="ISO", help="last produce time (exclusive)")
    p.add_argument(
        "--offsets", type=Path, default=None, metavar="FILE",
        help="exact offsets instead of times: JSON {topic: {partition: [start, end]}}, end exclusive",
    )  # fmt: skip
    p.add_argument("--run-id", default=None, metavar="ID", help="a-z, 0-9, _ (default: r + UTC time)")
    p.add_argument(
        "--speed", type=_speed, default=None, metavar="fast|realtime|N",
        help="fast (default): as fast as Flink reads; realtime or N: paced by the records' produce "
        "times, N times faster, through a copy of the input",
    )  # fmt: skip
    p.add_argument(
        "--detect", action="store_true", help="after a domain job, run detect over what the replay wrote"
    )
    p.add_argument("--config", type=Path, default=None, help="detection config for detect (default: live)")
    p.add_argument("--parallelism", type=int, default=None, help="Flink parallelism (default: settings)")
    p.add_argument("--no-load", action="store_true", help="leave the results in the replay topics only")
    p.add_argument("--discard", default=None, metavar="RUN_ID", help="delete a replay's topics and database")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="after --: options for the job itself")
    p.set_defaults(handler=_cmd_replay, replay_parser=p)
