"""Stage 1's calibrated level model: self-calibrated models behind an alarm gate, with recovery.

Why its own module: ``metric`` decides *which* evidence a window gives; this decides how the
calibrated level model turns window means into alarm conditions, and how a condition that
never ends is turned into a level shift. Every knob is a ``MetricRule`` field
(``CalibratedLevel.for_rule``); counts are windows of the key's own window length and are
applied as time (count x window length), so irregular sampling does not shift them.

Recovery (issue 13): a condition still active ``shift_after_windows`` after it was raised is
a *level shift*. It is reported once with its start, the condition clears, and the baseline
re-learns from the new level: the models are put back to their state just before the
condition (not polluted by it) and from then on see the readings minus the shift (the recent
level during the condition minus the recent level before it). So a later spike on the new
level is judged against the new level at once, with the calibration and the time-of-day
profile kept, instead of after a new warm-up or never (a calibration with a long half-life
otherwise kept such conditions on for hundreds of hours, masking later events).

Status channels (``channel = "status"``) are judged by ``StatusModel`` (transitions and dwell
times in time), not by z-scores; its event scores go through the same gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, NamedTuple

from citystream.detection.base import State
from citystream.detection.calibrate import (
    ALARM_OFF,
    ALARM_ON,
    HOLD_WINDOWS,
    REFRACTORY_WINDOWS,
    AlarmGate,
    Likelihood,
)
from citystream.detection.config import MetricRule
from citystream.detection.status import StatusModel
from citystream.detection.univariate import EwmaZ, MaxOf, SeasonalProfile

#: A level shift moves the level by at least _MIN_MOVE calm spreads (mean absolute deviations
#: around the recent calm level), and the readings around the new level spread no more than
#: _SAME_SPREAD times as much.
_MIN_MOVE = 1.0
_SAME_SPREAD = 3.0


class LevelStep(NamedTuple):
    """One window folded into the calibrated level model."""

    state: State
    score: float  #: calibrated score in [0, 1]
    fired: bool  #: an alarm is due now (a condition was raised)
    shift_since: int | None  #: a level shift was declared now; the condition's start (ms)
    why: str = ""  #: the model's explanation (the status model's event text)


@dataclass(frozen=True)
class CalibratedLevel:
    """Time-of-day profile and EWMA on the window mean, each self-calibrated, behind an alarm gate.

    Why the gate lives here and not in stage 2: its hold and refractory times are
    what made the calibrated score usable on the benchmarks; stage 2 still groups
    and keeps alerts open from the verdict's z.
    """

    on: float = ALARM_ON
    off: float = ALARM_OFF
    hold_windows: int = HOLD_WINDOWS
    refractory_windows: int = REFRACTORY_WINDOWS
    shift_after_windows: int = 0
    short: int = 8
    halflife: float = 3000.0
    warmup: int = 100
    clip: float = 4.0
    tail: str = "gaussian"
    ewma_halflife: float = 200.0
    ewma_warmup: int = 60
    seasonal_buckets: int = 24
    seasonal_rate: float = 0.1
    seasonal_min_days: int = 3
    channel: str = "continuous"
    seasonal_weekly: bool = True
    restart_after: int = 4
    scale_floor: float | None = None

    @staticmethod
    def for_rule(rule: MetricRule) -> CalibratedLevel:
        """The model a rule configures; equal knobs share one instance (and its built models)."""
        return _interned(
            CalibratedLevel(
                rule.alarm_on,
                rule.alarm_off,
                rule.alarm_hold_windows,
                rule.alarm_refractory_windows,
                rule.shift_after_windows,
                rule.lik_short_windows,
                rule.lik_halflife_windows,
                rule.lik_warmup,
                rule.lik_clip,
                rule.lik_tail,
                rule.cal_ewma_halflife_windows,
                rule.cal_ewma_warmup,
                rule.cal_seasonal_buckets,
                rule.cal_seasonal_rate,
                rule.cal_seasonal_min_days,
                "status" if rule.channel == "status" else "continuous",
                rule.cal_seasonal_weekly,
                rule.cal_restart_after,
                _scale_floor(rule),
            )
        )

    @cached_property
    def model(self) -> Any:
        """Built once per knob set (``for_rule`` interns equal instances)."""
        if self.channel == "status":
            return StatusModel()
        seasonal = SeasonalProfile(
            buckets_per_day=self.seasonal_buckets, rate=self.seasonal_rate, min_days=self.seasonal_min_days,
            auto_weekly=self.seasonal_weekly, restart_after=self.restart_after, scale_floor=self.scale_floor,
        )  # fmt: skip
        ewma = EwmaZ(
            halflife=self.ewma_halflife, warmup=self.ewma_warmup, restart_after=self.restart_after,
            scale_floor=self.scale_floor,
        )  # fmt: skip
        parts = tuple(
            Likelihood(
                inner,
                short=self.short,
                halflife=self.halflife,
                warmup=self.warmup,
                clip=self.clip,
                tail=self.tail,
            )
            for inner in (seasonal, ewma)
        )
        return MaxOf(parts, bonferroni=True, name="calibrated")

    @lru_cache(maxsize=16)  # noqa: B019 - a handful of frozen, module-lifetime instances
    def gate(self, window_ms: int) -> AlarmGate:
        return AlarmGate(
            self.on, self.off, self.hold_windows * window_ms, self.refractory_windows * window_ms
        )

    def init(self) -> State:
        return {"model": self.model.init(), "gate": AlarmGate().init()}

    def step(self, state: State, t_ms: int, window_ms: int, value: float) -> LevelStep:
        """Fold one window mean in: score it, gate it, and turn an endless condition into a shift."""
        offset = state.get("o", 0.0)
        model_state, score, why = self.model.step(state["model"], t_ms, value - offset)
        gate = self.gate(window_ms)
        gate_state, fired, _ = gate.step(state["gate"], t_ms, score)
        new = {"model": model_state, "gate": gate_state}
        if not self.shift_after_windows or self.channel == "status":
            return LevelStep(new, score, fired == 1.0, None, why)
        track = self._track(state, score, gate_state, t_ms, window_ms, value - offset)
        start = track["s0"]
        if start is None or t_ms - start < self.shift_after_windows * window_ms or track["b"] is None:
            return LevelStep({**new, **track}, score, fired == 1.0, None, why)
        return LevelStep(self._shift(track, gate_state, offset), score, False, start, why)

    def _shift(self, track: State, gate_state: State, offset: float) -> State:
        """The condition ends; the models re-learn from the new level.

        A level shift (a move of several calm spreads, the readings about as spread
        around the new level as around the old one) keeps the models from before the
        condition and hands them readings minus the shift. Anything else - a channel
        constant in its history that came alive, a new regime, a model that was wrong
        at the old level too - has no useful history: the models start afresh on it.
        """
        b, db, c, dc = track["b"], track["db"], track["c"], track["dc"]
        level_like = db > 0.0 and dc <= _SAME_SPREAD * db and abs(c - b) >= _MIN_MOVE * db
        base = {**track, "gate": {**gate_state, "a": 0}, "snap": None, "s0": None, "c": None, "dc": 0.0}
        if level_like:
            return {**base, "model": track["snap"], "o": offset + c - b}
        return {**base, "model": self.model.init(), "o": 0.0, "b": c + offset, "db": dc}

    def _track(
        self, state: State, score: float, gate_state: State, t_ms: int, window_ms: int, x: float
    ) -> State:
        """Recent calm level (``b``), recent level in the condition (``c``), and the models before it.

        A reading is calm when its score is below ``off`` and no condition is active;
        the models are remembered as they were before the first reading that was not
        calm, so neither they nor ``b`` have seen the new level when it is measured.
        Both levels are exponential averages over ``short`` windows of time, so the
        shift is measured between the last calm moments and the last moments of the
        condition, not diluted by its whole length.
        """
        last, b, c, snap = state.get("t"), state.get("b"), state.get("c"), state.get("snap")
        span = max(self.short * window_ms, 1)
        a = 1.0 if last is None else 1.0 - 0.5 ** (min(max(t_ms - last, 0), span) / span)
        now = AlarmGate.active(gate_state)
        out = {"o": state.get("o", 0.0), "t": t_ms, "b": b, "db": state.get("db", 0.0), "c": None,
               "dc": state.get("dc", 0.0), "snap": snap, "s0": state.get("s0")}  # fmt: skip
        if not now:
            if score < self.off:
                db = 0.0 if b is None else out["db"] + a * (abs(x - b) - out["db"])
                out.update(b=x if b is None else b + a * (x - b), db=db, snap=None)
            elif snap is None:
                out["snap"] = state["model"]
            out.update(s0=None, dc=0.0)
            return out
        if out["s0"] is None:  # a condition starts
            out.update(s0=t_ms, snap=snap if snap is not None else state["model"])
        out["dc"] = 0.0 if c is None else out["dc"] + a * (abs(x - c) - out["dc"])
        out["c"] = x if c is None else c + a * (x - c)
        return out

    @staticmethod
    def active(state: State | None) -> bool:
        """Is an alarm condition ongoing (what BATADAL's hourly scoring reads)?"""
        return state is not None and AlarmGate.active(state["gate"])


def _scale_floor(rule: MetricRule) -> float | None:
    """Why a physical floor: a channel constant in its history must not be judged on a near-zero spread.

    The rule's own ``cal_scale_floor`` wins; else 1 % of the instrument's range
    when ``low``/``high`` are known; else None (the models derive one from the
    smallest step they have seen).
    """
    if rule.cal_scale_floor is not None:
        return rule.cal_scale_floor
    if rule.low is not None and rule.high is not None and rule.high > rule.low:
        return 0.01 * (rule.high - rule.low)
    return None


@lru_cache(maxsize=64)
def _interned(level: CalibratedLevel) -> CalibratedLevel:
    """Why: the job builds a ``MetricDetector`` per record; its models must not be rebuilt per record."""
    return level


#: The calibrated level model with the defaults of ``MetricRule`` (what ``[imported]`` ships).
CALIBRATED = CalibratedLevel.for_rule(MetricRule(""))
