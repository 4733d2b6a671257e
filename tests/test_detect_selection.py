"""``evaluate --select``: candidates, mean-rank choice, leave-one-dataset-out, and the parallel driver.

The ranking is checked on a hand-made score matrix with the choice written down, including
the case the issue names: a candidate that wins one dataset by far and loses the others
must not be chosen (it would be, on mean score).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from citystream.cli import evaluate as evaluate_cli
from citystream.detection import load_config
from citystream.errors import UserError
from citystream.evaluation.benchmarks import Variant, compute_alarms
from citystream.evaluation.datasets import Dataset, Recording, default_root
from citystream.evaluation.report import render_selection
from citystream.evaluation.selection import (
    ScoreMatrix,
    best_by_mean_rank,
    development_sets,
    leave_one_out,
    load_candidates,
    parse_candidates,
    rank_table,
    ranks,
    spearman,
    spread,
)
from citystream.settings import ROOT

DATASETS = default_root(ROOT)
T0_MS = 1_451_606_400_000  # 2016-01-01T00:00:00Z

#: Four datasets, four candidates. "spiky" wins the first dataset by a mile and is last on the
#: others; "steady" is never worse than second. Ranks per dataset (1 = best):
#:            NAB rkc  B    C    D
#:   steady      2     2    2    1   mean 1.75
#:   spiky       1     4    4    4   mean 3.25
#:   a           3     1    3    2   mean 2.25
#:   b           4     3    1    3   mean 2.75
MATRIX = ScoreMatrix(
    ("steady", "spiky", "a", "b"),
    ("NAB realKnownCause", "B", "C", "D"),
    np.array(
        [
            [50.0, 0.8, 0.8, 0.7],
            [99.0, 0.1, 0.0, 0.2],
            [40.0, 0.9, 0.7, 0.6],
            [30.0, 0.7, 0.9, 0.5],
        ]
    ),
)


def test_ranks_share_ties_and_put_missing_last() -> None:
    assert ranks(np.array([0.5, 0.9, 0.5, np.nan])).tolist() == [2.5, 1.0, 2.5, 4.0]


def test_spearman_is_one_for_the_same_order_and_minus_one_reversed() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert math.isnan(spearman(a, np.ones(4)))


def test_a_candidate_that_wins_one_dataset_and_loses_the_rest_is_not_chosen() -> None:
    chosen, mean = best_by_mean_rank(rank_table(MATRIX))
    assert MATRIX.candidates[chosen] == "steady"
    assert mean.tolist() == [1.75, 3.25, 2.25, 2.75]
    # the trap mean rank avoids: on the mean raw score "spiky" would win
    assert MATRIX.candidates[int(np.argmax(MATRIX.scores.mean(axis=1)))] == "spiky"


def test_leave_one_dataset_out_chooses_on_the_others_and_scores_the_held_out() -> None:
    rounds = {r.dataset: r for r in leave_one_out(MATRIX)}
    assert [r.chosen for r in rounds.values()] == ["steady"] * 4
    nab = rounds["NAB realKnownCause"]
    assert (nab.score, nab.rank, nab.best, nab.best_score) == (50.0, 2.0, "spiky", 99.0)
    assert nab.dev_mean_rank == pytest.approx(5 / 3)
    # dev order steady > a > b > spiky against held-out spiky > steady > a > b: d^2 = 12
    assert nab.rho == pytest.approx(1 - 6 * 12 / (4 * 15))
    assert rounds["D"].rank == 1.0 and rounds["D"].rho == pytest.approx(1.0)
    s = spread(list(rounds.values()))
    assert s.scores == pytest.approx((0.5, 0.75, 0.8))  # NAB on the common scale: 50 / 100
    assert s.ranks == (1.0, 2.0, 2.0)


def test_leave_one_out_changes_its_choice_when_the_held_out_set_decides() -> None:
    # two candidates, three datasets: x wins D1 and D2, y wins D3. Holding out D1 or D2 leaves
    # one dataset each way: a tie on mean rank, which the first-listed candidate takes.
    m = ScoreMatrix(("y", "x"), ("D1", "D2", "D3"), np.array([[0.1, 0.1, 0.9], [0.9, 0.9, 0.1]]))
    assert [r.chosen for r in leave_one_out(m)] == ["y", "y", "x"]


def test_candidates_are_validated_as_the_config_is() -> None:
    config = load_config()
    good = {
        "candidate": [
            {"name": "shipped"},
            {"name": "no peak", "overrides": {"detectors": ["level"], "warmup_windows": 50}},
        ]
    }
    got = parse_candidates(good, config, "t")
    assert got[1].overrides == {"detectors": ("level",), "warmup_windows": 50}
    assert got[0].overrides == {}
    bad = [
        ({"candidate": [{"name": "x", "overrides": {"no_such_knob": 1}}, {"name": "y"}]}, "no_such_knob"),
        ({"candidate": [{"name": "x", "overrides": {"alarm_on": 2.0}}, {"name": "y"}]}, "alarm_on"),
        (
            {"candidate": [{"name": "x", "overrides": {"shift_after_windows": 5}}, {"name": "y"}]},
            "shift_after",
        ),
        ({"candidate": [{"name": "x"}, {"name": "x"}]}, "unique"),
        ({"candidate": [{"name": "x"}]}, "at least two"),
        ({"candidate": [{"name": "null"}, {"name": "x"}]}, "needs a name"),
    ]
    for data, message in bad:
        with pytest.raises(UserError, match=message):
            parse_candidates(data, config, "t")


def test_the_shipped_candidates_file_builds() -> None:
    cands = load_candidates(load_config())
    assert 6 <= len(cands) <= 13
    assert any(not c.overrides for c in cands), "the shipped setting must compete"


def _tiny(n: int = 700) -> dict[str, Dataset]:
    """Two made-up recordings with a level step each; NAB-like file names for the split."""
    rng = np.random.default_rng(5)
    t = T0_MS + 300_000 * np.arange(n, dtype=np.int64)
    recs = []
    for k, name in enumerate(("realKnownCause/x.csv", "artificialWithAnomaly/y.csv")):
        a = 10 + rng.normal(0, 1, n)
        b = 5 + rng.normal(0, 0.5, n)
        a[500 + 20 * k : 540 + 20 * k] += 25
        recs.append(Recording(name, t, {"a": a, "b": b}, [(490, 560)], [500 + 20 * k]))
    return {"NAB": Dataset("NAB", recs)}


def test_parallel_alarms_equal_the_single_process_ones() -> None:
    config = load_config()
    variants = [Variant("null"), Variant("shipped"), Variant("strict", {"alarm_on": 0.9999})]
    lines: list[str] = []
    one = compute_alarms(_tiny(), variants, config, workers=1)
    two = compute_alarms(_tiny(), variants, config, workers=2, progress=lines.append)
    assert one.keys() == two.keys()
    for key in one:
        for x, y in zip(one[key], two[key], strict=True):
            assert (x.fired, x.active, x.detections) == (y.fired, y.active, y.detections)
            assert np.array_equal(x.scores, y.scores)
    assert any(one[("shipped", "NAB")][r].fired for r in range(2)), "the step must be seen"
    assert len(lines) == 2 and all("NAB" in line for line in lines)  # one line per variant x dataset
    assert list(development_sets(_tiny())) == ["NAB realKnownCause", "NAB artificialWithAnomaly"]


def test_the_section_quotes_its_command_and_every_candidate() -> None:
    cands = [Variant(n) for n in MATRIX.candidates]
    facts = {"command": "citystream evaluate --select", "candidates": "c.toml", "slice": "x"}
    text = render_selection(MATRIX, cands, leave_one_out(MATRIX), facts | {"workers": 2, "seconds": 1.0})
    assert "`citystream evaluate --select`" in text
    for name in MATRIX.candidates:
        assert f"| {name} |" in text
    assert "Chosen on all development datasets (best mean rank): **steady**" in text


@pytest.mark.datasets
def test_select_on_the_small_slice(tmp_path: Path) -> None:
    if not DATASETS.is_dir():
        pytest.skip(f"shared datasets not found at {DATASETS}")
    cands = tmp_path / "c.toml"
    cands.write_text(
        '[[candidate]]\nname = "shipped"\n[[candidate]]\nname = "e"\noverrides = { level_model = "ewma" }\n'
    )
    parser = argparse.ArgumentParser()
    evaluate_cli.register(parser.add_subparsers())
    out = tmp_path / "q.md"
    only = ["--only", "nab", "--only", "batadal", "--only", "skab"]
    args = parser.parse_args(
        ["evaluate", "--slice", "small", *only, "--select", str(cands), "--out", str(out)]
    )
    assert args.handler(args) == 0
    text = out.read_text()
    section = text[text.index("## Selection") :]
    assert f"--select {cands}" in section
    for column in ("NAB realKnownCause", "NAB artificialWithAnomaly", "BATADAL", "SKAB"):
        assert column in section
    # the candidate "shipped" is the report's configured row: its BATADAL S appears in both places
    report_row = next(
        line for line in text.splitlines() if line.startswith("| stage 1 as configured") and "%" in line
    )
    s = report_row.split("|")[2].strip()
    shipped_row = next(line for line in section.splitlines() if line.startswith("| shipped |"))
    assert f"{s} (" in shipped_row
