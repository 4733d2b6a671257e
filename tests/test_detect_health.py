"""Drift against neighbours (stage 2's ``NeighbourDrift``).

Stage 1's sensor health (flat-lining, out of range) is tested with ``MetricDetector`` in
test_detect_metric.py; the single-stream ``SensorHealth`` / ``Pipeline`` family it replaced
was deleted.
"""

from __future__ import annotations

import math

from citystream.detection import NeighbourDrift
from citystream.detection.base import dumps, loads


def test_drift_against_neighbours() -> None:
    d = NeighbourDrift(warmup=50, halflife=5.0, k=5.0, tolerance=0.05)
    s = d.init()
    flags, notes = [], []
    for i in range(120):
        world = math.sin(i / 5)  # shared by everyone
        noise = 0.01 * ((i * 7) % 5 - 2)
        value = world + noise + (0.0 if i < 80 else 0.01 * (i - 80))  # slow calibration drift
        s, drifting, note = d.step(s, i, value, [world - 0.01, world + 0.01, world, math.nan])
        flags.append(drifting)
        notes.append(note)
    assert not any(flags[:85]) and flags[-1]
    assert sum(1 for n in notes if n) == 1 and "drifting" in next(n for n in notes if n)
    assert loads(dumps(s)) == s
