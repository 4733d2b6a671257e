"""Scorers on small hand-made cases: NAB, BATADAL S, event-level metrics."""

from __future__ import annotations

import math

import pytest

from citystream.evaluation.scoring import (
    EventScore,
    NabProfile,
    batadal_score,
    event_score,
    nab_file_score,
    nab_normalised,
    nab_sigmoid,
    probation_length,
)


def sig(y: float) -> float:
    return 2 / (1 + math.exp(5 * y)) - 1


def test_sigmoid_and_probation() -> None:
    assert nab_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab_sigmoid(0.0) == 0.0
    assert nab_sigmoid(1e6) == -1.0
    assert probation_length(100) == 15 and probation_length(4032) == 604
    assert probation_length(22695, cap=750) == 750


def test_nab_hand_computed_file() -> None:
    # 100 rows, probation 15, one window rows 40..49 (end - start = 9)
    # detections: 10 (probation: ignored), 20 (before any window: -0.11),
    # 40 (window start: +sig(-1)), 45 (second in window: nothing), 60 (after window: 0.11 * sig(11/9))
    res = nab_file_score(100, [10, 20, 40, 45, 60], [(40, 49)])
    expected = -0.11 + sig(-1.0) + 0.11 * sig((60 - 49) / 9)
    assert res.raw == pytest.approx(expected)
    assert (res.tp, res.fp, res.fn) == (1, 2, 0)
    assert res.null == -1.0 and res.perfect == pytest.approx(sig(-1.0))
    assert nab_normalised([res]) == pytest.approx(100 * (expected + 1) / (sig(-1.0) + 1))


def test_nab_late_detection_earns_less_and_a_miss_costs_fn() -> None:
    early = nab_file_score(100, [42], [(40, 49)]).raw
    late = nab_file_score(100, [49], [(40, 49)]).raw
    assert early == pytest.approx(sig((42 - 49) / 9)) and late == pytest.approx(0.0)
    missed = nab_file_score(100, [], [(40, 49), (70, 79)], profile="reward_low_FN_rate")
    assert missed.raw == -4.0 and missed.null == -4.0 and missed.fn == 2


def test_nab_fp_just_after_a_window_is_cheap() -> None:
    near = nab_file_score(100, [50], [(40, 49)]).raw
    far = nab_file_score(100, [99], [(40, 49)]).raw
    assert -1.0 - 0.11 < far < near < -1.0 + 1e-9  # both miss the window (-1); near costs ~0.011
    assert near == pytest.approx(-1.0 + 0.11 * sig(1 / 9))


def test_nab_profiles_and_normalisation_over_files() -> None:
    a = nab_file_score(100, [40], [(40, 49)], profile=NabProfile(1.0, 0.22, 1.0))
    b = nab_file_score(200, [], [(100, 119)])
    total = nab_normalised([a, b])
    assert total == pytest.approx(100 * (a.raw + b.raw + 2) / (a.perfect + b.perfect + 2))
    assert nab_normalised([nab_file_score(100, [], [(40, 49)])]) == 0.0


def test_nab_window_inside_probation_is_left_out() -> None:
    res = nab_file_score(100, [5, 30], [(2, 8)])
    assert (res.fn, res.null, res.perfect) == (0, 0.0, 0.0)
    assert res.raw == pytest.approx(0.11 * sig((30 - 8) / 6))  # still a preceding window for the FP
    assert math.isnan(nab_normalised([res]))


def test_nab_window_straddling_probation_perfect_starts_after_it() -> None:
    res = nab_file_score(100, [15], [(10, 30)])
    assert res.perfect == pytest.approx(sig((15 - 30) / 20)) and res.raw == pytest.approx(res.perfect)


def test_nab_rejects_bad_windows() -> None:
    with pytest.raises(ValueError):
        nab_file_score(100, [], [(40, 60), (50, 70)])
    with pytest.raises(ValueError):
        nab_file_score(100, [], [(90, 120)])


def test_batadal_hand_computed() -> None:
    # 10 hours, attack rows 2..5 (4 h); flags at 4 (2 h late) and 8 (false)
    flags = [False] * 10
    flags[4] = flags[8] = True
    r = batadal_score(flags, [(2, 5)])
    assert r.s_ttd == pytest.approx(1 - 2 / 4)
    assert r.tpr == pytest.approx(1 / 4) and r.tnr == pytest.approx(5 / 6)
    assert r.s_cm == pytest.approx((1 / 4 + 5 / 6) / 2)
    assert r.s == pytest.approx(0.5 * 0.5 + 0.5 * (1 / 4 + 5 / 6) / 2)


def test_batadal_extremes() -> None:
    assert batadal_score([False] * 10, [(2, 5)]).s == pytest.approx(0.25)  # null: S_TTD 0, TNR 1
    perfect = [2 <= i <= 5 for i in range(10)]
    assert batadal_score(perfect, [(2, 5)]).s == pytest.approx(1.0)
    with pytest.raises(ValueError):
        batadal_score([False] * 3, [])


def test_event_metrics_hand_computed() -> None:
    r = event_score([1, 5, 6, 20], [(4, 8), (15, 18)])
    assert (r.tp, r.fn, r.fp, r.ttd) == (1, 1, 2, [1.0])
    assert r.precision == pytest.approx(1 / 3) and r.recall == 0.5 and r.f1 == pytest.approx(0.4)
    late_ok = event_score([1, 5, 6, 20], [(4, 8), (15, 18)], after=2)
    assert (late_ok.tp, late_ok.fp, late_ok.ttd) == (2, 1, [1.0, 5.0])
    by_ref = event_score([5], [(4, 8)], refs=[6])
    assert by_ref.ttd == [-1.0]  # detected before the labelled point


def test_event_metrics_ignore_and_sum() -> None:
    r = event_score([1, 12], [(0, 3), (10, 14)], ignore_before=5)
    assert (r.tp, r.fn, r.fp) == (1, 0, 0)
    total = r + EventScore(0, 1, 2, [])
    assert (total.tp, total.fn, total.fp) == (1, 1, 2) and total.median_ttd == 2.0
    empty = EventScore()
    assert math.isnan(empty.precision) and math.isnan(empty.f1) and math.isnan(empty.median_ttd)
    assert EventScore(0, 3, 0).f1 == 0.0
