"""The Flink REST API as citystream's operators need it: a small client and pure parsers.

Why REST and not ``flink list`` / ``flink cancel``: the REST API is what every
Flink cluster (standalone, YARN, Kubernetes) serves on its web port, it needs
no JVM on the operator's side (a ``flink`` client starts one per call), and
it tells what the CLI does not: checkpoint history, exceptions, watermarks,
backpressure. The parsers are pure functions of the JSON so they are tested
on replies captured from a real cluster (tests/data/flinkrest/).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from citystream.errors import UserError

#: A watermark below this is Flink's "no watermark yet" (Long.MIN_VALUE, or 0 before any record).
NO_WATERMARK = 0


class FlinkRest:
    """JSON over HTTP to one cluster's REST endpoint (``settings.flink_url``)."""

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, path: str, body: dict | None = None, method: str | None = None) -> Any:
        """One request; a cluster that does not answer is a user error naming the URL."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            headers={"Content-Type": "application/json"},
            method=method or ("GET" if body is None else "POST"),
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            raise UserError(f"Flink REST {path} answered {exc.code}: {detail}") from None
        except OSError as exc:
            raise UserError(f"no Flink cluster answers at {self.url}: {exc}") from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def text(self, path: str) -> str:
        """A plain-text resource (the JobManager's and TaskManagers' logs)."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=self.timeout_s) as resp:
                return resp.read().decode(errors="replace")
        except OSError as exc:
            raise UserError(f"cannot read {path} from {self.url}: {exc}") from None

    def wait_operation(self, path: str, timeout_s: float) -> dict:
        """Poll an asynchronous operation (savepoint, stop) until it completes; its ``operation``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.call(path)
            if status.get("status", {}).get("id") == "COMPLETED":
                return status.get("operation", {})
            time.sleep(1.0)
        raise UserError(f"{path} did not complete within {timeout_s:.0f} s")


@dataclass(frozen=True)
class JobSummary:
    """One row of ``/jobs/overview``."""

    jid: str
    name: str
    state: str
    start_ms: int
    end_ms: int
    duration_ms: int


def parse_overview(doc: dict) -> list[JobSummary]:
    """``/jobs/overview`` -> newest job first."""
    jobs = [
        JobSummary(
            j["jid"],
            j["name"],
            j["state"],
            int(j.get("start-time", -1)),
            int(j.get("end-time", -1)),
            int(j.get("duration", 0)),
        )
        for j in doc.get("jobs", [])
    ]
    return sorted(jobs, key=lambda j: j.start_ms, reverse=True)


@dataclass(frozen=True)
class Checkpoints:
    """What ``/jobs/:jid/checkpoints`` says of a job's checkpoints."""

    completed: int = 0
    failed: int = 0
    in_progress: int = 0
    restored: int = 0
    last_id: int | None = None
    last_ms: int | None = None
    last_path: str | None = None
    last_size: int | None = None
    last_duration_ms: int | None = None
    last_failure: str | None = None
    restored_from: str | None = None
    #: Completed checkpoints' external paths, newest first (retained ones that recovery may use).
    history_paths: tuple[str, ...] = ()


def parse_checkpoints(doc: dict) -> Checkpoints:
    """``/jobs/:jid/checkpoints`` -> counts, the latest completed (and its path), the latest failure."""
    counts = doc.get("counts", {})
    latest = doc.get("latest") or {}
    done = latest.get("completed") or {}
    failed = latest.get("failed") or {}
    restored = latest.get("restored") or {}
    history = sorted(doc.get("history") or [], key=lambda c: c.get("id", 0), reverse=True)
    paths = tuple(
        c["external_path"]
        for c in history
        if c.get("status") == "COMPLETED"
        and c.get("external_path") not in (None, "", "<checkpoint-not-externally-addressable>")
    )
    return Checkpoints(
        completed=int(counts.get("completed", 0)),
        failed=int(counts.get("failed", 0)),
        in_progress=int(counts.get("in_progress", 0)),
        restored=int(counts.get("restored", 0)),
        last_id=done.get("id"),
        last_ms=done.get("latest_ack_timestamp"),
        last_path=done.get("external_path"),
        last_size=done.get("checkpointed_size", done.get("state_size")),
        last_duration_ms=done.get("end_to_end_duration"),
        last_failure=failed.get("failure_message"),
        restored_from=restored.get("external_path"),
        history_paths=paths,
    )


@dataclass(frozen=True)
class Failure:
    """The newest entry of a job's exception history."""

    when_ms: int
    summary: str
    task: str | None


def parse_exceptions(doc: dict) -> Failure | None:
    """``/jobs/:jid/exceptions`` -> the newest failure: exception class and message, first line."""
    entries = (doc.get("exceptionHistory") or {}).get("entries") or []
    if not entries:
        return None
    newest = max(entries, key=lambda e: e.get("timestamp", 0))
    trace = (newest.get("stacktrace") or newest.get("exceptionName") or "").strip()
    first = trace.splitlines()[0] if trace else newest.get("exceptionName", "?")
    return Failure(int(newest.get("timestamp", 0)), first[:300], newest.get("taskName"))


@dataclass(frozen=True)
class Vertex:
    """One operator chain of a job, with its record counts."""

    vid: str
    name: str
    parallelism: int
    status: str
    records_in: int
    records_out: int


@dataclass(frozen=True)
class JobDetail:
    """``/jobs/:jid``: state, times and operator chains."""

    jid: str
    name: str
    state: str
    start_ms: int
    now_ms: int
    duration_ms: int
    vertices: tuple[Vertex, ...] = field(default=())

    @property
    def records_in(self) -> int:
        """Records the sources read (Flink counts a source's reads as its output)."""
        sources = [v for v in self.vertices if v.name.startswith("Source")]
        return sum(v.records_out for v in sources) if sources else 0

    @property
    def records_out(self) -> int:
        """Records the sinks were given (a sink's input; its output is not counted by Flink)."""
        sinks = [v for v in self.vertices if "Sink" in v.name or "Writer" in v.name]
        return sum(v.records_in for v in sinks)


def parse_job(doc: dict) -> JobDetail:
    """``/jobs/:jid`` -> :class:`JobDetail`."""
    vertices = tuple(
        Vertex(
            v["id"],
            v["name"],
            int(v.get("parallelism", 1)),
            v.get("status", "?"),
            int(v.get("metrics", {}).get("read-records", 0)),
            int(v.get("metrics", {}).get("write-records", 0)),
        )
        for v in doc.get("vertices", [])
    )
    return JobDetail(
        doc["jid"], doc["name"], doc["state"], int(doc.get("start-time", -1)), int(doc.get("now", 0)),
        int(doc.get("duration", 0)), vertices,
    )  # fmt: skip


def parse_watermarks(doc: list) -> int | None:
    """``/jobs/:jid/vertices/:vid/watermarks`` -> the vertex's lowest input watermark (ms), if any."""
    values = []
    for item in doc or []:
        if str(item.get("id", "")).endswith("currentInputWatermark"):
            try:
                value = int(float(item["value"]))
            except (KeyError, ValueError):
                continue
            if value > NO_WATERMARK:
                values.append(value)
    return min(values) if values else None


def parse_backpressure(doc: dict) -> tuple[str, float] | None:
    """``/jobs/:jid/vertices/:vid/backpressure`` -> (level, highest busy ratio of a subtask)."""
    if doc.get("status") != "ok":
        return None
    ratios = [float(s.get("ratio", s.get("backPressuredRatio", 0.0))) for s in doc.get("subtasks", [])]
    return doc.get("backpressureLevel", doc.get("backpressure-level", "?")), max(ratios, default=0.0)
