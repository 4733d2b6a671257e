"""The per-place checks as keys of a recording: which keys exist, and that they add alarms, never remove them.

Why: ``citystream evaluate`` reports "stage 1 + per-place checks" next to stage 1
alone; that row is only honest if it is exactly stage 1's keys plus the place's
extra ones (status/flow pairs, the joint model), unioned, and if a status channel is
judged by its declared type in both rows.
"""

from __future__ import annotations

import numpy as np

from citystream.detection import load_config
from citystream.evaluation.benchmarks import VARIANTS, recording_alarms
from citystream.evaluation.datasets import Recording
from citystream.evaluation.places import JOINT, PAIR, pair_run, place_keys

T0_MS = 1_767_571_200_000  # 2026-01-05 00:00 UTC
HOUR = 3_600_000


def _pump(
    hours: int, broken_from: int | None = None, start_ms: int = T0_MS, history: Recording | None = None
) -> Recording:
    """A pump cycling 6 h on / 6 h off with its flow; from ``broken_from`` it runs dry (on, no flow)."""
    t = start_ms + HOUR * np.arange(hours, dtype=np.int64)
    status = ((np.arange(hours) // 6) % 2 == 0).astype(float)
    flow = 40.0 * status + np.random.default_rng(3).normal(0.0, 0.5, hours) * status
    if broken_from is not None:
        flow[broken_from:] = 0.0
    chans = {"S_PU1": status, "F_PU1": flow}
    pairs = (("S_PU1", "F_PU1"),)
    return Recording("pump", t, chans, history=history, types={"S_PU1": "status"}, status_flow=pairs)


def _dry_pump() -> Recording:
    """20 normal days of history, then 2 normal days and 2 days running dry."""
    return _pump(24 * 4, broken_from=24 * 2, start_ms=T0_MS + 20 * 24 * HOUR, history=_pump(24 * 20))


def test_a_recording_gets_one_key_per_pair_and_one_joint_model() -> None:
    rec = _pump(48)
    assert place_keys(rec) == [f"{PAIR}S_PU1|F_PU1", JOINT]
    single = Recording("nab", rec.t_ms, {"value": rec.channels["F_PU1"]})
    assert place_keys(single) == []


def test_a_pump_running_dry_alarms_on_its_pair_and_not_before() -> None:
    rec = _dry_pump()
    run = pair_run(rec, "S_PU1", "F_PU1")
    assert run.fired, "pump on with no flow was not flagged"
    assert all(i >= 24 * 2 for i in run.fired)
    assert all(i >= 24 * 2 for i in run.detections)


def test_the_per_place_row_is_stage_1_plus_its_keys() -> None:
    rec = _dry_pump()
    config = load_config()
    stage1, places = VARIANTS[2], VARIANTS[3]
    assert not stage1.places and places.places and places.name.startswith("stage 1 +")
    # The status channel is judged by its state model in both rows (the declared type).
    assert stage1.typed_rule(config, rec, "S_PU1").channel == "status"
    alone, both = recording_alarms(rec, stage1, config), recording_alarms(rec, places, config)
    assert set(alone.fired) <= set(both.fired)
    assert set(alone.detections) <= set(both.detections)
    assert all(b or not a for a, b in zip(alone.active, both.active, strict=True))
    assert set(both.fired) - set(alone.fired), "the dry-running pump added no alarm"


def test_a_selection_candidate_without_overrides_reuses_stage_1_not_the_per_place_row() -> None:
    """The "shipped" candidate must be scored as the job runs (stage 1), not with offline-only checks."""
    from citystream.evaluation.benchmarks import Variant
    from citystream.evaluation.evaluate import _alias_alarms

    alarms = {(VARIANTS[2].name, "BATADAL"): ["stage 1"], (VARIANTS[3].name, "BATADAL"): ["places"]}
    aliased = _alias_alarms(alarms, [Variant("shipped")])  # type: ignore[arg-type]
    assert aliased[("shipped", "BATADAL")] == ["stage 1"]
