"""Sensor health is separate from anomalies: one event per fault, and the anomaly layer is muted."""

from __future__ import annotations

import math

import pytest

from citystream.detect import AlarmGate, EwmaZ, NeighbourDrift, Pipeline, SensorHealth
from citystream.detect.base import dumps, loads


def _run(h: SensorHealth, values: list[float], step_ms: int = 1000) -> tuple[list[str], list[str]]:
    s = h.init()
    statuses, events = [], []
    for i, v in enumerate(values):
        s, status, event = h.step(s, i * step_ms, v)
        statuses.append(status)
        events.append(event)
    return statuses, events


def test_stuck_sensor_raises_one_event_and_recovers() -> None:
    statuses, events = _run(SensorHealth(stuck_count=3), [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    assert statuses == ["ok", "ok", "ok", "stuck", "stuck", "stuck", "ok"]
    assert [e for e in events if e] == ["sensor stuck at 2 for 3 readings", "sensor recovered (was stuck)"]


def test_out_of_range_and_missing() -> None:
    statuses, events = _run(
        SensorHealth(low=0.0, high=10.0, missing_count=2),
        [5.0, 40.0, 41.0, math.nan, math.nan, math.nan, 5.0],
    )
    assert statuses == ["ok", "out_of_range", "out_of_range", "missing", "missing", "missing", "ok"]
    raised = [e for e in events if e]
    assert raised[0].startswith("sensor out of range: 40")
    assert raised[1].startswith("sensor missing: 2 readings")
    assert raised[2] == "sensor recovered (was missing)"
    assert len(raised) == 3


def test_gap_is_reported_once_per_silence() -> None:
    h = SensorHealth(max_gap_ms=5_000)
    s = h.init()
    s, _, e1 = h.step(s, 0, 1.0)
    s, status, e2 = h.step(s, 60_000, 1.5)
    s, _, e3 = h.step(s, 61_000, 1.4)
    assert (e1, e3) == ("", "") and e2 == "gap: no reading for 60 s" and status == "ok"


def test_drift_against_neighbours() -> None:
    d = NeighbourDrift(warmup=50, halflife=5.0, k=5.0, tolerance=0.05)
    s = d.init()
    flags, notes = [], []
    for i in range(120):
        world = math.sin(i / 5)  # shared by everyone
        noise = 0.01 * ((i * 7) % 5 - 2)
        value = world + noise + (0.0 if i < 80 else 0.01 * (i - 80))  # slow calibration drift
        s, drifting, note = d.step(s, i, value, [world - 0.01, world + 0.01, world, math.nan])
        flags.append(drifting)
        notes.append(note)
    assert not any(flags[:85]) and flags[-1]
    assert sum(1 for n in notes if n) == 1 and "drifting" in next(n for n in notes if n)
    assert loads(dumps(s)) == s


def _noise(i: int) -> float:
    return 10.0 + ((i * 7919) % 13 - 6) / 6.0  # deterministic, roughly uniform on [9, 11]


def test_pipeline_mutes_the_detector_for_a_broken_sensor() -> None:
    p = Pipeline(
        EwmaZ(halflife=20, warmup=5),
        AlarmGate(on=0.9999, off=0.99),
        SensorHealth(low=0.0, high=100.0, stuck_count=4),
    )
    bare = Pipeline(EwmaZ(halflife=20, warmup=5), AlarmGate(on=0.9999, off=0.99))
    values = [_noise(i) for i in range(100)] + [500.0] * 5 + [10.2] * 300 + [_noise(i) for i in range(100)]
    s, b = p.init(), bare.init()
    verdicts, bare_alarms = [], 0
    for i, v in enumerate(values):
        s, verdict = p.step(s, i * 1000, v)
        b, bv = bare.step(b, i * 1000, v)
        verdicts.append(verdict)
        bare_alarms += bv.alarm
    assert not any(v.alarm for v in verdicts)
    assert bare_alarms >= 2  # the spike, and then noise after 300 identical readings collapsed its variance
    assert verdicts[100].health == "out_of_range" and verdicts[300].health == "stuck"
    notes = [v.note for v in verdicts if v.note]
    assert len(notes) == 4  # out of range, recovered, stuck, recovered: one line per fault
    assert s["d"]["n"] == 100 + 3 + 100  # the detector never saw the broken readings


def test_pipeline_alarms_on_a_real_anomaly_and_respects_external_mute() -> None:
    p = Pipeline(EwmaZ(warmup=5), AlarmGate(on=0.9999, off=0.99))
    s = p.init()
    for i in range(30):
        s, _ = p.step(s, i, 10.0 + (i % 3))
    s_muted, v_muted = p.step(s, 31, 1000.0, muted=True)
    assert not v_muted.alarm and v_muted.health == "muted" and s_muted["d"] == s["d"]
    s, v = p.step(s, 31, 1000.0)
    assert v.alarm and v.active and v.score > 0.9999 and "running mean" in v.note
    assert loads(dumps(s)) == s


def test_recommended_pipeline_alarms_once_per_incident_and_round_trips() -> None:
    from citystream.detect import recommended

    p = recommended(cadence_ms=300_000)
    minute = 60_000
    times = [1_700_006_400_000 + i * 5 * minute for i in range(12 * 24 * 6)]  # six days of 5-minute data
    values = [
        50 + 20 * math.sin(2 * math.pi * (i % 288) / 288) + ((i * 37) % 11 - 5) * 0.3
        for i in range(len(times))
    ]
    for k in range(1500, 1512):
        values[k] += 60.0  # an hour-long surge
    s = p.init()
    alarms = []
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        if i == 1000:
            s = loads(dumps(s))  # a checkpoint restore in the middle changes nothing
        s, verdict = p.step(s, t, v)
        if verdict.alarm:
            alarms.append(i)
    assert alarms == [1500]  # at the surge's first reading, once, and no false alarm in six days
    assert len(dumps(s)) < 4096  # small enough for Flink keyed state
    with pytest.raises(ValueError):
        recommended(0)
