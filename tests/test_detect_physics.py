"""Physical-consistency checks: hand-computed residuals on small windows."""

from __future__ import annotations

import math

import pytest

from citystream.detection.physics import (
    fit_linear_balance,
    flow_conservation,
    frequency_agreement,
    power_consistency,
    speed_occupancy,
    water_mass_balance,
)


def test_water_balance_closes() -> None:
    # one 100 m2 tank rises 0.5 m = 50 m3; pumps in 300, out 50, demand 200 -> expected +50
    c = water_mass_balance([(100.0, 2.0, 2.5)], inflow_m3=300, outflow_m3=50, demand_m3=200)
    assert c.residual == pytest.approx(0.0) and c.score == pytest.approx(0.0) and c.explanation == ""


def test_water_balance_flags_a_leak() -> None:
    # tank should have gained 50 m3 but lost 10: 60 m3 unaccounted for; tolerance 5% of 550 = 27.5
    c = water_mass_balance([(100.0, 2.5, 2.4)], inflow_m3=300, outflow_m3=50, demand_m3=200)
    assert c.residual == pytest.approx(-60.0)
    assert c.tolerance == pytest.approx(27.5)
    assert c.score > 0.999 and "leak" in c.explanation


def test_water_balance_sums_tanks_and_rejects_missing() -> None:
    c = water_mass_balance([(50.0, 1.0, 2.0), (50.0, 3.0, 2.0)], 0.0, 0.0)
    assert c.residual == pytest.approx(0.0)
    with pytest.raises(ValueError):
        water_mass_balance([(50.0, math.nan, 2.0)], 10.0, 0.0)


def test_flow_conservation() -> None:
    ok = flow_conservation(upstream_veh=500, downstream_veh=480, on_ramp_veh=20, off_ramp_veh=40)
    assert ok.residual == pytest.approx(0.0) and ok.score == 0.0
    blocked = flow_conservation(upstream_veh=500, downstream_veh=300)
    assert blocked.residual == 200 and blocked.score > 0.999 and "did not leave" in blocked.explanation


def test_speed_occupancy_relation() -> None:
    # occupancy 0.13 over 6.5 m vehicles -> 20 veh/km; at 90 km/h -> 1800 veh/h
    fine = speed_occupancy(flow_veh_h=1800, speed_kmh=90, occupancy=0.13)
    assert fine.residual == pytest.approx(0.0, abs=1e-9)
    stuck_loop = speed_occupancy(flow_veh_h=200, speed_kmh=110, occupancy=0.5)
    assert stuck_loop.score > 0.999 and "implies" in stuck_loop.explanation


def test_frequency_agreement_names_the_odd_substation() -> None:
    c = frequency_agreement({"north": 50.01, "south": 50.012, "east": 50.008, "west": 49.95})
    assert c.culprit == "west"
    assert c.residual == pytest.approx(49.95 - 50.009)
    assert c.score > 0.999
    calm = frequency_agreement({"a": 50.0, "b": 50.001, "c": 49.999})
    assert calm.score < 0.5
    assert frequency_agreement({"a": 50.0, "b": math.nan}).score == 0.0


def test_power_consistency() -> None:
    # 3-phase, 400 V line-to-line, 100 A, PF 0.9 -> sqrt(3) * 400 * 100 * 0.9 / 1000 = 62.35 kW
    good = power_consistency(62.35, 400, 100, 0.9)
    assert abs(good.residual) < 0.01 and good.score < 0.1
    bad = power_consistency(41.6, 400, 100, 0.9)  # one phase missing in the meter
    assert bad.score > 0.999 and "V*I*PF" in bad.explanation
    single = power_consistency(2.3, 230, 10, 1.0, phases=1)
    assert single.residual == pytest.approx(0.0)
    with pytest.raises(ValueError):
        power_consistency(1, 1, 1, 1, phases=2)


def test_linear_balance_recovers_tank_physics() -> None:
    # level change per hour = 0.01 * pump flow - 0.3 (demand), exactly, plus tiny alternating noise
    flows = [float(20 + (i * 37) % 40) for i in range(200)]
    levels = [3.0]
    for i in range(199):
        levels.append(levels[-1] + 0.01 * flows[i] - 0.3 + (0.001 if i % 2 else -0.001))
    bal = fit_linear_balance("L_T1", levels, {"F_PU1": flows})
    assert bal.coefs[0] == pytest.approx(0.01, abs=1e-3) and bal.intercept == pytest.approx(-0.3, abs=0.03)
    assert bal.check(3.0, 3.0 + 0.01 * 30 - 0.3, {"F_PU1": 30.0}).score < 0.9
    spoofed = bal.check(3.0, 3.0, {"F_PU1": 60.0})  # pump ran, level did not move: reading replayed?
    assert spoofed.score > 0.999 and "against what the flows imply" in spoofed.explanation
    assert bal.check(3.0, math.nan, {"F_PU1": 60.0}).score == 0.0
