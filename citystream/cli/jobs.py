"""``citystream jobs run | submit | stop | list | status | savepoint | cancel | logs | recover``.

The same job file runs in-process on a local MiniCluster (``run``), on the
project's standalone cluster (``submit``), and with plain ``flink run -py
jobs/NAME.py -- ARGS`` on any cluster; ``stop`` takes a savepoint that
``submit --from-savepoint PATH`` starts the upgraded code from. The operating
actions (list ... recover) talk to the cluster's REST API: see citystream/cli/jobs_ops.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from citystream.cli import jobs_ops
from citystream.jobs.deploy import JOBS, run_local, stop, submit
from citystream.settings import load as load_settings
from citystream.stack import Flink


def _cmd_run(args: argparse.Namespace) -> int:
    job_args = _job_args(args)
    extra = ["--from-savepoint", args.from_savepoint] if args.from_savepoint else []
    return run_local(args.job, job_args + extra)


def _cmd_submit(args: argparse.Namespace) -> int:
    job_args = _job_args(args)
    settings = load_settings()
    flink = Flink(settings)
    submit(settings, flink, args.job, job_args, detached=args.detached, savepoint=args.from_savepoint)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    print(stop(load_settings(), args.job, args.savepoint_dir, drain=args.drain))
    return 0


def _job_args(args: argparse.Namespace) -> list[str]:
    """The job's own arguments; options of ours written after the job name are taken back.

    argparse's REMAINDER starts right after the job name, so ``jobs submit
    detect --detached -- --config x.toml`` would hand ``--detached`` to the
    job; what comes after ``--`` is the job's, untouched.
    """
    rest = list(args.job_args or [])
    ours, theirs = (rest[: rest.index("--")], rest[rest.index("--") + 1 :]) if "--" in rest else (rest, [])
    mine: list[str] = []
    i = 0
    while i < len(ours):
        a = ours[i]
        if a == "--bounded":
            args.bounded = True
        elif a == "--detached" and hasattr(args, "detached"):
            args.detached = True
        elif a == "--from-savepoint" and i + 1 < len(ours):
            args.from_savepoint = ours[i + 1]
            i += 1
        elif a.startswith("--from-savepoint="):
            args.from_savepoint = a.split("=", 1)[1]
        else:
            mine.append(a)
        i += 1
    return (["--bounded"] if args.bounded else []) + mine + theirs


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream jobs`` and its actions."""
    jobs = sub.add_parser(
        "jobs",
        help="run or submit the PyFlink jobs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    for action, handler, text in (
        ("run", _cmd_run, "run a job in this process on a local Flink MiniCluster"),
        ("submit", _cmd_submit, "submit a job to the stack's Flink cluster with `flink run -py`"),
    ):
        p = cmds.add_parser(action, help=text, description=text)
        p.add_argument("job", choices=sorted(JOBS), help="job name")
        p.add_argument(
            "--bounded",
            action="store_true",
            help="stop after the records present when the job starts (backfills, demos)",
        )
        if action == "submit":
            p.add_argument("--detached", action="store_true", help="return once submitted")
        p.add_argument(
            "--from-savepoint",
            default=None,
            metavar="PATH",
            help="start from this savepoint (see `jobs stop`)",
        )
        p.add_argument("job_args", nargs=argparse.REMAINDER, help="further arguments for the job after --")
        p.set_defaults(handler=handler)
    text = "stop a job on the stack's cluster with a savepoint; prints the savepoint's path"
    p = cmds.add_parser("stop", help=text, description=text)
    p.add_argument("job", choices=sorted(JOBS), help="job name")
    p.add_argument(
        "--savepoint-dir",
        type=Path,
        default=None,
        help="where to write it (default RUN_DIR/flink/savepoints)",
    )
    p.add_argument(
        "--drain", action="store_true",
        help="close every open window and emit its results first (decommissioning, not upgrades)",
    )  # fmt: skip
    p.set_defaults(handler=_cmd_stop)
    jobs_ops.register(cmds)
