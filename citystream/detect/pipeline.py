"""Health check -> detector -> alarm gate, as one keyed-state step.

Why one object: in Flink each sensor key gets one state blob and one call per
aggregate. Putting the three stages behind one ``step`` keeps the ordering
rule in one place: an unhealthy reading never reaches the detector (so it
cannot raise anomalies or poison the model), and the gate still sees a zero
so an active alarm can clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from citystream.detect.base import State
from citystream.detect.calibrate import AlarmGate, Likelihood
from citystream.detect.health import OK, SensorHealth
from citystream.detect.univariate import EwmaZ, MaxOf, SeasonalProfile

#: Gate settings that won on the benchmarks (see ``citystream.detect.evaluate``).
ALARM_ON = 0.999
ALARM_OFF = 0.99
#: Hold and refractory periods, in readings of the stream's own cadence.
HOLD_READINGS = 30
REFRACTORY_READINGS = 30


class Verdict(NamedTuple):
    """What one reading produced for one sensor."""

    score: float  #: anomaly score in [0, 1] (0 while warming up or muted)
    alarm: bool  #: an alarm notification is due now
    active: bool  #: an anomalous condition is ongoing
    health: str  #: "ok", "missing", "out_of_range", "stuck" (or "muted" when told so)
    note: str  #: health event or anomaly explanation, "" when nothing new


@dataclass(frozen=True)
class Pipeline:
    """One sensor's full treatment. ``health=None`` skips the health stage."""

    detector: Any
    gate: AlarmGate = field(default_factory=AlarmGate)
    health: SensorHealth | None = None

    @property
    def name(self) -> str:
        return self.detector.name

    def init(self) -> State:
        return {
            "h": self.health.init() if self.health is not None else None,
            "d": self.detector.init(),
            "g": self.gate.init(),
        }

    def step(self, state: State, t_ms: int, value: float, muted: bool = False) -> tuple[State, Verdict]:
        """Process one reading; ``muted`` lets a cross-sensor check (drift) silence this sensor."""
        h_state, status, h_note = state["h"], OK, ""
        if self.health is not None:
            h_state, status, h_note = self.health.step(state["h"], t_ms, value)
        d_state, score, why = state["d"], 0.0, ""
        if status == OK and not muted:
            d_state, score, why = self.detector.step(state["d"], t_ms, value)
        g_state, fired, g_note = self.gate.step(state["g"], t_ms, score)
        new = {"h": h_state, "d": d_state, "g": g_state}
        if h_note:
            note = h_note
        elif fired:
            note = why or f"alarm: score {score:.6f}"
        else:
            note = g_note
        health = status if status != OK else ("muted" if muted else OK)
        return new, Verdict(score, fired == 1.0, AlarmGate.active(g_state), health, note)


def recommended(cadence_ms: int, health: SensorHealth | None = None) -> Pipeline:
    """The configuration the quality report chose, for a stream read every ``cadence_ms``.

    Why a function: the Flink jobs should not re-derive thresholds; changing
    the shipped detector is then one reviewed edit here, backed by a new
    ``citystream evaluate`` table.
    """
    if cadence_ms <= 0:
        raise ValueError("cadence_ms must be positive")
    detector = MaxOf((Likelihood(SeasonalProfile()), Likelihood(EwmaZ())), bonferroni=True, name="chosen")
    gate = AlarmGate(ALARM_ON, ALARM_OFF, HOLD_READINGS * cadence_ms, REFRACTORY_READINGS * cadence_ms)
    return Pipeline(detector, gate, health)
