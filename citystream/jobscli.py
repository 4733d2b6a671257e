"""``citystream jobs``: run a job locally (MiniCluster) or submit it to a Flink cluster.

The same job file runs three ways without code changes: in-process on a
local MiniCluster (``run``), on the project's standalone cluster
(``submit``), and with plain ``flink run -py jobs/NAME.py -- ARGS`` on any
cluster (the ``--`` keeps the Flink CLI from taking ``--parallelism`` for itself).

Upgrading a running job keeps its state: ``stop`` takes a savepoint and
stops the job, ``submit --from-savepoint PATH`` starts the new code from it
(operator uids are fixed, so state finds its operators again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
import urllib.request
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
    return int(importlib.import_module(f"citystream.jobs.{Path(JOBS[name]).stem}").main(job_args) or 0)


def flink_run_command(
    flink_home: Path,
    program: Path,
    job_args: list[str],
    *,
    detached: bool = False,
    savepoint: str | None = None,
) -> list[str]:
    """``flink run -py PROGRAM -- ARGS``: the arguments reach the program as given.

    Why the ``--``: without it the Flink CLI takes every leading argument
    it knows as its own: ``--parallelism 2`` set the CLI's parallelism, and
    the job, not seeing it, set its default (1).
    """
    cmd = [str(flink_home / "bin" / "flink"), "run"]
    if detached:
        cmd.append("--detached")
    if savepoint:
        cmd += ["--fromSavepoint", savepoint]
    return [*cmd, "-py", str(program), "--", *job_args]


def submit(
    settings: Settings,
    name: str,
    job_args: list[str],
    *,
    detached: bool = False,
    savepoint: str | None = None,
) -> int:
    """Submit with the bundled ``flink run -py`` to the stack's cluster; waits unless ``detached``."""
    from citystream.stack import Flink

    flink = Flink(settings)
    if not flink.running():
        raise UserError("the Flink cluster is not running: start it with `citystream stack up`")
    cmd = flink_run_command(flink.home(), job_file(name), job_args, detached=detached, savepoint=savepoint)
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


def _rest(settings: Settings, path: str, body: dict | None = None) -> dict:
    """One call to the cluster's REST API (JSON in, JSON out)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{settings.flink_rest_port}{path}",
        data=data,
        headers={"Content-Type": "application/json"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def running_job(settings: Settings, name: str) -> str:
    """Id of the running job ``citystream-NAME`` on the stack's cluster."""
    try:
        jobs = _rest(settings, "/jobs/overview")["jobs"]
    except OSError as exc:
        raise UserError(f"no Flink cluster answers on port {settings.flink_rest_port}: {exc}") from None
    ids = [j["jid"] for j in jobs if j["name"] == f"citystream-{name}" and j["state"] == "RUNNING"]
    if len(ids) != 1:
        raise UserError(f"expected one running job citystream-{name}, found {len(ids)}")
    return ids[0]


def stop(
    settings: Settings,
    name: str,
    savepoint_dir: Path | None = None,
    *,
    drain: bool = False,
    timeout_s: float = 600,
) -> str:
    """Stop the running job with a savepoint; returns the savepoint's path.

    Without ``drain`` event time is not advanced: windows still open stay in
    the savepoint and close when the restored job's watermark passes them
    (an upgrade). With it the job first closes every open window and emits
    its results, as at the end of a bounded input (decommissioning; a job
    restored from that savepoint would see the later windows as late).
    """
    jid = running_job(settings, name)
    target = savepoint_dir or settings.run_dir / "flink" / "savepoints"
    target.mkdir(parents=True, exist_ok=True)
    trigger = _rest(settings, f"/jobs/{jid}/stop", {"drain": drain, "targetDirectory": target.as_uri()})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = _rest(settings, f"/jobs/{jid}/savepoints/{trigger['request-id']}")
        if status["status"]["id"] == "COMPLETED":
            op = status.get("operation", {})
            if "location" in op:
                return str(op["location"])
            raise UserError(
                f"stop with savepoint failed: {op.get('failure-cause', {}).get('stack-trace', op)}"
            )
        time.sleep(1.0)
    raise UserError(f"no savepoint of citystream-{name} after {timeout_s:.0f} s")


def _cmd_run(args: argparse.Namespace) -> int:
    job_args = _job_args(args)
    extra = ["--from-savepoint", args.from_savepoint] if args.from_savepoint else []
    return run_local(args.job, job_args + extra)


def _cmd_submit(args: argparse.Namespace) -> int:
    job_args = _job_args(args)
    return submit(load_settings(), args.job, job_args, detached=args.detached, savepoint=args.from_savepoint)


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
