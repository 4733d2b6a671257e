"""Fast tests of the jobs-operations code: REST parsers on replies captured from a real cluster,
the on-disk checkpoint choice of ``jobs recover``, and the job settings applied to every job.

The JSON under tests/data/flinkrest/ was captured by tests/test_jobs_ops.py
(``capture``) from the stack's Flink 2.2.1 cluster running the traffic job,
so the parsers are checked against what Flink really sends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from citystream.errors import UserError
from citystream.jobs import flinkrest, ops
from citystream.settings import ROOT, Settings, load

DATA = ROOT / "tests" / "data" / "flinkrest"


def doc(name: str):
    return json.loads((DATA / f"{name}.json").read_text())


def test_overview_names_the_running_job() -> None:
    jobs = flinkrest.parse_overview(doc("overview"))
    running = [j for j in jobs if j.state == "RUNNING"]
    assert [j.name for j in running] == ["citystream-traffic"]
    assert len(running[0].jid) == 32 and running[0].start_ms > 0


def test_job_detail_counts_source_reads_and_sink_writes() -> None:
    job = flinkrest.parse_job(doc("job"))
    assert job.name == "citystream-traffic" and job.state == "RUNNING"
    assert job.now_ms >= job.start_ms > 0
    assert any(v.name.startswith("Source") for v in job.vertices)
    assert job.records_in > 0 and job.records_out > 0


def test_checkpoints_give_counts_and_the_last_completed_path() -> None:
    raw = doc("checkpoints")
    cp = flinkrest.parse_checkpoints(raw)
    assert cp.completed == raw["counts"]["completed"] >= 1
    assert cp.last_path and cp.last_path.startswith("file:") and f"chk-{cp.last_id}" in cp.last_path
    assert cp.history_paths and cp.history_paths[0] == cp.last_path
    # Triggers declined while the tasks were still starting count as failed, with no failed entry.
    assert cp.failed == raw["counts"]["failed"] and cp.last_failure is None
    assert cp.last_size is not None and cp.last_size > 0 and cp.in_progress == 0


def test_watermarks_exceptions_and_backpressure() -> None:
    mark = flinkrest.parse_watermarks(doc("watermarks"))
    assert mark is not None and mark > 1_767_571_200_000
    assert (
        flinkrest.parse_watermarks([{"id": "0.currentInputWatermark", "value": "-9223372036854775808"}])
        is None
    )
    assert flinkrest.parse_exceptions(doc("exceptions")) is None  # a healthy job
    level, ratio = flinkrest.parse_backpressure(doc("backpressure")) or ("?", -1.0)
    assert level in ("ok", "low", "high") and 0.0 <= ratio <= 1.0


def test_the_job_watermark_is_its_windows_not_an_idle_join_input() -> None:
    marks = {"TemporalJoin[14] -> Calc[15]": 100, "GroupWindowAggregate[18] -> Calc[19]": 500,
             "GroupWindowAggregate[24] -> Calc[25]": 400, "OverAggregate[6]": 900}  # fmt: skip
    assert ops.job_watermark(marks) == 400
    assert ops.job_watermark({"KeyedProcess -> Sink": 700, "Map": 650}) == 650
    assert ops.job_watermark({}) is None


def test_exception_summary_is_the_newest_entrys_first_line() -> None:
    history = {
        "exceptionHistory": {
            "entries": [
                {
                    "timestamp": 1,
                    "exceptionName": "a.Old",
                    "stacktrace": "a.Old: first\n\tat x",
                    "taskName": "t",
                },
                {
                    "timestamp": 2,
                    "exceptionName": "b.New",
                    "stacktrace": "b.New: boom\n\tat y",
                    "taskName": None,
                },
            ]
        }
    }
    failure = flinkrest.parse_exceptions(history)
    assert failure == flinkrest.Failure(2, "b.New: boom", None)


def test_recover_picks_the_newest_complete_checkpoint_on_disk(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    root = ops.checkpoint_root(settings, "water")
    with pytest.raises(UserError, match="no retained checkpoint"):
        ops.latest_retained(None, settings, "water")
    old, new, torn = root / ("a" * 32) / "chk-9", root / ("b" * 32) / "chk-3", root / ("b" * 32) / "chk-4"
    for i, d in enumerate((old, new, torn)):
        d.mkdir(parents=True)
        if d is not torn:  # chk-4: the crash came before its _metadata
            (d / "_metadata").write_bytes(b"x")
            os.utime(d / "_metadata", ns=(10**18 + i, 10**18 + i))
    (root / ("b" * 32) / "shared").mkdir()
    assert ops.latest_on_disk(root) == new
    path, found = ops.latest_retained(None, settings, "water")
    assert (path, found) == (new.as_uri(), "disk")


def test_job_settings_reach_every_job_and_bad_values_are_named() -> None:
    from citystream.jobs.runtime import job_options

    env = {
        "CITYSTREAM_CHECKPOINT_INTERVAL": "30 s",
        "CITYSTREAM_STATE_BACKEND": "rocksdb",
        "CITYSTREAM_RESTART_STRATEGY": "fixed-delay",
        "CITYSTREAM_RETAINED_CHECKPOINTS": "5",
        "CITYSTREAM_FLINK_URL": "http://flink.example:8081",
    }
    settings = load(env)
    assert settings.flink_url == "http://flink.example:8081"
    opts = job_options(settings, job="citystream-grid")
    assert opts["execution.checkpointing.interval"] == "30 s"
    assert opts["state.backend.type"] == "rocksdb"
    assert opts["restart-strategy.type"] == "fixed-delay"
    assert opts["execution.checkpointing.num-retained"] == "5"
    assert opts["execution.checkpointing.externalized-checkpoint-retention"] == "RETAIN_ON_CANCELLATION"
    assert job_options(settings, job="x", bounded=True)["restart-strategy.fixed-delay.attempts"] == "2"
    assert Settings(flink_rest_port=9999).flink_url == "http://127.0.0.1:9999"
    assert Settings().replace(flink_rest_port=1234).flink_url == "http://127.0.0.1:1234"
    with pytest.raises(UserError, match="CITYSTREAM_STATE_BACKEND"):
        job_options(settings.replace(state_backend="memory"), job="x")
    with pytest.raises(UserError, match="CITYSTREAM_RESTART_STRATEGY"):
        job_options(settings.replace(restart_strategy="sometimes"), job="x")
