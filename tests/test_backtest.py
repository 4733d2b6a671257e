"""Backtests: hand-worked event scoring, and `citystream backtest` on a seeded simulator run.

Why hand-worked cases: the scores decide which configuration a city ships, so
each rule (early, late, missed, a second detection of one event, false alerts
per day, the NAB and S plumbing) is pinned by numbers worked out by hand. The
end-to-end test recomputes precision and recall from the simulator's labels and
the detect code's alerts with a plain loop of its own, and checks the command
gives those numbers, twice, in its table and in the store.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from citystream.backtest.events import Detection, Label, TimeRange, quantile, score_events, score_run
from citystream.settings import Settings

MIN = 60_000
T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def lab(lid: str, a_min: float, b_min: float, keys: tuple[str, ...] = ("s1",), source: str = "sim") -> Label:
    return Label(lid, "water", "leak", keys, T0 + int(a_min * MIN), T0 + int(b_min * MIN), source)


def det(did: str, t_min: float, end_min: float | None = None, keys: tuple[str, ...] = ("s1",)) -> Detection:
    end = t_min if end_min is None else end_min
    return Detection(did, "water", "leak", keys, T0 + int(t_min * MIN), T0 + int(end * MIN))


DAY = TimeRange(T0, T0 + 1440 * MIN)


# --------------------------------------------------------------------------- hand-worked event scoring


def test_early_detection_standing_at_the_start_counts_with_zero_delay() -> None:
    # raised at minute 8, still standing at minute 12: it covers the label's start (10)
    sc = score_events([det("a", 8, 12)], [lab("L", 10, 20)], DAY)
    assert (sc.detected, sc.false_alerts, sc.ttd_ms) == (1, 0, [0])


def test_early_point_detection_is_a_false_alert_and_the_label_is_missed() -> None:
    sc = score_events([det("a", 9)], [lab("L", 10, 20)], DAY)
    assert (sc.detected, sc.false_alerts, sc.precision, sc.recall) == (0, 1, 0.0, 0.0)
    assert [o.outcome for o in sc.outcomes] == ["missed", "false"]


def test_late_detection_within_slack_counts_after_it_does_not() -> None:
    # label ends at 20; the default slack is 3 minutes: 21 is late but counts (11 min to detect)
    late = score_events([det("a", 21)], [lab("L", 10, 20)], DAY)
    assert (late.detected, late.false_alerts, late.ttd_ms) == (1, 0, [11 * MIN])
    too_late = score_events([det("a", 24)], [lab("L", 10, 20)], DAY)
    assert (too_late.detected, too_late.false_alerts) == (0, 1)


def test_second_detection_in_one_window_is_a_repeat_not_a_false_alert() -> None:
    sc = score_events([det("a", 12), det("b", 15)], [lab("L", 10, 20)], DAY)
    assert (sc.detected, sc.false_alerts, sc.repeats, sc.precision, sc.recall) == (1, 0, 1, 1.0, 1.0)
    assert sc.ttd_ms == [2 * MIN]
    assert [o.outcome for o in sc.outcomes] == ["hit", "repeat"]


def test_one_detection_of_two_labels_detects_both_with_a_hit_each() -> None:
    labels = [lab("L1", 10, 20, keys=("s1",)), lab("L2", 12, 30, keys=("s2",))]
    sc = score_events([det("a", 15, keys=("s1", "s2"))], labels, DAY)
    assert (sc.detected, sc.detections, sc.false_alerts, sc.repeats) == (2, 1, 0, 0)
    assert [(o.outcome, o.label.label_id if o.label else None) for o in sc.outcomes] == [
        ("hit", "L1"),
        ("hit", "L2"),
    ]
    assert sorted(sc.ttd_ms) == [3 * MIN, 5 * MIN]


def test_detection_on_another_sensor_or_department_does_not_match() -> None:
    other_key = det("a", 12, keys=("s2",))
    other_dom = Detection("b", "grid", "x", ("s1",), T0 + 12 * MIN, T0 + 12 * MIN)
    sc = score_events([other_key, other_dom], [lab("L", 10, 20)], DAY)
    assert (sc.detected, sc.false_alerts) == (0, 2)


def test_missed_label_precision_recall_f1_by_hand() -> None:
    labels = [lab("L1", 10, 20), lab("L2", 100, 110), lab("L3", 200, 210)]
    dets = [det("a", 11), det("b", 101), det("c", 500), det("d", 600)]
    sc = score_events(dets, labels, DAY)
    # detected 2 of 3; false 2 -> precision 2/4, recall 2/3, F1 = 2*0.5*0.667/(1.167) = 4/7
    assert (sc.detected, sc.false_alerts, sc.labels) == (2, 2, 3)
    assert sc.precision == 0.5 and sc.recall == pytest.approx(2 / 3)
    assert sc.f1 == pytest.approx(4 / 7)


def test_false_alerts_per_day_over_the_range() -> None:
    two_days = TimeRange(T0, T0 + 2 * 1440 * MIN)
    sc = score_events([det("a", 100), det("b", 2000), det("c", 2500)], [], two_days)
    assert sc.false_alerts == 3 and sc.false_alerts_per_day == 1.5
    assert math.isnan(sc.recall) and math.isnan(sc.f1)
    # a detection outside the range is not the run's
    assert score_events([det("z", 3000)], [], two_days).detections == 0


def test_time_to_detect_median_and_p90() -> None:
    labels = [lab(f"L{k}", 100 * k, 100 * k + 20) for k in range(5)]
    delays_s = [0, 60, 120, 180, 600]
    dets = [det(f"d{k}", 100 * k + s / 60) for k, s in enumerate(delays_s)]
    sc = score_events(dets, labels, DAY)
    assert sc.ttd_median_s == 120.0
    # p90 between the 4th (180 s) and 5th (600 s) values at 0.6: 180 + 0.6 * 420
    assert sc.ttd_p90_s == pytest.approx(432.0)
    assert quantile([], 0.5) != quantile([], 0.5)  # NaN when nothing was detected


def test_nab_perfect_and_null_detectors_score_100_and_0() -> None:
    rng = TimeRange(T0, T0 + 100 * MIN)
    labels = [lab("L", 50, 59)]
    assert score_run([det("a", 50)], labels, rng).nab["standard"] == pytest.approx(100.0)
    assert score_run([], labels, rng).nab["standard"] == pytest.approx(0.0)
    # one false alarm before any window costs the profile's fp weight: standard 0.11, low FP 0.22
    fa = score_run([det("a", 50), det("b", 30)], labels, rng).nab
    assert fa["standard"] > fa["low_fp"]


def test_batadal_s_score_only_for_batadal_labels() -> None:
    hours = TimeRange(T0, T0 + 10 * 60 * MIN)
    labels = [lab("A", 120, 359, source="batadal")]  # hours 2-5
    sc = score_run([det("a", 3 * 60 + 5)], labels, hours)
    # time to detect 1 of 4 hours -> S_ttd 0.75; TPR 1/4, TNR 6/6 -> S_cm 0.625; S = 0.6875
    assert sc.s_score == pytest.approx(0.6875)
    assert score_run([det("a", 185)], [lab("A", 120, 359)], hours).s_score is None


def test_alert_messages_become_one_detection_per_alert() -> None:
    msgs = [
        {"alert_id": "x", "domain": "water", "kind": "leak", "affected_keys": ["s1"],
         "first_seen": T0, "last_seen": T0 + 2 * MIN, "state": "open"},
        {"alert_id": "x", "domain": "water", "kind": "leak", "affected_keys": ["s1", "s2"],
         "first_seen": T0, "last_seen": T0 + 5 * MIN, "state": "update"},
    ]  # fmt: skip
    (d,) = Detection.from_alerts(msgs)
    assert (d.time_ms, d.end_ms, d.keys) == (T0 + 2 * MIN, T0 + 5 * MIN, ("s1", "s2"))


# --------------------------------------------------------------------------- the command, end to end

SEED, HOURS, SENSORS = 7, 1.0, 60


def _configs(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped config, and a deaf one: every level and peak threshold at 1000 sd."""
    from citystream.detection.config import DEFAULT_CONFIG

    text = DEFAULT_CONFIG.read_text()
    shipped = tmp_path / "shipped.toml"
    shipped.write_text(text)
    deaf = tmp_path / "deaf.toml"
    deaf_text = re.sub(r"(?m)^(level_z|peak_z) = [0-9.]+", r"\1 = 1000.0", text)
    assert deaf_text != text
    deaf.write_text(deaf_text)
    return shipped, deaf


def _independent(
    config_path: Path, rows: list[dict[str, Any]], labels: list[dict[str, Any]]
) -> tuple[float, float]:
    """Precision and recall from the simulator's labels and the detect code's alerts, by a plain loop.

    Same rules as written in the backtest's docs: an alert is raised at its first
    message's window end and stands until its last; it detects a label of its
    department when they share a sensor and it stands at some time from the
    label's start to 3 minutes after its end.
    """
    from citystream.detection import Detection as Detector
    from citystream.detection import load_config

    alerts = Detector(load_config(config_path)).run(rows)["alerts"]
    raised: dict[str, int] = {}
    ended: dict[str, int] = {}
    keys: dict[str, set[str]] = {}
    domain: dict[str, str] = {}
    for m in alerts:
        a = m["alert_id"]
        raised[a] = min(raised.get(a, m["last_seen"]), m["last_seen"])
        ended[a] = max(ended.get(a, m["last_seen"]), m["last_seen"])
        keys.setdefault(a, set()).update(m["affected_keys"])
        domain[a] = m["domain"]
    detected = 0
    true_alerts: set[str] = set()
    for label in labels:
        found = False
        for a in raised:
            if (
                domain[a] == label["domain"]
                and keys[a] & set(label["sensor_ids"])
                and raised[a] <= label["end_time"] + 3 * MIN
                and ended[a] >= label["start_time"]
            ):
                found = True
                true_alerts.add(a)
        detected += found
    false = len(raised) - len(true_alerts)
    return detected / (detected + false), detected / len(labels)


def _table(out: str) -> dict[str, dict[str, str]]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    rows = [re.split(r"\s{2,}", ln.strip()) for ln in lines[2:]]
    return {r[0]: dict(zip(header, r, strict=True)) for r in rows}


@pytest.mark.integration
def test_backtest_on_a_seeded_run_is_repeatable_and_matches_a_plain_count(
    store: Any,
    session_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from citystream.cli import main
    from citystream.store.client import connect

    for var, value in session_settings.to_env().items():
        monkeypatch.setenv(var, value)
    from citystream.evaluation.simulator import SimSlice, simulator_aggregates, simulator_run

    shipped, deaf = _configs(tmp_path)
    # every other label only: alerts on the dropped ones must count as false alerts
    records, all_labels = simulator_run(SimSlice(SEED, HOURS, 2.0, SENSORS))
    rows = simulator_aggregates(records)
    labels = all_labels[::2]
    assert len(labels) >= 2 and len(labels) < len(all_labels)
    labels_file = tmp_path / "labels.jsonl"
    labels_file.write_text("".join(json.dumps(lb) + "\n" for lb in labels))
    argv = ["backtest", "--simulate", str(SEED), "--hours", str(HOURS), "--sensors", str(SENSORS)]
    argv += ["--config", str(shipped), "--config", str(deaf), "--save"]
    argv += ["--labels", str(labels_file)]
    outs = []
    for n in range(2):
        assert main([*argv, "--report", str(tmp_path / f"r{n}.html")]) == 0
        captured = capsys.readouterr()
        outs.append(captured.out)
        assert "100% 60/60 windows" in captured.err  # the progress bar ran to the end
    assert outs[0] == outs[1]
    table = _table(outs[0])
    assert set(table) == {"shipped", "deaf"}
    client = connect(session_settings)
    try:
        stored = client.query(
            "SELECT detector, precision, recall, labels FROM backtest_runs FINAL "
            "WHERE dataset = {d:String} ORDER BY detector, started_at",
            parameters={"d": f"simulator seed {SEED}"},
        ).result_rows
    finally:
        client.close()
    assert [r[0] for r in stored] == ["deaf", "deaf", "shipped", "shipped"]
    for name, path in (("shipped", shipped), ("deaf", deaf)):
        precision, recall = _independent(path, rows, labels)
        n_labels = len(labels)
        mine = [r for r in stored if r[0] == name]
        assert mine[0][1:] == mine[1][1:] == (pytest.approx(precision), pytest.approx(recall), n_labels)
        assert table[name]["precision"] == f"{precision:.3f}" and table[name]["recall"] == f"{recall:.3f}"
    assert table["shipped"]["false"] != "0"  # alerts on the dropped labels: precision is really tested
    # the deaf thresholds raise fewer alerts than the shipped ones: the two runs really differ
    assert int(table["deaf"]["detections"]) < int(table["shipped"]["detections"])
    assert (tmp_path / "r0.html").read_text() == (tmp_path / "r1.html").read_text()


@pytest.mark.integration
def test_backtest_over_the_store_scores_as_over_the_simulator(
    store: Any,
    session_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same aggregates and labels, loaded into the store, give the same table and stored detections."""
    from datetime import UTC, datetime

    from citystream.cli import main
    from citystream.evaluation.simulator import SimSlice, simulator_aggregates, simulator_run
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings = session_settings.replace(clickhouse_database="backtest_from_store")
    migrate(settings)
    for var, value in settings.to_env().items():
        monkeypatch.setenv(var, value)
    records, labels = simulator_run(SimSlice(SEED, HOURS, 2.0, SENSORS))
    rows = simulator_aggregates(records)

    def dt(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    cols = ["domain", "key_kind", "key_id", "metric", "window_start", "window_end", "samples", "mean",
            "min", "max", "late", "duplicates", "revision"]  # fmt: skip
    client = connect(settings)
    try:
        client.insert(
            "window_aggregates",
            [[dt(r[c]) if c.startswith("window_") else r[c] for c in cols] for r in rows],
            column_names=cols,
        )
        lcols = ["label_id", "domain", "kind", "sensor_ids", "start_time", "end_time", "source", "details"]
        client.insert(
            "labels",
            [[dt(lb[c]) if c.endswith("_time") else lb[c] for c in lcols] for lb in labels],
            column_names=lcols,
        )
        start, end = min(r["window_start"] for r in rows), max(r["window_end"] for r in rows)
        span = ["--from", dt(start).isoformat(), "--to", dt(end).isoformat()]
        assert main(["backtest", *span]) == 0  # saved by default: the data came from the store
        from_store = capsys.readouterr().out
        simulated = ["--simulate", str(SEED), "--hours", str(HOURS), "--sensors", str(SENSORS)]
        assert main(["backtest", *simulated, "--no-save"]) == 0
        assert capsys.readouterr().out == from_store
        (run_id, dets, detected, false_alerts) = client.query(
            "SELECT run_id, alarms, true_positives, false_positives FROM backtest_runs FINAL "
            "WHERE dataset = 'store'"
        ).result_rows[0]
        distinct = client.command(
            "SELECT uniqExact(detection_id) FROM backtest_detections FINAL "
            "WHERE run_id = {r:String} AND outcome != 'missed'",
            parameters={"r": run_id},
        )
        outcomes = dict(
            client.query(
                "SELECT outcome, count() FROM backtest_detections FINAL WHERE run_id = {r:String} "
                "GROUP BY outcome",
                parameters={"r": run_id},
            ).result_rows
        )
    finally:
        client.close()
    table = _table(from_store)["default"]
    assert (dets, detected, false_alerts) == tuple(int(table[k]) for k in ("detections", "detected", "false"))
    assert outcomes.get("false", 0) == false_alerts
    assert outcomes.get("missed", 0) == len(labels) - detected
    assert outcomes.get("hit", 0) == detected  # one hit row per detected label
    assert distinct == dets  # every detection has a row (hit, repeat or false)


@pytest.mark.integration
def test_stored_alerts_score_as_the_in_process_run(store: Any, session_settings: Settings) -> None:
    """The replay hook: alerts read back from a database of the store's schema score like in process.

    A replay's detect job writes its alerts to its shadow database; here the
    detect code's alerts are inserted into a database of that schema by hand.
    """
    from datetime import UTC, datetime

    from citystream.backtest import sources
    from citystream.backtest.runner import detect, result_of
    from citystream.detection import Detection as Detector
    from citystream.detection import load_config
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    data = sources.simulated(SEED, HOURS, SENSORS, 2.0)
    alerts = Detector(load_config()).run(data.rows)["alerts"]
    assert alerts
    settings = session_settings.replace(clickhouse_database="backtest_shadow")
    migrate(settings)
    cols = list(alerts[0])
    client = connect(settings)
    try:
        client.insert(
            "alerts",
            [
                [datetime.fromtimestamp(a[c] / 1000, tz=UTC) if c.endswith("_seen") else a[c] for c in cols]
                for a in alerts
            ],
            column_names=cols,
        )
        stored = sources.stored_detections(client, data.range, database="backtest_shadow")
    finally:
        client.close()
    in_process = detect(data.rows, load_config())
    assert stored == in_process
    a = result_of(stored, data.labels, data.range, config="replayed").scores
    b = result_of(in_process, data.labels, data.range, config="in process").scores
    assert (a.detected, a.false_alerts, a.ttd_ms, a.nab) == (b.detected, b.false_alerts, b.ttd_ms, b.nab)
