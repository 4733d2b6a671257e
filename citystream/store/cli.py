"""``citystream store serve | migrate | status``: run, evolve and inspect the store.

* ``serve`` runs the embedded store in the foreground (the stack manager runs
  it as a subprocess and checks ``GET /ping`` and ``SELECT 1``); SIGTERM or
  Ctrl-C stop it cleanly. It owns its data directory: a second ``serve`` on
  the same directory is refused.
* ``migrate`` applies infra/clickhouse/migrations/ to CITYSTREAM_CLICKHOUSE_URL
  (the embedded store or a real ClickHouse server), idempotently.
* ``status`` lists the database's tables with rows, active parts and bytes on
  disk, and the schema version.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from citystream.settings import load as load_settings


def _cmd_serve(args: argparse.Namespace) -> int:
    from citystream.store.server import StoreConfig, serve

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings()
    config = StoreConfig.from_settings(settings, data_dir=args.data, port=args.port)
    return serve(config)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from citystream.store.migrate import migrate

    settings = load_settings()
    ran = migrate(settings, target=args.to, echo=print)
    if not ran:
        print(f"database {settings.clickhouse_database}: schema up to date")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from citystream.store.client import connect
    from citystream.store.migrate import discover, schema_version

    settings = load_settings()
    database = settings.clickhouse_database
    client = connect(settings, database=None)
    try:
        version = schema_version(client, database)
        rows = client.query(
            """
            SELECT t.name, t.engine, ifNull(t.total_rows, 0), ifNull(p.parts, 0), ifNull(p.bytes, 0)
            FROM system.tables AS t
            LEFT JOIN
            (
                SELECT table, count() AS parts, sum(bytes_on_disk) AS bytes
                FROM system.parts WHERE database = {db:String} AND active GROUP BY table
            ) AS p ON p.table = t.name
            WHERE t.database = {db:String}
            ORDER BY t.name
            """,
            parameters={"db": database},
        ).result_rows
        server = client.command("SELECT version()")
    finally:
        client.close()
    known = len(discover())
    print(f"store    {settings.clickhouse_url} (ClickHouse {server})")
    state = "up to date" if version == known else f"{known - version} migration(s) pending"
    print(f"database {database}, schema version {version} of {known} ({state})")
    if not rows:
        print("no tables yet: run `citystream store migrate`")
        return 0 if version == known else 1
    print(f"{'TABLE':36} {'ENGINE':22} {'ROWS':>12} {'PARTS':>6} {'DISK':>10}")
    for name, engine, total_rows, parts, size in rows:
        shown_rows = f"{int(total_rows):,}" if engine.endswith("MergeTree") else "-"
        shown_parts = str(parts) if engine.endswith("MergeTree") else "-"
        shown_size = _bytes(int(size)) if engine.endswith("MergeTree") else "-"
        print(f"{name:36} {engine:22} {shown_rows:>12} {shown_parts:>6} {shown_size:>10}")
    return 0 if version == known else 1


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream store ...`` to the top-level parser."""
    store = sub.add_parser(
        "store",
        help="run, migrate and inspect the ClickHouse store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = store.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    p = cmds.add_parser(
        "serve", help="run the embedded store (ClickHouse HTTP on 127.0.0.1) in the foreground"
    )
    p.add_argument(
        "--data", type=Path, help="data directory (default: <CITYSTREAM_RUN_DIR>/store/data, as the stack)"
    )
    p.add_argument("--port", type=int, help="HTTP port (default: CITYSTREAM_STORE_PORT, 8123)")
    p.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug logs one line per request (default: info)",
    )
    p.set_defaults(handler=_cmd_serve)
    p = cmds.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    p.add_argument("--to", type=int, metavar="VERSION", help="stop after this version (default: all)")
    p.set_defaults(handler=_cmd_migrate)
    p = cmds.add_parser("status", help="tables, rows, parts and disk use; exit 1 if migrations are pending")
    p.set_defaults(handler=_cmd_status)
