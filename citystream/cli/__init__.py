"""``citystream``: one command line for the whole platform.

Why a package: argument parsing lives only here. Each command group is a module of
``citystream.cli`` that registers itself through ``register(subparsers)`` and calls
library functions with typed arguments; the libraries never see ``argparse``.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from citystream import __version__, settings
from citystream.errors import UserError

#: Modules that add sub-commands, in the order --help lists them.
COMMAND_MODULES = [
    "citystream.cli.stack",
    "citystream.cli.topics",
    "citystream.cli.demo",
    "citystream.cli.jobs",
    "citystream.cli.replay",
    "citystream.cli.query",
    "citystream.cli.store",
    "citystream.cli.dashboards",
    "citystream.cli.simulate",
    "citystream.cli.importer",
    "citystream.cli.sensors",
    "citystream.cli.evaluate",
    "citystream.cli.backtest",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citystream",
        description="Real-time analytics for a city's sensors: Kafka -> Flink -> ClickHouse.",
        epilog="Every command has --help. Settings come from CITYSTREAM_* variables; "
        "see `citystream config`.",
    )
    parser.add_argument("--version", action="version", version=f"citystream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    config = sub.add_parser("config", help="show the settings in force (secrets masked)")
    config.set_defaults(handler=_show_config)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _show_config(args: argparse.Namespace) -> int:
    current = settings.load()
    by_field = {v: k for k, v in settings.ENV.items()}
    for name, value in current.masked().items():
        print(f"{name:24} {value:50} {by_field.get(name, '')}")
    return 0


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (e.g. `timeout`, CI) unwinds like Ctrl-C, so `finally` blocks stop what we started.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"citystream: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("citystream: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
