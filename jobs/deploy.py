"""Run a job locally (MiniCluster) or submit it to a Flink cluster, and stop it with a savepoint.

The same job file runs three ways without code changes: in-process on a
local MiniCluster (:func:`run_local`), on the project's standalone cluster
(:func:`submit`), and with plain ``flink run -py jobs/NAME.py -- ARGS`` on
any cluster (the ``--`` keeps the Flink CLI from taking ``--parallelism`` for itself).

Upgrading a running job keeps its state: :func:`stop` takes a savepoint and
stops the job, ``submit(..., savepoint=PATH)`` starts the new code from it
(operator uids are fixed, so state finds its operators again).

Why the cluster comes in as a parameter: the jobs package does not depend
on how the local stack is managed (``citystream.stack``); any object that
knows its Flink home, its client environment and whether it runs will do.
"""

from __future__ import annotations

import importlib
import os
import subprocess
from pathlib import Path
from typing import Protocol

from citystream.catalog import DOMAIN_NAMES
from citystream.errors import UserError
from citystream.jobs import ops
from citystream.proc import tail
from citystream.settings import ROOT, Settings

#: Job name -> file under jobs/: one per department, and the detect job.
JOBS: dict[str, str] = {**{name: f"{name}.py" for name in DOMAIN_NAMES}, "detect": "detect.py"}


class FlinkCluster(Protocol):
    """What submitting needs to know of a cluster (``citystream.stack.Flink`` is one)."""

    def running(self) -> bool: ...

    def home(self) -> Path: ...

    def env(self) -> dict[str, str]: ...


def job_file(name: str) -> Path:
    """The job's file under jobs/ (what ``flink run -py`` is given)."""
    if name not in JOBS:
        raise UserError(f"unknown job {name!r}; known: {', '.join(sorted(JOBS))}")
    return ROOT / "jobs" / JOBS[name]


def run_local(name: str, job_args: list[str]) -> int:
    """Run in this process on a local MiniCluster (the PyFlink default when no cluster is named)."""
    job_file(name)
    module = importlib.import_module(f"citystream.jobs.{Path(JOBS[name]).stem}")  # pyflink: only this job's
    return int(module.main(job_args) or 0)


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
    cluster: FlinkCluster,
    name: str,
    job_args: list[str],
    *,
    detached: bool = False,
    savepoint: str | None = None,
) -> None:
    """Submit with the bundled ``flink run -py`` to ``cluster``; waits for the job unless ``detached``."""
    if not cluster.running():
        raise UserError("the Flink cluster is not running: start it with `citystream stack up`")
    cmd = flink_run_command(cluster.home(), job_file(name), job_args, detached=detached, savepoint=savepoint)
    env = cluster.env()  # built from scratch: no secret of ours (see citystream.stack.flink)
    env.update(settings.replace(job_name=f"citystream-{name}").to_env(secrets=False))
    env.setdefault("JVM_ARGS", "-Xmx512m")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    log = settings.run_dir / "flink" / "log" / f"submit-{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        code = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise UserError(f"flink run failed (exit {code}); see {log}:\n{tail(log)}")


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
    target = savepoint_target(settings, savepoint_dir)
    return ops.stop(ops.client(settings), name, target, drain=drain, timeout_s=timeout_s)


def savepoint_target(settings: Settings, savepoint_dir: Path | None = None) -> str:
    """The savepoint directory as a URI (default ``RUN_DIR/flink/savepoints``), created if local."""
    target = savepoint_dir or settings.run_dir / "flink" / "savepoints"
    target.mkdir(parents=True, exist_ok=True)
    return target.resolve().as_uri()


def recover(
    settings: Settings,
    cluster: FlinkCluster,
    name: str,
    job_args: list[str],
) -> tuple[str, str]:
    """Resubmit ``name`` from its newest retained checkpoint; returns (checkpoint, how it was found).

    Why not ZooKeeper HA: the checkpoints are already retained on the local
    disk the JobManager shares with the TaskManager, so a restarted cluster
    can resume from them without a quorum service, its ports and its data to
    operate; what HA would add (no operator step) costs a third process
    group on a one-machine stack. The job's own options are not stored by
    Flink: pass them again after ``--`` (the topic prefix and other settings
    come from the environment, as for ``submit``).
    """
    rest = ops.client(settings) if cluster.running() else None
    path, found = ops.latest_retained(rest, settings, name)
    submit(settings, cluster, name, job_args, detached=True, savepoint=path)
    return path, found
