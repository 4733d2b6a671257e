"""The joint model of a place's channels: it sees broken relations that single channels do not."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from citystream.detection.calibrate import ALARM_ON
from citystream.detection.joint import JointModel, describe

T0 = 1_700_000_000_000
STEP_MS = 60_000
NORMAL = 3000
BROKEN = 150
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _series(seed: int = 7) -> list[dict[str, float]]:
    """``b = 2a + noise`` for NORMAL readings, then ``b = 40 - 2a``: same range, relation broken."""
    rng = random.Random(seed)
    rows = []
    for i in range(NORMAL + BROKEN):
        a = 10.0 + 3.0 * math.sin(2.0 * math.pi * i / 200.0) + rng.gauss(0.0, 0.3)
        b = (2.0 * a if i < NORMAL else 40.0 - 2.0 * a) + rng.gauss(0.0, 0.3)
        rows.append({"a": a, "b": b})
    return rows


def _drive(model: JointModel, rows: list[dict[str, float]]) -> tuple[dict, list[float], list[list]]:
    state = model.init()
    scores, evidence = [], []
    for i, row in enumerate(rows):
        state, score, ev = model.step(state, T0 + i * STEP_MS, row)
        scores.append(score)
        evidence.append(ev)
    return state, scores, evidence


def test_broken_relation_is_flagged_while_each_channel_stays_in_range() -> None:
    rows = _series()
    model = JointModel(("a", "b"))
    _, scores, evidence = _drive(model, rows)
    history, broken = rows[:NORMAL], rows[NORMAL:]
    for ch in ("a", "b"):  # a single-channel range check has nothing to say
        lo, hi = min(r[ch] for r in history), max(r[ch] for r in history)
        assert all(lo <= r[ch] <= hi for r in broken), ch
    hits = [i for i in range(NORMAL, NORMAL + BROKEN) if scores[i] >= ALARM_ON]
    assert hits, "the joint model must flag the broken relation"
    quiet = scores[NORMAL - 1000 : NORMAL]  # calibration settled; the relation still holds
    quiet_rate = sum(s >= ALARM_ON for s in quiet) / len(quiet)
    assert quiet_rate <= 0.01
    assert len(hits) / BROKEN >= 20 * quiet_rate
    top = evidence[hits[0]][0]
    assert top.channel in ("a", "b")
    assert top.seen == rows[hits[0]][top.channel]
    assert abs(top.expected - top.seen) > 1.0  # the others implied a clearly different value
    assert top.channel in describe(evidence[hits[0]])


def test_state_is_plain_json_and_a_restored_model_scores_identically() -> None:
    rows = _series(seed=3)
    model = JointModel(("a", "b"), warmup=200)
    state = model.init()
    for i, row in enumerate(rows[:1000]):
        state, _, _ = model.step(state, T0 + i * STEP_MS, row)
    restored = json.loads(json.dumps(state, allow_nan=False))
    assert restored == state
    for i, row in enumerate(rows[1000:1200], start=1000):
        state, s1, e1 = model.step(state, T0 + i * STEP_MS, row)
        restored, s2, e2 = model.step(restored, T0 + i * STEP_MS, row)
        assert (s1, e1) == (s2, e2)


def test_step_does_not_change_the_state_it_is_given() -> None:
    model = JointModel(("a", "b"), warmup=20)
    state = model.init()
    for i, row in enumerate(_series()[:100]):
        before = json.dumps(state)
        new, _, _ = model.step(state, T0 + i * STEP_MS, row)
        assert json.dumps(state) == before
        state = new


def test_missing_values_are_skipped_per_channel() -> None:
    rows = _series(seed=5)
    model = JointModel(("a", "b"), warmup=200)
    state = model.init()
    for i, row in enumerate(rows[:1500]):
        if i % 10 == 0:
            row = {"a": row["a"], "b": math.nan}
        state, score, ev = model.step(state, T0 + i * STEP_MS, row)
        assert 0.0 <= score <= 1.0
        assert all(e.channel != "b" for e in ev) if i % 10 == 0 else True
    json.dumps(state, allow_nan=False)  # no NaN leaked into the state
    same, score, ev = model.step(state, T0, {"a": math.nan, "b": math.nan})
    assert same is state and score == 0.0 and ev == []


def test_channel_constant_in_warmup_is_left_out_of_the_model() -> None:
    model = JointModel(("a", "b", "pump"), warmup=200)
    state = model.init()
    for i, row in enumerate(_series()[:400]):
        state, _, ev = model.step(state, T0 + i * STEP_MS, {**row, "pump": 1.0 if i < 200 else 0.0})
        assert all(e.channel != "pump" for e in ev)
    assert state["on"] == [0, 1]


@pytest.mark.skipif(not (DATASETS / "batadal").exists(), reason=f"BATADAL not found under {DATASETS}")
def test_batadal_joint_model_alarms_inside_an_attack() -> None:
    from citystream.evaluation.datasets import load_batadal
    from citystream.evaluation.joint import batadal_run

    rec = load_batadal(DATASETS, "small").recordings[0]
    run, score = batadal_run(rec)
    assert 0.0 <= score.s <= 1.0
    assert any(a <= i <= b for i in run.fired for a, b in rec.events)
