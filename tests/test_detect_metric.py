"""Stage 1 (``MetricDetector``): hand-computed steps, typed state, the calibrated level model, and
the acceptance test that the job's per-key calls and ``citystream evaluate``'s driver agree.

No Flink here: the job's stage function is ``jobs/detect.py``'s ``MetricStage.process_element``,
whose per-row work is ``MetricState.from_json`` -> ``MetricDetector.step`` -> ``to_json``; the
acceptance test repeats exactly those calls (the real-Flink equivalence is test_detect_job.py).
"""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from citystream.detection import (
    CalibratedLevel,
    EwmaZ,
    Likelihood,
    MetricDetector,
    MetricRule,
    MetricState,
    StateVersionError,
    load_config,
    parse_config,
)
from citystream.detection.univariate import MaxOf, SeasonalProfile
from citystream.errors import UserError
from citystream.evaluation import benchmarks
from citystream.evaluation.datasets import Recording, default_root, load_nab
from citystream.settings import ROOT

T0 = 1_767_571_200_000
W = 60_000


def row(k: int, mean: float, lo: float | None = None, hi: float | None = None, key: str = "water-z01-j01-pressure",  # noqa: E501
        metric: str = "pressure_bar", domain: str = "water") -> dict:  # fmt: skip
    return {"domain": domain, "key_kind": "sensor", "key_id": key, "metric": metric,
            "window_start": T0 + k * W, "window_end": T0 + (k + 1) * W, "samples": 3,
            "mean": mean, "min": mean if lo is None else lo, "max": mean if hi is None else hi}  # fmt: skip


RULE = MetricRule("pressure_bar", warmup_windows=2, halflife_windows=1.0, level_z=4.0, peak_z=100.0,
                  rel_scale=0.0, min_scale=0.1, stuck_windows=3)  # fmt: skip


# --------------------------------------------------------------------------- moved from test_alerts.py


def test_level_detector_hand_computed() -> None:
    det = MetricDetector(RULE)
    st = det.init()
    # w0 seeds m = 4.0; w1: resid 0.2, scale = max(s=0, min 0.1) -> z = 2 (warming: n=1 < 2, not scored)
    st, v0 = det.step(st, row(0, 4.0))
    st, v1 = det.step(st, row(1, 4.2))
    assert v0["z"] == v1["z"] == 0.0 and not v1["anomalous"]
    # halflife 1 -> alpha 0.5, but a = max(0.5, 1/(n+1)=0.5): m = 4.1, s = 0.5 * sqrt(pi/2) * 0.2
    assert st.level == pytest.approx(4.1) and st.level_scale == pytest.approx(0.5 * 1.2533141 * 0.2)
    # w2 (n=2, ready): 3.5 -> z = (3.5 - 4.1) / max(0.12533, 0.1) = -4.787 -> anomaly below expected
    st, v2 = det.step(st, row(2, 3.5))
    assert v2["anomalous"] and v2["detector"] == "level-v1" and v2["expected"] == pytest.approx(4.1)
    assert v2["z"] == pytest.approx(-0.6 / (0.5 * 1.2533141 * 0.2), rel=1e-6)
    assert "below expected 4.1" in v2["note"] and v2["severity"] == "warning"


def test_rule_fires_from_the_first_window_and_late_rows_are_ignored() -> None:
    rule = MetricRule("pressure_bar", detectors=("rule",), rule_low=1.5)
    det = MetricDetector(rule)
    st, v = det.step(det.init(), row(5, 1.2))
    assert v["anomalous"] and v["detector"] == "rule-v1" and v["score"] == 1.0 and v["z"] == -1e9
    st2, late = det.step(st, row(4, 1.0))
    assert st2 == st and not late["anomalous"] and late["note"] == "late revision ignored"


def test_flat_and_out_of_range_are_health_not_anomalies() -> None:
    det = MetricDetector(MetricRule("pressure_bar", low=0.0, high=16.0, stuck_windows=3))
    st = det.init()
    healths = []
    for k in range(4):
        st, v = det.step(st, row(k, 3.0))
        healths.append(v["health"])
    assert healths == ["ok", "ok", "flat", "flat"]  # third identical window is the third in a row
    st, v = det.step(st, row(4, -1.0))
    assert v["health"] == "out_of_range" and not v["anomalous"]


def test_zero_is_normal_and_skip_zero() -> None:
    det = MetricDetector(MetricRule("occupancy_pct", zero_is_normal=True, stuck_windows=2))
    st = det.init()
    for k in range(5):
        st, v = det.step(st, row(k, 0.0, metric="occupancy_pct"))
        assert v["health"] == "ok"
    pump = MetricDetector(MetricRule("flow_lps", skip_zero=True, warmup_windows=1))
    st, v = pump.step(pump.init(), row(0, 10.0, 0.0, 30.0, metric="flow_lps"))
    assert st.windows == 0 and "equipment off" in v["note"]


@pytest.mark.parametrize("level_model", ["ewma", "calibrated"])
def test_state_round_trip_gives_identical_verdicts(level_model: str) -> None:
    det = MetricDetector(MetricRule("pressure_bar", warmup_windows=3, level_model=level_model))
    values = [4.0, 4.1, 3.9, 4.05, 4.0, 3.0, 4.2, 4.1]
    st = det.init()
    straight = []
    for k, x in enumerate(values):
        st, v = det.step(st, row(k, x, x - 0.01, x + 0.02))
        straight.append(v)
    st = det.init()
    resumed = []
    for k, x in enumerate(values):
        st = MetricState.from_json(st.to_json())  # a checkpoint between every window
        st, v = det.step(st, row(k, x, x - 0.01, x + 0.02))
        resumed.append(v)
    assert resumed == straight


# --------------------------------------------------------------------------- typed, versioned state


def test_state_json_is_versioned_with_named_fields() -> None:
    det = MetricDetector(RULE)
    st, _ = det.step(det.init(), row(0, 4.0))
    data = json.loads(st.to_json())
    assert data["v"] == 1 and data["level"] == 4.0 and data["windows"] == 1
    assert data["last_window_end"] == T0 + W and data["calibrated"] is None
    assert MetricState.from_json(st.to_json()) == st


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"v": 2, "windows": 0}', "version 2 is not readable"),
        ('{"windows": 0}', "version None is not readable"),
        ('{"n": 0, "m": null}', "version None is not readable"),  # the untyped state of old builds
        ('{"v": 1, "bogus": 3}', "unknown fields"),
    ],
)
def test_state_from_json_refuses_what_it_cannot_read(text: str, message: str) -> None:
    with pytest.raises(StateVersionError, match=message):
        MetricState.from_json(text)


# --------------------------------------------------------------------------- the calibrated level model


def test_level_model_is_chosen_in_the_config() -> None:
    c = load_config()
    assert c.imported.level_model == "calibrated" and c.imported_rule("value").name == "value"
    assert all(r.level_model == "ewma" for d in c.domains.values() for r in d.metrics.values())
    with pytest.raises(UserError, match="level_model must be one of"):
        parse_config({"imported": {"level_model": "magic"}})


def test_calibrated_level_defaults_are_the_model_that_won_the_benchmarks() -> None:
    """Every knob is a rule field now; its defaults must build exactly the model chosen before."""
    level = CalibratedLevel.for_rule(MetricRule("value", level_model="calibrated"))
    chosen = MaxOf((Likelihood(SeasonalProfile()), Likelihood(EwmaZ())), bonferroni=True, name="calibrated")
    assert level.model == chosen
    assert (level.on, level.off, level.hold_windows, level.refractory_windows) == (0.999, 0.99, 30, 30)
    assert level.shift_after_windows == 0  # recovery is opt-in per rule
    gate = level.gate(W)
    assert (gate.hold_ms, gate.refractory_ms) == (30 * W, 30 * W)


def test_calibrated_level_alarms_once_on_a_shift_and_holds_the_condition() -> None:
    rnd = random.Random(3)
    det = MetricDetector(MetricRule("value", level_model="calibrated", stuck_windows=0))
    st = det.init()
    fired, active = [], []
    for k in range(1500):
        x = 10.0 + rnd.gauss(0, 0.5) + (6.0 if k >= 1200 else 0.0)
        st, v = det.step(st, row(k, x, key="s", metric="value"))
        if v["anomalous"]:
            fired.append(k)
            assert v["detector"] == "level-lik-v1" and v["z"] > 3.0 and v["score"] >= 0.999
            assert "unusual for this sensor" in v["note"]
        active.append(CalibratedLevel.active(st.calibrated))
    assert fired and 1200 <= fired[0] <= 1210  # caught within a few windows of the shift
    assert all(b - a >= 30 for a, b in itertools.pairwise(fired))  # refractory: no repeats
    assert active[fired[0]] and not any(active[:1200])


# --------------------------------------------------------------------------- acceptance: job == evaluate


def _job_stage(rule: MetricRule, rows: list[dict]) -> list[dict]:
    """``MetricStage.process_element`` per row: state as JSON text in ValueState, as Flink keeps it."""
    det, stored, out = MetricDetector(rule), None, []
    for r in rows:
        st = MetricState.from_json(stored) if stored else det.init()
        st2, verdict = det.step(st, r)
        if st2 == st:
            continue  # the job emits nothing for a late or reordered row
        stored = st2.to_json()
        out.append(verdict)
    return out


def _labelled_series() -> Recording:
    """A NAB file when the shared datasets are there; else a NAB-like series built here."""
    root = default_root(ROOT)
    if (root / "nab").is_dir():
        return load_nab(root, "small").recordings[0]
    rnd = random.Random(5)
    n = 3000
    t = T0 + np.arange(n, dtype=np.int64) * 300_000
    daily = np.sin(2 * math.pi * (t % 86_400_000) / 86_400_000)
    v = 20 + 5 * daily + np.array([rnd.gauss(0, 0.5) for _ in range(n)])
    v[2400:2420] += 15
    return Recording("made-up", t, {"value": v}, events=[(2350, 2450)])


def test_job_stage_and_evaluate_driver_give_identical_alarms() -> None:
    rec = _labelled_series()
    channel = next(iter(rec.channels))
    rule = load_config().imported_rule(channel)
    rows = benchmarks.window_rows(channel, rec.t_ms, rec.channels[channel], benchmarks.cadence_ms(rec))
    job = _job_stage(rule, rows)
    _, driven, _ = benchmarks.drive(MetricDetector(rule), rows)
    assert job == driven
    job_alarms = [i for i, v in enumerate(job) if v["anomalous"]]
    fired, _ = benchmarks.channel_alarms(rec, channel, rule)
    assert job_alarms == fired and fired  # the evaluate driver scores exactly the job's alarms


def test_evaluate_scores_the_configured_stage_1() -> None:
    rec = _labelled_series()
    config = load_config()
    variant = benchmarks.VARIANTS[-1]
    alarms = benchmarks.recording_alarms(rec, variant, config)
    channel = next(iter(rec.channels))
    assert alarms[0] == benchmarks.channel_alarms(rec, channel, config.imported_rule(channel))[0]


def test_the_rule_sets_the_calibrated_models_weekly_restart_and_physical_floor() -> None:
    """A channel's physical range becomes its scale floor (issue 13: never the numeric floor)."""
    from citystream.detection.level import CalibratedLevel

    ranged = CalibratedLevel.for_rule(MetricRule("tank", low=0.0, high=6.0)).model
    seasonal, ewma = (part.inner for part in ranged.parts)
    assert seasonal.scale_floor == ewma.scale_floor == pytest.approx(0.06)
    assert seasonal.auto_weekly and seasonal.restart_after == ewma.restart_after == 4
    plain = CalibratedLevel.for_rule(
        MetricRule("x", cal_seasonal_weekly=False, cal_restart_after=0, cal_scale_floor=0.5)
    ).model
    seasonal, ewma = (part.inner for part in plain.parts)
    assert (seasonal.auto_weekly, seasonal.restart_after, seasonal.scale_floor) == (False, 0, 0.5)
    assert CalibratedLevel.for_rule(MetricRule("y")).model.parts[0].inner.scale_floor is None
