"""``citystream demo``: the flags around ``citystream.demo.run``; exit 1 when a check fails."""

from __future__ import annotations

import argparse

from citystream import demo
from citystream.settings import load as load_settings


def _cmd(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.secure:
        settings = settings.replace(kafka_security="sasl_ssl")
    report = demo.run(
        settings, seed=args.seed, sensors=args.sensors, minutes=args.minutes,
        keep_running=args.keep_running,
    )  # fmt: skip
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream demo``."""
    p = sub.add_parser(
        "demo",
        help="run a small seeded city through the whole stack and check the result",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")
    p.add_argument("--sensors", type=int, default=30, help="sensors, split over the departments (default 30)")
    p.add_argument("--minutes", type=int, default=6, help="simulated minutes, 3 readings each (default 6)")
    p.add_argument("--keep-running", action="store_true", help="leave the stack up afterwards")
    p.add_argument(
        "--secure",
        action="store_true",
        help="Kafka over SASL_SSL with SCRAM users and ACLs (as `stack up --secure`; a run dir already "
        "started --secure is used so without it)",
    )
    p.set_defaults(handler=_cmd)
