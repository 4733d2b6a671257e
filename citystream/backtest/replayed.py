"""Backtest runs through a replay: the detect job itself, in Flink, once per configuration.

Why a second path next to the in-process runner: the in-process runner calls
the detection code the job calls, but only a replay runs the job as it runs
live (Flink's event-time timers, its watermarks, every revision of a window
as the topic holds it). Each configuration replays the same aggregates offsets
under its own run id (``bt<batch>_c<i>``), so the runs never share topics or a
shadow database; its alerts are read back from that shadow database and
scored exactly as in-process detections are (:func:`runner.result_of`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from citystream.backtest.events import Label, TimeRange
from citystream.backtest.runner import RunResult, result_of
from citystream.backtest.sources import stored_detections
from citystream.replay import Ranges, discard, replay, resolve_times
from citystream.replay.ranges import record_count
from citystream.settings import Settings

Echo = Callable[[str], object]
#: (name, path, loaded config) per --config, as the command line reads them.
Config = tuple[str, Path | None, Any]


def aggregates_offsets(settings: Settings, rng: TimeRange) -> Ranges:
    """The aggregates topic's offsets of records produced in the range (the broker's offsets-for-times).

    Produce times, not window times: for live data they differ by the domain
    job's lag only; for data produced long after its events, pass exact offsets.
    """
    return resolve_times(settings, [settings.topic("aggregates")], rng.from_ms, rng.to_ms)


def run_id(batch: str, index: int) -> str:
    """The replay run id of a batch's ``index``-th configuration."""
    return f"bt{batch}_c{index}"


def run_configs(
    settings: Settings,
    client: Any,
    offsets: Ranges,
    rng: TimeRange,
    labels: Sequence[Label],
    configs: Sequence[Config],
    *,
    batch: str,
    keep: bool = False,
    parallelism: int | None = None,
    echo: Echo = lambda _line: None,
) -> list[RunResult]:
    """Replay the detect job over ``offsets`` once per configuration; each run's alerts scored.

    The shadow runs are discarded after scoring unless ``keep`` (even when a
    later step fails: a half-made run is of no use to anyone).
    """
    results = []
    for index, (name, path, _config) in enumerate(configs):
        rid = run_id(batch, index)
        echo(f"replay {name} ({rid}): detect over {record_count(offsets)} aggregates offsets ...")
        started_ms, began = int(time.time() * 1000), time.monotonic()
        try:
            done = replay(
                settings, "detect", offsets, run_id=rid, config=path, parallelism=parallelism, echo=echo
            )
            dets = stored_detections(client, rng, database=done.database)
        finally:
            if not keep:
                discard(settings, rid)
        echo(
            f"replay {name} ({rid}) done in {time.monotonic() - began:.1f} s "
            f"(detect {done.seconds.get('detect', 0.0):.1f} s, load {done.seconds.get('load', 0.0):.1f} s): "
            f"{len(dets)} detections" + ("" if keep else "; shadow run discarded")
        )
        scored = result_of(
            dets, list(labels), rng, config=name, config_path=str(path or ""), source="replay",
            started_ms=started_ms, run_id=rid,
        )  # fmt: skip
        results.append(scored)
    return results
