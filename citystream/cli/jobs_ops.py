"""``citystream jobs list | status | savepoint | cancel | logs | recover``: operating running jobs.

They speak the Flink REST API (``citystream.jobs.ops``) of the stack's
cluster, or of any cluster given by ``--url`` / ``CITYSTREAM_FLINK_URL``.
JOB is a job name (``traffic``, ``water``, ``grid``, ``detect``: the running
``citystream-<name>``) or a Flink job id.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from citystream.jobs import ops
from citystream.jobs.deploy import JOBS, recover, savepoint_target
from citystream.settings import Settings
from citystream.settings import load as load_settings
from citystream.stack import Flink

STATUS_HELP = """\
Prints the job's state and uptime; its checkpoints (completed, failed, in
progress, the last completed one's id, time, size and path, the last
failure); the newest exception; records read by its sources and written to
its sinks; backpressure per operator chain; and its event-time watermark.

Watermark lag is measured against the cluster's clock: now minus the lowest
current input watermark of the job's window operators (of every operator
after the sources when it has none), the event time at which its windows
close. It is how stale the newest closed window is: about the out-of-order
allowance plus a window when the job keeps up with live readings, growing
when it falls behind or its input stops; for a replay of historical data
it is the data's age, not a delay.
"""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings()
    return settings.replace(flink_url=args.url) if args.url else settings


def _when(ms: int | None) -> str:
    if not ms or ms < 0:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = abs(ms) // 1000
    text = f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
    return f"-{text}" if ms < 0 else text


def _cmd_list(args: argparse.Namespace) -> int:
    jobs = ops.list_jobs(ops.client(_settings(args)))
    if not jobs:
        print("no jobs")
    for j in jobs:
        print(f"{j.jid}  {j.state:<12} {j.name:<28} started {_when(j.start_ms)}  ran {_span(j.duration_ms)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    st = ops.status(ops.client(_settings(args)), args.job)
    job, cp = st.job, st.checkpoints
    lines = [
        f"job          {job.name} ({job.jid})",
        f"state        {job.state}, up {_span(job.duration_ms)} (since {_when(job.start_ms)})",
        f"checkpoints  {cp.completed} completed, {cp.failed} failed, {cp.in_progress} in progress,"
        f" {cp.restored} restored",
        f"last         #{cp.last_id} at {_when(cp.last_ms)}, {cp.last_size} bytes, {cp.last_duration_ms} ms"
        if cp.last_id is not None
        else "last         -",
        f"path         {cp.last_path or '-'}",
        f"restored     {cp.restored_from or '-'}",
        f"ckpt failure {cp.last_failure or '-'}",
        f"last failure {_when(st.failure.when_ms)} {st.failure.summary}" if st.failure else "last failure -",
        f"records      {job.records_in} in, {job.records_out} out",
        f"watermark    {_when(st.watermark_ms)}, lag {_span(st.watermark_lag_ms)} (now - watermark)",
    ]
    for name, level, ratio in st.backpressure:
        lines.append(f"backpressure {level:<5} {ratio:4.2f}  {name[:70]}")
    print("\n".join(lines))
    return 0


def _cmd_savepoint(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(ops.savepoint(ops.client(settings), args.job, savepoint_target(settings, args.savepoint_dir)))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rest = ops.client(settings)
    if args.savepoint:
        # Flink's stop-with-savepoint, not cancel-with-savepoint: with the latter a checkpoint
        # may still commit output after the savepoint, which the restored job emits again.
        print(ops.stop(rest, args.job, savepoint_target(settings, args.savepoint_dir)))
    else:
        print(f"cancelled {ops.cancel(rest, args.job)}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    text = ops.logs(ops.client(_settings(args)), args.job, everything=args.all)
    lines = text.splitlines()
    print("\n".join(lines[-args.lines :] if args.lines else lines))
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    settings = _settings(args)
    rest = list(args.job_args or [])
    job_args = rest[rest.index("--") + 1 :] if "--" in rest else rest
    path, found = recover(settings, Flink(settings), args.job, job_args)
    how = "the cluster's checkpoint history" if found == "rest" else "the checkpoint directory"
    print(f"resumed citystream-{args.job} from {path} (found in {how})")
    return 0


def register(cmds: argparse._SubParsersAction) -> None:
    """Add the operating actions to ``citystream jobs``."""

    def add(action: str, handler, text: str, description: str | None = None) -> argparse.ArgumentParser:
        p = cmds.add_parser(
            action,
            help=text,
            description=description or text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--url", default=None, help="the cluster's REST URL (default CITYSTREAM_FLINK_URL, the stack's)"
        )
        p.set_defaults(handler=handler)
        return p

    add("list", _cmd_list, "list the cluster's jobs, running and finished")
    text = "state, uptime, checkpoints, last failure, records, backpressure, watermark lag"
    p = add("status", _cmd_status, text, STATUS_HELP)
    p.add_argument("job", help="job name (traffic, water, grid, detect) or Flink job id")
    p = add(
        "savepoint", _cmd_savepoint, "take a savepoint of a running job (it keeps running); prints its path"
    )
    p.add_argument("job", help="job name or Flink job id")
    p.add_argument("--savepoint-dir", type=Path, default=None, help="default RUN_DIR/flink/savepoints")
    p = add("cancel", _cmd_cancel, "cancel a running job; --savepoint takes one first and prints its path")
    p.add_argument("job", help="job name or Flink job id")
    p.add_argument(
        "--savepoint",
        action="store_true",
        help="end it with a savepoint (Flink's stop-with-savepoint: sources stop first, nothing is "
        "committed after it); resume with submit --from-savepoint",
    )
    p.add_argument("--savepoint-dir", type=Path, default=None, help="default RUN_DIR/flink/savepoints")
    p = add("logs", _cmd_logs, "the JobManager's and TaskManagers' log lines about a job")
    p.add_argument("job", help="job name or Flink job id")
    p.add_argument("--lines", type=int, default=200, help="last N lines (0: all; default 200)")
    p.add_argument("--all", action="store_true", help="whole logs, not only the lines about this job")
    text = "resubmit a job from its newest retained checkpoint (after a JobManager loss or a cancel)"
    p = add("recover", _cmd_recover, text, text + (
        ".\n\nThe checkpoint is taken from the cluster's checkpoint history when the JobManager "
        "survived,\nelse from RUN_DIR/flink/checkpoints/citystream-JOB/: the newest chk-N with a _metadata.\n"
        "Pass the job's own options again after --; it is submitted detached to the stack's cluster."
    ))  # fmt: skip
    p.add_argument("job", choices=sorted(JOBS), help="job name")
    p.add_argument("job_args", nargs=argparse.REMAINDER, help="the job's own arguments after --")
