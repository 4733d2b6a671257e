"""The physical laws of ``physics`` in streaming form: they learn their constants as they go.

Why separate from ``physics``: on 1-minute aggregates the constants (tank
areas, CT ratios, a loop's effective length, a road's ramps) are not on
file, so these detectors keep plain-JSON state, learn each relation's
constants from normal operation and weigh its residuals over windows
(``weighted_evidence``, ``RelationDrift``, ``LinearDrift``,
``LoopSpeedCheck``). The group stage (``citystream.detection.relations``)
feeds them one place's window at a time; ``physics`` holds the closed-form
checks the offline evaluation uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citystream.detection.base import is_missing


def weighted_evidence(
    acc: Sequence[float], gap: float, residual: float, variance: float, halflife: float
) -> tuple[list[float], float, float]:
    """Fold one residual into a precision-weighted, exponentially forgetting mean: (acc, mean, z).

    Why this form: a check that is judged only in some windows (free flow,
    enough vehicles, a pump running) must not treat the last judged window as
    current after an hour of silence, and a noisy window (three vehicles)
    must count for less than a precise one (thirty). Each residual gets the
    weight ``decay ** age / variance``; ``gap`` is the number of windows since
    the previous judged one, so evidence fades with time, not with calls. ``z``
    is the weighted mean over its standard error, standard normal when the
    residuals are independent with the stated variances. ``acc`` is
    ``[sum w r, sum w, sum w^2 var]`` (three floats of state).
    """
    d = 0.5 ** (gap / halflife)
    a = acc[0] * d + residual / variance
    u = acc[1] * d + 1.0 / variance
    v = acc[2] * d * d + 1.0 / variance
    return [a, u, v], a / u, a / math.sqrt(v)


def flag_sign(previous: int, bias: float, z: float, k: float, tolerance: float) -> int:
    """+1 / -1 while a relation is off upwards / downwards, 0 while it holds (with hysteresis).

    Why a sign: a check that only reports one direction (a feeder taking
    more of its bus, a pump delivering less) must not stay flagged when the
    residual swings from one side to the other - that is two events, and
    the second must pass the full threshold on its own.
    """
    sign = 1 if bias > 0 else -1
    if abs(z) >= k and abs(bias) >= tolerance:
        return sign
    if previous == sign and abs(z) >= k / 2.0 and abs(bias) >= tolerance / 2.0:
        return sign
    return 0


def judge_window(
    st: dict[str, Any], t: int, residual: float, variance: float, halflife: float, k: float, tolerance: float
) -> tuple[float, float, bool]:
    """Fold window ``t``'s residual into a check's state: its evidence and its flag, then (bias, z, flagged).

    Why one step for every check: the time since the last judged window
    (``st["t"]``), the evidence (``st["e"]``) and the flag's hysteresis
    (``st["d"]``) must work alike in all of them, or the same fault would
    clear sooner in one check than in another.
    """
    gap = 1.0 if st["t"] is None else float(t - st["t"])
    st["e"], bias, z = weighted_evidence(st["e"], gap, residual, variance, halflife)
    st["t"] = t
    st["d"] = flag_sign(st["d"], bias, z, k, tolerance)
    return bias, z, st["d"] != 0


@dataclass(frozen=True)
class SpeedCheck:
    """What one window said about a loop's speed channel (see ``LoopSpeedCheck``)."""

    judged: bool  # False: not free flow, too few vehicles, or still learning
    bias: float  # smoothed log-ratio of measured to expected speed
    z: float
    drifting: bool


@dataclass(frozen=True)
class LoopSpeedCheck:
    """A loop detector's speed against what its own occupancy says, in free flow.

    Why: a speed channel that drifts a few percent per hour looks like the
    world changing to any model of speed alone (rush hour moves speed far
    more). But a loop's speed, occupancy and count are tied by the
    fundamental diagram, and below critical occupancy speed barely depends
    on occupancy - so ``log speed = a + b * occupancy`` is learned per loop
    (vehicle-weighted least squares with exponential forgetting ``memory``;
    the slope is shrunk towards a drop of ``prior_drop`` between an empty
    road and critical occupancy, because the first data - a night of
    near-empty roads - cannot identify it). A speed that leaves that line
    while occupancy says the traffic has not changed is the sensor. Residual
    noise is per vehicle (a mean over 3 cars is noisier than over 30).

    Critical occupancy = effective vehicle length x lane capacity /
    free-flow speed: the effective length is learned from the loop's own
    ``speed x occupancy / flow`` (the fundamental diagram's flow = density x
    speed), the capacity of a lane is the generic ``capacity_veh_h``. Windows
    above ``free_share`` of it, or whose occupancy swung widely (free flow
    and queue mixed in one window), are not judged.

    Evidence is a precision-weighted mean of residuals over windows
    (``weighted_evidence``); the channel drifts when ``|z| >= k`` and the
    smoothed bias is at least ``tolerance``, and stays drifting (on the same
    side) until either falls below half. Nothing is learned from windows that look suspicious
    (``|z| >= learn_below``, or the window itself off by 3 sd), so a drift is
    not absorbed.
    """

    tolerance: float = 0.04
    k: float = 5.0
    halflife: float = 6.0
    warmup: int = 60
    min_vehicles: float = 1.0
    memory: float = 360.0
    capacity_veh_h: float = 1900.0
    free_share: float = 0.8
    low_occupancy: float = 4.0
    max_spread: float = 1.35
    prior_drop: float = 0.05
    prior_weight: float = 500.0
    length_min_vehicles: float = 5.0
    model_floor: float = 0.01
    learn_below: float = 3.0

    def init(self) -> dict[str, Any]:
        """``ff``: weighted sums (w, wx, wxx, wy, wxy) of the free-flow fit and ``sv`` its variance
        per vehicle; ``r``: weighted sums (w, w log length) of the effective length; ``e``: the
        evidence, ``t`` the last judged window, ``d`` drifting."""
        return {
            "ff": [0.0, 0.0, 0.0, 0.0, 0.0],
            "sv": 0.01,
            "n": 0,
            "r": [0.0, 0.0],
            "rn": 0,
            "e": [0.0, 0.0, 0.0],
            "t": None,
            "d": 0,
        }

    def _fit(self, ff: Sequence[float], b0: float) -> tuple[float, float]:
        """(intercept, slope) of the free-flow fit, slope shrunk towards ``b0``."""
        w, sx, sxx, sy, sxy = ff
        mx, my = sx / w, sy / w
        vxx = max(sxx - w * mx * mx, 0.0)
        b = (sxy - w * mx * my + self.prior_weight * b0) / (vxx + self.prior_weight)
        return my - b * mx, b

    def critical_occupancy(self, state: Mapping[str, Any]) -> float:
        """Learned critical occupancy (%), or a safe low default while learning."""
        ff, (r_w, r_s) = state["ff"], state["r"]
        if state["n"] >= 5 and state["rn"] >= 20:
            return math.exp(r_s / r_w) * self.capacity_veh_h / math.exp(ff[3] / ff[0])
        return self.low_occupancy / self.free_share

    def free_flow_speed(self, state: Mapping[str, Any]) -> float | None:
        """The loop's learned free-flow speed (vehicle-weighted geometric mean), once it has one."""
        ff = state["ff"]
        return math.exp(ff[3] / ff[0]) if state["n"] >= 5 and ff[0] > 0 else None

    def step(
        self,
        state: Mapping[str, Any],
        t: int,
        speed: float,
        occupancy: float,
        occ_min: float,
        occ_max: float,
        vehicles: float,
        window_h: float,
    ) -> tuple[dict[str, Any], SpeedCheck]:
        """Fold one window in: ``t`` is its index (window end / window length), ``vehicles`` its count.

        Occupancy is in percent, speed in any unit; ``window_h`` (hours per
        window) turns the count into a flow for the effective length.
        """
        st = dict(state)
        flag = bool(st["d"])
        skip = SpeedCheck(False, 0.0, 0.0, flag)
        if any(is_missing(x) for x in (speed, occupancy, occ_min, occ_max, vehicles)):
            return st, skip
        if speed <= 0.0 or occupancy <= 0.0 or vehicles < self.min_vehicles:
            return st, skip
        lam = 0.5 ** (1.0 / self.memory)
        y = math.log(speed)
        critical = self.critical_occupancy(st)
        mixed = occ_min > 0.0 and occ_max / occ_min > self.max_spread and occupancy > self.low_occupancy
        free = occupancy <= self.free_share * critical and not mixed
        b0 = -self.prior_drop / critical
        learn, out = True, skip
        if free and st["n"] >= self.warmup:
            a, b = self._fit(st["ff"], b0)
            resid = y - (a + b * occupancy)
            var = st["sv"] / vehicles + self.model_floor**2
            bias, z, flag = judge_window(st, t, resid, var, self.halflife, self.k, self.tolerance)
            out = SpeedCheck(True, bias, z, flag)
            learn = abs(z) < self.learn_below and resid * resid <= 9.0 * var
        if not learn:
            return st, out
        if free:
            if st["n"] > 5:
                a, b = self._fit(st["ff"], b0)
                e = y - (a + b * occupancy)
                rate = 1.0 / min(st["n"], 100)
                st["sv"] = st["sv"] + rate * (min(e * e * vehicles, 9.0 * st["sv"]) - st["sv"])
            w = vehicles
            inc = (w, w * occupancy, w * occupancy**2, w * y, w * occupancy * y)
            st["ff"] = [s * lam + i for s, i in zip(st["ff"], inc, strict=True)]
            st["n"] = st["n"] + 1
        if vehicles >= self.length_min_vehicles:
            length = math.log(speed * occupancy * window_h / vehicles)  # effective length, log
            st["r"] = [st["r"][0] * lam + vehicles, st["r"][1] * lam + vehicles * length]
            st["rn"] = st["rn"] + 1
        return st, out


@dataclass(frozen=True)
class RelationCheck:
    """What one window said about a physical relation (see ``RelationDrift``)."""

    residual: float  # this window's residual against the learned offset
    bias: float  # smoothed residual
    z: float
    flagged: bool


@dataclass(frozen=True)
class RelationDrift:
    """A physical relation's residual, against the offset it has in normal operation, over windows.

    Why learned offsets: the physics says P = k x V x I x PF, but k (one or
    three phases, line-to-line or line-to-neutral voltage, the meter's PF
    definition) is rarely on file; all substations see one frequency, up to
    each meter's calibration; two stations of a road pass the same vehicles,
    up to the ramps between them. So each relation's residual learns its
    usual value and spread over ``warmup`` windows and then follows it
    slowly (``memory``), and only its departures count.

    Evidence: precision-weighted over windows (``weighted_evidence``) with
    each window's residual clipped to ``clip`` tolerances, so one wild window
    (a spike, a fault transient) cannot make the bias by itself - a relation
    that is off is off for a while. Flagged when ``|z| >= k`` and the
    smoothed bias is at least ``tolerance``; stays flagged (on the same side)
    until either falls below half (``flag_sign``). ``extra_var`` lets the
    caller add what it knows about a window's own uncertainty (Poisson
    counts, the swing of the channels); the learned spread is what is left
    beyond it. Nothing suspicious (``|z| >= learn_below``, or a window off
    by more than three of its standard deviations) is learned as spread, and
    the offset follows it only at the pace of ``memory`` (clipped): a fault
    or event is not absorbed within its first minutes, but one that lasts
    many memories becomes the new normal instead of a flag that never clears.
    """

    tolerance: float
    k: float = 5.0
    halflife: float = 3.0
    warmup: int = 30
    memory: float = 360.0
    floor: float = 0.0
    clip: float = 2.0
    learn_below: float = 3.0

    def init(self) -> dict[str, Any]:
        return {"c": 0.0, "v": 0.0, "n": 0, "e": [0.0, 0.0, 0.0], "t": None, "d": 0}

    def step(
        self, state: Mapping[str, Any], t: int, value: float, extra_var: float = 0.0
    ) -> tuple[dict[str, Any], RelationCheck | None]:
        """Fold window ``t``'s relation residual in; None while warming up or without a value."""
        st = dict(state)
        if is_missing(value):
            return st, None
        n = st["n"]
        if n < self.warmup:
            c = st["c"] + (value - st["c"]) / (n + 1)
            st["v"] = st["v"] + ((value - st["c"]) * (value - c) - extra_var - st["v"]) / (n + 1)
            st["c"], st["n"] = c, n + 1
            return st, None
        r = value - st["c"]
        var = max(st["v"], 0.0) + self.floor**2 + extra_var
        lim = self.clip * self.tolerance
        clipped = max(-lim, min(lim, r))
        bias, z, flagged = judge_window(st, t, clipped, var, self.halflife, self.k, self.tolerance)
        a = 1.0 - 0.5 ** (1.0 / self.memory)
        if abs(z) < self.learn_below and r * r <= 9.0 * var:
            st["c"] = st["c"] + a * r
            st["v"] = st["v"] + a * (r * r - extra_var - st["v"])
            st["n"] = n + 1
        else:
            # what lasts much longer than the memory becomes the new normal: the offset follows
            # the clipped residual at the memory's pace, so a relation cannot stay flagged forever
            # on a baseline frozen at the start of an event (its spread is not learned from it)
            st["c"] = st["c"] + a * clipped
        return st, RelationCheck(r, bias, z, flagged)


def _solve(a: Sequence[Sequence[float]], b: Sequence[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None when the system is singular."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[piv][col]) < 1e-12:
            return None
        m[col], m[piv] = m[piv], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= f * m[col][c]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


@dataclass(frozen=True)
class LinearDrift:
    """A sensor against a linear law of other measurements, learned, with evidence over windows.

    Why: a junction's pressure in a district-metered area is its static head,
    minus the head loss of the flow through the district (Hazen-Williams:
    proportional to flow^1.852), plus the head of the tank that feeds it. The
    coefficients (elevation, pipe friction) are not on file, but the law is
    linear in them, so exponentially weighted least squares learns them per
    sensor: ``y = theta . x``. A leak moves flow and pressures along the law
    (the inlet meters the leak too); a drifting gauge leaves it.

    Residuals are relative to ``y`` (calibration faults scale a reading).
    Evidence and flags as in ``RelationDrift``; nothing suspicious is
    learned, and ``warmup`` windows are needed before anything is judged.
    """

    tolerance: float
    k: float = 5.0
    halflife: float = 4.0
    warmup: int = 60
    memory: float = 720.0
    floor: float = 0.002
    clip: float = 2.0
    learn_below: float = 3.0
    ridge: float = 1e-6

    def init(self, dims: int) -> dict[str, Any]:
        return {
            "S": [[0.0] * dims for _ in range(dims)],
            "b": [0.0] * dims,
            "n": 0,
            "v": 1e-4,
            "e": [0.0, 0.0, 0.0],
            "t": None,
            "d": 0,
        }

    def step(
        self, state: Mapping[str, Any], t: int, y: float, x: Sequence[float]
    ) -> tuple[dict[str, Any], RelationCheck | None]:
        """Fold window ``t`` in: ``y`` the sensor, ``x`` the regressors (a 1.0 for the intercept)."""
        st = dict(state)
        dims = len(st["b"])
        if len(x) != dims or is_missing(y) or any(is_missing(xi) for xi in x) or y == 0.0:
            return st, None
        learn = True
        out: RelationCheck | None = None
        if st["n"] >= self.warmup:
            a = [[st["S"][i][j] + (self.ridge if i == j else 0.0) for j in range(dims)] for i in range(dims)]
            theta = _solve(a, st["b"])
            if theta is not None:
                r = (y - sum(th * xi for th, xi in zip(theta, x, strict=True))) / abs(y)
                var = st["v"] + self.floor**2
                lim = self.clip * self.tolerance
                clipped = max(-lim, min(lim, r))
                bias, z, flagged = judge_window(st, t, clipped, var, self.halflife, self.k, self.tolerance)
                out = RelationCheck(r, bias, z, flagged)
                learn = abs(z) < self.learn_below and r * r <= 9.0 * var
                if learn:
                    st["v"] = st["v"] + (1.0 - 0.5 ** (1.0 / 360.0)) * (r * r - st["v"])
        if learn:
            lam = 0.5 ** (1.0 / self.memory)
            st["S"] = [[st["S"][i][j] * lam + x[i] * x[j] for j in range(dims)] for i in range(dims)]
            st["b"] = [st["b"][i] * lam + x[i] * y for i in range(dims)]
            st["n"] = st["n"] + 1
        return st, out
