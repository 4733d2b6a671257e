"""``citystream store serve | migrate | seal | status``: run, evolve and inspect the store.

* ``serve`` runs the embedded store in the foreground (the stack manager runs
  it as a subprocess and checks ``GET /ping`` and ``SELECT 1``); SIGTERM or
  Ctrl-C stop it cleanly. It owns its data directory: a second ``serve`` on
  the same directory is refused.
* ``migrate`` applies infra/clickhouse/migrations/ to CITYSTREAM_CLICKHOUSE_URL
  (the embedded store or a real ClickHouse server), idempotently.
* ``seal`` seals the rollups of window_aggregates for every dirty hour now
  (citystream/store/rollups.py; the loader does it as it goes). Dashboards are
  exact either way; sealed hours are just much cheaper to read.
* ``status`` lists the database's tables with rows, active parts and bytes on
  disk, the schema version, and what the loader last recorded in
  pipeline_metrics (when, records behind, rows/s).
* ``serve --loader`` also runs the Kafka loader (connectors/loader/) in the
  store process, consuming the result topics continuously; the stack starts
  the store that way. ``citystream load`` runs the same loader on its own, for
  a real ClickHouse server (CITYSTREAM_CLICKHOUSE_URL), or ``--until-end`` for
  a one-off catch-up; it prints progress on stderr and stops cleanly on
  SIGTERM/Ctrl-C (an unacknowledged batch stays uncommitted).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from citystream.errors import UserError
from citystream.settings import load as load_settings

# The handlers import the store, chdb, clickhouse-connect and confluent-kafka when they run:
# ~0.5 s that `citystream --help` must not pay.


def _cmd_serve(args: argparse.Namespace) -> int:
    from citystream.connectors.loader.background import companion
    from citystream.store.serving import serve, server_config

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = load_settings()
    config = server_config(settings, data_dir=args.data, port=args.port)
    loader = None
    if args.loader:
        _check_batch(args)
        options = {"group_id": args.loader_group, "batch_rows": args.batch_rows, "batch_ms": args.batch_ms}
        loader = companion(settings, options)
    return serve(config, companion=loader)


def _check_batch(args: argparse.Namespace) -> None:
    if args.batch_rows < 1 or args.batch_ms < 1:
        raise UserError("--batch-rows and --batch-ms must be at least 1")
    group = getattr(args, "group", None) or getattr(args, "loader_group", "")
    if not group.strip():
        raise UserError("the consumer group must not be empty")


def _cmd_load(args: argparse.Namespace) -> int:
    from citystream.connectors.loader import LoadStats, load

    _check_batch(args)
    settings = load_settings()
    if settings.embedded_store and not args.until_end:
        raise UserError(
            "the embedded store runs the loader itself (`citystream store serve --loader`, as the stack "
            "starts it); use `citystream load --until-end` for a one-off catch-up, or point "
            "CITYSTREAM_CLICKHOUSE_URL at a ClickHouse server"
        )
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        print(f"\ncitystream load: {signal.Signals(signum).name}, stopping", file=sys.stderr, flush=True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    started = time.monotonic()
    shown = [0.0]

    def _progress(stats: LoadStats) -> None:
        now = time.monotonic()
        if now - shown[0] < 1.0:
            return
        shown[0] = now
        rate = stats.loaded / max(now - started, 1e-9)
        print(
            f"loaded {stats.loaded:,} rows in {stats.batches:,} batches ({rate:,.0f} rows/s), "
            f"{stats.undecodable} undecodable, {stats.retries} retries",
            file=sys.stderr,
            flush=True,
        )

    print(
        f"citystream load: {settings.kafka_bootstrap} ({settings.topic_prefix}*) -> "
        f"{settings.clickhouse_url} database {settings.clickhouse_database}, group {args.group}"
        + (" until the current end of the topics" if args.until_end else " (Ctrl-C stops)"),
        file=sys.stderr,
        flush=True,
    )
    stats = load(
        settings,
        until_end=args.until_end,
        batch_rows=args.batch_rows,
        batch_ms=args.batch_ms,
        group_id=args.group,
        stop=stop.is_set,
        progress=_progress,
    )
    elapsed = time.monotonic() - started
    per_topic = ", ".join(f"{t} {n:,}" for t, n in sorted(stats.per_topic.items())) or "nothing new"
    print(
        f"loaded {stats.loaded:,} rows in {stats.batches:,} batches, {elapsed:.1f}s "
        f"({stats.loaded / max(elapsed, 1e-9):,.0f} rows/s): {per_topic}; {stats.undecodable} undecodable "
        f"(sent to {settings.topic('dead-letter')}), {stats.tombstones} tombstones skipped, "
        f"{stats.retries} retries",
        file=sys.stderr,
    )
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from citystream.store.migrate import migrate

    settings = load_settings()
    ran = migrate(settings, target=args.to, echo=print)
    if not ran:
        print(f"database {settings.clickhouse_database}: schema up to date")
    return 0


def _cmd_seal(args: argparse.Namespace) -> int:
    from citystream.store.admin import seal_all

    def _shown(result: Any) -> None:
        if result.hours:
            print(
                f"sealed {result.hours} hour(s), {result.days} day(s) in {result.seconds:.1f}s",
                file=sys.stderr,
                flush=True,
            )

    settings = load_settings()
    started = time.monotonic()
    hours, days = seal_all(settings, grace_s=args.grace, hours_per_pass=args.hours_per_pass, on_pass=_shown)
    print(f"database {settings.clickhouse_database}: sealed {hours} hour(s) and {days} day(s) "
          f"in {time.monotonic() - started:.1f}s")  # fmt: skip
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from citystream.store.admin import status

    settings = load_settings()
    found = status(settings)
    version, known = found.schema_version, found.known_versions
    print(f"store    {settings.clickhouse_url} (ClickHouse {found.server_version})")
    state = "up to date" if version == known else f"{known - version} migration(s) pending"
    print(f"database {settings.clickhouse_database}, schema version {version} of {known} ({state})")
    if not found.tables:
        print("no tables yet: run `citystream store migrate`")
        return 0 if version == known else 1
    print(f"{'TABLE':36} {'ENGINE':22} {'ROWS':>12} {'PARTS':>6} {'DISK':>10}")
    for t in found.tables:
        merge_tree = t.engine.endswith("MergeTree")
        shown_rows = f"{t.rows:,}" if merge_tree else "-"
        shown_parts = str(t.parts) if merge_tree else "-"
        shown_size = _bytes(t.bytes) if merge_tree else "-"
        print(f"{t.name:36} {t.engine:22} {shown_rows:>12} {shown_parts:>6} {shown_size:>10}")
    if not found.loads:
        print("loader   no load recorded yet")
    for run in found.loads:
        behind = "unknown" if run.lag_records < 0 else f"{int(run.lag_records):,} records behind"
        print(
            f"loader   {run.instance}: last load {run.last:%Y-%m-%d %H:%M:%S} UTC ({_age(run.age_s)} ago), "
            f"{behind}, {run.rows_per_s:,.0f} rows/s, {int(run.rows_total):,} rows since start"
        )
    return 0 if version == known else 1


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{max(seconds, 0):.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
    p.add_argument(
        "--loader",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run the Kafka loader of the result topics in this process (the stack turns it on)",
    )
    p.add_argument("--loader-group", default="citystream-loader", help="the loader's Kafka consumer group")
    _batch_options(p)
    p.set_defaults(handler=_cmd_serve)
    p = cmds.add_parser("migrate", help="apply pending schema migrations (idempotent)")
    p.add_argument("--to", type=int, metavar="VERSION", help="stop after this version (default: all)")
    p.set_defaults(handler=_cmd_migrate)
    text = "seal the window rollups of every dirty hour now (the loader seals as it goes)"
    p = cmds.add_parser("seal", help=text, description=text)
    p.add_argument(
        "--grace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="leave hours that received windows less than this long ago (default: %(default)s)",
    )
    p.add_argument("--hours-per-pass", type=int, default=72, help="hours per pass (default: %(default)s)")
    p.set_defaults(handler=_cmd_seal)
    p = cmds.add_parser("status", help="tables, rows, parts and disk use; exit 1 if migrations are pending")
    p.set_defaults(handler=_cmd_status)
    p = sub.add_parser(
        "load",
        help="load the Kafka result topics into ClickHouse (a server; the embedded store loads itself)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--until-end", action="store_true", help="stop once the topics' current ends are loaded")
    p.add_argument("--group", default="citystream-loader", help="Kafka consumer group (default: %(default)s)")
    _batch_options(p)
    p.set_defaults(handler=_cmd_load)


def _batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        # connectors.loader.BATCH_ROWS (not imported here: it would load numpy for every CLI call).
        "--batch-rows",
        type=int,
        default=200_000,
        help="rows per batch at most (default: %(default)s)",
    )
    p.add_argument(
        "--batch-ms", type=int, default=1000, help="milliseconds a batch waits to fill (default: %(default)s)"
    )
