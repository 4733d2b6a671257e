"""The local stack: one Kafka broker (KRaft), one Flink cluster, one ClickHouse store.

Contract of ``citystream stack up | down | status``:

* ``up`` starts what is not running, waits until each service answers its
  health check (broker metadata, Flink ``/overview`` with a TaskManager,
  store ``SELECT 1``) and is idempotent. A port held by another process, a
  service that dies while starting, or a missing ``make setup`` is reported
  in one line that names the fix.
* ``down`` stops exactly the process groups ``up`` started (pids recorded
  under the run directory) and keeps the data; ``down --purge`` deletes it.
* ``status`` prints each service's state, pid, port and health.
* ``up --secure`` (or CITYSTREAM_KAFKA_SECURITY=sasl_ssl) starts Kafka with
  SASL_SSL listeners only: a local CA and broker certificate, SCRAM-SHA-512
  users admin, producer, jobs and loader with random passwords, all generated
  on first start under the run directory (mode 0600) and re-used afterwards;
  ACLs limit each user to its own topics, groups and transactions; topics are
  never auto-created. The run directory remembers it: every later command
  (``up``, ``demo``, ``jobs``, ``topics``, ``simulate``, the loader) speaks
  SASL_SSL with its own user, no variable to export (the environment still
  overrides). ``down --purge`` forgets it with the broker's data.

Every service runs in its own session, so stopping its process group also
stops the children it forked (Flink's Python workers, the JVM behind a
script). Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import argparse

from citystream.settings import load as load_settings


def _cmd_up(args: argparse.Namespace) -> int:
    from citystream import stack  # kafka-python, clickhouse-connect, yaml: ~0.5 s that --help must not pay

    settings = load_settings()
    if args.secure:
        settings = settings.replace(kafka_security="sasl_ssl")
    stack.up(settings)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from citystream import stack  # kafka-python, clickhouse-connect, yaml: ~0.5 s that --help must not pay

    stack.down(load_settings(), purge=args.purge)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from citystream import stack  # kafka-python, clickhouse-connect, yaml: ~0.5 s that --help must not pay

    settings = load_settings()
    rows = stack.status(settings)
    print(f"{'SERVICE':8} {'STATE':10} {'PID':>8} {'PORT':>6}  DETAIL")
    for r in rows:
        print(f"{r.name:8} {r.state:10} {r.pid or '-':>8} {r.port or '-':>6}  {r.detail}")
    # The mode every command of this run dir uses (remembered from `up --secure`, or the env's).
    print(f"kafka security: {settings.kafka_security.lower()}")
    return 0 if all(r.state in ("healthy", "external") for r in rows) else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream stack up|down|status``."""
    parser = sub.add_parser(
        "stack",
        help="start, stop and inspect the local Kafka + Flink + ClickHouse stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = parser.add_subparsers(dest="stack_command", metavar="ACTION", required=True)
    p = cmds.add_parser("up", help="start every service and wait until healthy (idempotent)")
    p.add_argument(
        "--secure",
        action="store_true",
        help="Kafka over SASL_SSL with generated SCRAM users and CA (as CITYSTREAM_KAFKA_SECURITY=sasl_ssl)",
    )
    p.set_defaults(handler=_cmd_up)
    p = cmds.add_parser("down", help="stop the services this stack started; keeps data unless --purge")
    p.add_argument("--purge", action="store_true", help="also delete broker, store and checkpoint data")
    p.set_defaults(handler=_cmd_down)
    p = cmds.add_parser(
        "status", help="state, pid, port and health of each service (exit 1 unless all healthy)"
    )
    p.set_defaults(handler=_cmd_status)
