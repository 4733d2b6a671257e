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

from citystream.detection.base import State, is_missing

OK = "ok"
MISSING = "missing"
OUT_OF_RANGE = "out_of_range"
STUCK = "stuck"
DRIFT = "drift"


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
