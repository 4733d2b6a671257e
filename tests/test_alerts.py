"""Unit tests of citystream.alerts: config loading, the per-key detector and the alert lifecycle.

Every expectation is computed by hand in the comments; no Flink, no I/O
beyond reading the shipped config.
"""

from __future__ import annotations

import json

import pytest

from citystream.alerts import (
    AlertPolicy,
    Detection,
    DetectionConfig,
    DomainRules,
    GroupEngine,
    MetricDetector,
    MetricRule,
    family_and_locus,
    load_config,
    parse_config,
)
from citystream.errors import UserError

T0 = 1_767_571_200_000
W = 60_000


def row(k: int, mean: float, lo: float | None = None, hi: float | None = None, key: str = "water-z01-j01-pressure",  # noqa: E501
        metric: str = "pressure_bar", domain: str = "water") -> dict:  # fmt: skip
    return {"domain": domain, "key_kind": "sensor", "key_id": key, "metric": metric,
            "window_start": T0 + k * W, "window_end": T0 + (k + 1) * W, "samples": 3,
            "mean": mean, "min": mean if lo is None else lo, "max": mean if hi is None else hi}  # fmt: skip


RULE = MetricRule("pressure_bar", warmup_windows=2, halflife_windows=1.0, level_z=4.0, peak_z=100.0,
                  rel_scale=0.0, min_scale=0.1, stuck_windows=3)  # fmt: skip


def cfg(rule: MetricRule = RULE, **policy: int | float) -> DetectionConfig:
    return DetectionConfig(
        60_000, {"water": DomainRules("water", "zone", {rule.name: rule})}, AlertPolicy(**policy)
    )


# --------------------------------------------------------------------------- config


def test_shipped_config_loads_and_covers_every_domain() -> None:
    c = load_config()
    assert set(c.domains) == {"traffic", "water", "grid"}
    f = c.rule("grid", "frequency_hz")
    assert f is not None and f.detectors == ("rule", "level") and (f.rule_low, f.rule_high) == (49.8, 50.2)
    assert c.rule("water", "pump_on").stuck_windows == 0  # type: ignore[union-attr]
    assert (
        c.group_of("grid", "grid-ss01-f8-c") == "grid"
        and c.group_of("water", "water-z05-j02-pressure") == "water-z05"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "unknown top-level"),
        ({"defaults": {"level_zz": 3}}, "unknown key 'level_zz'"),
        ({"domain": {"water": {"metric": {"p": {"detectors": ["magic"]}}}}}, "detectors must be"),
        ({"domain": {"water": {"metric": {"p": {"detectors": ["rule"]}}}}}, "needs rule_low"),
        ({"domain": {"water": {"metric": {"p": {"low": 5, "high": 1}}}}}, "low must be below high"),
        ({"domain": {"water": {"group": "road"}}}, "group must be"),
        ({"alerts": {"quiet_windows": 1.5}}, "whole number"),
    ],
)
def test_config_errors_name_the_table_and_key(data: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_config(data)


# --------------------------------------------------------------------------- stage 1


def test_level_detector_hand_computed() -> None:
    det = MetricDetector(RULE)
    st = det.init()
    # w0 seeds m = 4.0; w1: resid 0.2, scale = max(s=0, min 0.1) -> z = 2 (warming: n=1 < 2, not scored)
    st, v0 = det.step(st, row(0, 4.0))
    st, v1 = det.step(st, row(1, 4.2))
    assert v0["z"] == v1["z"] == 0.0 and not v1["anomalous"]
    # halflife 1 -> alpha 0.5, but a = max(0.5, 1/(n+1)=0.5): m = 4.1, s = 0.5 * sqrt(pi/2) * 0.2
    assert st["m"] == pytest.approx(4.1) and st["s"] == pytest.approx(0.5 * 1.2533141 * 0.2)
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
    assert st["n"] == 0 and "equipment off" in v["note"]


def test_state_round_trip_gives_identical_verdicts() -> None:
    det = MetricDetector(MetricRule("pressure_bar", warmup_windows=3))
    values = [4.0, 4.1, 3.9, 4.05, 4.0, 3.0, 4.2, 4.1]
    st = det.init()
    straight = []
    for k, x in enumerate(values):
        st, v = det.step(st, row(k, x, x - 0.01, x + 0.02))
        straight.append(v)
    st = det.init()
    resumed = []
    for k, x in enumerate(values):
        st = json.loads(json.dumps(st))  # a checkpoint between every window
        st, v = det.step(st, row(k, x, x - 0.01, x + 0.02))
        resumed.append(v)
    assert resumed == straight


# --------------------------------------------------------------------------- stage 2: lifecycle


def verdict(k: int, key: str, z: float, anomalous: bool, health: str = "ok") -> dict:
    return {"key_id": key, "metric": "pressure_bar", "window_start": T0 + k * W, "window_end": T0 + (k + 1) * W,  # noqa: E501
            "observed": 1.0, "expected": 2.0, "z": z, "lz": z, "score": 0.999 if anomalous else 0.0,
            "detector": "level-v1" if anomalous else "", "anomalous": anomalous, "severity": "warning",
            "health": health, "note": f"z {z}"}  # fmt: skip


def drive(engine: GroupEngine, windows: list[list[dict]]) -> list[dict]:
    st = engine.init()
    out: list[dict] = []
    for k, vs in enumerate(windows):
        st, recs = engine.step(st, "water", T0 + (k + 1) * W, vs)
        out += [{"k": k, **r} for r in recs["alerts"]]
    return out


def test_open_update_resolve_with_hysteresis() -> None:
    e = GroupEngine(cfg(quiet_windows=2, keep_z=3.0, cooldown_windows=0))
    a, b = "water-z01-j01-pressure", "water-z01-j02-pressure"
    windows = [
        [verdict(0, a, 5.0, True)],  # open (a)
        [verdict(1, a, 5.0, True), verdict(1, b, 6.0, True)],  # update: b joins
        [verdict(2, a, 3.5, False)],  # weak evidence (3.5 >= keep_z): stays open, quiet 0
        [verdict(3, a, 1.0, False)],  # quiet 1
        [verdict(4, a, 1.0, False)],  # quiet 2 -> resolve
    ]
    msgs = drive(e, windows)
    assert [(m["k"], m["state"], m["affected_keys"]) for m in msgs] == [
        (0, "open", [a]),
        (1, "update", [a, b]),
        (4, "resolve", [a, b]),
    ]
    assert len({m["alert_id"] for m in msgs}) == 1 and msgs[-1]["anomaly_count"] == 3


def test_cooldown_reopens_the_same_alert() -> None:
    e = GroupEngine(cfg(quiet_windows=1, cooldown_windows=5))
    a = "water-z01-j01-pressure"
    windows = [[verdict(0, a, 5.0, True)], [verdict(1, a, 0.0, False)], [verdict(2, a, 0.0, False)],
               [verdict(3, a, 6.0, True)]]  # fmt: skip
    msgs = drive(e, windows)
    assert [(m["k"], m["state"]) for m in msgs] == [(0, "open"), (1, "resolve"), (3, "open")]
    assert len({m["alert_id"] for m in msgs}) == 1  # re-opened within 5 windows: same incident
    far = drive(GroupEngine(cfg(quiet_windows=1, cooldown_windows=1)), windows)
    assert len({m["alert_id"] for m in far}) == 2


def test_many_sensors_of_one_dma_are_one_alert() -> None:
    e = GroupEngine(cfg())
    sensors = [f"water-z01-j{i:02d}-pressure" for i in range(20)]
    msgs = drive(e, [[verdict(0, s, 9.0, True) for s in sensors]])
    assert len(msgs) == 1 and msgs[0]["affected_keys"] == sorted(sensors) and msgs[0]["anomaly_count"] == 20


def test_stuck_sensor_is_one_health_event_one_alert_and_muted() -> None:
    e = GroupEngine(cfg())
    s = "water-z01-j01-pressure"
    st = e.init()
    health, alerts, anomalies = [], [], []
    for k in range(6):
        vs = [verdict(k, s, 8.0, True, health="flat" if k >= 1 else "ok")]
        st, recs = e.step(st, "water", T0 + (k + 1) * W, vs)
        health += recs["health"]
        alerts += recs["alerts"]
        anomalies += recs["anomalies"]
    assert [(h["status"], h["since"]) for h in health] == [("stuck", T0 + 2 * W)]
    assert {a["alert_id"] for a in alerts} == {f"water:water-z01:{T0 + W}", f"sensor_fault:{s}:{T0 + 2 * W}"}
    assert len(anomalies) == 1  # window 0 only: from window 1 the stuck sensor is muted


def test_silent_sensor_raises_health_event() -> None:
    e = GroupEngine(cfg(silent_windows=3))
    a, b = "water-z01-j01-pressure", "water-z01-j02-pressure"
    st = e.init()
    events = []
    for k in range(5):
        vs = [verdict(k, a, 0.0, False)] + ([verdict(k, b, 0.0, False)] if k == 0 else [])
        st, recs = e.step(st, "water", T0 + (k + 1) * W, vs)
        events += recs["health"]
    assert [(h["sensor_id"], h["status"], h["since"]) for h in events] == [(b, "silent", T0 + 4 * W)]


def test_families_and_places() -> None:
    assert family_and_locus("grid", "frequency_hz", "grid-ss02-f1-a") == ("frequency", "grid")
    assert family_and_locus("grid", "voltage_v", "grid-ss02-f1-a") == ("electrical", "grid-ss02")
    assert family_and_locus("traffic", "mean_speed_kmh", "traffic-z04-s002-l2") == ("traffic", "traffic-z04")


def test_detection_round_trip_through_json_matches_uninterrupted_run() -> None:
    c = load_config()
    rows = [
        row(k, 4.0 + 0.01 * ((k * 7) % 5), key=f"water-z01-j0{j}-pressure") for k in range(40) for j in (1, 2)
    ]
    rows += [row(40 + k, 3.0, key="water-z01-j01-pressure") for k in range(3)]
    whole = Detection(c).run(rows)
    first = Detection(c)
    part1 = first.run([r for r in rows if r["window_end"] <= T0 + 30 * W])
    restored = Detection(
        c, json.loads(json.dumps(first.metric_states)), json.loads(json.dumps(first.group_states))
    )
    part2 = restored.run([r for r in rows if r["window_end"] > T0 + 30 * W])
    assert {k: part1[k] + part2[k] for k in whole} == whole
    assert any(a["state"] == "open" for a in whole["alerts"])


# --------------------------------------------------------------------------- stage 2: cross-sensor checks


def test_neighbours_follow_the_city_layout() -> None:
    from citystream.alerts import neighbours

    assert neighbours("grid", "grid-ss01-f5-a", "grid-ss01-f5-c")
    assert not neighbours("grid", "grid-ss01-f5-a", "grid-ss01-f6-a")
    assert not neighbours("grid", "grid-ss01-bus", "grid-ss01-f5-a")
    assert neighbours("water", "water-z03-j01-pressure", "water-z03-j09-pressure")
    assert not neighbours("water", "water-z03-j01-pressure", "water-z04-j01-pressure")
    assert neighbours("traffic", "traffic-z02-s006-l1", "traffic-z02-s007-l2")
    assert not neighbours("traffic", "traffic-z02-s006-l1", "traffic-z02-s008-l1")


def test_many_small_moves_of_one_dma_are_one_coherent_anomaly() -> None:
    rule = MetricRule("pressure_bar", zone_z=11.0, zone_min_sensors=3)
    e = GroupEngine(cfg(rule))
    sensors = [f"water-z01-j{i:02d}-pressure" for i in range(16)]
    _, recs = e.step(e.init(), "water", T0 + W, [verdict(0, s, -3.0, False) for s in sensors])
    # Stouffer: 16 * (-3) / sqrt(16) = -12 <= -11
    assert [(a["key_kind"], a["key_id"], a["detector"]) for a in recs["anomalies"]] == [
        ("zone", "water-z01", "zone-v1")
    ]
    assert (
        "16 of 16 pressure_bar sensors moved together (down, combined -12.0 sd)"
        in recs["anomalies"][0]["explanation"]
    )
    assert len(recs["alerts"]) == 1 and recs["alerts"][0]["affected_keys"] == sorted(sensors)
    _, quiet = e.step(e.init(), "water", T0 + W, [verdict(0, s, -2.5, False) for s in sensors])
    assert quiet["anomalies"] == []  # -10 does not reach 11


def test_drift_against_neighbours_is_a_health_event() -> None:
    rule = MetricRule("pressure_bar", drift_tolerance=0.05, drift_warmup=3, drift_halflife=1.0, drift_k=5.0)
    e = GroupEngine(cfg(rule))
    names = ["water-z01-j01-pressure", "water-z01-j02-pressure", "water-z01-j03-pressure"]
    st = e.init()
    health = []
    for k in range(4):
        vs = []
        for s in names:
            v = verdict(k, s, 0.0, False)
            v["observed"] = 4.0 * (1.2 if (s == names[0] and k == 3) else 1.0)
            vs.append(v)
        st, recs = e.step(st, "water", T0 + (k + 1) * W, vs)
        health += recs["health"]
    # warm-up: 3 windows of offset 0 (std 0, limit = tolerance 0.05). Window 3: j01 is 1.2x, its
    # offset ln 1.2 = 0.182, EWMA with alpha 0.5 -> 0.091 > 0.05: drift. j02's neighbours are j01
    # and j03: offset -0.091, EWMA -0.046, inside the band.
    assert [(h["sensor_id"], h["status"]) for h in health] == [(names[0], "drift")]
    assert "+9.5 %" in health[0]["details"]  # exp(0.0912) - 1


def test_tank_balance_learns_the_dma_and_flags_an_unmetered_inflow() -> None:
    rules = {
        "tank_level_m": MetricRule("tank_level_m", balance_z=10.0, min_scale=0.01, warmup_windows=20),
        "flow_lps": MetricRule("flow_lps"),
    }
    c = DetectionConfig(60_000, {"water": DomainRules("water", "zone", rules)}, AlertPolicy())
    e = GroupEngine(c)
    st = e.init()
    level, prev = 3.0, None
    found = []
    for k in range(80):
        pump = 40.0 if (k // 10) % 2 else 0.0
        inlet = 30.0 + (k % 7)
        if prev is not None:  # the law the check must learn: mid-window to mid-window flows
            level += 0.0004 * (prev[0] + pump) / 2 - 0.0002 * (prev[1] + inlet) / 2 + 0.001
        prev = (pump, inlet)
        observed = level + (0.05 if k == 79 else 0.0)  # 5 cm nobody pumped in
        vs = []
        for sid, metric, x in (("water-z01-tank1-level", "tank_level_m", observed),
                               ("water-z01-ps1-pump", "flow_lps", pump),
                               ("water-z01-inlet-flow", "flow_lps", inlet)):  # fmt: skip
            v = verdict(k, sid, 0.0, False)
            v.update(metric=metric, observed=x)
            vs.append(v)
        st, recs = e.step(st, "water", T0 + (k + 1) * W, vs)
        found += [(k, a["detector"]) for a in recs["anomalies"]]
    # residuals are ~0 once learned; the scale floor is min_scale / 10 = 1 mm, so 5 cm is 50 sd
    assert found == [(79, "balance-v1")]
