"""The single-stream models of stage 1's calibrated level model: EWMA, seasonal profile, max-of.

Why these and no others: they are what ``MetricDetector``'s ``calibrated`` level
model runs per (sensor, metric); the other models once compared here (robust MAD
window, Holt-Winters, learned band, periodic and null baselines) lost on the
benchmarks and were removed so that only code the job runs is scored. Each keeps
the contract of ``base`` so the calibration layer can wrap any of them.

Three things hold for both models (issue 13):

* **Time, not counts.** Each reading weighs as many "typical intervals" as have
  passed since the previous one (the stream's median cadence, learned from its
  first intervals, or ``cadence_ms`` when given). Half-lives and warm-ups are in
  those intervals, so a regular series scores exactly as before while an
  irregularly sampled one learns at the same pace per hour as a regular one.
* **A floor from the data, not from the float type.** A spread smaller than
  ``scale_floor`` (physical: a share of the range, an on/off step) is not
  trusted for scoring. A key whose spread is below that or below the rounding
  noise of the smallest non-zero step seen (its quantum q: q / sqrt(12)) has
  been constant: when it leaves its level for good (``restart_after`` readings
  on the same side; 0 = never) it has scored its event, and its baseline warms up again at the new
  level instead of calling every later reading a many-sigma event while a
  zero spread slowly grows.
* **State is plain JSON**; fields added since an older build are filled in
  when an older checkpoint is read.

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
_WEEK_MS = 7 * _DAY_MS
_MEANAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation (Gaussian)
#: Intervals collected before the cadence is fixed (their median), then it drifts
#: by at most ``_CADENCE_DRIFT`` per reading, so bursts do not redefine "typical".
_CADENCE_SEED = 9
_CADENCE_DRIFT = 0.01
#: A reading closer than this share of the cadence to the previous one still counts this much.
_MIN_UNITS = 0.1
_ROUNDING_SD = 1.0 / math.sqrt(12.0)


def _floor(scale: float, centre: float, min_scale: float, rel_scale: float) -> float:
    """A scale never below an absolute and a relative floor.

    Why: constant or integer-valued streams have zero spread, and dividing by
    zero turns the first harmless change into an infinite z-score.
    """
    return max(scale, min_scale, rel_scale * abs(centre))


# --------------------------------------------------------------------------- shared stream facts


def _stream_init() -> State:
    """Clock (last time, cadence, the first intervals) and quantum (smallest step, last value)."""
    return {"t": None, "cad": 0.0, "cq": [], "qv": 0.0, "x": None, "o": None}


def _tick(state: State, t_ms: int, fixed_ms: float | None, max_gap: float) -> tuple[float, list[int], float]:
    """Cadence and seed intervals after a reading at ``t_ms``, and how many intervals it stands for.

    Why the median of the first intervals and then a slow drift: a sensor's
    cadence is a property of the sensor, so a burst of fast readings or a
    gap must not change the unit the half-lives are measured in. Gaps count
    at most ``max_gap`` intervals: after an outage the model catches up
    faster, but the history is not thrown away.
    """
    last, c, q = state.get("t"), state.get("cad", 0.0), state.get("cq", [])
    if last is None:
        return c, q, 1.0
    dt = t_ms - last
    if dt == c and fixed_ms is None and len(q) >= _CADENCE_SEED:
        return c, q, 1.0  # the common case: a regular series, on time
    if dt > 0 and fixed_ms is None:
        if len(q) < _CADENCE_SEED:
            q = sorted([*q, dt])
            mid = len(q) // 2
            c = float(q[mid]) if len(q) % 2 else (q[mid - 1] + q[mid]) / 2.0
        elif dt > c:
            c *= math.exp(_CADENCE_DRIFT)
        elif dt < c:
            c *= math.exp(-_CADENCE_DRIFT)
    unit = fixed_ms if fixed_ms is not None else c
    if unit <= 0 or dt < 0:  # no cadence yet, or a late reading: it stands for one interval
        return c, q, 1.0
    return c, q, min(max(dt / unit, _MIN_UNITS), max_gap)


def _decay(per_unit: float, units: float) -> float:
    """Weight of a reading worth ``units`` intervals when one interval weighs ``per_unit``."""
    return per_unit if units == 1.0 else 1.0 - (1.0 - per_unit) ** units


def _floors(state: State, det: Any) -> tuple[float, float]:
    """(scale floor for scoring, spread below which the key counts as constant).

    Why q / sqrt(12): that is the standard deviation of rounding to a step of
    q, the least spread a reading of that resolution can honestly claim; a
    key whose learned spread is below it has been constant. It is also the
    scoring floor only with ``quantum_floor``: on the benchmarks it cost NAB
    points on series that are constant between spikes (every spike is a
    quantum there, so later spikes scored 3.5 sd instead of many).
    """
    physical = max(det.min_scale, det.scale_floor if det.scale_floor is not None else 0.0)
    quantum = state.get("qv", 0.0) * _ROUNDING_SD
    scoring = max(physical, quantum) if det.quantum_floor else physical
    return scoring, max(physical, quantum)


def _departs(state: State, centre: float, value: float, needed: int) -> tuple[bool, list[float] | None]:
    """Has a constant key left its level for good? (restart now, the departure so far).

    Why ``needed`` readings: a lone spike (or a pair) on a constant channel is
    an anomaly of its own and the level stays; readings that keep beside the
    first departure, on the same side, are a new level, and re-learning then
    avoids an endless stream of many-sigma readings while a zero spread
    slowly grows.
    """
    prev = state.get("o")
    if (
        not prev
        or (prev[0] - centre) * (value - centre) <= 0.0
        or abs(value - prev[0]) > 0.5 * abs(prev[0] - centre)
    ):
        return needed <= 1, [value, 1]
    count = prev[1] + 1
    return count >= needed, [prev[0], count]


def _stream_fields(state: State, t_ms: int, value: float, det: Any) -> tuple[State, float]:
    """Clock and quantum after this reading, and how many typical intervals it weighs."""
    c, q, units = _tick(state, t_ms, det.cadence_ms, det.max_gap)
    last, qv = state.get("x"), state.get("qv", 0.0)
    if last is not None and value != last:
        step = abs(value - last)
        qv = step if qv <= 0.0 else min(qv, step)
    t = state.get("t")
    return {"t": t_ms if t is None else max(t, t_ms), "cad": c, "cq": q, "qv": qv, "x": value}, units


# --------------------------------------------------------------------------- EWMA


@dataclass(frozen=True)
class EwmaZ:
    """z-score against an exponentially weighted mean and variance.

    Why: O(1) state and it follows slow level changes. Updates are winsorised
    at ``clip`` sigmas after warm-up so that one spike does not inflate the
    variance and blind the detector for the next hundred readings. Early on
    the weights are elapsed/total (a plain average) so warm-up is short.
    ``halflife`` and ``warmup`` are in typical intervals (see the module).
    """

    halflife: float = 200.0
    warmup: int = 60
    clip: float = 5.0
    min_scale: float = 1e-9
    rel_scale: float = 1e-4
    scale_floor: float | None = None
    quantum_floor: bool = False
    restart_after: int = 4
    cadence_ms: float | None = None
    max_gap: float = 4.0
    name: str = "ewma"

    @property
    def alpha(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.halflife)

    def init(self) -> State:
        return {"n": 0, "m": 0.0, "v": 0.0, **_stream_init()}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["n"] >= self.warmup

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        stream, units = _stream_fields(state, t_ms, value, self)
        n, m, v = state["n"], state["m"], state["v"]
        if n == 0:
            return {"n": 1, "m": value, "v": 0.0, **stream}, 0.0, warming(1, self.warmup)
        floor, flat = _floors(state, self)
        std = _floor(math.sqrt(v), m, floor, self.rel_scale)
        d = value - m
        z = d / std
        warm = n >= self.warmup
        a = max(_decay(self.alpha, units), units / (n + units))
        restart, stream["o"] = False, None
        if self.restart_after and warm and abs(z) > self.clip and math.sqrt(v) <= flat:
            restart, stream["o"] = _departs(state, m, value, self.restart_after)
        if restart:  # constant in its history and now elsewhere: the baseline warms up again there
            new = {"n": 1, "m": value, "v": 0.0, **stream}
        else:
            if warm and abs(z) > self.clip:
                d = math.copysign(self.clip * std, d)
            new = {"n": n + units, "m": m + a * d, "v": (1.0 - a) * (v + a * d * d), **stream}
        if not warm:
            return new, 0.0, warming(round(n + units), self.warmup)
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

#: Weekly cells: one flat list per day of the week of [centre, mean abs deviation, weight,
#: days] per cell, so a reading copies one day's list instead of four week-long ones.
_W = 4


def _week_slot(t_ms: int, buckets_per_day: int) -> tuple[int, int]:
    """(day of the week, offset of this time's cell in that day's list)."""
    return int((t_ms // _DAY_MS) % 7), _W * _bucket(t_ms, buckets_per_day, False)


@dataclass(frozen=True)
class SeasonalProfile:
    """Residual against a learned time-of-day profile, or time-of-week where that fits better.

    Why: demand, traffic and load follow the clock. Each cell keeps its own
    centre and spread, learned online with winsorised exponential updates (a
    robust M-estimate): a plain mean would call every rush hour an anomaly,
    and an unclipped one would let a single outage rewrite next Monday's
    profile. A key is warmed cell by cell: a cell scores once it has seen
    ``warmup`` readings on at least ``min_days`` different days - a
    time-of-day profile learned within one afternoon is just a noisy
    short-term mean, and on such streams this detector abstains.

    Why the weekly choice is per stream and learned: a surge every Friday
    evening is normal on Fridays only, and a daily profile either absorbs it
    (blind on other evenings) or flags it every week. With ``auto_weekly``
    the key keeps an hour-of-week profile next to the daily one and compares
    their out-of-sample squared errors (the first reading of each cell each
    day, against cells learned on earlier days); once ``min_weeks`` weeks have
    been seen and the weekly error is below ``switch`` times the daily one,
    the weekly cells judge (back to daily above ``switch_back``). A weekly
    cell has seen few days, so its spread is shrunk towards its daily cell's.
    ``weekly=True`` forces the weekly profile from the start (the old option).
    """

    buckets_per_day: int = 24
    weekly: bool = False
    rate: float = 0.1
    warmup: int = 4
    min_days: int = 3
    clip: float = 4.0
    min_scale: float = 1e-9
    rel_scale: float = 1e-4
    scale_floor: float | None = None
    quantum_floor: bool = False
    restart_after: int = 4
    cadence_ms: float | None = None
    max_gap: float = 4.0
    auto_weekly: bool = True
    min_weeks: int = 2
    switch: float = 0.75
    switch_back: float = 0.9
    name: str = "seasonal"

    @property
    def cells(self) -> int:
        return self.buckets_per_day * (7 if self.weekly else 1)

    @property
    def _auto(self) -> bool:
        return self.auto_weekly and not self.weekly

    def init(self) -> State:
        k = self.cells
        return self._upgrade({"m": [0.0] * k, "d": [0.0] * k, "c": [0] * k, "k": [0] * k, "ld": [-1] * k})

    def _upgrade(self, state: State) -> State:
        """Fill in fields a checkpoint from an older build lacks (a copy; the input is untouched)."""
        if "cad" in state and (not self._auto or "w" in state):
            return state
        out = {**_stream_init(), **state}
        if self._auto and "w" not in out:
            week = [[0.0, 0.0, 0, 0] * self.buckets_per_day for _ in range(7)]
            out.update({"w": week, "ed": 0.0, "ew": 0.0, "ne": 0})
            out.update({"t0": None, "sel": 0})
        return out

    def _warm(self, state: State, b: int) -> bool:
        return state["c"][b] >= self.warmup and state["k"][b] >= self.min_days

    def _weekly_seen(self, w: list[Any], i: int) -> bool:
        return w[i + 3] >= self.min_weeks and w[i + 2] >= self.min_weeks

    def ready(self, state: State, t_ms: int = 0) -> bool:
        state = self._upgrade(state)
        day, i = _week_slot(t_ms, self.buckets_per_day)
        if self._auto and state["sel"] and self._weekly_seen(state["w"][day], i):
            return True
        return self._warm(state, _bucket(t_ms, self.buckets_per_day, self.weekly))

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, MISSING
        state = self._upgrade(state)
        new, units = _stream_fields(state, t_ms, value, self)
        new = {**state, **new}
        b = _bucket(t_ms, self.buckets_per_day, self.weekly)
        day = int(t_ms // _DAY_MS)
        new_day = day != state["ld"][b]
        floor, flat = _floors(state, self)
        warm = self._warm(state, b)
        m, dd, c = state["m"][b], state["d"][b], state["c"][b]
        scale = _floor(_MEANAD_TO_SIGMA * dd, m, floor, self.rel_scale)
        m_new, d_new = self._learn(m, dd, c, scale, value, units, warm)
        new["m"], new["d"] = _replace(state["m"], b, m_new), _replace(state["d"], b, d_new)
        new["c"] = _replace(state["c"], b, c + units)
        if new_day:
            new["k"], new["ld"] = _replace(state["k"], b, state["k"][b] + 1), _replace(state["ld"], b, day)
        judge = (m, scale, dd, warm, "")
        if self._auto:
            judge = self._weekly(state, new, t_ms, value, units, floor, judge, new_day)
        centre, scale, spread, judged, prefix = judge
        z = 0.0 if c == 0 and prefix == "" else (value - centre) / scale
        new["o"] = None
        if self.restart_after and judged and abs(z) > self.clip and _MEANAD_TO_SIGMA * spread <= flat:
            restart, new["o"] = _departs(state, centre, value, self.restart_after)
            if restart:
                self._restart(new, centre, value, flat, b if prefix == "" else None, t_ms)
        if not judged:
            return new, 0.0, warming(round(c + units), self.warmup)
        score = tail_score(z)
        why = ""
        if score >= EXPLAIN_AT:
            when = "this time of the week" if prefix else "this time"
            why = f"{value:.4g} is {z:+.1f} sd from the usual {centre:.4g} for {when}"
        return new, score, why

    def _learn(
        self, m: float, d: float, c: float, scale: float, value: float, units: float, warm: bool
    ) -> tuple[float, float]:
        """A cell's centre and mean absolute deviation after ``value`` (winsorised once warm)."""
        if c == 0:
            return value, 0.0
        r = value - m
        if warm and abs(r) > self.clip * scale:
            r = math.copysign(self.clip * scale, r)
        a = max(_decay(self.rate, units), units / (c + units))
        return m + a * r, d + a * (abs(r) - d)

    def _weekly(
        self,
        old: State,
        new: State,
        t_ms: int,
        value: float,
        units: float,
        floor: float,
        daily: tuple[float, float, float, bool, str],
        new_day: bool,
    ) -> tuple[float, float, float, bool, str]:
        """Learn the weekly cell, compare both profiles, and say which cell judges this reading."""
        day, i = _week_slot(t_ms, self.buckets_per_day)
        w = old["w"][day]
        m, dw, c, k = w[i], w[i + 1], w[i + 2], w[i + 3]
        c_daily, d_daily = old["c"][_bucket(t_ms, self.buckets_per_day, False)], daily[2]
        spread = (c * dw + self.warmup * d_daily) / (c + self.warmup) if c_daily > 0 else dw
        scale = _floor(_MEANAD_TO_SIGMA * spread, m, floor, self.rel_scale)
        seen = self._weekly_seen(w, i)
        m_new, d_new = self._learn(m, dw, c, scale, value, units, seen)
        nw = list(w)
        nw[i : i + _W] = [m_new, d_new, c + units, k + 1 if new_day else k]
        new["w"] = _replace(old["w"], day, nw)
        t0 = old["t0"] if old["t0"] is not None else t_ms
        new["t0"] = t0
        if new_day and c_daily > 0 and k >= 1:
            ne = old["ne"] + 1
            rate = max(1.0 / ne, 1.0 / (7 * self.buckets_per_day))
            new["ne"] = ne
            new["ed"] = old["ed"] + rate * ((value - daily[0]) ** 2 - old["ed"])
            new["ew"] = old["ew"] + rate * ((value - m) ** 2 - old["ew"])
        if t_ms - t0 >= self.min_weeks * _WEEK_MS and new["ne"] >= 7 * self.buckets_per_day:
            if not old["sel"] and new["ew"] < self.switch * new["ed"]:
                new["sel"] = 1
            elif old["sel"] and new["ew"] > self.switch_back * new["ed"]:
                new["sel"] = 0
        if old["sel"] and seen:
            return m, scale, spread, True, "w"
        return daily

    def _restart(
        self, new: State, level: float, value: float, floor: float, b: int | None, t_ms: int
    ) -> None:
        """A profile constant at one level that departs restarts: every cell that sat there re-learns.

        Why all of them: a pump that never ran is constant in every hour; if
        only this hour's cell restarted, each other hour would raise the same
        event again on its first visit. The cells warm up again (their spread
        must be learned at the new level), and this one starts from the value.
        """
        ms, ds, cs, ks = (list(new[x]) for x in ("m", "d", "c", "k"))
        for j, (mj, dj) in enumerate(zip(ms, ds, strict=True)):
            if _MEANAD_TO_SIGMA * dj <= floor and abs(mj - level) <= floor:
                ms[j], ds[j], cs[j], ks[j] = 0.0, 0.0, 0, 0
        if b is not None:
            ms[b], cs[b], ks[b] = value, 1, 1
        new.update({"m": ms, "d": ds, "c": cs, "k": ks})
        if "w" in new:
            week = [list(w) for w in new["w"]]
            for w in week:
                for j in range(0, len(w), _W):
                    if _MEANAD_TO_SIGMA * w[j + 1] <= floor and abs(w[j] - level) <= floor:
                        w[j : j + _W] = [0.0, 0.0, 0, 0]
            if b is None:
                day, j = _week_slot(t_ms, self.buckets_per_day)
                week[day][j : j + _W] = [value, 0.0, 1, 1]
            new["w"] = week


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
