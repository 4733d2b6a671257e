"""The normal joint behaviour of one place's channels, and readings that leave it.

Why: a leak, a tampered sensor or a stuck valve often keeps every channel
inside its own usual range while breaking how the channels move together
(a pressure that no longer follows its tank level, a flow without the pump
that drives it). Single-channel models cannot see that; a model of the
channels together can.

The model: every channel is standardised by its own mean and spread, and
the standardised vector's correlation matrix ``C`` is learned (exactly over
a warm-up of history, then exponentially weighted). With ``P = (C + ridge
I)^-1`` the best linear prediction of channel ``i`` from all the others
leaves the residual ``(P x)_i / P_ii`` with variance ``1 / P_ii`` - one
matrix-vector product predicts every channel from every other (O(k^2) per
reading; ``P`` is re-inverted every ``refresh`` readings, O(k^3) amortised).
Each channel's residual z is calibrated by its own running residual spread
(the relations are not exactly linear), the largest one (Bonferroni over the
channels) is the reading's raw score, and ``calibrate.Likelihood`` turns
that into a self-calibrated score like every other detector's.

Updates are winsorised in the residual metric: a reading whose largest z
exceeds ``learn_below`` is shrunk towards the mean until it does not, so an
attack is not learned as normal at full weight, while a lasting change is
still followed slowly. Channels constant over the warm-up (a pump that
never ran) carry no relation and are left to the single-channel and status
models. Missing readings (NaN) stand at their channel's mean and are neither
scored nor learned. State is plain JSON (lists of floats), as for every
detector in this package.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from citystream.detection.base import ScoreInput, State, is_missing, tail_prob
from citystream.detection.calibrate import Likelihood


class Residual(NamedTuple):
    """One channel's departure from what the other channels say it should read."""

    channel: str
    expected: float
    seen: float
    z: float


#: What ``JointModel.step`` returns: (new state, score in [0, 1], largest residuals first).
JointStep = tuple[State, float, list[Residual]]


def describe(evidence: Sequence[Residual]) -> str:
    """Operator text: which channels, what the others implied, what was read."""
    return "; ".join(
        f"{r.channel}: expected {r.expected:.4g}, seen {r.seen:.4g} (z {r.z:+.1f})" for r in evidence
    )


def _invert(a: list[list[float]]) -> list[list[float]] | None:
    """Gauss-Jordan inverse with partial pivoting; None when singular (the ridge prevents it)."""
    n = len(a)
    m = [[*row, *(1.0 if i == j else 0.0 for j in range(n))] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            return None
        m[col], m[piv] = m[piv], m[col]
        inv = 1.0 / m[col][col]
        pivot_row = [v * inv for v in m[col]]
        m[col] = pivot_row
        for r in range(n):
            f = m[r][col]
            if r != col and f != 0.0:
                row = m[r]
                m[r] = [x - f * p for x, p in zip(row, pivot_row, strict=True)]
    return [row[n:] for row in m]


@dataclass(frozen=True)
class JointModel:
    """One place's channels together: residuals of each from the others, self-calibrated.

    ``warmup`` readings (of history) fix each channel's scale and the first
    correlation matrix; afterwards everything follows with ``halflife``
    readings. ``ridge`` shrinks the correlations towards none (keeps ``P``
    well conditioned with 40 channels, several nearly collinear).

    Defaults as measured alone (``python -m citystream.evaluation.joint``):
    ridge 0.02 / 0.5 / 2.0 gave BATADAL S 0.48 / 0.80 / 0.82, the last with
    alarms active half the time; halflife 500 / 1000 / 2000 readings gave
    BATADAL S 0.67 / 0.69 / 0.80 and SKAB event F1 0.59 / 0.55 / 0.28, so
    1000 is the compromise. ``combine="chi2"`` catches more of SKAB (F1 0.44
    vs 0.28 at halflife 2000) but keeps BATADAL alarmed half the time.
    """

    channels: tuple[str, ...]
    warmup: int = 500
    halflife: float = 1000.0
    ridge: float = 0.5
    refresh: int = 24
    learn_below: float = 4.0
    clip: float = 8.0
    min_rel_std: float = 1e-6
    explain: int = 3
    combine: str = "max"
    calibration: Likelihood = field(default_factory=lambda: Likelihood(ScoreInput(), short=4, warmup=100))
    name: str = "joint"

    def __post_init__(self) -> None:
        if len(self.channels) < 2 or len(set(self.channels)) != len(self.channels):
            raise ValueError("JointModel needs at least two distinct channels")
        if self.warmup < 10 or self.refresh < 1:
            raise ValueError("JointModel needs warmup >= 10 and refresh >= 1")
        if self.combine not in ("max", "chi2"):
            raise ValueError("JointModel combine must be 'max' or 'chi2'")

    @property
    def alpha(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.halflife)

    def init(self) -> State:
        """``m``/``s2`` per-channel mean and variance (``c`` observed counts during warm-up),
        ``M`` the warm-up co-moments then the correlation matrix, ``P`` its regularised inverse,
        ``on`` channels in the model, ``rv`` each channel's residual variance, ``q`` its
        resolution (smallest step seen in warm-up; ``prev`` the last reading then), ``lik`` the
        calibration."""
        k = len(self.channels)
        return {
            "n": 0,
            "c": [0] * k,
            "m": [0.0] * k,
            "s2": [0.0] * k,
            "M": [[0.0] * k for _ in range(k)],
            "P": None,
            "on": [],
            "rv": [1.0] * k,
            "q": [0.0] * k,
            "prev": [None] * k,
            "age": 0,
            "lik": self.calibration.init(),
        }

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["P"] is not None and self.calibration.ready(state["lik"], t_ms)

    def step(self, state: State, t_ms: int, values: Mapping[str, float]) -> JointStep:
        """Fold one reading of every channel in; score it against the model before this reading."""
        vals = [values.get(ch, math.nan) for ch in self.channels]
        seen = [not is_missing(v) for v in vals]
        if not any(seen):
            return state, 0.0, []
        if state["P"] is None:
            return self._warm(state, vals, seen), 0.0, []
        return self._judge(state, t_ms, vals, seen)

    # ------------------------------------------------------------------ warm-up: exact moments

    def _warm(self, state: State, vals: list[float], seen: list[bool]) -> State:
        k = len(vals)
        c = list(state["c"])
        m = list(state["m"])
        before = [vals[i] - m[i] if seen[i] else 0.0 for i in range(k)]
        for i in range(k):
            if seen[i]:
                c[i] += 1
                m[i] += before[i] / c[i]
        after = [vals[i] - m[i] if seen[i] else 0.0 for i in range(k)]
        q, prev = list(state["q"]), list(state["prev"])
        for i in range(k):
            if seen[i]:
                step = abs(vals[i] - prev[i]) if prev[i] is not None else 0.0
                if step > 0.0 and (q[i] == 0.0 or step < q[i]):
                    q[i] = step
                prev[i] = vals[i]
        big_m = [[row[j] + before[i] * after[j] for j in range(k)] for i, row in enumerate(state["M"])]
        new = {**state, "n": state["n"] + 1, "c": c, "m": m, "M": big_m, "q": q, "prev": prev}
        if new["n"] >= self.warmup:
            return self._finish_warmup(new)
        return new

    def _finish_warmup(self, state: State) -> State:
        """Scales and correlations from the warm-up; channels without spread leave the model."""
        k = len(self.channels)
        c, m, big_m = state["c"], state["m"], state["M"]
        s2 = [big_m[i][i] / max(c[i] - 1, 1) for i in range(k)]
        on = [
            i
            for i in range(k)
            if c[i] >= self.warmup // 2 and s2[i] > (self.min_rel_std * max(abs(m[i]), 1.0)) ** 2
        ]
        corr = [[0.0] * k for _ in range(k)]
        for i in on:
            for j in on:
                den = math.sqrt(big_m[i][i] * big_m[j][j])
                corr[i][j] = big_m[i][j] / den if den > 0 else 0.0
        return self._refresh({**state, "s2": s2, "M": corr, "on": on, "c": [0] * k, "prev": [None] * k})

    def _refresh(self, state: State) -> State:
        k = len(self.channels)
        on = set(state["on"])
        a = [[state["M"][i][j] if i in on and j in on else 0.0 for j in range(k)] for i in range(k)]
        for i in range(k):
            a[i][i] = a[i][i] + self.ridge if i in on else 1.0  # channels outside the model stand alone
        p = _invert(a)
        return {**state, "P": p if p is not None else state["P"], "age": 0}

    # ------------------------------------------------------------------ scoring and slow learning

    def _judge(self, state: State, t_ms: int, vals: list[float], seen: list[bool]) -> JointStep:
        k = len(self.channels)
        m, s2, p, rv, q = state["m"], state["s2"], state["P"], state["rv"], state["q"]
        sd = [math.sqrt(v) if v > 0 else 1.0 for v in s2]
        on = state["on"]
        x = [0.0] * k
        for i in on:
            if seen[i]:
                x[i] = max(-self.clip, min(self.clip, (vals[i] - m[i]) / sd[i]))
        u = [sum(pij * xj for pij, xj in zip(row, x, strict=True)) for row in p]
        judged = [i for i in on if seen[i]]
        res: list[Residual] = []
        zraw = [0.0] * k
        zmax = 0.0
        chi2 = 0.0
        for i in judged:
            pii = p[i][i]
            r = u[i] / pii  # standardised residual: x_i minus its prediction from the others
            zraw[i] = r * math.sqrt(pii)
            # a residual smaller than the channel's resolution (one step of a quantised gauge) is no news
            floor = q[i] * math.sqrt(pii) / sd[i]
            z = zraw[i] / math.sqrt(rv[i] + floor * floor)
            zmax = max(zmax, abs(z))
            chi2 += z * z
            res.append(Residual(self.channels[i], m[i] + sd[i] * (x[i] - r), vals[i], z))
        raw = self._raw(zmax, chi2, len(judged))
        lik, score, _ = self.calibration.step(state["lik"], t_ms, max(raw, 0.0))
        res.sort(key=lambda e: -abs(e.z))
        new = self._learn(state, vals, seen, x, zraw, zmax)
        new["lik"] = lik
        return new, score, res[: self.explain]

    def _raw(self, zmax: float, chi2: float, k: int) -> float:
        """One reading's raw score: the largest residual (Bonferroni over ``k`` channels), or the
        sum of squares of all (chi-square with ``k`` degrees, Wilson-Hilferty normal approximation)."""
        if k == 0:
            return 0.0
        if self.combine == "max":
            return max(0.0, 1.0 - min(1.0, k * tail_prob(zmax)))
        h = 2.0 / (9.0 * k)
        z = ((chi2 / k) ** (1.0 / 3.0) - (1.0 - h)) / math.sqrt(h)
        return max(0.0, 1.0 - 2.0 * tail_prob(z)) if z > 0 else 0.0

    def _learn(
        self,
        state: State,
        vals: list[float],
        seen: list[bool],
        x: list[float],
        zraw: list[float],
        zmax: float,
    ) -> dict[str, Any]:
        """Follow the normal behaviour slowly; a suspicious reading counts only up to ``learn_below``."""
        a = self.alpha
        shrink = 1.0 if zmax <= self.learn_below else self.learn_below / zmax
        on = state["on"]
        m = list(state["m"])
        s2 = list(state["s2"])
        rv = list(state["rv"])
        xs = [xi * shrink for xi in x]
        for i in on:
            if not seen[i]:
                continue
            sd = math.sqrt(s2[i]) if s2[i] > 0 else 1.0
            d = xs[i] * sd
            m[i] += a * d
            s2[i] = (1.0 - a) * (s2[i] + a * d * d)
            zr = zraw[i] * shrink
            rv[i] += a * (min(zr * zr, 9.0 * rv[i]) - rv[i])
        big_m = [list(row) for row in state["M"]]
        for i in on:
            if not seen[i]:
                continue
            row = big_m[i]
            for j in on:
                if seen[j]:
                    row[j] += a * (xs[i] * xs[j] - row[j])
        new = {**state, "m": m, "s2": s2, "rv": rv, "M": big_m, "n": state["n"] + 1, "age": state["age"] + 1}
        if new["age"] >= self.refresh:
            new = self._refresh(new)
        return new
