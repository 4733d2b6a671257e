"""``citystream jobs``: run a job locally (MiniCluster) or submit it to a Flink cluster.

The same job file runs three ways without code changes: in-process on a
local MiniCluster (``run``), on the project's standalone cluster
(``submit``), and with plain ``flink run -py jobs/NAME.py`` on any cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

from citystream.errors import UserError
from citystream.settings import ROOT, Settings
from citystream.settings import load as load_settings

#: Job name -> file under jobs/.
JOBS = {
    "windows": "windows.py",
    "grid": "grid.py",
    "traffic": "traffic.py",
    "water": "water.py",
    "detect": "detect.py",
}


def job_file(name: str) -> Path:
    if name not in JOBS:
        raise UserError(f"unknown job {name!r}; known: {', '.join(sorted(JOBS))}")
    return ROOT / "jobs" / JOBS[name]


def run_local(name: str, job_args: list[str]) -> int:
    """Run in this process on a local MiniCluster (the PyFlink default when no cluster is named)."""
    import importlib

    job_file(name)
    return int(importlib.import_module(f"jobs.{Path(JOBS[name]).stem}").main(job_args) or 0)


def submit(settings: Settings, name: str, job_args: list[str], *, detached: bool = False) -> int:
    """Submit with the bundled ``flink run -py`` to the stack's cluster; waits unless ``detached``."""
    from citystream.stack import Flink

    flink = Flink(settings)
    if not flink.running():
        raise UserError("the Flink cluster is not running: start it with `citystream stack up`")
    cmd = [str(flink.home() / "bin" / "flink"), "run"]
    if detached:
        cmd.append("--detached")
    cmd += ["-py", str(job_file(name)), *job_args]
    env = flink.env()
    env.update(settings.to_env())
    env.setdefault("JVM_ARGS", "-Xmx512m")
    env["CITYSTREAM_JOB_NAME"] = f"citystream-{name}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    log = settings.run_dir / "flink" / "log" / f"submit-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        from citystream.proc import tail

        raise UserError(f"flink run failed (exit {code}); see {log}:\n{tail(log)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    return run_local(args.job, _job_args(args))


def _cmd_submit(args: argparse.Namespace) -> int:
    return submit(load_settings(), args.job, _job_args(args), detached=args.detached)


def _job_args(args: argparse.Namespace) -> list[str]:
    rest = list(args.job_args or [])
    if "--" in rest:  # argparse keeps the separator in a REMAINDER (which starts after the job name)
        rest.remove("--")
    return (["--bounded"] if args.bounded and "--bounded" not in rest else []) + rest


def register(sub: argparse._SubParsersAction) -> None:
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
        p.add_argument("job_args", nargs=argparse.REMAINDER, help="further arguments for the job after --")
        p.set_defaults(handler=handler)
