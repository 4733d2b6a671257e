"""``citystream query "SQL"``: run one statement against the store and print the result.

Output formats: ``table`` (aligned columns, the default), ``csv`` (with a
header) and ``json`` (one JSON object per line). A statement with its own
``FORMAT`` clause is printed exactly as the server returns it. A statement
without a result (DDL, INSERT ... VALUES) prints ``Ok.``. Errors are one line:
``citystream: query failed: Code: 62. DB::Exception: Syntax error ...``.
"""

from __future__ import annotations

import argparse
import sys

from citystream.settings import load as load_settings


def _cmd(args: argparse.Namespace) -> int:
    from citystream.store.query import run_query  # clickhouse-connect: ~0.3 s that --help must not pay

    sql = args.sql if args.sql != "-" else sys.stdin.read()
    return run_query(load_settings(), sql, args.format, readonly=args.readonly)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream query`` to the top-level parser."""
    p = sub.add_parser(
        "query",
        help="run one SQL statement against the store and print the result",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sql", help='the statement, e.g. "SELECT count() FROM window_aggregates"; - reads stdin')
    p.add_argument(
        "--format", choices=["table", "csv", "json"], default="table", help="output (default: table)"
    )
    p.add_argument("--readonly", action="store_true", help="run as the read-only dashboard user")
    p.set_defaults(handler=_cmd)
