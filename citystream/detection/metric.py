"""Stage 1: one key per (sensor, metric) - level, peak and rule detection plus sensor-health hints.

Why its own stage: it is keyed by (sensor, metric) in the job, so its state is small and
independent per key; everything that needs several sensors at once waits for stage 2
(``citystream.detection.place``). A level model judges each 1-minute window mean ("level"),
the within-window excursion judges spikes ("peak"), operating bands judge from the first
window ("rule"); flat-lining and impossible values are *health*, not anomalies, and stop the
model from learning garbage.

The level model is chosen per metric in ``infra/detection.toml`` (``level_model``):

* ``ewma`` - a robust EWMA baseline with a fixed z threshold. Tuned on the simulator's
  metrics, whose targets it meets.
* ``calibrated`` - a time-of-day profile and an EWMA, each self-calibrated (anomaly
  likelihood) and gated into rare alarms. It won on the real benchmarks (NAB, BATADAL,
  SKAB: ``citystream evaluate``), where one fixed z threshold does not carry across streams.
  Its knobs, its recovery from conditions that never end (``shift_after_windows``: a level
  shift) and the state model of ``channel = "status"`` live in ``citystream.detection.level``.

This class is the only per-metric detector: the Flink job and ``citystream evaluate`` both
call ``MetricDetector.step`` per key, so the quality table describes the code that runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from statistics import NormalDist
from typing import Any, ClassVar

from citystream.detection.base import is_missing, tail_score
from citystream.detection.config import MetricRule
from citystream.detection.level import CalibratedLevel

#: 0.6745 * this = 1: turns a mean absolute deviation into a Gaussian sigma.
MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)
#: Residuals are clipped at this many scales when they update a baseline, so an
#: anomaly is absorbed slowly instead of teaching the key that it is normal.
CLIP = 3.0
#: Verdict health values coming out of stage 1.
OK, FLAT, OUT_OF_RANGE = "ok", "flat", "out_of_range"
#: Detector names in verdicts (and so in Anomaly records).
LEVEL, LEVEL_CALIBRATED, PEAK, RULE = "level-v1", "level-lik-v1", "peak-v1", "rule-v1"
#: A calibrated condition that outlasted ``shift_after_windows``; a status channel's state model.
LEVEL_SHIFT, STATUS = "level-shift-v1", "status-v1"

_NORMAL = NormalDist()


def _utc(t_ms: int) -> str:
    """A window end as an operator reads it (UTC, minutes)."""
    return datetime.fromtimestamp(t_ms / 1000.0, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt(x: float) -> str:
    return f"{x:.4g}"


def finite(z: float) -> float:
    """JSON (and Avro) cannot carry infinities; a rule breach is reported as a huge z."""
    return math.copysign(1e9, z) if math.isinf(z) else z


def score_to_z(score: float) -> float:
    """The |z| whose two-sided Gaussian tail is ``1 - score``: puts a calibrated score on the z scale.

    Why: stage 2 keeps alerts open on |z| >= keep_z and sums z over a zone, so
    both level models must hand it evidence on the same scale.
    """
    return _NORMAL.inv_cdf(0.5 + 0.5 * min(max(score, 0.0), 1.0 - 1e-15))


# --------------------------------------------------------------------------- state


class StateVersionError(ValueError):
    """A checkpoint written by a build whose metric state this build cannot read."""


@dataclass
class MetricState:
    """Everything stage 1 remembers for one (sensor, metric); Flink checkpoints ``to_json()``.

    Why typed and versioned: a job restored from a checkpoint must score exactly as
    the job that wrote it, and a state written by another build must fail loudly
    instead of being half-read.
    """

    VERSION: ClassVar[int] = 1

    windows: int = 0  #: windows folded into the baseline
    level: float | None = None  #: robust EWMA of the window mean
    level_scale: float = 0.0  #: robust spread of the mean around it (sigma)
    excursion: float = 0.0  #: EWMA of the within-window excursion max(max - mean, mean - min)
    excursion_spread: float = 0.0  #: mean absolute deviation of that excursion
    last_mean: float | None = None  #: previous healthy window mean (flat-lining test)
    flat_windows: int = 0  #: identical windows in a row before this one
    zero_flat_windows: int = 0  #: the same, while at a normal zero (``zero_is_normal``)
    last_window_end: int | None = None  #: newest window judged; older rows are late revisions
    reseed_windows: int = 0  #: windows left to re-seed the baseline after a flat spell
    calibrated: dict[str, Any] | None = None  #: the calibrated level model's state, if configured

    def to_json(self) -> str:
        body = {"v": self.VERSION, **dataclasses.asdict(self)}
        return json.dumps(body, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> MetricState:
        data = json.loads(text)
        version = data.pop("v", None) if isinstance(data, dict) else None
        if version != cls.VERSION:
            raise StateVersionError(
                f"metric state version {version!r} is not readable by this build (it reads "
                f"version {cls.VERSION}): restore from a savepoint of a matching build or start fresh"
            )
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise StateVersionError(f"metric state version 1 with unknown fields {sorted(unknown)}")
        return cls(**data)


# --------------------------------------------------------------------------- the detector


@dataclass
class _Evidence:
    """The strongest finding of one window, before it is written into the verdict."""

    z: float = 0.0
    detector: str = ""
    expected: float | None = None
    score: float | None = None  #: set when the model produced a calibrated score itself
    why: str = ""  #: the calibrated model's own words (level shift start, status event)


@dataclass(frozen=True)
class MetricDetector:
    """Level, peak and rule detection plus flat/out-of-range health for one (sensor, metric)."""

    rule: MetricRule

    def init(self) -> MetricState:
        r = self.rule
        calibrated = "level" in r.detectors and (r.level_model == "calibrated" or r.channel == "status")
        return MetricState(calibrated=self.calibrated_level.init() if calibrated else None)

    @property
    def calibrated_level(self) -> CalibratedLevel:
        """This rule's calibrated level model (cached across detectors with equal knobs)."""
        return CalibratedLevel.for_rule(self.rule)

    def ready(self, state: MetricState) -> bool:
        return state.windows >= self.rule.warmup_windows

    def step(self, state: MetricState, row: Mapping[str, Any]) -> tuple[MetricState, dict[str, Any]]:
        """Fold one WindowAggregate row in; return (new state, verdict).

        The verdict always comes back (stage 2 needs every window for the
        hysteresis and the health decision); ``z`` is the strongest signed
        evidence, ``anomalous`` says whether a detector's threshold was met.
        Rows for a window at or before the last one seen (late revisions)
        are ignored: re-scoring a window would count the same evidence twice.
        """
        w_end = int(row["window_end"])
        verdict = _verdict(self.rule, row)
        if state.last_window_end is not None and w_end <= state.last_window_end:
            verdict["note"] = "late revision ignored"
            return dataclasses.replace(state), verdict
        new = dataclasses.replace(state, last_window_end=w_end)
        if is_missing(row["mean"]) or is_missing(row["min"]) or is_missing(row["max"]):
            verdict["note"] = "no value"
            return new, verdict
        if not self._healthy(state, new, row, verdict):
            return new, verdict
        ev = self._models(state, new, row, verdict)
        self._rules(row["mean"], ev)
        _describe(self.rule, row, verdict, ev)
        return new, verdict

    def _healthy(
        self, state: MetricState, new: MetricState, row: Mapping[str, Any], verdict: dict[str, Any]
    ) -> bool:
        """Impossible values and flat-lining are the sensor's problem, not the world's."""
        r = self.rule
        mean, lo, hi = row["mean"], row["min"], row["max"]
        if (r.low is not None and lo < r.low) or (r.high is not None and hi > r.high):
            verdict["health"] = OUT_OF_RANGE
            verdict["note"] = (
                f"{r.name} {fmt(lo)}..{fmt(hi)} outside the instrument range [{r.low}, {r.high}]"
            )
            return False
        if r.skip_zero and lo <= 0.0:
            verdict["note"] = f"{r.name} at or through zero (equipment off): not judged"
            new.flat_windows = 0
            return False
        tol = 1e-9 * max(1.0, abs(mean))
        flat_now = hi - lo <= tol and state.last_mean is not None and abs(mean - state.last_mean) <= tol
        if r.zero_is_normal and abs(mean) <= tol:
            # an empty road reads 0 for hours: not stuck by itself, but no evidence against a
            # sensor whose other channels froze (stage 2 decides from all of them)
            new.zero_flat_windows = state.zero_flat_windows + 1 if flat_now else 0
            verdict["zero_flat"] = bool(r.stuck_windows) and new.zero_flat_windows + 1 >= r.stuck_windows
            flat_now = False
        else:
            new.zero_flat_windows = 0
        new.flat_windows = state.flat_windows + 1 if flat_now else 0
        new.last_mean = mean
        if r.stuck_windows and new.flat_windows + 1 >= r.stuck_windows:
            verdict["health"] = FLAT
            verdict["flat_windows"] = new.flat_windows + 1
            verdict["note"] = f"{r.name} flat at {fmt(mean)} for {new.flat_windows + 1} windows"
            return False
        return True

    def _models(
        self, state: MetricState, new: MetricState, row: Mapping[str, Any], verdict: dict[str, Any]
    ) -> _Evidence:
        """Score against the state *before* this window, then learn."""
        r = self.rule
        mean, lo, hi = row["mean"], row["min"], row["max"]
        recovered = bool(r.stuck_windows) and state.flat_windows + 1 >= r.stuck_windows
        # back from a flat spell: the first windows mix frozen and live values, so the baseline is
        # re-seeded for as many windows as it took to call the sensor stuck
        new.reseed_windows = r.stuck_windows if recovered else max(0, state.reseed_windows - 1)
        ev = _Evidence()
        m, n = state.level, state.windows
        if m is None or recovered or state.reseed_windows > 0:
            # first window, or back from a flat spell: the old baseline is stale, re-seed it
            new.level, new.windows = mean, n + 1 if m is None else n
            if m is None:
                new.excursion = max(hi - mean, mean - lo)
        else:
            ev = self._ewma(state, new, mean, max(hi - mean, mean - lo), hi - mean >= mean - lo, verdict)
        if state.calibrated is not None:
            window_ms = max(1, int(row["window_end"]) - int(row["window_start"]))
            step = self.calibrated_level.step(state.calibrated, int(row["window_end"]), window_ms, mean)
            new.calibrated, score = step.state, step.score
            sign = -1.0 if m is not None and mean < m else 1.0
            z = sign * score_to_z(score)
            if step.shift_since is not None:
                ev = _Evidence(z, LEVEL_SHIFT, m, score, f"level shift since {_utc(step.shift_since)}")
            elif step.fired or not ev.detector:
                found = (STATUS if r.channel == "status" else LEVEL_CALIBRATED) if step.fired else ""
                ev = _Evidence(z, found, m, score, step.why)
        return ev

    def _ewma(
        self, state: MetricState, new: MetricState, mean: float, exc: float, up: bool, verdict: dict[str, Any]
    ) -> _Evidence:
        """The robust EWMA level and the excursion ("peak") model of one key."""
        r = self.rule
        m, n = state.level, state.windows
        assert m is not None
        scale = max(state.level_scale, r.min_scale, r.rel_scale * abs(m), 1e-12)
        resid = mean - m
        z = resid / scale
        pscale = max(state.excursion_spread * MAD_TO_SIGMA, r.min_scale, r.rel_scale * abs(m), 1e-12)
        pz = (exc - state.excursion) / pscale
        ev = _Evidence()
        ewma_level = "level" in r.detectors and state.calibrated is None
        if self.ready(state):
            if "level" in r.detectors:
                verdict["lz"] = z
            if ewma_level and abs(z) >= r.level_z:
                ev = _Evidence(z, LEVEL, m)
            if "peak" in r.detectors and r.channel != "status" and pz >= r.peak_z and pz > abs(ev.z):
                ev = _Evidence(pz if up else -pz, PEAK, m)
            if not ev.detector and ewma_level:
                ev = _Evidence(z, "", m)  # below threshold: still evidence for hysteresis
        a = max(r.alpha, 1.0 / (n + 1))
        warm = n >= r.warmup_windows
        d = max(-CLIP * scale, min(CLIP * scale, resid)) if warm else resid
        pd = exc - state.excursion
        if warm:
            pd = max(-CLIP * pscale, min(CLIP * pscale, pd))
        new.windows = n + 1
        new.level = m + a * d
        new.level_scale = state.level_scale + a * (MAD_TO_SIGMA * abs(d) - state.level_scale)
        new.excursion = state.excursion + a * pd
        new.excursion_spread = state.excursion_spread + a * (abs(pd) - state.excursion_spread)
        return ev

    def _rules(self, mean: float, ev: _Evidence) -> None:
        """Operating bands: judged from the first window, and they override any model."""
        r = self.rule
        if "rule" not in r.detectors:
            return
        if r.rule_low is not None and mean < r.rule_low:
            ev.z, ev.detector, ev.expected, ev.score = -math.inf, RULE, r.rule_low, None
        elif r.rule_high is not None and mean > r.rule_high:
            ev.z, ev.detector, ev.expected, ev.score = math.inf, RULE, r.rule_high, None


def _verdict(rule: MetricRule, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key_id": row["key_id"],
        "metric": rule.name,
        "window_start": int(row["window_start"]),
        "window_end": int(row["window_end"]),
        "observed": row["mean"],
        "min": row["min"],
        "max": row["max"],
        "samples": row.get("samples"),
        "expected": None,
        "z": 0.0,
        "lz": 0.0,
        "score": 0.0,
        "detector": "",
        "anomalous": False,
        "severity": "info",
        "health": OK,
        "note": "",
    }


def _describe(rule: MetricRule, row: Mapping[str, Any], verdict: dict[str, Any], ev: _Evidence) -> None:
    """Write the evidence into the verdict, with the sentence an operator reads."""
    verdict["expected"] = ev.expected
    verdict["z"] = finite(ev.z)
    if not ev.detector:
        return
    mean, best_z = row["mean"], ev.z
    if ev.detector in (LEVEL_CALIBRATED, LEVEL_SHIFT, STATUS):
        threshold = score_to_z(rule.alarm_on)
    else:
        threshold = rule.peak_z if ev.detector == PEAK else rule.level_z
    verdict["detector"] = ev.detector
    verdict["anomalous"] = True
    if ev.score is not None:
        verdict["score"] = ev.score
    else:
        verdict["score"] = 1.0 if math.isinf(best_z) else tail_score(3.0 * best_z / threshold)
    verdict["severity"] = "critical" if abs(best_z) >= 2 * threshold else "warning"
    direction = "above" if best_z > 0 else "below"
    if ev.detector == RULE:
        verdict["note"] = f"{rule.name} {fmt(mean)} {direction} its operating limit {fmt(ev.expected)}"
    elif ev.detector == PEAK:
        extreme = row["max"] if best_z > 0 else row["min"]
        verdict["note"] = (
            f"{rule.name} swung to {fmt(extreme)} within the window ({abs(best_z):.0f} x its usual excursion)"
        )
    elif ev.detector == LEVEL_SHIFT:
        verdict["note"] = (
            f"{rule.name} {fmt(mean)}: {ev.why}; the alarm condition ends and the baseline re-learns "
            "from the new level"
        )
    elif ev.detector == STATUS:
        verdict["note"] = (
            f"{rule.name} {fmt(mean)}: {ev.why}" if ev.why else f"{rule.name} {fmt(mean)}: unusual status"
        )
    elif ev.detector == LEVEL_CALIBRATED:
        tail = max(1.0 - (ev.score or 0.0), 1e-12)
        verdict["note"] = (
            f"{rule.name} {fmt(mean)}: recent windows unusual for this sensor (tail probability {tail:.1e})"
        )
    else:
        verdict["note"] = (
            f"{rule.name} {fmt(mean)} {direction} expected {fmt(ev.expected)} ({best_z:+.1f} sd)"
        )
