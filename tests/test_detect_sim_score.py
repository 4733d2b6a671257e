"""The simulator scorer (``evaluate.score_simulator``) on hand-made labels and alerts.

Why these cases: a stuck sensor's label is scored on three things - detected,
reported as stuck, and not more than one alert of its own - and the last two
must not blame the sensor for events that other labels explain.
"""

from __future__ import annotations

from citystream.evaluation.evaluate import score_simulator

T0 = 1_767_571_200_000
W = 60_000


def label(lid: str, kind: str, sensors: list[str], start: int, end: int) -> dict:
    return {
        "label_id": lid,
        "domain": "water",
        "kind": kind,
        "sensor_ids": sensors,
        "start_time": T0 + start * W,
        "end_time": T0 + end * W,
    }


def alert(aid: str, state: str, keys: list[str], first: int, last: int) -> dict:
    return {
        "alert_id": aid,
        "state": state,
        "domain": "water",
        "kind": "x",
        "affected_keys": keys,
        "first_seen": T0 + first * W,
        "last_seen": T0 + last * W,
        "explanation": "",
    }


def test_an_event_another_label_explains_is_not_the_stuck_sensors_second_alert() -> None:
    gauges = [f"water-z01-j{i:02d}-pressure" for i in range(1, 5)]
    labels = [
        label("leak", "leak", gauges, 10, 40),
        label("stuck", "stuck_sensor", [gauges[0]], 12, 30),
    ]
    alerts = [
        alert("leak-alert", "open", gauges, 12, 12),  # names the stuck gauge among the others
        alert("fault", "open", [gauges[0]], 14, 14),
    ]
    health = [{"sensor_id": gauges[0], "status": "stuck", "since": T0 + 14 * W}]
    s = score_simulator(labels, alerts, health)["water"]
    assert (s.events, s.detected, s.alerts, s.true_alerts) == (2, 2, 2, 2)
    assert (s.stuck_with_health, s.stuck_max_alerts) == (1, 1)
    # the same gauge alone in a second alert of its own is a duplicate
    alerts.append(alert("again", "open", [gauges[0]], 20, 20))
    assert score_simulator(labels, alerts, health)["water"].stuck_max_alerts == 2


def test_overlapping_faults_of_one_sensor_share_one_standing_health_event() -> None:
    s_id = "water-z01-j01-pressure"
    labels = [
        label("first", "stuck_sensor", [s_id], 10, 30),
        label("second", "stuck_sensor", [s_id], 25, 40),  # freezes what is already frozen
    ]
    # stuck from window 12 to 41: one health event, one alert whose resolve message's last_seen
    # (the last window the fault was seen) spans the second label
    health = [
        {"sensor_id": s_id, "status": "stuck", "since": T0 + 12 * W},
        {"sensor_id": s_id, "status": "ok", "since": T0 + 41 * W},
    ]
    alerts = [alert("fault", "open", [s_id], 12, 12), alert("fault", "resolve", [s_id], 12, 40)]
    s = score_simulator(labels, alerts, health)["water"]
    assert (s.detected, s.stuck_with_health, s.stuck_max_alerts) == (2, 2, 1)
    # a stuck report that was cleared before the second fault began does not count for it
    cleared = [health[0], {"sensor_id": s_id, "status": "ok", "since": T0 + 24 * W}]
    assert score_simulator(labels, alerts, cleared)["water"].stuck_with_health == 1
