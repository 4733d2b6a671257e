"""Sensor health, kept apart from anomalies.

Why: a stuck pressure transmitter, a loop detector that stopped reporting or
a tank gauge reading 40 m in a 6 m tank is a maintenance ticket, not an
incident. If those readings reached the anomaly layer they would raise a
flood of alarms and, worse, teach the models that garbage is normal. So each
reading passes the health check first; an unhealthy reading is reported
once (on the transition), and the anomaly layer for that sensor is muted
until the sensor recovers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from citystream.detect.base import State, is_missing

OK = "ok"
MISSING = "missing"
OUT_OF_RANGE = "out_of_range"
STUCK = "stuck"
DRIFT = "drift"


@dataclass(frozen=True)
class SensorHealth:
    """Flatline, gaps, missing values and physically impossible values for one sensor.

    ``low``/``high`` are the *instrument's* limits (a 0-10 bar transmitter),
    not operating limits - a pressure of 1.5 bar is an anomaly, -3 bar is a
    broken sensor. ``stuck_count`` identical readings (within ``stuck_tol``)
    in a row mean a frozen value; 0 disables the check for signals that may
    legitimately sit still (a pump status, a closed valve). ``max_gap_ms``
    reports silences; ``missing_count`` NaNs in a row report a dead channel.
    """

    low: float | None = None
    high: float | None = None
    stuck_count: int = 0
    stuck_tol: float = 0.0
    max_gap_ms: int | None = None
    missing_count: int = 3
    name: str = "health"

    def init(self) -> State:
        return {"t": None, "v": None, "k": 0, "nan": 0, "st": OK}

    def step(self, state: State, t_ms: int, value: float) -> tuple[State, str, str]:
        """Return (new state, status for this reading, event text or "")."""
        prev = state["st"]
        events: list[str] = []
        if state["t"] is not None and self.max_gap_ms is not None and t_ms - state["t"] > self.max_gap_ms:
            events.append(f"gap: no reading for {(t_ms - state['t']) / 1000:.0f} s")
        if is_missing(value):
            nan = state["nan"] + 1
            status = prev
            if nan >= self.missing_count and prev != MISSING:
                status = MISSING
                events.append(f"sensor missing: {nan} readings without a value")
            return {**state, "t": t_ms, "nan": nan, "st": status}, MISSING, "; ".join(events)
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            status = OUT_OF_RANGE
            k = 0
        else:
            same = state["v"] is not None and abs(value - state["v"]) <= self.stuck_tol
            k = state["k"] + 1 if same else 0
            status = STUCK if self.stuck_count and k + 1 >= self.stuck_count else OK
        if status != prev:
            if status == OUT_OF_RANGE:
                events.append(f"sensor out of range: {value:.4g} outside [{self.low}, {self.high}]")
            elif status == STUCK:
                events.append(f"sensor stuck at {value:.4g} for {k + 1} readings")
            elif status == OK:
                events.append(f"sensor recovered (was {prev})")
        new = {"t": t_ms, "v": value, "k": k, "nan": 0, "st": status}
        return new, status, "; ".join(events)


@dataclass(frozen=True)
class NeighbourDrift:
    """Slow drift of a sensor against the median of its neighbours.

    Why: calibration drift looks like the world changing to any single-stream
    model, because it is slow. Neighbours (the other pressure gauges of a
    district, the adjacent loop detectors, the other substations) share the
    world but not the fault, so the *offset* to their median should stay
    put. The usual offset and its spread are learned in ``warmup`` readings
    and then frozen; a smoothed current offset further than ``k`` standard
    errors (and at least ``tolerance``) from it is drift.
    """

    warmup: int = 200
    halflife: float = 50.0
    k: float = 5.0
    tolerance: float = 0.0
    name: str = "drift"

    def init(self) -> State:
        return {"n": 0, "m": 0.0, "v": 0.0, "e": 0.0, "d": 0}

    def step(
        self, state: State, t_ms: int, value: float, neighbours: Sequence[float]
    ) -> tuple[State, bool, str]:
        """Return (new state, drifting now, event text on a change of verdict)."""
        ref = [x for x in neighbours if not is_missing(x)]
        if is_missing(value) or not ref:
            return state, bool(state["d"]), ""
        ref.sort()
        mid = len(ref) // 2
        med = ref[mid] if len(ref) % 2 else 0.5 * (ref[mid - 1] + ref[mid])
        off = value - med
        n = state["n"]
        if n < self.warmup:
            m = state["m"] + (off - state["m"]) / (n + 1)
            v = state["v"] + (off - state["m"]) * (off - m)  # Welford sum of squares
            return {"n": n + 1, "m": m, "v": v, "e": m, "d": 0}, False, ""
        a = 1.0 - 0.5 ** (1.0 / self.halflife)
        e = state["e"] + a * (off - state["e"])
        std = math.sqrt(state["v"] / max(n - 1, 1))
        limit = max(self.k * std * math.sqrt(a / (2.0 - a)), self.tolerance)
        drifting = abs(e - state["m"]) > limit
        note = ""
        if drifting != bool(state["d"]):
            note = (
                f"sensor drifting: offset to neighbours {e:+.4g}, usual {state['m']:+.4g}"
                if drifting
                else "sensor back in line with its neighbours"
            )
        return {**state, "e": e, "d": int(drifting)}, drifting, note
