"""Anomaly likelihood and the alarm gate: hand-computed steps and calibration on noise."""

from __future__ import annotations

import math
import random

import pytest

from citystream.detection import AlarmGate, EwmaZ, Likelihood, ScoreInput, run
from citystream.detection.base import dumps, loads


def phi(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2))


def test_likelihood_hand_computed() -> None:
    lik = Likelihood(ScoreInput(), short=1, halflife=1.0, warmup=2, min_std=0.05)
    s = lik.init()
    s, score, _ = lik.step(s, 0, 0.0)  # surprise 0 -> cube root 0 -> first long-run sample
    assert score == 0.0 and (s["n"], s["m"], s["v"]) == (1, 0.0, 0.0)
    s, score, _ = lik.step(s, 1, 1 - math.exp(-1))  # surprise 1 -> 1; a = 0.5: m 0.5, v 0.25
    assert score == 0.0
    assert s["m"] == pytest.approx(0.5) and s["v"] == pytest.approx(0.25)
    s, score, why = lik.step(s, 2, 1 - math.exp(-8))  # surprise 8 -> 2; z = (2 - 0.5) / 0.5 = 3
    assert score == pytest.approx(phi(3.0), rel=1e-9)
    assert s["m"] == pytest.approx(1.25) and s["v"] == pytest.approx(0.6875)
    assert why == ""  # below EXPLAIN_AT: no text for the ordinary case


def test_likelihood_short_window_averages_surprise() -> None:
    lik = Likelihood(ScoreInput(), short=2, warmup=2)
    s = lik.init()
    s, score, why = lik.step(s, 0, 1 - math.exp(-2))
    assert score == 0.0 and s["w"] == [pytest.approx(2.0)] and s["n"] == 0 and why.startswith("warming")
    s, _, _ = lik.step(s, 1, 1 - math.exp(-4))
    assert s["n"] == 1 and s["m"] == pytest.approx(3.0 ** (1 / 3))


def test_likelihood_waits_for_the_inner_warmup_and_skips_nan() -> None:
    lik = Likelihood(EwmaZ(warmup=5), short=2, warmup=3)
    s, scores, _ = run(lik, range(6), [1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    assert scores == [0.0] * 6
    assert s["w"] == [pytest.approx(s["w"][0])] and s["n"] == 0  # only the 6th reading was scored
    s2, score, _ = lik.step(s, 7, math.nan)
    assert s2 is s and score == 0.0
    assert not lik.ready(s)


def _alarms(det, values: list[float], on: float = 0.9999, skip: int = 3000) -> int:
    gate = AlarmGate(on=on, off=on)
    _, scores, _ = run(det, range(len(values)), values)
    g = gate.init()
    count = 0
    for t, x in enumerate(scores[skip:]):
        g, fired, _ = gate.step(g, t, x)
        count += int(fired)
    return count


@pytest.mark.parametrize("tail", ["gaussian", "gpd"])
def test_likelihood_is_calibrated_on_gaussian_noise(tail: str) -> None:
    rnd = random.Random(11)
    values = [rnd.gauss(0, 1) for _ in range(40_000)]
    _, scores, notes = run(Likelihood(EwmaZ(), tail=tail), range(len(values)), values)
    tail_ = scores[2_000:]
    rate = sum(1 for x in tail_ if x >= 0.99) / len(tail_)
    assert 0.004 < rate < 0.02  # nominal 0.01
    explained = [n for x, n in zip(scores, notes, strict=True) if x >= 0.999]
    assert explained and all("tail probability" in n for n in explained)


def test_gpd_tail_keeps_alarm_rates_comparable_across_streams() -> None:
    """The measured lesson: one fixed z threshold gives wildly different alarm rates per stream."""
    rnd = random.Random(5)
    gauss = [rnd.gauss(0, 1) for _ in range(30_000)]
    heavy = [
        rnd.gauss(0, 1) / math.sqrt(sum(rnd.gauss(0, 1) ** 2 for _ in range(3)) / 3) for _ in range(30_000)
    ]
    raw_g, raw_h = _alarms(EwmaZ(), gauss), _alarms(EwmaZ(), heavy)
    cal_g, cal_h = (
        _alarms(Likelihood(EwmaZ(), tail="gpd"), gauss),
        _alarms(Likelihood(EwmaZ(), tail="gpd"), heavy),
    )
    assert raw_h > 20 * max(raw_g, 1)  # Student-t(3) noise: a z > 3.9 threshold fires all the time
    assert cal_g <= 10 and cal_h <= 10  # calibrated: both streams stay near the nominal 1e-4


def test_gpd_tail_still_sees_a_real_shift() -> None:
    rnd = random.Random(8)
    values = [rnd.gauss(0, 1) for _ in range(5_000)] + [rnd.gauss(6, 1) for _ in range(20)]
    _, scores, _ = run(Likelihood(EwmaZ(), tail="gpd"), range(len(values)), values)
    assert max(scores[-20:]) > 0.9999 and max(scores[3000:5000]) < 0.9999


@pytest.mark.parametrize("tail", ["gaussian", "gpd"])
def test_likelihood_round_trip(tail: str) -> None:
    lik = Likelihood(EwmaZ(warmup=10), short=4, warmup=10, tail=tail)
    rnd = random.Random(3)
    values = [rnd.gauss(0, 1) for _ in range(200)]
    s, _, _ = run(lik, range(100), values[:100])
    a = run(lik, range(100, 200), values[100:], s)[1]
    b = run(lik, range(100, 200), values[100:], loads(dumps(s)))[1]
    assert a == b


# --------------------------------------------------------------------------- gate


def _gate_run(gate: AlarmGate, scores: list[float]) -> tuple[list[int], list[bool], list[str]]:
    s = gate.init()
    fired, active, notes = [], [], []
    for t, x in enumerate(scores):
        s, f, why = gate.step(s, t, x)
        fired.append(int(f))
        active.append(gate.active(s))
        notes.append(why)
    return fired, active, notes


def test_gate_hysteresis() -> None:
    fired, active, _ = _gate_run(AlarmGate(on=0.9, off=0.5), [0.1, 0.95, 0.7, 0.4, 0.95, 0.2])
    assert fired == [0, 1, 0, 0, 1, 0]
    assert active == [False, True, True, False, True, False]


def test_gate_refractory_suppresses_repeats_but_keeps_the_condition() -> None:
    fired, active, notes = _gate_run(
        AlarmGate(on=0.9, off=0.5, refractory_ms=10), [0.1, 0.95, 0.4, 0.95, 0.4] + [0.0] * 8 + [0.95]
    )
    assert fired[:5] == [0, 1, 0, 0, 0] and active[3]
    assert "suppressed" in notes[3]
    assert fired[-1] == 1  # t = 13 >= 1 + 10


def test_gate_hold_keeps_the_condition_active() -> None:
    _, active, _ = _gate_run(AlarmGate(on=0.9, off=0.5, hold_ms=3), [0.95, 0.1, 0.1, 0.1, 0.1])
    assert active == [True, True, True, False, False]


def test_gate_treats_nan_as_quiet_and_validates() -> None:
    fired, active, _ = _gate_run(AlarmGate(on=0.9, off=0.5), [0.95, math.nan])
    assert fired == [1, 0] and active == [True, False]
    with pytest.raises(ValueError):
        AlarmGate(on=0.5, off=0.9)
