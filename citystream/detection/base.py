"""The one contract every detector keeps, and the small helpers they share.

Why this shape: the detectors will run inside Flink keyed state, one state per
sensor. Flink can only checkpoint what it can serialise, and a job restored
from a checkpoint must score exactly as the job that wrote it. So a detector
object holds only its configuration (immutable), while everything it learns
lives in a plain ``dict`` of floats, ints and short lists that survives
``json.dumps``/``json.loads`` bit-for-bit (Python's float repr round-trips).

``step`` never mutates the state it is given; it returns a new one. That
makes detectors pure functions, which is what lets tests compare a restored
state against the original and lets Flink retry a record safely.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

#: A detector's learned state: JSON-serialisable (floats, ints, short lists, nested dicts).
State = dict[str, Any]

#: What ``step`` returns: (new state, score in [0, 1], explanation; "" when nothing to say).
Step = tuple[State, float, str]

#: Scores at or above this get a human explanation; below it the string is "",
#: because formatting text for every normal reading would dominate the cost per step.
EXPLAIN_AT = 0.999

#: Smallest tail probability we represent; keeps ``surprise`` finite.
MIN_TAIL = 1e-12

_SQRT2 = math.sqrt(2.0)


@runtime_checkable
class Detector(Protocol):
    """Anything that turns one sensor's readings into scores in [0, 1].

    ``step`` both learns from the observation and scores it; the score is
    computed against the model as it stood *before* this observation (a
    forecast residual), so a spike is judged by what was expected, not by a
    model that has already absorbed it.
    """

    name: str

    def init(self) -> State:
        """The state of a key that has seen nothing yet."""
        ...

    def ready(self, state: State, t_ms: int = 0) -> bool:
        """Would a reading at ``t_ms`` be scored? Before warm-up scores are 0 and mean nothing.

        ``t_ms`` matters only to detectors that warm up per time-of-day cell.
        """
        ...

    def step(self, state: State, t_ms: int, value: float) -> Step:
        """Fold one observation in; return (new state, score in [0, 1], explanation)."""
        ...


def is_missing(value: float | None) -> bool:
    """NaN, None and infinities are "no observation": they must never reach a model."""
    return value is None or value != value or value in (math.inf, -math.inf)


def tail_score(z: float) -> float:
    """Score for a standardised residual: 1 - two-sided Gaussian tail probability.

    Why: it maps any z onto [0, 1] monotonically and, for a well-calibrated
    model, makes normal scores uniform, which the likelihood layer relies on.
    """
    return math.erf(abs(z) / _SQRT2)


def tail_prob(z: float) -> float:
    """Two-sided Gaussian tail probability, without the cancellation of ``1 - tail_score``."""
    return max(math.erfc(abs(z) / _SQRT2), MIN_TAIL)


def surprise(score: float) -> float:
    """-ln(1 - score): turns a [0, 1] score into an additive "information" scale.

    Why: averaging scores that saturate near 1 hides how extreme a spike was;
    averaging surprises does not (an honest p-value gives surprise ~ Exp(1)).
    """
    return -math.log(max(1.0 - score, MIN_TAIL))


def warming(n: int, need: int) -> str:
    return f"warming up ({n}/{need})"


def dumps(state: State) -> bytes:
    """Compact bytes for keyed state; the inverse is ``loads``."""
    return json.dumps(state, separators=(",", ":"), allow_nan=False).encode()


def loads(raw: bytes | str) -> State:
    return json.loads(raw)


def run(
    detector: Detector,
    times_ms: Sequence[int] | Iterable[int],
    values: Sequence[float] | Iterable[float],
    state: State | None = None,
) -> tuple[State, list[float], list[str]]:
    """Drive a detector over one key's history; evaluation and tests use this."""
    st = detector.init() if state is None else state
    scores: list[float] = []
    notes: list[str] = []
    step = detector.step
    for t, v in zip(times_ms, values, strict=True):
        st, s, why = step(st, int(t), float(v))
        scores.append(s)
        notes.append(why)
    return st, scores, notes


class ScoreInput:
    """Treats the incoming value as an already computed score in [0, 1].

    Why: lets the calibration layer and the alarm gate sit on scores made
    elsewhere (a physical-consistency check, a model outside this package,
    or scores replayed during evaluation) with exactly the same code path.
    """

    name = "score"

    def init(self) -> State:
        return {}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return True

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, "missing value skipped"
        return state, min(max(value, 0.0), 1.0), ""
