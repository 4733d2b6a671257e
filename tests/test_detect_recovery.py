"""Issue 13 on small hand-made series: a persisting step becomes a level shift and recovers, an
irregularly sampled spike gets the decision of a regular one, status channels go through the
state model, and metric states written before these changes are still read.

Everything runs ``MetricDetector.step`` as the detect job calls it (state through its JSON).
"""

from __future__ import annotations

import json
import math
import random

import pytest

from citystream.detection import MetricDetector, MetricRule, MetricState, parse_config
from citystream.detection.level import CalibratedLevel
from citystream.errors import UserError

T0 = 1_767_571_200_000  # 2026-01-05 00:00 UTC
W = 60_000


def row(t_end: int, mean: float, window_ms: int = W) -> dict:
    return {"key_id": "s", "window_start": t_end - window_ms, "window_end": t_end, "samples": 1,
            "mean": mean, "min": mean, "max": mean}  # fmt: skip


def run(
    rule: MetricRule, times: list[int], values: list[float], window_ms: int = W, checkpoint: bool = True
) -> tuple[list[dict], list[bool]]:
    """Verdicts and "condition active" per row; ``checkpoint``: state through JSON, as in Flink."""
    det, st = MetricDetector(rule), None
    verdicts, active = [], []
    for t, x in zip(times, values, strict=True):
        st = det.init() if st is None else MetricState.from_json(st.to_json()) if checkpoint else st
        st, v = det.step(st, row(t, x, window_ms))
        verdicts.append(v)
        active.append(CalibratedLevel.active(st.calibrated))
    return verdicts, active


H = 3_600_000
SHIFT = MetricRule("value", level_model="calibrated", stuck_windows=0, shift_after_windows=48)


def step_series(seed: int = 3) -> tuple[list[int], list[float]]:
    """Hourly readings with a daily shape; from hour 600 3 units higher for good; a 2-hour spike at 900.

    Hourly is the hard case: each time-of-day cell sees one reading a day, so the
    profile takes days to absorb a shift and the condition would stay on meanwhile.
    """
    rnd = random.Random(seed)
    values = []
    for k in range(24 * 45):
        x = (
            10.0
            + 2.0 * math.sin(2 * math.pi * (k % 24) / 24)
            + rnd.gauss(0, 0.3)
            + (3.0 if k >= 600 else 0.0)
        )
        values.append(x + (3.0 if 900 <= k < 902 else 0.0))
    return [T0 + (k + 1) * H for k in range(len(values))], values


# --------------------------------------------------------------------------- recovery


def test_a_persisting_step_is_one_alarm_one_level_shift_and_a_later_spike_is_still_caught() -> None:
    times, values = step_series()
    verdicts, active = run(SHIFT, times, values, window_ms=H)
    found = [(k, v["detector"]) for k, v in enumerate(verdicts) if v["anomalous"]]
    assert [d for _, d in found] == ["level-lik-v1", "level-shift-v1", "level-lik-v1"], found
    (alarm, _), (shift, _), (spike, _) = found
    assert 600 <= alarm <= 603  # the step is caught at once
    assert shift - alarm <= 48 and not any(active[shift:900])  # the condition ends within the bound
    assert verdicts[alarm]["window_end"] == T0 + (alarm + 1) * H  # 2026-01-30 01:00 for alarm = 600
    assert "level shift since 2026-01-30 0" in verdicts[shift]["note"]
    assert 900 <= spike <= 902  # judged against the new level, without a new warm-up


def test_without_a_bound_the_same_step_holds_the_condition_and_masks_the_later_spike() -> None:
    times, values = step_series()
    unbounded = MetricRule("value", level_model="calibrated", stuck_windows=0)
    verdicts, held = run(unbounded, times, values, window_ms=H, checkpoint=False)
    _, bounded = run(SHIFT, times, values, window_ms=H, checkpoint=False)
    assert sum(held[600:900]) > sum(bounded[600:900])
    assert not any(v["anomalous"] for v in verdicts[900:910])  # what recovery fixes: the spike is missed


def test_a_channel_constant_in_history_that_comes_alive_relearns_instead_of_looping() -> None:
    """Zero for 16 days, then running around 50 for good; a 2-hour surge to 110 on day 33.

    The old level's spread is zero, so this is no level shift: the models start afresh
    on the new regime (one shift report), and the surge is caught once they are warm.
    """
    rnd = random.Random(4)
    values = [
        (0.0 if k < 400 else 50.0 + rnd.gauss(0, 5.0)) + (60.0 if 800 <= k < 802 else 0.0) for k in range(960)
    ]
    times = [T0 + (k + 1) * H for k in range(len(values))]
    verdicts, active = run(SHIFT, times, values, window_ms=H, checkpoint=False)
    found = [(k, v["detector"]) for k, v in enumerate(verdicts) if v["anomalous"]]
    assert [d for _, d in found].count("level-shift-v1") == 1, found
    assert found[0][0] == 400 and found[-1] == (800, "level-lik-v1")  # the switch-on and the surge
    assert not any(active[560:800])  # no condition left on in between
    _, held = run(MetricRule("value", level_model="calibrated", stuck_windows=0), times, values, H, False)
    assert sum(held[400:800]) > sum(active[400:800])


def test_the_level_shift_state_survives_a_checkpoint_mid_condition() -> None:
    times, values = step_series()
    det = MetricDetector(SHIFT)
    st = det.init()
    for t, x in zip(times[:620], values[:620], strict=True):
        st, _ = det.step(st, row(t, x, H))
    assert st.calibrated is not None and st.calibrated["s0"] is not None and st.calibrated["snap"] is not None
    a, b = st, MetricState.from_json(st.to_json())
    for t, x in zip(times[620:700], values[620:700], strict=True):
        a, va = det.step(a, row(t, x, H))
        b, vb = det.step(b, row(t, x, H))
        assert va == vb
    assert a == b and a.calibrated is not None and a.calibrated["o"] > 2.0  # shifted by about 3


# --------------------------------------------------------------------------- cadence


def jittered(regular: list[int], c: int, seed: int) -> list[int]:
    """Jitter of up to +-40 % of the cadence, one reading in 6 missing, one in 10 followed by a repeat."""
    rnd = random.Random(seed)
    out = []
    for t in regular:
        u = rnd.random()
        if u < 1 / 6:
            continue
        out.append(t + int(rnd.uniform(-0.4, 0.4) * c))
        if u > 0.9:
            out.append(out[-1] + c // 5)
    return sorted(set(out))


@pytest.mark.parametrize("seed", [2])
def test_an_irregularly_sampled_spike_gets_the_decision_of_the_regular_one(seed: int) -> None:
    c = 300_000  # a 5-minute series; its window length is the median gap, as `citystream evaluate` sets it
    rule = MetricRule("value", level_model="calibrated", stuck_windows=0)
    regular = [T0 + k * c for k in range(1, 2400)]
    s0 = regular[2000]
    for height, expect in ((3.0, True), (0.0, False)):
        for times in (regular, jittered(regular, c, seed)):
            rnd = random.Random(seed)
            values = [10.0 + rnd.gauss(0, 0.2) + (height if s0 <= t < s0 + 3 * c else 0.0) for t in times]
            verdicts, active = run(rule, times, values, window_ms=c, checkpoint=False)
            hit = any(v["anomalous"] for t, v in zip(times, verdicts, strict=True) if s0 <= t < s0 + 6 * c)
            assert hit == expect
            if expect:  # held for hold x window length of *time*, however many readings that is
                first = next(i for i, t in enumerate(times) if t >= s0 and active[i])
                end = next(i for i in range(first, len(times)) if not active[i])
                assert 30 * c <= times[end] - times[first] <= 32 * c


# --------------------------------------------------------------------------- status channels, config


def test_a_status_channel_is_judged_by_the_state_model_not_by_z_scores() -> None:
    rule = MetricRule("pump", level_model="calibrated", stuck_windows=0, channel="status")
    hour = 3_600_000
    times, values = [], []
    for k in range(24 * 20):  # on from 06:00 to 18:00 every day for 20 days, hourly readings
        times.append(T0 + (k + 1) * hour)
        values.append(1.0 if 6 <= k % 24 < 18 else 0.0)
    times.append(times[-1] + hour)
    values.append(2.0)  # a state never seen
    verdicts, _ = run(rule, times, values, window_ms=hour)
    assert not any(v["anomalous"] for v in verdicts[24 * 3 : -1])  # the daily switching is normal
    last = verdicts[-1]
    assert last["anomalous"] and last["detector"] == "status-v1" and "never seen" in last["note"]


def test_calibrated_knobs_and_channel_are_validated_with_their_names() -> None:
    cfg = parse_config({"imported": {"level_model": "calibrated", "channel": "status", "alarm_on": 0.9995,
                                     "shift_after_windows": 240}})  # fmt: skip
    level = CalibratedLevel.for_rule(cfg.imported)
    assert (level.on, level.shift_after_windows, level.channel) == (0.9995, 240, "status")
    assert CalibratedLevel.for_rule(cfg.imported_rule("other")) is level  # built once per knob set
    for bad, match in (
        ({"channel": "analog"}, "channel must be one of"),
        ({"alarm_off": 0.9999}, "alarm_on and alarm_off"),
        ({"lik_short_windows": 0}, "lik_short_windows must be positive"),
        ({"shift_after_windows": 10}, "shift_after_windows must exceed"),
        ({"lik_tail": "cauchy"}, "lik_tail must be one of"),
    ):
        with pytest.raises(UserError, match=match):
            parse_config({"imported": bad})


def test_a_metric_state_of_the_previous_build_is_still_read() -> None:
    """Checkpoints written before recovery existed have no recovery keys: they read as "no shift yet"."""
    det = MetricDetector(SHIFT)
    times, values = step_series()
    st = det.init()
    for t, x in zip(times[:300], values[:300], strict=True):
        st, _ = det.step(st, row(t, x, H))
    body = json.loads(st.to_json())
    assert body["v"] == 1 and {"o", "b", "snap"} <= set(body["calibrated"])
    body["calibrated"] = {
        k: body["calibrated"][k] for k in ("model", "gate")
    }  # as the previous build wrote it
    old = MetricState.from_json(json.dumps(body))
    found = []
    for t, x in zip(times[300:], values[300:], strict=True):
        old, v = det.step(old, row(t, x, H))
        found.append(v["detector"]) if v["anomalous"] else None
    assert found == ["level-lik-v1", "level-shift-v1", "level-lik-v1"]
