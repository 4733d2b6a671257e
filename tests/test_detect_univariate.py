"""Single-stream detectors: hand-computed steps, warm-up, NaN handling, state round-trip."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citystream.detection import EwmaZ, Likelihood, MaxOf, SeasonalProfile
from citystream.detection.base import dumps, loads, run, tail_score

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_700_000_000_000 - (1_700_000_000_000 % DAY)  # a fixed midnight UTC


def erf_score(z: float) -> float:
    return math.erf(abs(z) / math.sqrt(2))


def learned(state: dict) -> dict:
    """The EWMA's mean, variance and weight, without the clock and quantum it also keeps."""
    return {k: state[k] for k in ("n", "m", "v")}


# --------------------------------------------------------------------------- EWMA


def test_ewma_hand_computed_steps() -> None:
    d = EwmaZ(halflife=1.0, warmup=2)  # alpha = 0.5
    s = d.init()
    s, score, why = d.step(s, T0, 10.0)
    assert (score, learned(s)) == (0.0, {"n": 1, "m": 10.0, "v": 0.0})
    assert why.startswith("warming up")
    s, score, _ = d.step(s, T0 + 1, 12.0)  # a = max(0.5, 1/2): m = 11, v = 0.5 * (0 + 0.5 * 4) = 1
    assert score == 0.0 and learned(s) == {"n": 2, "m": 11.0, "v": 1.0}
    s, score, _ = d.step(s, T0 + 2, 13.0)  # z = (13 - 11) / 1 = 2
    assert score == pytest.approx(erf_score(2.0))
    assert learned(s) == {"n": 3, "m": 12.0, "v": 1.5}


def test_ewma_winsorises_updates_after_warmup() -> None:
    d = EwmaZ(halflife=1.0, warmup=2, clip=5.0)
    s = {"n": 3, "m": 12.0, "v": 1.5}  # a state written before the clock and quantum existed
    s2, score, why = d.step(s, T0, 100.0)
    std = math.sqrt(1.5)
    assert s2["m"] == pytest.approx(12.0 + 0.5 * 5.0 * std)  # the spike moved the mean by 5 sd * alpha only
    assert score > 0.999999 and "sd from the running mean" in why


def test_ewma_constant_stream_uses_the_floor_not_zero() -> None:
    d = EwmaZ(warmup=3)
    s, scores, _ = run(d, range(10), [5.0] * 10)
    assert scores == [0.0] * 10
    _, score, _ = d.step(s, 11, 5.0 + 5e-4)  # floor = 1e-4 * 5 -> z = 1
    assert score == pytest.approx(erf_score(1.0), rel=1e-6)


# --------------------------------------------------------------------------- seasonal


def test_seasonal_hand_computed_and_per_cell_warmup() -> None:
    d = SeasonalProfile(buckets_per_day=2, warmup=2, rate=0.5, min_days=1)  # cells: 00-12 h, 12-24 h
    s = d.init()
    s, score, _ = d.step(s, T0, 10.0)
    assert score == 0.0 and s["m"][0] == 10.0 and s["c"] == [1, 0] and s["k"] == [1, 0]
    s, score, _ = d.step(s, T0 + DAY, 12.0)  # a = 0.5: m = 11, d = 0.5 * |2| = 1
    assert score == 0.0 and (s["m"][0], s["d"][0], s["c"][0]) == (11.0, 1.0, 2)
    assert d.ready(s, T0 + 2 * DAY) and not d.ready(s, T0 + 2 * DAY + 13 * HOUR)
    s, score, _ = d.step(s, T0 + 13 * HOUR, 100.0)  # the afternoon cell is still warming
    assert score == 0.0 and s["c"] == [2, 1]
    s, score, _ = d.step(s, T0 + 2 * DAY, 13.0)  # z = 2 / (1.2533 * 1)
    assert score == pytest.approx(erf_score(2.0 / 1.2533))
    assert (s["m"][0], s["d"][0]) == (12.0, 1.5)


def test_seasonal_abstains_until_it_has_seen_several_days() -> None:
    d = SeasonalProfile(buckets_per_day=24, warmup=2, min_days=3)
    rig = [T0 + i * 1000 for i in range(3 * 3600)]  # three hours at 1 Hz: plenty of readings, one day
    s, scores, _ = run(d, rig, [1.0 + 0.01 * (i % 7) for i in range(len(rig))])
    assert max(scores) == 0.0 and not d.ready(s, rig[-1])
    days = [T0 + k * DAY + 30 * 60_000 for k in range(4)]  # 00:30 on four days
    s, scores, _ = run(d, days, [1.0, 1.2, 0.9, 5.0], s)
    assert scores[:3] == [0.0, 0.0, 0.0] and scores[3] > 0.99


def test_seasonal_catches_a_value_normal_for_the_day_but_not_for_the_hour() -> None:
    rnd = random.Random(7)
    times = [T0 + i * HOUR for i in range(24 * 21)]
    values = [(100.0 if 7 <= (i % 24) < 19 else 10.0) + rnd.gauss(0, 2) for i in range(len(times))]
    seas, ewma = SeasonalProfile(), EwmaZ(halflife=500, warmup=24)
    s_state, seas_scores, _ = run(seas, times, values)
    e_state, _, _ = run(ewma, times, values)
    assert sorted(seas_scores[24 * 14 :])[-5] < 0.9999  # the profile explains the day
    noon = times[-1] + 13 * HOUR  # the series ends at 23:00; this is 12:00
    assert seas.step(s_state, noon, 10.0)[1] > 0.9999  # night-time level at noon: anomalous
    assert ewma.step(e_state, noon, 10.0)[1] < 0.9  # a global mean shrugs


# --------------------------------------------------------------------------- max-of


def test_max_of_takes_the_most_alarming_part() -> None:
    d = MaxOf((EwmaZ(warmup=5), EwmaZ(halflife=20.0, warmup=5, name="fast")))
    s, _, _ = run(d, range(20), [float(i % 2) for i in range(20)])
    s2, score, why = d.step(s, 20, 50.0)
    assert score > 0.9999 and why.split(":")[0] in {"ewma", "fast"}
    assert len(s2["p"]) == 2


# --------------------------------------------------------------------------- shared properties

DETECTORS = [
    EwmaZ(warmup=10),
    SeasonalProfile(buckets_per_day=4, warmup=2),
    MaxOf((EwmaZ(warmup=5), SeasonalProfile(buckets_per_day=4, warmup=2))),
    Likelihood(EwmaZ(warmup=5), short=4, warmup=10),
]


def _series(seed: int, n: int) -> tuple[list[int], list[float]]:
    rnd = random.Random(seed)
    times = [T0 + i * 15 * 60_000 for i in range(n)]
    values = [math.sin(i / 8) + rnd.gauss(0, 0.3) + (5.0 if i % 97 == 50 else 0.0) for i in range(n)]
    return times, values


@pytest.mark.parametrize("det", DETECTORS, ids=lambda d: d.name)
def test_nan_never_poisons_the_state(det) -> None:
    times, values = _series(1, 120)
    s, _, _ = run(det, times[:100], values[:100])
    before = json.dumps(s)
    for bad in (math.nan, math.inf, -math.inf):
        s2, score, why = det.step(s, times[100], bad)
        assert json.dumps(s2) == before and score == 0.0 and why
    _, with_gaps, _ = run(
        det, times[100:], [math.nan if i % 3 == 0 else v for i, v in enumerate(values[100:])], s
    )
    assert all(0.0 <= x <= 1.0 for x in with_gaps)


@pytest.mark.parametrize("det", DETECTORS, ids=lambda d: d.name)
def test_state_round_trip_gives_identical_scores(det) -> None:
    times, values = _series(2, 300)
    s, _, _ = run(det, times[:150], values[:150])
    restored = loads(dumps(s))
    a_state, a, a_why = run(det, times[150:], values[150:], s)
    b_state, b, b_why = run(det, times[150:], values[150:], restored)
    assert a == b and a_why == b_why
    assert dumps(a_state) == dumps(b_state)


@pytest.mark.parametrize("det", DETECTORS, ids=lambda d: d.name)
def test_step_is_pure_and_scores_stay_in_range(det) -> None:
    times, values = _series(3, 200)
    s = det.init()
    for t, v in zip(times, values, strict=True):
        snapshot = dumps(s)
        s_new, score, why = det.step(s, t, v)
        assert dumps(s) == snapshot, "step mutated its input state"
        assert 0.0 <= score <= 1.0 and isinstance(why, str)
        s = s_new


@pytest.mark.parametrize("det", DETECTORS[:2], ids=lambda d: d.name)
def test_warmup_scores_zero(det) -> None:
    times, values = _series(4, 200)
    s = det.init()
    for t, v in zip(times, values, strict=True):
        warm = det.ready(s, t)
        s, score, _ = det.step(s, t, v)
        if not warm:
            assert score == 0.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(math.nan)),
        min_size=1,
        max_size=80,
    )
)
def test_any_input_keeps_the_state_json_and_scores_bounded(values: list[float]) -> None:
    times = [T0 + i * 60_000 for i in range(len(values))]
    for det in DETECTORS:
        s, scores, _ = run(det, times, values)
        assert loads(dumps(s)) == s
        assert all(0.0 <= x <= 1.0 for x in scores)


def test_tail_score_is_symmetric_and_monotone() -> None:
    assert tail_score(0.0) == 0.0
    assert tail_score(-3.0) == tail_score(3.0)
    assert tail_score(1.0) < tail_score(2.0) < tail_score(4.0) < 1.0
