"""A replay: the same job code, bounded by exact offsets, writing under a run id.

What is shared with the live job: the job file itself (``python -m
citystream.jobs.NAME``, as ``flink run -py`` would run it), with the job's own
``--offsets FILE`` and ``--output-suffix .replay.RUN_ID`` options. What is not:

* result topics: ``<topic>.replay.<run id>`` (created here, the live topic's
  partition count and the spec's configs), so live consumers never see them;
* consumer groups and transactional ids carry the suffix, and the Flink
  source commits no offsets (``commit.offsets.on.checkpoint = false``);
* store rows: a shadow database ``<database>_replay_<run id>`` with the full
  live schema (the same migrations), loaded by a loader of its own group.
  Queries written for the live tables run unchanged against it.

Each job runs in its own Python process on a local Flink MiniCluster, as
``citystream jobs run`` does: the domain job and the detect job build
different Flink environments, which one JVM would mix up.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from citystream import kafkaconf
from citystream.catalog import DOMAIN_NAMES, domain
from citystream.connectors.loader import LoadStats, load
from citystream.errors import UserError
from citystream.proc import child_env, tail
from citystream.replay.pace import Pacer, copy_ranges, read_range
from citystream.replay.ranges import Ranges, current_ranges, record_count, write_ranges
from citystream.settings import Settings
from citystream.store.client import connect
from citystream.store.migrate import migrate
from citystream.topics import load_spec

Echo = Callable[[str], object]
JOBS = (*DOMAIN_NAMES, "detect")
#: Result topics (spec suffixes) each kind of job writes.
DOMAIN_OUTPUTS = ("aggregates", "late-events", "dead-letter", "sensor-health")
DETECT_OUTPUTS = ("anomalies", "alerts", "sensor-health")
_RUN_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,39}$")


@dataclass
class ReplayResult:
    """Where a replay's results are and what it read: what a backtest scores."""

    run_id: str
    job: str
    #: The input offsets of every job that ran (the domain job's readings, then detect's aggregates).
    offsets: dict[str, Ranges] = field(default_factory=dict)
    #: Spec suffix (``aggregates``, ``anomalies`` ...) -> the replay's topic.
    topics: dict[str, str] = field(default_factory=dict)
    #: The shadow database holding the loaded rows (None: not loaded).
    database: str | None = None
    #: Seconds each job ran (``water``, ``detect``) and the load took (``load``).
    seconds: dict[str, float] = field(default_factory=dict)
    loaded: int = 0
    run_dir: Path | None = None

    def save(self) -> Path:
        """``RUN_DIR/replay/RUN_ID/result.json``: the run's record for later scoring and repeats."""
        path = self.run_dir / "result.json"  # type: ignore[operator]
        body = {
            "run_id": self.run_id, "job": self.job, "topics": self.topics, "database": self.database,
            "seconds": self.seconds, "loaded": self.loaded,
            "offsets": {j: {t: {str(p): list(r) for p, r in ps.items()} for t, ps in o.items()}
                        for j, o in self.offsets.items()},
        }  # fmt: skip
        path.write_text(json.dumps(body, indent=2) + "\n")
        return path


def new_run_id(now: dt.datetime | None = None) -> str:
    """A run id from the UTC time (``r20260105t101500``): sortable, and valid in topic and table names."""
    return (now or dt.datetime.now(dt.UTC)).strftime("r%Y%m%dt%H%M%S")


def check_run_id(run_id: str) -> str:
    """Refuse a run id that would not be a plain topic and database name part."""
    if not _RUN_ID.match(run_id):
        raise UserError(f"run id {run_id!r}: use 1-40 of a-z, 0-9 and _ (starting with a letter or digit)")
    return run_id


def suffix(run_id: str) -> str:
    """What a replay appends to topic, group and transactional-id names."""
    return f".replay.{check_run_id(run_id)}"


def shadow_database(settings: Settings, run_id: str) -> str:
    """The store database of a replay's rows (same schema as the live one)."""
    return f"{settings.clickhouse_database}_replay_{check_run_id(run_id)}"


def input_topic(settings: Settings, job: str) -> str:
    """The live topic a job reads: its readings, or (detect) the aggregates."""
    if job not in JOBS:
        raise UserError(f"unknown job {job!r}; known: {', '.join(JOBS)}")
    return settings.topic("aggregates" if job == "detect" else domain(job).topic)


# --------------------------------------------------------------------------- topics


def _admin(settings: Settings) -> AdminClient:
    return AdminClient(kafkaconf.confluent(settings, "admin"))


def create_topics(settings: Settings, names: dict[str, str], partitions: dict[str, int]) -> None:
    """Create ``names`` (spec suffix -> topic) with the spec's configs; existing ones are left alone."""
    spec = {s.suffix: s for s in load_spec(settings.topics_spec)}
    admin = _admin(settings)
    existing = set(admin.list_topics(timeout=10).topics)
    new = [
        NewTopic(
            topic,
            num_partitions=partitions.get(sfx) or spec[sfx].partitions,
            replication_factor=spec[sfx].replication_factor,
            config={k: str(v) for k, v in spec[sfx].configs.items()},
        )
        for sfx, topic in names.items()
        if topic not in existing
    ]
    for topic, future in (admin.create_topics(new) if new else {}).items():
        try:
            future.result(30)
        except Exception as exc:
            raise UserError(f"could not create the replay topic {topic}: {exc}") from None


def live_partitions(settings: Settings, suffixes: Sequence[str]) -> dict[str, int]:
    """Partition counts of the live topics (so a replay's keys land as the live job's did)."""
    topics = _admin(settings).list_topics(timeout=10).topics
    return {s: len(topics[settings.topic(s)].partitions) for s in suffixes if settings.topic(s) in topics}


# --------------------------------------------------------------------------- running one job


def _run_job(
    settings: Settings, job: str, args: list[str], log: Path, watch: str | None, echo: Echo
) -> float:
    """``python -m citystream.jobs.JOB ARGS`` to completion; progress on ``echo``; the seconds it took."""
    cmd = [sys.executable, "-m", f"citystream.jobs.{job}", *args]
    began = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=child_env(settings.to_env()), stdout=out, stderr=subprocess.STDOUT)
        try:
            last = began
            while proc.poll() is None:
                time.sleep(0.5)
                if time.monotonic() - last >= 5:
                    last = time.monotonic()
                    written = _written(settings, watch)
                    echo(f"   {job}: {last - began:4.0f} s, {written} result records so far")
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    if proc.returncode != 0:
        raise UserError(f"replay of {job} failed (exit {proc.returncode}); see {log}:\n{tail(log)}")
    return time.monotonic() - began


def _written(settings: Settings, topic: str | None) -> str:
    if topic is None:
        return "?"
    try:
        return str(record_count(current_ranges(settings, [topic])))
    except Exception:  # progress only: a broker hiccup must not fail the replay
        return "?"


# --------------------------------------------------------------------------- the replay


@dataclass
class _Step:
    """One job of a replay: its name, the offsets it reads and its extra arguments."""

    job: str
    offsets: Ranges
    args: list[str]


def replay(
    settings: Settings,
    job: str,
    offsets: Ranges,
    *,
    run_id: str | None = None,
    detect: bool = False,
    config: Path | None = None,
    job_args: Sequence[str] = (),
    parallelism: int | None = None,
    speed: float | None = None,
    load_results: bool = True,
    echo: Echo = lambda _line: None,
) -> ReplayResult:
    """Run ``job`` over exactly ``offsets`` of its input topic under ``run_id``; where the results are.

    ``detect`` (domain jobs) then runs the detect job over everything the
    domain replay wrote, with ``config`` (default infra/detection.toml) - what a
    backtest does once per configuration. ``job_args`` go to the (first) job
    as given: pass the live job's window and watermark options for equal
    results. ``speed`` paces the input (1.0: as produced; see
    :mod:`citystream.replay.pace`); None reads as fast as Flink can.
    ``load_results`` loads the result topics into the shadow database.
    """
    run_id = check_run_id(run_id or new_run_id())
    sfx = suffix(run_id)
    source = input_topic(settings, job)
    if source not in offsets:
        raise UserError(f"the offsets name no range of {source}, the input of {job} (only {sorted(offsets)})")
    run_dir = settings.run_dir / "replay" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    result = ReplayResult(run_id=run_id, job=job, run_dir=run_dir)
    common = ["--output-suffix", sfx] + (["--parallelism", str(parallelism)] if parallelism else [])
    detect_args = common + (["--config", str(config)] if config else [])
    own = detect_args if job == "detect" else common
    first = _Step(job, {source: dict(offsets[source])}, [*own, *job_args])
    outputs = DETECT_OUTPUTS if job == "detect" else DOMAIN_OUTPUTS + (DETECT_OUTPUTS if detect else ())
    result.topics = {s: settings.topic(s) + sfx for s in dict.fromkeys(outputs)}
    _fresh(settings, run_id, result.topics)
    create_topics(settings, result.topics, live_partitions(settings, list(result.topics)))
    echo(f"== replay {run_id}: {job} over {record_count(first.offsets)} offsets of {source}")
    _run_step(settings, first, result, sfx, speed, echo)
    if detect and job != "detect":
        aggregates = result.topics["aggregates"]
        step = _Step("detect", current_ranges(settings, [aggregates]), [*detect_args, "--input-suffix", sfx])
        echo(f"== replay {run_id}: detect over {record_count(step.offsets)} aggregates of the replay")
        _run_step(settings, step, result, sfx, None, echo)
    if load_results:
        _load(settings, result, echo)
    result.save()
    return result


def replay_detect(
    settings: Settings,
    source_run: str,
    *,
    run_id: str,
    config: Path | None = None,
    parallelism: int | None = None,
    load_results: bool = True,
    echo: Echo = lambda _line: None,
) -> ReplayResult:
    """The detect job over everything an earlier domain replay (``source_run``) wrote, under ``run_id``.

    What a backtest of several detection configurations runs: the domain job
    once (``replay(..., detect=False)``), then this once per configuration.
    """
    run_id = check_run_id(run_id)
    sfx, source_sfx = suffix(run_id), suffix(source_run)
    run_dir = settings.run_dir / "replay" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    result = ReplayResult(run_id=run_id, job="detect", run_dir=run_dir)
    result.topics = {s: settings.topic(s) + sfx for s in DETECT_OUTPUTS}
    _fresh(settings, run_id, result.topics)
    create_topics(settings, result.topics, live_partitions(settings, list(result.topics)))
    args = ["--output-suffix", sfx, "--input-suffix", source_sfx]
    args += ["--parallelism", str(parallelism)] if parallelism else []
    args += ["--config", str(config)] if config else []
    step = _Step("detect", current_ranges(settings, [settings.topic("aggregates") + source_sfx]), args)
    echo(f"== replay {run_id}: detect over {record_count(step.offsets)} aggregates of replay {source_run}")
    _run_step(settings, step, result, sfx, None, echo)
    if load_results:
        _load(settings, result, echo)
    result.save()
    return result


def _fresh(settings: Settings, run_id: str, topics: dict[str, str]) -> None:
    """Refuse a run id whose topics exist: its results would mix with an earlier run's."""
    existing = set(_admin(settings).list_topics(timeout=10).topics) & set(topics.values())
    if existing:
        raise UserError(
            f"run id {run_id} was used before ({', '.join(sorted(existing))} exist): choose another "
            f"or remove it with `citystream replay --discard {run_id}`"
        )


def _load(settings: Settings, result: ReplayResult, echo: Echo) -> None:
    began = time.monotonic()
    stats = load_replay(settings, result.run_id)
    result.database, result.loaded = shadow_database(settings, result.run_id), stats.loaded
    result.seconds["load"] = time.monotonic() - began
    echo(f"== loaded {stats.loaded} rows into the shadow database {result.database}")


def _run_step(
    settings: Settings, step: _Step, result: ReplayResult, sfx: str, speed: float | None, echo: Echo
) -> None:
    """One job of the replay, paced through a copy of its input when ``speed`` is set."""
    result.offsets[step.job] = step.offsets
    write_ranges(step.offsets, result.run_dir / f"{step.job}-offsets.json")  # type: ignore[operator]
    reads, pacer = step.offsets, None
    if speed is not None:
        ((topic, parts),) = step.offsets.items()
        records = read_range(settings, topic, parts)
        copy = topic + sfx
        _create_copy(settings, copy, len(parts))
        reads = copy_ranges(records, copy, len(parts))
        pacer = Pacer(settings, records, copy, speed)
        step.args += ["--input-suffix", sfx]
        echo(f"   pacing {len(records)} records at {speed:g}x into {copy}")
        pacer.start()
    offsets_file = write_ranges(reads, result.run_dir / f"{step.job}-reads.json")  # type: ignore[operator]
    watch = result.topics.get("anomalies" if step.job == "detect" else "aggregates")
    log = result.run_dir / f"{step.job}.log"  # type: ignore[operator]
    try:
        result.seconds[step.job] = _run_job(
            settings, step.job, ["--offsets", str(offsets_file), *step.args], log, watch, echo
        )
    finally:
        if pacer is not None:
            pacer.stop.set()
            pacer.join()
    if pacer is not None and pacer.error is not None:
        raise UserError(f"the paced copy failed: {pacer.error}")
    echo(f"   {step.job} finished in {result.seconds[step.job]:.1f} s")


def _create_copy(settings: Settings, topic: str, partitions: int) -> None:
    admin = _admin(settings)
    if topic in admin.list_topics(timeout=10).topics:
        raise UserError(f"{topic} exists: a paced replay needs a fresh run id")
    future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
    future.result(30)


def load_replay(settings: Settings, run_id: str) -> LoadStats:
    """The replay's result topics -> its shadow database (created with the live schema on first use)."""
    shadow = settings.replace(clickhouse_database=shadow_database(settings, run_id))
    migrate(shadow)
    group = f"citystream-replay-{run_id}-loader"
    return load(shadow, until_end=True, group_id=group, topic_suffix=suffix(run_id))


def discard(settings: Settings, run_id: str) -> list[str]:
    """Delete a replay's topics and shadow database; what was removed."""
    sfx = suffix(run_id)
    admin = _admin(settings)
    doomed = [t for t in admin.list_topics(timeout=10).topics if t.endswith(sfx)]
    for future in (admin.delete_topics(doomed) if doomed else {}).values():
        future.result(30)
    database = shadow_database(settings, run_id)
    client = connect(settings, database=None)
    try:
        client.command(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        client.close()
    return [*doomed, database]
