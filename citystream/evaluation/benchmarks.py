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
No per-dataset tuning; the settings were selected on these same benchmarks (there is no
held-out set), so treat the numbers as optimistic.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from citystream.detection import CalibratedLevel, DetectionConfig, MetricDetector, MetricRule, MetricState
from citystream.detection.base import tail_score
from citystream.evaluation.datasets import LOADERS, Dataset, Recording
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

    @property
    def shipped(self) -> bool:
        """The configuration as the job runs it (what ``--export`` writes)."""
        return self.name != "null" and not self.overrides

    def rule(self, config: DetectionConfig, channel: str) -> MetricRule:
        return dataclasses.replace(config.imported_rule(channel), **self.overrides)


#: What the report compares: the shipped configuration, and the other level model of the same class.
VARIANTS: tuple[Variant, ...] = (
    Variant("null", note="never alarms"),
    Variant(
        "stage 1, level_model=ewma",
        {"level_model": "ewma"},
        "robust EWMA, fixed |z| >= level_z (the simulator's level model)",
    ),
    Variant("stage 1 as configured ([imported])", note="the shipped level model for imported series"),
)


# --------------------------------------------------------------------------- driving the job's stage 1


def cadence_ms(rec: Recording) -> int:
    return int(np.median(np.diff(rec.t_ms))) if len(rec) > 1 else 1000


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


class RecordingAlarms(NamedTuple):
    """What one recording's keys said, per row, in the shapes the scorers read.

    ``fired``: rows where a key's verdict turns anomalous (one incident, one
    ticket: event-level scores). ``active``: a condition is active (BATADAL's
    hourly flags). ``detections``: every row with an anomalous verdict - what
    NAB counts, one detection per alarmed row. ``scores``: the strongest
    verdict score of the row in [0, 1] (the NAB results file's anomaly score).
    """

    fired: list[int]
    active: list[bool]
    detections: list[int]
    scores: np.ndarray


#: Every alarmed row scores at least this and no other row reaches it, so a scorer that turns
#: scores into detections at this threshold (NAB's way) sees exactly the detector's alarms. An
#: anomalous verdict scores at least tail_score(3) = 0.9973 (0.999 for the calibrated model).
ALARM_SCORE = 0.997
#: The most a row without an alarm scores (its evidence may be as strong, e.g. in a refractory period).
QUIET_SCORE_CAP = 0.996


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
    fired: set[int] = set()
    detections: set[int] = set()
    active = np.zeros(n, dtype=bool)
    scores = np.zeros(n)
    for channel in rec.channels:
        run = channel_run(rec, channel, variant.rule(config, channel))
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


def variant_alarms(ds: Dataset, variant: Variant, config: DetectionConfig) -> list[RecordingAlarms]:
    return [recording_alarms(rec, variant, config) for rec in ds.recordings]


def evaluate_variant(ds: Dataset, variant: Variant, config: DetectionConfig) -> Result:
    return _evaluate(ds, variant, config)[0]


def _evaluate(ds: Dataset, variant: Variant, config: DetectionConfig) -> tuple[Result, list[RecordingAlarms]]:
    started = time.perf_counter()
    alarms = variant_alarms(ds, variant, config)
    res = score_dataset(ds, alarms)
    res.detector, res.note = variant.name, variant.note
    res.seconds = time.perf_counter() - started
    return res, alarms


#: Called with the shipped configuration's alarms of each dataset (``--export`` writes them out).
AlarmsHook = Callable[[Dataset, list[RecordingAlarms]], None]


def run_evaluation(
    root: Path,
    config: DetectionConfig,
    slice_: str = "full",
    datasets: Sequence[str] = ("nab", "batadal", "skab"),
    variants: Sequence[Variant] = VARIANTS,
    progress: Callable[[str], None] | None = None,
    on_shipped: AlarmsHook | None = None,
) -> dict[str, list[Result]]:
    """Every variant on every dataset; the report's numbers. ``progress`` gets a line per step."""
    say = progress or (lambda _: None)
    results: dict[str, list[Result]] = {}
    for key in datasets:
        started = time.perf_counter()
        ds = LOADERS[key](root, slice_)
        say(f"{ds.name}: {len(ds.recordings)} recording(s), {sum(len(r) for r in ds.recordings):,} rows "
            f"loaded ({time.perf_counter() - started:.1f} s)")  # fmt: skip
        rows = []
        for variant in variants:
            res, alarms = _evaluate(ds, variant, config)
            rows.append(res)
            say(f"{ds.name}: {variant.name} ({res.seconds:.1f} s)")
            if on_shipped is not None and variant.shipped:
                on_shipped(ds, alarms)
        results[ds.name] = rows
    return results
