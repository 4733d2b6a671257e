"""How close the simulator's daily shapes are to real data (METR-LA, BATADAL, PJM).

Prints the correlations (run with ``-s`` to see them); the floors are set a
little under what the current profiles reach, so a retune that makes the
shapes less realistic fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from citystream.simulator.calibration import compare

pytestmark = pytest.mark.datasets

#: Minimum Pearson correlation of normalised hourly profiles (current values in comments).
FLOORS = {
    "traffic_speed_weekday": 0.85,  # 0.89 vs METR-LA weekdays
    "traffic_speed_weekend": 0.85,  # 0.89 vs METR-LA weekend
    "water_inlet_flow": 0.85,  # 0.93 vs BATADAL F_PU1
    "water_pressure": 0.75,  # 0.82 vs BATADAL mean P_J*
    "grid_load_weekday": 0.9,  # 0.96 vs PJM East winter weekdays
    "grid_load_weekend": 0.9,  # 0.96 vs PJM East winter weekends
}


def test_hourly_profiles_correlate_with_real_data(datasets: Path) -> None:
    scores = compare(datasets)
    print("\ncalibration (correlation of normalised hourly profiles):")
    for name, value in scores.items():
        print(f"  {name:24} {value:.3f}  (floor {FLOORS[name]})")
    low = {n: v for n, v in scores.items() if v < FLOORS[n]}
    assert not low, f"profiles drifted away from the real data: {low}"
