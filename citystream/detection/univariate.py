"""The single-stream models of stage 1's calibrated level model: EWMA, seasonal profile, max-of.

Why these and no others: they are what ``MetricDetector``'s ``calibrated`` level
model runs per (sensor, metric); the other models once compared here (robust MAD
window, Holt-Winters, learned band, periodic and null baselines) lost on the
benchmarks and were removed so that only code the job runs is scored. Each keeps
the contract of ``base`` so the calibration layer can wrap any of them.

Per-step code is plain float maths on purpose: it runs once per aggregate per
key inside Flink, where numpy's call overhead would cost more than it saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from citystream.detection.base import (
    EXPLAIN_AT,
    State,
    Step,
    is_missing,
    tail_score,
    warming,
)

MISSING = "missing value skipped"
_DAY_MS = 86_400_000
_MEANAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation (Gaussian)


def _floor(scale: float, centre: float, min_scale: float, rel_scale: float) -> float:
    """A scale never below an absolute and a relative floor.

    Why: constant or integer-valued streams have zero spread, and dividing by
    zero turns the first harmless change into an infinite z-score.
    """
    return max(scale, min_scale, rel_scale * abs(centre))


# --------------------------------------------------------------------------- EWMA


@dataclass(frozen=True)
class EwmaZ:
    """z-score against an exponentially weighted mean and variance.

    Why: O(1) state (three numbers) and it follows slow level changes. Updates
    are winsorised at ``clip`` sigmas after warm-up so that one spike does not
    inflate the variance and blind the detector for the next hundred readings.
    Early on the weights are 1/n (a plain average) so warm-up is short.
    """

    halflife: float = 200.0
    warmup: int = 60
    clip: float = 5.0
    min_scale: float = 1e-9
    rel_scale: float = 1e-4
    name: str = "ewma"

    @property
    def alpha(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.halflife)

    def init(self) -> State:
        return {"n": 0, "m": 0.0, "v": 0.0}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["n"] >= self.warmup

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        n, m, v = state["n"], state["m"], state["v"]
        if n == 0:
            return {"n": 1, "m": value, "v": 0.0}, 0.0, warming(1, self.warmup)
        std = _floor(math.sqrt(v), m, self.min_scale, self.rel_scale)
        d = value - m
        z = d / std
        if n >= self.warmup and abs(z) > self.clip:
            d = math.copysign(self.clip * std, d)
        a = max(self.alpha, 1.0 / (n + 1))
        new = {"n": n + 1, "m": m + a * d, "v": (1.0 - a) * (v + a * d * d)}
        if n < self.warmup:
            return new, 0.0, warming(n + 1, self.warmup)
        score = tail_score(z)
        why = f"{value:.4g} is {z:+.1f} sd from the running mean {m:.4g}" if score >= EXPLAIN_AT else ""
        return new, score, why


def _bucket(t_ms: int, buckets_per_day: int, weekly: bool) -> int:
    """Time-of-day (and day-of-week) cell, in UTC so replays bucket identically."""
    b = (t_ms % _DAY_MS) * buckets_per_day // _DAY_MS
    if weekly:
        b += (t_ms // _DAY_MS) % 7 * buckets_per_day
    return int(b)


# --------------------------------------------------------------------------- seasonal


@dataclass(frozen=True)
class SeasonalProfile:
    """Residual against a learned time-of-day (x day-of-week) profile.

    Why: demand, traffic and load follow the clock. Each cell keeps its own
    centre and spread, learned online with winsorised exponential updates (a
    robust M-estimate): a plain mean would call every rush hour an anomaly,
    and an unclipped one would let a single outage rewrite next Monday's
    profile. A key is warmed cell by cell: a cell scores once it has seen
    ``warmup`` readings on at least ``min_days`` different days - a
    time-of-day profile learned within one afternoon (a 1 Hz test rig, a
    sensor installed today) is just a noisy short-term mean, and on such
    streams this detector abstains instead of adding false alarms.
    """

    buckets_per_day: int = 24
    weekly: bool = False
    rate: float = 0.1
    warmup: int = 4
    min_days: int = 3
    clip: float = 4.0
    min_scale: float = 1e-9
    rel_scale: float = 1e-4
    name: str = "seasonal"

    @property
    def cells(self) -> int:
        return self.buckets_per_day * (7 if self.weekly else 1)

    def init(self) -> State:
        k = self.cells
        return {"m": [0.0] * k, "d": [0.0] * k, "c": [0] * k, "k": [0] * k, "ld": [-1] * k}

    def _warm(self, state: State, b: int) -> bool:
        return state["c"][b] >= self.warmup and state["k"][b] >= self.min_days

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return self._warm(state, _bucket(t_ms, self.buckets_per_day, self.weekly))

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        b = _bucket(t_ms, self.buckets_per_day, self.weekly)
        warm = self._warm(state, b)
        c = state["c"][b]
        m = state["m"][b]
        d = state["d"][b]
        if c == 0:
            m_new, d_new, z = value, 0.0, 0.0
        else:
            scale = _floor(_MEANAD_TO_SIGMA * d, m, self.min_scale, self.rel_scale)
            r = value - m
            z = r / scale
            if warm and abs(z) > self.clip:
                r = math.copysign(self.clip * scale, r)
            a = max(self.rate, 1.0 / (c + 1))
            m_new = m + a * r
            d_new = d + a * (abs(r) - d)
        day = int(t_ms // _DAY_MS)
        new_day = day != state["ld"][b]
        new = {
            "m": _replace(state["m"], b, m_new),
            "d": _replace(state["d"], b, d_new),
            "c": _replace(state["c"], b, c + 1),
            "k": _replace(state["k"], b, state["k"][b] + 1) if new_day else state["k"],
            "ld": _replace(state["ld"], b, day) if new_day else state["ld"],
        }
        if not warm:
            return new, 0.0, warming(c + 1, self.warmup)
        score = tail_score(z)
        why = (
            f"{value:.4g} is {z:+.1f} sd from the usual {m:.4g} for this time" if score >= EXPLAIN_AT else ""
        )
        return new, score, why


def _replace(xs: list[Any], i: int, v: Any) -> list[Any]:
    out = list(xs)
    out[i] = v
    return out


@dataclass(frozen=True)
class MaxOf:
    """Several detectors on the same stream; the score is the largest.

    Why: a level shift, a broken daily shape and a lone spike are caught best
    by different models; the maximum keeps each one's strength. Combine
    calibrated detectors only, so that their scores share one scale; with
    ``bonferroni=True`` the best tail probability is multiplied by the
    number of parts, because k detectors see a 1-in-1000 event k times as
    often as one does. The key counts as warmed once any part is.
    """

    parts: tuple[Any, ...] = field(default_factory=tuple)
    bonferroni: bool = False
    name: str = "max"

    def init(self) -> State:
        return {"p": [d.init() for d in self.parts]}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return any(d.ready(s, t_ms) for d, s in zip(self.parts, state["p"], strict=True))

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        best, why, out = -1.0, "", []
        for d, s in zip(self.parts, state["p"], strict=True):
            s2, score, w = d.step(s, t_ms, value)
            out.append(s2)
            if score > best:
                best, why = score, (f"{d.name}: {w}" if w else "")
        best = max(best, 0.0)
        if self.bonferroni:
            best = max(0.0, 1.0 - len(self.parts) * (1.0 - best))
        return {"p": out}, best, why
