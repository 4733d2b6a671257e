"""Drive the job's per-metric detector over the labelled benchmarks and score its alarms.

Why this is code and not a notebook: the claim "detector X is good enough to page an
operator" must be re-checkable by anyone (and by CI on a small slice) with one command,
and every number must come from the code that runs in Flink. So each channel of a
recording is one (sensor, metric) key of the detect job: ``MetricDetector.step`` is called
with one WindowAggregate-shaped row per reading (mean = min = max = the value, the window
ending at the reading's time), exactly as ``jobs/detect.py`` calls it, and its state goes
through the same JSON as Flink's ValueState.

Protocol, identical for every dataset:
- the rule is the config's ``[imported]`` table (``infra/detection.toml``); a row per
  level model of that one class is reported, so the table shows why one was chosen;
- BATADAL channels are first warmed on the unlabelled normal year (training 1), as a
  deployment would be warmed on history;
- a recording's alarms are the union over its channels of the windows where a key's
  verdict turns anomalous; a condition is active while a verdict is anomalous or the
  calibrated model's alarm gate holds it (BATADAL's hourly S reads that).
No per-dataset tuning; the shipped settings were selected on these same benchmarks, so treat
this table as optimistic: ``evaluate --select`` (``selection.py``) scores candidate settings
with each dataset held out in turn, which is the honest number.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from citystream.detection import CalibratedLevel, DetectionConfig, MetricDetector, MetricRule, MetricState
from citystream.detection.base import tail_score
from citystream.evaluation.alarms import ALARM_SCORE, QUIET_SCORE_CAP, RecordingAlarms, cadence_ms
from citystream.evaluation.datasets import LOADERS, Dataset, Recording
from citystream.evaluation.places import place_keys, place_run
from citystream.evaluation.scoring import (
    PROFILES,
    EventScore,
    NabFileScore,
    batadal_score,
    event_score,
    nab_file_score,
    nab_normalised,
    probation_length,
)

#: Alarm rows and per-row "condition active" flags of one recording.
Alarms = tuple[list[int], list[bool]]


@dataclass(frozen=True)
class Variant:
    """A table row: the ``[imported]`` rule with these overrides (empty: as configured)."""

    name: str
    overrides: dict[str, object] = field(default_factory=dict)
    note: str = ""
    #: Also the per-place checks (status/flow pairs, joint model; ``places``), not yet in the job.
    places: bool = False

    @property
    def shipped(self) -> bool:
        """The configuration as the job runs it (what ``--export`` writes)."""
        return self.name != "null" and not self.overrides and not self.places

    def rule(self, config: DetectionConfig, channel: str) -> MetricRule:
        return dataclasses.replace(config.imported_rule(channel), **self.overrides)

    def typed_rule(self, config: DetectionConfig, rec: Recording, channel: str) -> MetricRule:
        """The rule with the channel type the dataset declares (status channels: the state model)."""
        rule = self.rule(config, channel)
        if "channel" in self.overrides:
            return rule
        return dataclasses.replace(rule, channel=rec.channel_type(channel))

    def keys(self, rec: Recording) -> list[str]:
        """The job's keys for this recording: its channels, plus the per-place checks if ``places``."""
        if not self.places:
            return list(rec.channels)
        return [*rec.channels, *place_keys(rec)]

    def run(self, config: DetectionConfig, rec: Recording, key: str) -> RecordingAlarms:
        """One key's alarms: a channel through ``MetricDetector``, or a per-place check."""
        if key in rec.channels:
            return channel_run(rec, key, self.typed_rule(config, rec, key))
        return place_run(rec, key)


#: What the report compares: the shipped configuration, and the other level model of the same class.
VARIANTS: tuple[Variant, ...] = (
    Variant("null", note="never alarms"),
    Variant(
        "stage 1, level_model=ewma",
        {"level_model": "ewma"},
        "robust EWMA, fixed |z| >= level_z (the simulator's level model)",
    ),
    Variant("stage 1 as configured ([imported])", note="the shipped level model for imported series"),
    Variant(
        "stage 1 + per-place checks",
        note="plus status/flow pairs and the joint model per place (offline only: not yet in the detect job)",
        places=True,
    ),
)


# --------------------------------------------------------------------------- driving the job's stage 1


def window_rows(key: str, t_ms: np.ndarray, values: np.ndarray, window_ms: int) -> list[dict[str, object]]:
    """One WindowAggregate row per reading: the window ends at the reading's time."""
    rows: list[dict[str, object]] = []
    for t, v in zip(t_ms.tolist(), values.tolist(), strict=True):
        x = float(v)
        rows.append(
            {
                "key_id": key,
                "window_start": t - window_ms,
                "window_end": t,
                "mean": x,
                "min": x,
                "max": x,
                "samples": 1,
            }
        )
    return rows


def drive(
    detector: MetricDetector, rows: Sequence[dict[str, object]], state: MetricState | None = None
) -> tuple[MetricState, list[dict[str, object]], list[bool]]:
    """One key's rows through ``step``, in window order as the job's keyed stage sees them.

    Returns the final state, every verdict, and whether the calibrated model's alarm
    gate held a condition active after each row. (The job keeps the state as JSON
    between rows; ``MetricState`` round-trips exactly, which the acceptance test checks.)
    """
    st = detector.init() if state is None else state
    verdicts: list[dict[str, object]] = []
    held: list[bool] = []
    for row in rows:
        st, verdict = detector.step(st, row)
        verdicts.append(verdict)
        held.append(CalibratedLevel.active(st.calibrated))
    return st, verdicts, held


def verdict_score(verdict: dict[str, object]) -> float:
    """A verdict's score in [0, 1]: its own when anomalous, else its evidence below ``ALARM_SCORE``."""
    if verdict["anomalous"]:
        return max(float(verdict["score"]), ALARM_SCORE)  # type: ignore[arg-type]
    return min(tail_score(float(verdict["z"])), QUIET_SCORE_CAP)  # type: ignore[arg-type]


def channel_run(rec: Recording, channel: str, rule: MetricRule) -> RecordingAlarms:
    """One channel as one key of the job: warmed on the recording's history, then driven."""
    det = MetricDetector(rule)
    window_ms = cadence_ms(rec)
    state = None
    if rec.history is not None and channel in rec.history.channels:
        state, _, _ = drive(
            det, window_rows(channel, rec.history.t_ms, rec.history.channels[channel], window_ms)
        )
    _, verdicts, held = drive(det, window_rows(channel, rec.t_ms, rec.channels[channel], window_ms), state)
    fired, active, detections, before = [], [], [], False
    scores = np.zeros(len(verdicts))
    for i, (v, h) in enumerate(zip(verdicts, held, strict=True)):
        now = bool(v["anomalous"])
        if now:
            detections.append(i)
            if not before:
                fired.append(i)
        active.append(now or h)
        scores[i] = verdict_score(v)
        before = now
    return RecordingAlarms(fired, active, detections, scores)


def channel_alarms(rec: Recording, channel: str, rule: MetricRule) -> Alarms:
    """Alarm rows (a verdict turning anomalous) and active flags of one channel."""
    run = channel_run(rec, channel, rule)
    return run.fired, run.active


def recording_alarms(rec: Recording, variant: Variant, config: DetectionConfig) -> RecordingAlarms:
    """The union over a recording's channels: each channel is its own key."""
    n = len(rec)
    if variant.name == "null":
        return RecordingAlarms([], [False] * n, [], np.zeros(n))
    return union_runs(n, [variant.run(config, rec, key) for key in variant.keys(rec)])


def union_runs(n: int, runs: Sequence[RecordingAlarms]) -> RecordingAlarms:
    """A recording's alarms from its channels' (keys') alarms: any key alarming alarms the recording."""
    fired: set[int] = set()
    detections: set[int] = set()
    active = np.zeros(n, dtype=bool)
    scores = np.zeros(n)
    for run in runs:
        fired.update(run.fired)
        detections.update(run.detections)
        active |= np.asarray(run.active, dtype=bool)
        np.maximum(scores, run.scores, out=scores)
    return RecordingAlarms(sorted(fired), active.tolist(), sorted(detections), scores)


# --------------------------------------------------------------------------- scoring


@dataclass
class Result:
    dataset: str
    detector: str
    nab: float = math.nan
    nab_low_fp: float = math.nan
    nab_low_fn: float = math.nan
    batadal: float = math.nan
    s_ttd: float = math.nan
    s_cm: float = math.nan
    active: float = math.nan  #: fraction of readings with an alarm condition active
    events: EventScore = field(default_factory=EventScore)
    alarms: int = 0
    note: str = ""
    seconds: float = 0.0

    @property
    def primary(self) -> float:
        """The dataset's headline number: NAB score, BATADAL S, else event F1."""
        if not math.isnan(self.nab):
            return self.nab
        if not math.isnan(self.batadal):
            return self.batadal
        return self.events.f1


def nab_file_scores(ds: Dataset, alarms: Sequence[RecordingAlarms]) -> dict[str, list[NabFileScore]]:
    """Per profile, each NAB file's raw, null and perfect score: every alarmed row is a detection."""
    return {
        profile: [
            nab_file_score(len(rec), a.detections, rec.events, profile)
            for rec, a in zip(ds.recordings, alarms, strict=True)
        ]
        for profile in PROFILES
    }


def score_dataset(ds: Dataset, alarms: Sequence[RecordingAlarms]) -> Result:
    """Score each recording's alarms against the dataset's labels."""
    res = Result(ds.name, "")
    for rec, al in zip(ds.recordings, alarms, strict=True):
        t = rec.t_ms
        ignore = int(t[probation_length(len(rec))]) if ds.name == "NAB" else None
        times = [int(t[i]) for i in al.fired]
        res.alarms += sum(1 for x in times if ignore is None or x >= ignore)
        ev_t = [(int(t[a]), int(t[b])) for a, b in rec.events]
        refs = [int(t[r]) for r in rec.refs] if rec.refs else None
        res.events += event_score(times, ev_t, refs, ignore_before=ignore)
        if ds.name == "BATADAL":
            b = batadal_score(al.active, rec.events)
            res.batadal, res.s_ttd, res.s_cm = b.s, b.s_ttd, b.s_cm
            res.active = sum(al.active) / len(al.active)
    if ds.name == "NAB":
        files = nab_file_scores(ds, alarms)
        res.nab = nab_normalised(files["standard"])
        res.nab_low_fp = nab_normalised(files["reward_low_FP_rate"])
        res.nab_low_fn = nab_normalised(files["reward_low_FN_rate"])
    return res


def evaluate_variant(ds: Dataset, variant: Variant, config: DetectionConfig) -> Result:
    """One variant on one dataset, in this process (tests and small checks)."""
    alarms = [recording_alarms(rec, variant, config) for rec in ds.recordings]
    res = score_dataset(ds, alarms)
    res.detector, res.note = variant.name, variant.note
    return res


#: Called with the shipped configuration's alarms of each dataset (``--export`` writes them out).
AlarmsHook = Callable[[Dataset, list[RecordingAlarms]], None]


def load_datasets(
    root: Path, slice_: str, keys: Sequence[str], progress: Callable[[str], None] | None = None
) -> dict[str, Dataset]:
    """The chosen benchmarks, loaded once (every variant and candidate reads the same arrays)."""
    say = progress or (lambda _: None)
    loaded: dict[str, Dataset] = {}
    for key in keys:
        started = time.perf_counter()
        ds = LOADERS[key](root, slice_)
        say(f"{ds.name}: {len(ds.recordings)} recording(s), {sum(len(r) for r in ds.recordings):,} rows "
            f"loaded ({time.perf_counter() - started:.1f} s)")  # fmt: skip
        loaded[ds.name] = ds
    return loaded


def run_evaluation(
    root: Path,
    config: DetectionConfig,
    slice_: str = "full",
    datasets: Sequence[str] = ("nab", "batadal", "skab"),
    variants: Sequence[Variant] = VARIANTS,
    progress: Callable[[str], None] | None = None,
    on_shipped: AlarmsHook | None = None,
    workers: int = 1,
) -> dict[str, list[Result]]:
    """Every variant on every dataset; the report's numbers. ``progress`` gets a line per step."""
    loaded = load_datasets(root, slice_, datasets, progress)
    alarms = compute_alarms(loaded, variants, config, workers, progress)
    return score_variants(loaded, variants, alarms, on_shipped)


def score_variants(
    loaded: dict[str, Dataset],
    variants: Sequence[Variant],
    alarms: dict[tuple[str, str], list[RecordingAlarms]],
    on_shipped: AlarmsHook | None = None,
) -> dict[str, list[Result]]:
    """Per dataset, one scored row per variant (alarms from ``compute_alarms``)."""
    results: dict[str, list[Result]] = {}
    for name, ds in loaded.items():
        rows = []
        for variant in variants:
            found = alarms[(variant.name, name)]
            res = score_dataset(ds, found)
            res.detector, res.note = variant.name, variant.note
            rows.append(res)
            if on_shipped is not None and variant.shipped:
                on_shipped(ds, found)
        results[name] = rows
    return results


# --------------------------------------------------------------------------- the work, in parallel

#: One unit of work: (variant index, dataset name, recording index, channel). A channel is one
#: key of the job and keys never share state, so channels are independent and balance well
#: over processes (BATADAL is one recording of 43 channels).
Task = tuple[int, str, int, str]
#: What each worker process evaluates: the loaded datasets, the config and the variants.
_WORK: dict[str, object] = {}


def _install(loaded: dict[str, Dataset], config: DetectionConfig, variants: Sequence[Variant]) -> None:
    """Pool initializer: the datasets reach each worker once (forked), not once per task."""
    _WORK.update(loaded=loaded, config=config, variants=tuple(variants))


def _run_task(task: Task) -> tuple[Task, RecordingAlarms, float]:
    v, name, r, channel = task
    loaded: dict[str, Dataset] = _WORK["loaded"]  # type: ignore[assignment]
    variant: Variant = _WORK["variants"][v]  # type: ignore[index]
    started = time.process_time()
    run = variant.run(_WORK["config"], loaded[name].recordings[r], channel)  # type: ignore[arg-type]
    return task, run, time.process_time() - started


def _tasks(loaded: dict[str, Dataset], variants: Sequence[Variant]) -> list[Task]:
    return [
        (v, name, r, ch)
        for v, variant in enumerate(variants)
        if variant.name != "null"
        for name, ds in loaded.items()
        for r, rec in enumerate(ds.recordings)
        for ch in variant.keys(rec)
    ]


def compute_alarms(
    loaded: dict[str, Dataset],
    variants: Sequence[Variant],
    config: DetectionConfig,
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict[tuple[str, str], list[RecordingAlarms]]:
    """Every variant's alarms per recording of every dataset, keyed (variant name, dataset name).

    ``workers`` > 1 spreads the channels over that many processes (forked, so each
    inherits the loaded arrays); the result does not depend on it. ``progress`` gets a
    line each time a variant is done on a dataset, with the CPU seconds it took.
    """
    say = progress or (lambda _: None)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique: {names}")
    out: dict[tuple[str, str], list[RecordingAlarms]] = {}
    for variant in variants:
        if variant.name == "null":
            for name, ds in loaded.items():
                out[(variant.name, name)] = [recording_alarms(rec, variant, config) for rec in ds.recordings]
    tasks = _tasks(loaded, variants)
    pending: dict[tuple[int, str], int] = {}
    for v, name, _, _ in tasks:
        pending[(v, name)] = pending.get((v, name), 0) + 1
    total, done = len(pending), 0
    runs: dict[tuple[int, str, int], dict[str, RecordingAlarms]] = {}
    cpu: dict[tuple[int, str], float] = {}

    def collect(task: Task, run: RecordingAlarms, seconds: float) -> None:
        nonlocal done
        v, name, r, channel = task
        runs.setdefault((v, name, r), {})[channel] = run
        cpu[(v, name)] = cpu.get((v, name), 0.0) + seconds
        pending[(v, name)] -= 1
        if pending[(v, name)] == 0:
            ds = loaded[name]
            per_rec = [runs.pop((v, name, r)) for r in range(len(ds.recordings))]
            out[(variants[v].name, name)] = [
                union_runs(len(rec), [chans[key] for key in variants[v].keys(rec)])
                for rec, chans in zip(ds.recordings, per_rec, strict=True)
            ]
            done += 1
            say(f"[{done}/{total}] {name}: {variants[v].name} ({cpu[(v, name)]:.1f} s CPU)")

    if workers <= 1:
        _install(loaded, config, variants)
        try:
            for task in tasks:
                collect(*_run_task(task))
        finally:
            _WORK.clear()
        return out
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, ctx, initializer=_install, initargs=(loaded, config, variants)) as pool:
        for fut in as_completed([pool.submit(_run_task, t) for t in tasks]):
            collect(*fut.result())
    return out
