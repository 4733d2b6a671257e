"""Scorers on small hand-made cases: NAB, BATADAL S, event-level metrics."""

from __future__ import annotations

import math
import random

import pytest

from citystream.evaluation.scoring import (
    PROFILES,
    EventScore,
    NabProfile,
    batadal_score,
    event_score,
    nab_file_score,
    nab_normalised,
    nab_sigmoid,
    probation_length,
)


def s(y: float) -> float:
    """NAB's scaled sigmoid written out: 2 / (1 + e^(5y)) - 1 = tanh(-2.5 y)."""
    return math.tanh(-2.5 * y)


MAX_TP = math.tanh(2.5)  # S(-1) = 0.986614...; NAB divides a TP's sigmoid by it

# Most cases: a file of 1,000 rows (probation floor(150) = 150 rows, under the cap of 750)
# with one window on rows 400..499 (w = 100 rows).
N, WIN = 1000, [(400, 499)]


def test_sigmoid_and_probation() -> None:
    assert nab_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab_sigmoid(0.0) == 0.0
    assert nab_sigmoid(2.99) == pytest.approx(-math.tanh(7.475))  # still the curve just below 3
    assert nab_sigmoid(3.0) == -1.0 and nab_sigmoid(1e6) == -1.0  # NAB: -1 from y = 3 on
    assert probation_length(100) == 15 and probation_length(4032) == 604  # floor(0.15 * rows)
    assert probation_length(4999) == 749 and probation_length(5000) == 750
    # the cap: NAB's min(floor(0.15 * rows), 750)
    assert probation_length(10_000) == 750 and probation_length(22_695) == 750
    assert probation_length(10_000, cap=None) == 1500


def test_early_detection_earns_the_full_tp_weight() -> None:
    # at the window's first row: y = -(499 - 400 + 1) / 100 = -1 -> S(-1) / S(-1) = 1.0 exactly
    r = nab_file_score(N, [400], WIN)
    assert r.raw == pytest.approx(1.0) and (r.tp, r.fp, r.fn) == (1, 0, 0)
    # null = -fn per window = -1; perfect = tp per window = 1; so the early detector scores 100
    assert (r.null, r.perfect) == (-1.0, 1.0) and nab_normalised([r]) == pytest.approx(100.0)


def test_later_detections_earn_less_and_only_the_best_counts() -> None:
    # middle: y = -(499 - 450 + 1) / 100 = -0.5 -> tanh(1.25) / tanh(2.5) = 0.859793
    assert nab_file_score(N, [450], WIN).raw == pytest.approx(0.859793, abs=1e-6)
    # last row: y = -(499 - 499 + 1) / 100 = -0.01 -> tanh(0.025) / tanh(2.5) = 0.025334 (never 0)
    assert nab_file_score(N, [499], WIN).raw == pytest.approx(0.025334, abs=1e-6)
    # 450 and 499 in one window: the window keeps its best (earliest) detection, the other is neither
    r = nab_file_score(N, [499, 450], WIN)
    assert r.raw == pytest.approx(s(-0.5) / MAX_TP) and (r.tp, r.fp) == (1, 0)


def test_missed_window_costs_the_fn_weight_per_profile() -> None:
    assert nab_file_score(N, [], WIN).raw == -1.0  # standard: fn 1.0
    low_fn = nab_file_score(N, [], [(400, 499), (700, 799)], profile="reward_low_FN_rate")
    assert (low_fn.raw, low_fn.null, low_fn.fn) == (-4.0, -4.0, 2)  # fn 2.0 per window, 2 windows
    assert nab_normalised([low_fn]) == 0.0


def test_far_false_positives_cost_the_full_fp_weight() -> None:
    # 900 after the window: y = (900 - 499) / (100 - 1) = 4.05 >= 3 -> S = -1 -> -0.11; window missed: -1
    r = nab_file_score(N, [900], WIN)
    assert r.raw == pytest.approx(-1.11) and (r.tp, r.fp, r.fn) == (0, 1, 1)
    # with no window before it: -fp; a run of three alarmed rows is three false positives: -0.33
    assert nab_file_score(N, [200, 201, 202], WIN).raw == pytest.approx(-1.0 - 0.33)
    # reward_low_FP_rate doubles it: -0.22
    assert nab_file_score(N, [200, 400], WIN, profile="reward_low_FP_rate").raw == pytest.approx(1.0 - 0.22)
    # y = 3 exactly (796 = 499 + 3 * 99) is already the full weight; one row earlier is not quite
    assert nab_file_score(N, [400, 796], WIN).raw == pytest.approx(1.0 - 0.11)
    # 795: y = 296 / 99 -> 0.11 * tanh(-7.4747) = -0.1099999
    assert nab_file_score(N, [400, 795], WIN).raw == pytest.approx(1.0 + 0.11 * s(296 / 99))


def test_false_positive_just_after_a_window_is_cheap() -> None:
    # 500, the first row after the window: y = 1 / 99 -> 0.11 * tanh(-2.5 / 99) = -0.0027772
    r = nab_file_score(N, [400, 500], WIN)
    assert r.raw == pytest.approx(1.0 - 0.0027772, abs=1e-7) and (r.tp, r.fp) == (1, 1)


def test_detections_inside_probation_are_ignored() -> None:
    # probation = 150 rows: detections at 10 and 149 are ignored, 150 counts (-0.11, no window before)
    r = nab_file_score(N, [10, 149, 150], WIN)
    assert r.raw == pytest.approx(-1.0 - 0.11) and r.fp == 1
    # a window straddling probation (100..199, w = 100): its rows before 150 are ignored (120),
    # 160 scores y = -(199 - 160 + 1) / 100 = -0.4 -> tanh(1) / tanh(2.5) = 0.771927
    r = nab_file_score(N, [120, 160], [(100, 199)])
    assert r.raw == pytest.approx(0.771927, abs=1e-6) and (r.tp, r.fn) == (1, 0)


def test_window_inside_probation_is_neither_hit_nor_missed_but_shapes_later_fps() -> None:
    # window 80..119 (w = 40) ends before row 150: no -fn for the null detector, but NAB's
    # perfect score still counts every labelled window (tp * windows)
    r = nab_file_score(N, [100, 150], [(80, 119)])
    assert (r.null, r.perfect, r.tp, r.fn) == (0.0, 1.0, 0, 0)
    # 150 is a FP after that window: y = (150 - 119) / 39 = 0.795 -> 0.11 * tanh(-1.987) = -0.105942
    assert r.raw == pytest.approx(-0.105942, abs=1e-6)


def test_probation_cap_on_a_long_file() -> None:
    # 10,000 rows: probation min(1500, 750) = 750. A detection at 800 (before the window 5000..5999)
    # is a false positive (-0.11): an uncapped probation (1,500 rows) would have hidden it.
    wins = [(5000, 5999)]
    r = nab_file_score(10_000, [749, 800, 5000], wins)
    assert r.raw == pytest.approx(1.0 - 0.11) and r.fp == 1
    hidden = nab_file_score(10_000, [749, 800, 5000], wins, probation=probation_length(10_000, cap=None))
    assert hidden.raw == pytest.approx(1.0) and hidden.fp == 0


def test_normalisation_sums_raw_null_and_perfect_over_files() -> None:
    # file A: detection at 450 (+0.859793) and a far FP at 900 (-0.11); file B: its window missed (-1)
    a = nab_file_score(N, [450, 900], WIN)
    b = nab_file_score(N, [], WIN)
    # 100 * (0.859793 - 0.11 - 1 - (-2)) / (2 - (-2)) = 43.7448
    assert nab_normalised([a, b]) == pytest.approx(43.7448, abs=1e-4)
    custom = nab_file_score(N, [900], WIN, profile=NabProfile(1.0, 0.5, 1.0))
    assert custom.raw == pytest.approx(-1.5)


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


def _row_sweep(n: int, detections: set[int], windows: list[tuple[int, int]], fp: float, fn: float) -> float:
    """An independent reference: walk every row as NAB's sweep does, then keep what a threshold keeps.

    Each row gets the score it would earn if detected (inside a window: its position from the
    window's end; outside: its distance past the last window that ended); probationary rows are
    dropped; a window keeps its best detected row or -fn; detected rows outside windows add up.
    """
    prob = min(math.floor(0.15 * n), 750)
    inside = {i: k for k, (a, b) in enumerate(windows) for i in range(a, b + 1)}
    prev_end = prev_w = None
    best = {k: -fn for k, (_, b) in enumerate(windows) if b >= prob}
    total = 0.0
    for i in range(n):
        k = inside.get(i)
        if k is not None:
            a, b = windows[k]
            row_score = s(-(b - i + 1) / (b - a + 1)) / MAX_TP
        elif prev_end is None:
            row_score = -fp
        else:
            y = (i - prev_end) / (prev_w - 1)
            row_score = fp * (-1.0 if y >= 3 else s(y))
        if i >= prob and i in detections:
            if k is None:
                total += row_score
            else:
                best[k] = max(best[k], row_score)
        if k is not None and i == windows[k][1]:
            prev_end, prev_w = i, windows[k][1] - windows[k][0] + 1
    return total + sum(best.values())


def test_scorer_equals_a_row_by_row_sweep_on_random_files() -> None:
    rnd = random.Random(12)
    for _ in range(100):
        n = rnd.choice([60, 400, 3000, 9000])
        cuts = sorted(rnd.sample(range(n), 2 * rnd.randint(0, 3)))
        windows = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=True) if b > a]
        detections = set(rnd.sample(range(n), rnd.randint(0, 30)))
        for name, prof in PROFILES.items():
            got = nab_file_score(n, detections, windows, name).raw
            assert got == pytest.approx(_row_sweep(n, detections, windows, prof.fp, prof.fn), abs=1e-9)
