"""Single-stream detectors: domain rules, EWMA, robust window, seasonal profile, forecaster.

Why several: city streams differ. A grid frequency has a physical band that no
statistics should override; a tank level has a daily cycle a plain mean calls
anomalous twice a day; a loop detector emits integers whose MAD is often zero.
Each detector here answers one of those shapes, all with the same contract
(see ``base``), so the calibration layer and the alarm gate can sit on top of
any of them.

Per-step code is plain float maths on purpose: it runs once per aggregate per
key inside Flink, where numpy's call overhead would cost more than it saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from citystream.detect.base import (
    EXPLAIN_AT,
    State,
    Step,
    is_missing,
    tail_score,
    warming,
)

MISSING = "missing value skipped"
_DAY_MS = 86_400_000
_MAD_TO_SIGMA = 1.4826  # median absolute deviation -> standard deviation (Gaussian)
_MEANAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation (Gaussian)


def _floor(scale: float, centre: float, min_scale: float, rel_scale: float) -> float:
    """A scale never below an absolute and a relative floor.

    Why: constant or integer-valued streams have zero spread, and dividing by
    zero turns the first harmless change into an infinite z-score.
    """
    return max(scale, min_scale, rel_scale * abs(centre))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class RangeRule:
    """A static domain rule: the value must lie in [low, high] and move no faster than ``max_rate``.

    Why: some limits are physics or regulation, not statistics (grid frequency
    outside 49.8-50.2 Hz, mains pressure below the service level). They need no
    warm-up and must not "learn" that a persistent violation is normal.
    ``max_rate`` is in units per second; it catches jumps no real process makes.
    """

    low: float | None = None
    high: float | None = None
    max_rate: float | None = None
    label: str = "value"
    name: str = "rule"

    def init(self) -> State:
        return {"t": None, "v": None}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return True

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        why = ""
        if self.low is not None and value < self.low:
            why = f"{self.label} {value:.4g} below {self.low:.4g}"
        elif self.high is not None and value > self.high:
            why = f"{self.label} {value:.4g} above {self.high:.4g}"
        elif self.max_rate is not None and state["t"] is not None and t_ms > state["t"]:
            rate = (value - state["v"]) * 1000.0 / (t_ms - state["t"])
            if abs(rate) > self.max_rate:
                why = f"{self.label} changes {rate:+.4g}/s, faster than {self.max_rate:.4g}/s"
        new = {"t": t_ms, "v": value} if self.max_rate is not None else state
        return new, (1.0 if why else 0.0), why


#: Rules operators asked for by name. Limits are the usual European ones; a
#: deployment overrides them through configuration, not code.
RULES: dict[str, RangeRule] = {
    "grid_frequency_hz": RangeRule(49.8, 50.2, max_rate=0.5, label="grid frequency (Hz)"),
    "grid_voltage_pu": RangeRule(0.9, 1.1, label="voltage (p.u.)"),
    "feeder_loading_pct": RangeRule(None, 100.0, label="feeder loading (%)"),
    "water_pressure_bar": RangeRule(2.0, 8.0, label="mains pressure (bar)"),
    "tank_level_fraction": RangeRule(0.1, 0.98, label="tank level (fraction of height)"),
    "road_occupancy_fraction": RangeRule(0.0, 0.6, label="occupancy"),
    "road_speed_kmh": RangeRule(0.0, 160.0, max_rate=15.0, label="speed (km/h)"),
}


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


# --------------------------------------------------------------------------- robust window


@dataclass(frozen=True)
class RobustMad:
    """z-score against the median and MAD of the last ``window`` readings.

    Why: a median ignores the spike itself and up to half the window being
    odd, and a fixed window forgets old regimes completely (unlike an EWMA's
    long tail). When the MAD is zero (integer counts, on/off statuses) the
    mean absolute deviation stands in, then the absolute/relative floors.
    """

    window: int = 64
    warmup: int = 32
    min_scale: float = 1e-9
    rel_scale: float = 1e-4
    name: str = "mad"

    def __post_init__(self) -> None:
        if self.warmup > self.window or self.warmup < 3:
            raise ValueError("RobustMad needs 3 <= warmup <= window")

    def init(self) -> State:
        return {"w": []}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return len(state["w"]) >= self.warmup

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        w: list[float] = state["w"]
        new = {"w": [*w[-(self.window - 1) :], value]} if self.window > 1 else {"w": [value]}
        k = len(w)
        if k < self.warmup:
            return new, 0.0, warming(k + 1, self.warmup)
        srt = sorted(w)
        med = _median_sorted(srt)
        dev = sorted(abs(x - med) for x in srt)
        scale = _MAD_TO_SIGMA * _median_sorted(dev)
        if scale == 0.0:
            scale = _MEANAD_TO_SIGMA * sum(dev) / k
        scale = _floor(scale, med, self.min_scale, self.rel_scale)
        z = (value - med) / scale
        score = tail_score(z)
        why = (
            f"{value:.4g} is {z:+.1f} robust sd from the median {med:.4g} of the last {k}"
            if score >= EXPLAIN_AT
            else ""
        )
        return new, score, why


def _median_sorted(xs: list[float]) -> float:
    k = len(xs)
    mid = k // 2
    return xs[mid] if k % 2 else 0.5 * (xs[mid - 1] + xs[mid])


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


# --------------------------------------------------------------------------- forecaster


@dataclass(frozen=True)
class HoltWinters:
    """Residual of an additive, damped-trend Holt-Winters forecast with clock-based seasons.

    Why: a forecaster follows level, trend and daily shape together, so a
    residual means "not what this stream was about to do" - which catches a
    drop at 3 am that a global band would accept. Seasons are indexed by time
    of day (not by sample count) so gaps and irregular sampling do not shift
    the season. ``buckets_per_day=0`` switches seasonality off.
    """

    alpha: float = 0.2
    beta: float = 0.01
    gamma: float = 0.1
    phi: float = 0.9
    buckets_per_day: int = 24
    weekly: bool = False
    scale_halflife: float = 100.0
    warmup: int = 60
    clip: float = 5.0
    min_scale: float = 1e-9
    rel_scale: float = 1e-4
    name: str = "holtwinters"

    @property
    def cells(self) -> int:
        return self.buckets_per_day * (7 if self.weekly else 1)

    def init(self) -> State:
        return {"n": 0, "l": 0.0, "b": 0.0, "e": 0.0, "s": [None] * self.cells}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["n"] >= self.warmup

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        n = state["n"]
        seasons: list[float | None] = state["s"]
        cell = _bucket(t_ms, self.buckets_per_day, self.weekly) if seasons else -1
        if n == 0:
            s = _replace(seasons, cell, 0.0) if seasons else seasons
            return {"n": 1, "l": value, "b": 0.0, "e": 0.0, "s": s}, 0.0, warming(1, self.warmup)
        lvl, trend, err = state["l"], state["b"], state["e"]
        season = seasons[cell] if seasons else 0.0
        fcast = lvl + self.phi * trend + (season or 0.0)
        scale = _floor(_MEANAD_TO_SIGMA * err, fcast, self.min_scale, self.rel_scale)
        r = value - fcast
        z = r / scale
        if n >= self.warmup and abs(z) > self.clip:
            r = math.copysign(self.clip * scale, r)
        x = fcast + r
        base = season or 0.0
        lvl_new = self.alpha * (x - base) + (1.0 - self.alpha) * (lvl + self.phi * trend)
        trend_new = self.beta * (lvl_new - lvl) + (1.0 - self.beta) * self.phi * trend
        s_new = seasons
        if seasons:
            upd = x - lvl_new if season is None else self.gamma * (x - lvl_new) + (1.0 - self.gamma) * season
            s_new = _replace(seasons, cell, upd)
        a = max(1.0 - 0.5 ** (1.0 / self.scale_halflife), 1.0 / (n + 1))
        new = {"n": n + 1, "l": lvl_new, "b": trend_new, "e": err + a * (abs(r) - err), "s": s_new}
        if n < self.warmup:
            return new, 0.0, warming(n + 1, self.warmup)
        score = tail_score(z)
        why = f"{value:.4g} is {z:+.1f} sd from the forecast {fcast:.4g}" if score >= EXPLAIN_AT else ""
        return new, score, why


# --------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Periodic:
    """The floor to beat: "alarms" every ``period`` readings and ignores the values.

    Why it exists: a benchmark score means little until it is compared with a
    detector that knows nothing. Anything that does not beat this one is
    noise with extra steps.
    """

    period: int = 500
    warmup: int = 0
    name: str = "periodic"

    def init(self) -> State:
        return {"n": 0}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["n"] >= self.warmup

    def step(self, state: State, t_ms: int, value: float) -> Step:
        n = state["n"] + 1
        fire = n > self.warmup and (n - self.warmup) % self.period == 0
        return {"n": n}, (1.0 if fire else 0.0), ("periodic alarm (ignores the data)" if fire else "")


@dataclass(frozen=True)
class Null:
    """Never alarms: the zero of the NAB scale and the baseline of every precision figure."""

    name: str = "null"

    def init(self) -> State:
        return {}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return True

    def step(self, state: State, t_ms: int, value: float) -> Step:
        return state, 0.0, ""


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
