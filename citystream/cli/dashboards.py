"""``citystream dashboards``: regenerate the dashboard JSON, check it, or push it to a Grafana.

Dashboards are code (dashboards/boards.py lists them); dashboards/json/ holds what that
code generates, committed, with fixed uids. ``build --check`` fails when the
two differ. ``push`` upserts the ClickHouse datasource (fixed uid) and every
dashboard (overwrite) into the 'citystream' folder of the Grafana at --url;
the datasource points at CITYSTREAM_CLICKHOUSE_URL as the read-only viewer
user, so that URL must be one the Grafana server itself can reach.
Credentials come from CITYSTREAM_GRAFANA_TOKEN, or CITYSTREAM_GRAFANA_USER and
CITYSTREAM_GRAFANA_PASSWORD; prefer those variables to the flags, which other
users of the machine can see in the process list.
"""

from __future__ import annotations

import argparse

from citystream.settings import load as load_settings


def _cmd_build(args: argparse.Namespace) -> int:
    from citystream.dashboards import build  # grafana-foundation-sdk: ~0.15 s that --help must not pay

    return build.main(["--check"] if args.check else [])


def _cmd_push(args: argparse.Namespace) -> int:
    # grafana-foundation-sdk and grafana-client: ~0.25 s that --help must not pay
    from citystream.dashboards import build
    from citystream.dashboards.push import Credentials, push

    settings = load_settings()
    credentials = Credentials(
        token=settings.grafana_token if args.token is None else args.token,
        user=settings.grafana_user if args.user is None else args.user,
        password=settings.grafana_password if args.password is None else args.password,
    )
    models = build.generate()
    push(settings, args.url or settings.grafana_url, credentials, [models[uid] for uid in sorted(models)])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream dashboards build|push``."""
    parser = sub.add_parser(
        "dashboards",
        help="build the Grafana dashboards (JSON) or push them to a Grafana",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = parser.add_subparsers(dest="dashboards_command", metavar="ACTION", required=True)

    text = "regenerate dashboards/json/<uid>.json from the code"
    build_cmd = cmds.add_parser("build", help=text, description=text)
    build_cmd.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the committed JSON differs from what the code generates",
    )
    build_cmd.set_defaults(handler=_cmd_build)

    text = "upsert the ClickHouse datasource and every dashboard into a Grafana"
    push_cmd = cmds.add_parser("push", help=text, description=text)
    push_cmd.add_argument(
        "--url", help="Grafana base URL (default: CITYSTREAM_GRAFANA_URL, http://127.0.0.1:3000)"
    )
    push_cmd.add_argument("--token", help="service-account token (default: CITYSTREAM_GRAFANA_TOKEN)")
    push_cmd.add_argument("--user", help="basic-auth user (default: CITYSTREAM_GRAFANA_USER)")
    push_cmd.add_argument("--password", help="basic-auth password (default: CITYSTREAM_GRAFANA_PASSWORD)")
    push_cmd.set_defaults(handler=_cmd_push)
