"""Learned physical relations (citystream.detection.learned): hand-computed evidence and flags.

Every number below is worked out in the comments from the definitions: the
evidence is a precision-weighted, exponentially forgetting mean of residuals,
so its mean and z-score after a few windows are sums of powers of the decay.
"""

from __future__ import annotations

import json
import math

import pytest

from citystream.detection.learned import (
    LinearDrift,
    LoopSpeedCheck,
    RelationDrift,
    _solve,
    weighted_evidence,
)


def test_weighted_evidence_by_hand() -> None:
    # halflife 1 window: decay 0.5 per window. One residual 0.1 of variance 0.01:
    # a = 0.1 / 0.01 = 10, u = v = 100 -> mean 0.1, z = 10 / sqrt(100) = 1
    acc, mean, z = weighted_evidence([0.0, 0.0, 0.0], 1.0, 0.1, 0.01, 1.0)
    assert (
        acc == pytest.approx([10.0, 100.0, 100.0]) and mean == pytest.approx(0.1) and z == pytest.approx(1.0)
    )
    # the same again one window later: a = 5 + 10, u = 50 + 100, v = 25 + 100 -> z = 15 / sqrt(125)
    _, mean2, z2 = weighted_evidence(acc, 1.0, 0.1, 0.01, 1.0)
    assert mean2 == pytest.approx(0.1) and z2 == pytest.approx(15.0 / math.sqrt(125.0))
    # two windows later instead: decay 0.25 -> a = 12.5, v = 6.25 + 100 -> z = 12.5 / sqrt(106.25)
    _, _, z3 = weighted_evidence(acc, 2.0, 0.1, 0.01, 1.0)
    assert z3 == pytest.approx(12.5 / math.sqrt(106.25))


def test_solve_small_systems() -> None:
    # 2x + y = 5, x + 3y = 10 -> x = 1, y = 3
    assert _solve([[2.0, 1.0], [1.0, 3.0]], [5.0, 10.0]) == pytest.approx([1.0, 3.0])
    assert _solve([[1.0, 2.0], [2.0, 4.0]], [1.0, 2.0]) is None  # singular


def test_relation_drift_warms_up_flags_with_hysteresis_and_barely_learns_the_fault() -> None:
    rel = RelationDrift(0.1, k=5.0, halflife=1.0, warmup=3, floor=0.01, clip=2.0)
    st = rel.init()
    for t in range(3):  # warm-up: offset 0, spread 0; nothing judged
        st, res = rel.step(st, t, 0.0)
        assert res is None
    # residual 0.15, variance 0 + 0.01^2 = 1e-4: a = 1500, u = v = 10^4 -> bias 0.15, z = 15: flagged
    st, res = rel.step(st, 3, 0.15)
    assert (
        res is not None and res.flagged and res.bias == pytest.approx(0.15) and res.z == pytest.approx(15.0)
    )
    # |z| >= 3: not learned, only followed at the memory's pace: 0.15 (1 - 2^(-1/360)) = 2.9e-4
    assert st["c"] == pytest.approx(0.15 * (1 - 0.5 ** (1 / 360))) and st["v"] == 0.0
    # 0.02 next, residual 0.02 - 2.9e-4 = 0.0197: a = 750 + 197.1, u = 5000 + 10^4,
    # v = 2500 + 10^4 -> bias 0.0631, z 8.5: kept (>= k/2 and >= tolerance/2)
    c = 0.15 * (1 - 0.5 ** (1 / 360))
    st, res = rel.step(st, 4, 0.02)
    assert res is not None and res.flagged and res.bias == pytest.approx((750 + (0.02 - c) / 1e-4) / 15000)
    # 0 next: a = 475, u = 22500 -> bias 0.021 < 0.05: cleared
    st, res = rel.step(st, 5, 0.0)
    assert res is not None and not res.flagged
    # a wild window is clipped at 2 tolerances: 5.0 counts as 0.2
    _, res = rel.step(rel.step(rel.step(rel.init(), 0, 0.0)[0], 1, 0.0)[0], 2, 0.0)
    assert res is None
    st2 = rel.init()
    for t in range(3):
        st2, _ = rel.step(st2, t, 0.0)
    _, res = rel.step(st2, 3, 5.0)
    assert res is not None and res.residual == 5.0 and res.bias == pytest.approx(0.2)


def test_relation_drift_extra_variance_is_not_learned_twice() -> None:
    # warm-up residuals alternate +-0.1 with a stated window variance of 0.01: their spread
    # (0.01) is all explained, so the learned excess is 0 and a later window of 0.3 with the
    # same stated variance has z = 0.3 / sqrt(0.01) = 3 (not 0.3 / sqrt(0.02))
    rel = RelationDrift(0.1, k=5.0, halflife=1.0, warmup=4, clip=10.0)
    st = rel.init()
    for t, x in enumerate((0.1, -0.1, 0.1, -0.1)):
        st, _ = rel.step(st, t, x, 0.01)
    assert st["c"] == pytest.approx(0.0) and st["v"] <= 1e-12
    _, res = rel.step(st, 4, 0.3, 0.01)
    assert res is not None and res.z == pytest.approx(3.0)


def test_linear_drift_learns_the_law_and_flags_a_five_percent_offset_on_the_second_window() -> None:
    law = LinearDrift(0.02, k=5.0, halflife=4.0, warmup=10, floor=0.002)
    st = law.init(2)
    for t in range(10):  # y = 2 + 3x exactly, x = 0..9
        st, res = law.step(st, t, 2.0 + 3.0 * t / 9.0, [1.0, t / 9.0])
        assert res is None
    # x = 1: the law says 5, the gauge reads 5.25. r = 0.25 / 5.25 = 0.0476, clipped to
    # 2 tolerances = 0.04; variance 1e-4 (prior) + 0.002^2 = 1.04e-4 -> z = 0.04 / 0.0102 = 3.92
    st, res = law.step(st, 10, 5.25, [1.0, 1.0])
    assert res is not None and not res.flagged
    assert res.residual == pytest.approx(0.25 / 5.25, rel=1e-4) and res.z == pytest.approx(3.922, abs=0.01)
    # again: decay 2^-1/4 = 0.8409 -> z = 0.04 (1 + 0.8409) / sqrt((1 + 0.7071) 1.04e-4) = 5.53
    st, res = law.step(st, 11, 5.25, [1.0, 1.0])
    assert res is not None and res.flagged and res.z == pytest.approx(5.527, abs=0.01)
    json.dumps(st)  # plain JSON state


def _loop_window(speed: float, occ: float) -> dict:
    # vehicles consistent with flow = density x speed at an effective length of 0.55 (% per veh/km)
    return {"speed": speed, "occupancy": occ, "occ_min": occ, "occ_max": occ, "vehicles": speed * occ / 33.0}


def _feed(check: LoopSpeedCheck, st: dict, t: int, w: dict) -> tuple[dict, object]:
    return check.step(st, t, w["speed"], w["occupancy"], w["occ_min"], w["occ_max"], w["vehicles"], 1 / 60)


def test_loop_speed_check_learns_free_flow_and_flags_a_drifting_speed_channel() -> None:
    check = LoopSpeedCheck(warmup=60)
    st = check.init()
    occs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for t in range(90):  # free flow at 100 km/h whatever the occupancy
        st, res = _feed(check, st, t, _loop_window(100.0, occs[t % 6]))
        assert not res.drifting  # type: ignore[attr-defined]
    # critical occupancy = effective length x capacity / free-flow speed = 0.55 x 1900 / 100
    assert check.free_flow_speed(st) == pytest.approx(100.0)
    assert check.critical_occupancy(st) == pytest.approx(10.45)
    # queued (occupancy 30 > 0.8 x 10.45): a speed 10 % high is not judged there
    st_q, res = _feed(check, st, 90, _loop_window(110.0, 30.0))
    assert not res.judged and st_q["e"] == st["e"]  # type: ignore[attr-defined]
    # free flow, speed channel reads 10 % high: residual ln 1.1 = 0.095 per window. The evidence
    # is a mean with a 6-window half-life (decay d = 0.891) over 30 judged windows of ~0, so
    # after n such windows its bias is ~0.095 (1 - d^n): >= the 4 % tolerance from n = 5
    # (0.095 x 0.44 = 0.042; n = 4 gives 0.035), while z is far above 5 by then
    w = _loop_window(100.0, 3.0)
    w["speed"] = 110.0
    st2, flagged_at = st, None
    for n in range(1, 10):
        st2, res = _feed(check, st2, 89 + n, w)
        assert res.judged  # type: ignore[attr-defined]
        if res.drifting and flagged_at is None:  # type: ignore[attr-defined]
            flagged_at = n
    assert flagged_at == 5
    assert st2["ff"] == st["ff"]  # the fault is not learned
    json.dumps(st2)


def test_flag_sign_keeps_a_side_with_hysteresis() -> None:
    from citystream.detection.learned import flag_sign

    assert flag_sign(0, 0.2, 6.0, 5.0, 0.1) == 1  # over both thresholds
    assert flag_sign(1, 0.06, 3.0, 5.0, 0.1) == 1  # kept: >= half of each on the same side
    assert flag_sign(-1, 0.06, 3.0, 5.0, 0.1) == 0  # the other side must pass in full
    assert flag_sign(1, -0.2, -6.0, 5.0, 0.1) == -1
    assert flag_sign(1, 0.04, 6.0, 5.0, 0.1) == 0
