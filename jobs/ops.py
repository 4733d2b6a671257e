"""Operating running jobs through the Flink REST API: find, inspect, savepoint, cancel, recover.

Why a job is named, not numbered: an operator thinks "the water job", and
every job citystream starts is called ``citystream-<job>`` (``pipeline.name``,
see jobs/runtime.py), so ``water`` finds the running ``citystream-water`` on
any cluster; a Flink job id works too, for jobs started some other way.

Why recovery resubmits from a retained checkpoint: see :func:`recover`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from citystream.errors import UserError
from citystream.jobs.flinkrest import (
    Checkpoints,
    Failure,
    FlinkRest,
    JobDetail,
    JobSummary,
    parse_backpressure,
    parse_checkpoints,
    parse_exceptions,
    parse_job,
    parse_overview,
    parse_watermarks,
)
from citystream.settings import Settings

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
ACTIVE = ("INITIALIZING", "CREATED", "RUNNING", "RESTARTING", "FAILING", "CANCELLING")


def client(settings: Settings) -> FlinkRest:
    """The REST client of the cluster the settings name (the stack's unless CITYSTREAM_FLINK_URL)."""
    return FlinkRest(settings.flink_url)


def flink_name(job: str) -> str:
    """``traffic`` -> ``citystream-traffic``; a full job name is kept as given."""
    return job if job.startswith("citystream-") else f"citystream-{job}"


def list_jobs(rest: FlinkRest) -> list[JobSummary]:
    """Every job the cluster knows (running and archived), newest first."""
    return parse_overview(rest.call("/jobs/overview"))


def resolve(rest: FlinkRest, job: str, *, active: bool = True) -> JobSummary:
    """The one job ``job`` names (a Flink id, or a name; ``active``: running or restarting only)."""
    jobs = list_jobs(rest)
    if JOB_ID.match(job):
        found = [j for j in jobs if j.jid == job]
    else:
        found = [j for j in jobs if j.name == flink_name(job) and (not active or j.state in ACTIVE)]
    if len(found) != 1:
        what = "running " if active else ""
        seen = ", ".join(f"{j.name} {j.state}" for j in jobs) or "none"
        raise UserError(f"expected one {what}job {job!r}, found {len(found)} (jobs: {seen})")
    return found[0]


@dataclass(frozen=True)
class JobStatus:
    """Everything ``jobs status`` prints about one job."""

    job: JobDetail
    checkpoints: Checkpoints
    failure: Failure | None
    #: Lowest current input watermark over the job's non-source operators (ms), if any yet.
    watermark_ms: int | None
    #: Per operator chain: (name, backpressure level, highest back-pressured ratio).
    backpressure: tuple[tuple[str, str, float], ...]

    @property
    def watermark_lag_ms(self) -> int | None:
        """How far event time trails the cluster's clock: ``now - watermark`` (see ``jobs status --help``)."""
        return None if self.watermark_ms is None else self.job.now_ms - self.watermark_ms


def status(rest: FlinkRest, job: str) -> JobStatus:
    """Gather a job's state, checkpoints, newest failure, watermark and backpressure."""
    summary = resolve(rest, job, active=False) if JOB_ID.match(job) else _newest(rest, job)
    jid = summary.jid
    detail = parse_job(rest.call(f"/jobs/{jid}"))
    checkpoints = parse_checkpoints(rest.call(f"/jobs/{jid}/checkpoints"))
    failure = parse_exceptions(rest.call(f"/jobs/{jid}/exceptions"))
    marks: dict[str, int] = {}
    pressure: list[tuple[str, str, float]] = []
    if detail.state == "RUNNING":
        for v in detail.vertices:
            if not v.name.startswith("Source"):
                mark = parse_watermarks(rest.call(f"/jobs/{jid}/vertices/{v.vid}/watermarks"))
                if mark is not None:
                    marks[v.name] = mark
            bp = parse_backpressure(rest.call(f"/jobs/{jid}/vertices/{v.vid}/backpressure"))
            if bp is not None:
                pressure.append((v.name, *bp))
    return JobStatus(detail, checkpoints, failure, job_watermark(marks), tuple(pressure))


def job_watermark(marks: dict[str, int]) -> int | None:
    """The event time the job's windows have reached: the lowest watermark of its window operators.

    Why not the lowest of all operators: a two-input operator's watermark
    metric is the minimum of its inputs even when one of them is idle (Flink
    ignores idle inputs when it forwards watermarks, not in the metric), so
    a temporal join with the sensor registry, whose input stays at the
    registry's last change, would report the registry's time. Jobs without
    window operators (the detect job's timers) fall back to every operator.
    """
    windows = [m for name, m in marks.items() if "Window" in name]
    chosen = windows or list(marks.values())
    return min(chosen) if chosen else None


def _newest(rest: FlinkRest, job: str) -> JobSummary:
    """The running job of that name, else the newest one the cluster remembers."""
    jobs = [j for j in list_jobs(rest) if j.name == flink_name(job)]
    if not jobs:
        raise UserError(f"no job {flink_name(job)} on {rest.url}")
    running = [j for j in jobs if j.state in ACTIVE]
    return (running or jobs)[0]


def savepoint(rest: FlinkRest, job: str, target: str, *, cancel: bool = False, timeout_s: float = 600) -> str:
    """Trigger a savepoint into ``target`` (a directory URI), optionally cancelling the job; its path."""
    jid = resolve(rest, job).jid
    trigger = rest.call(f"/jobs/{jid}/savepoints", {"target-directory": target, "cancel-job": cancel})
    op = rest.wait_operation(f"/jobs/{jid}/savepoints/{trigger['request-id']}", timeout_s)
    if "location" not in op:
        raise UserError(f"savepoint failed: {_cause(op)}")
    return str(op["location"])


def stop(rest: FlinkRest, job: str, target: str, *, drain: bool = False, timeout_s: float = 600) -> str:
    """Stop with a savepoint (``/stop``: sources end first, so nothing is emitted after it); its path."""
    jid = resolve(rest, job).jid
    trigger = rest.call(f"/jobs/{jid}/stop", {"drain": drain, "targetDirectory": target})
    op = rest.wait_operation(f"/jobs/{jid}/savepoints/{trigger['request-id']}", timeout_s)
    if "location" not in op:
        raise UserError(f"stop with savepoint failed: {_cause(op)}")
    return str(op["location"])


def cancel(rest: FlinkRest, job: str, *, timeout_s: float = 120) -> str:
    """Cancel without a savepoint (its retained checkpoints stay); returns the job id once cancelled."""
    jid = resolve(rest, job).jid
    rest.call(f"/jobs/{jid}?mode=cancel", method="PATCH")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if rest.call(f"/jobs/{jid}").get("state") in ("CANCELED", "FAILED", "FINISHED"):
            return jid
        time.sleep(0.5)
    raise UserError(f"job {jid} still not cancelled after {timeout_s:.0f} s")


def _cause(op: dict) -> str:
    trace = str(op.get("failure-cause", {}).get("stack-trace", op))
    return trace.splitlines()[0] if trace else str(op)


def logs(rest: FlinkRest, job: str, *, everything: bool = False) -> str:
    """The JobManager's and TaskManagers' log lines about this job (its id, name or operators)."""
    summary = resolve(rest, job, active=False) if JOB_ID.match(job) else _newest(rest, job)
    detail = parse_job(rest.call(f"/jobs/{summary.jid}"))
    needles = [summary.jid, summary.name, *{v.name[:60] for v in detail.vertices}]
    parts = [("jobmanager", rest.text("/jobmanager/log"))]
    for tm in rest.call("/taskmanagers").get("taskmanagers", []):
        parts.append((f"taskmanager {tm['id']}", rest.text(f"/taskmanagers/{tm['id']}/log")))
    out = []
    for source, text in parts:
        lines = text.splitlines() if everything else _about(text.splitlines(), needles)
        if lines:
            out.append(f"==> {source} <==")
            out.extend(lines)
    return "\n".join(out)


def _about(lines: list[str], needles: list[str]) -> list[str]:
    """Lines naming the job, each with the stack trace that follows it."""
    keep: list[str] = []
    inside = False
    for line in lines:
        if any(n and n in line for n in needles):
            keep.append(line)
            inside = True
        elif inside and (line.startswith(("\t", " ", "Caused by")) or not line[:4].isdigit()):
            keep.append(line)
        else:
            inside = False
    return keep


def checkpoint_root(settings: Settings, job: str) -> Path:
    """Where a job's checkpoints go (jobs/runtime.py: ``RUN_DIR/flink/checkpoints/<job name>``)."""
    return settings.run_dir / "flink" / "checkpoints" / flink_name(job)


def latest_on_disk(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``: a ``chk-N`` with its ``_metadata`` written.

    ``_metadata`` is the last file Flink writes for a checkpoint, so a ``chk-N``
    without it is one the crash interrupted. Newest by the metadata's time,
    then by N, across every earlier job id of that name.
    """
    found = [
        meta.parent
        for meta in root.glob("*/chk-*/_metadata")
        if meta.parent.name.removeprefix("chk-").isdigit()
    ]
    if not found:
        return None
    return max(found, key=lambda d: ((d / "_metadata").stat().st_mtime_ns, int(d.name[4:])))


def latest_retained(rest: FlinkRest | None, settings: Settings, job: str) -> tuple[str, str]:
    """The checkpoint to resume ``job`` from, and how it was found (``rest`` or ``disk``).

    First the cluster's memory: the newest job of that name that is no longer
    running and its newest completed checkpoint still on disk. A JobManager
    that was killed and restarted remembers nothing (no HA), so then the
    checkpoint directory itself.
    """
    if rest is not None:
        try:
            previous = [j for j in list_jobs(rest) if j.name == flink_name(job)]
        except UserError:
            previous = []
        if any(j.state in ACTIVE for j in previous):
            raise UserError(f"{flink_name(job)} is running; nothing to recover")
        for j in previous:
            for path in parse_checkpoints(rest.call(f"/jobs/{j.jid}/checkpoints")).history_paths:
                if urlparse(path).scheme not in ("", "file") or (_local(path) / "_metadata").exists():
                    return path, "rest"
    chk = latest_on_disk(checkpoint_root(settings, job))
    if chk is None:
        raise UserError(f"no retained checkpoint of {flink_name(job)} under {checkpoint_root(settings, job)}")
    return chk.as_uri(), "disk"


def _local(path: str) -> Path:
    """A ``file:`` URI (or a plain path) -> a local path."""
    parsed = urlparse(path)
    return Path(url2pathname(parsed.path)) if parsed.scheme == "file" else Path(path)
