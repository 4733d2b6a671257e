"""Backtests: which detection configuration would have caught what, at what cost in false alerts?

Runs of ``citystream backtest`` (tables ``backtest_runs`` and ``backtest_detections``,
migrations 0003 and 0006) side by side: their scores, and every detection and missed label
against the labels. A run is in view when its data range overlaps the time range
or it was started in it, so the same board answers "what did last night's runs
say" and, zoomed onto last month, "what did they say about last month".
"""

from __future__ import annotations

from typing import Any

from citystream.dashboards.factories import (
    Section,
    dashboard,
    in_filter,
    query_variable,
    sql_annotation,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "citystream-backtests"
TITLE = "citystream · Backtests"

#: Runs in view: data range overlapping the time range, or started in it; picked configs and runs.
IN_VIEW = f"""(range_to >= $__fromTime AND range_from <= $__toTime OR $__timeFilter(started_at))
    AND {in_filter("detector", "config")}
    AND {in_filter("run_id", "run")}"""
RUNS_IN_VIEW = f"SELECT run_id FROM backtest_runs FINAL WHERE {IN_VIEW}"


def build() -> dict[str, Any]:
    """Runs and their scores, detections against labels, one board."""
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Backtests: detection configurations scored against labels, run by run.",
        tags=["citystream", "backtests"],
        variables=[
            query_variable(
                "config",
                "Configuration",
                """SELECT DISTINCT detector FROM backtest_runs FINAL
                   WHERE range_to >= $__fromTime AND range_from <= $__toTime OR $__timeFilter(started_at)
                   ORDER BY detector""",
            ),
            query_variable(
                "run",
                "Run",
                f"""SELECT DISTINCT run_id FROM backtest_runs FINAL
                    WHERE (range_to >= $__fromTime AND range_from <= $__toTime OR $__timeFilter(started_at))
                    AND {in_filter("detector", "config")}
                    ORDER BY run_id""",
            ),
        ],
        annotations=[sql_annotation("Labels", _labels_annotation(), color="orange")],
        time_from="now-7d",
        refresh="5m",
        sections=[
            Section("In view", [_runs(), _best_f1(), _fewest_false(), _missed()]),
            Section("Runs", [_runs_table(), _f1_per_config(), _false_per_config()]),
            Section("Detections against labels", [_outcomes_over_time(), _outcomes_per_run(), _detections()]),
        ],
    )


def _labels_annotation() -> str:
    """The labelled windows of the runs in view, as regions."""
    return f"""
SELECT DISTINCT label_start AS time, label_end AS timeEnd,
       concat('label ', label_id, ' ', label_kind, ' [', arrayStringConcat(keys, ' '), ']') AS text,
       [domain, label_kind] AS tags
FROM backtest_detections FINAL
WHERE label_id != '' AND label_end >= $__fromTime AND label_start <= $__toTime
    AND run_id IN ({RUNS_IN_VIEW})
ORDER BY time
LIMIT 500"""


# --------------------------------------------------------------------------- in view


def _runs() -> Any:
    return stat_panel(
        "Runs",
        f"SELECT count() AS runs FROM backtest_runs FINAL WHERE {IN_VIEW}",
        unit="short",
        description="Backtest runs (one configuration over one range) in view.",
        width=6,
    )


def _best_f1() -> Any:
    return stat_panel(
        "Best F1",
        f"SELECT max(f1) AS f1 FROM backtest_runs FINAL WHERE {IN_VIEW}",
        unit="percentunit",
        description="The best event-level F1 among the runs in view.",
        width=6,
    )


def _fewest_false() -> Any:
    return stat_panel(
        "Fewest false alerts per day",
        f"SELECT min(false_alerts_per_day) AS per_day FROM backtest_runs FINAL WHERE {IN_VIEW}",
        unit="short",
        description="The lowest false-alert rate among the runs in view (alerts that matched no label).",
        width=6,
    )


def _missed() -> Any:
    return stat_panel(
        "Labels missed",
        f"""
SELECT count() AS missed
FROM backtest_detections FINAL
WHERE outcome = 'missed' AND run_id IN ({RUNS_IN_VIEW})""",
        unit="short",
        description="Labelled events no detection matched, summed over the runs in view.",
        width=6,
    )


# --------------------------------------------------------------------------- runs


def _runs_table() -> Any:
    return table_panel(
        "Runs and scores",
        f"""
SELECT started_at AS started, detector AS config, run_id, dataset AS source, range_from, range_to,
       labels, alarms AS detections, true_positives AS detected, false_positives AS false_alerts,
       round(precision, 3) AS precision, round(recall, 3) AS recall, round(f1, 3) AS f1,
       median_ttd_s, ttd_p90_s, round(false_alerts_per_day, 2) AS fa_per_day,
       round(nab, 1) AS nab_standard, round(nab_low_fp, 1) AS nab_low_fp,
       round(nab_low_fn, 1) AS nab_low_fn, round(batadal, 3) AS s_score
FROM backtest_runs FINAL
WHERE {IN_VIEW}
ORDER BY started DESC, config
LIMIT 200""",
        description="Every run in view with its scores: event-level precision/recall/F1, time to detect "
        "(s), false alerts per day, NAB (standard, low FP, low FN) and BATADAL S where it applies.",
        width=24,
    )


def _f1_per_config() -> Any:
    return timeseries_panel(
        "F1 per configuration",
        f"""
SELECT started_at AS time, detector AS config, f1
FROM backtest_runs FINAL
WHERE {IN_VIEW}
ORDER BY time, config""",
        unit="percentunit",
        description="Event-level F1 of each run, at the time it was started, per configuration.",
        soft_min=0.0,
        soft_max=1.0,
    ).display_name("${__field.labels.config}")


def _false_per_config() -> Any:
    return timeseries_panel(
        "False alerts per day per configuration",
        f"""
SELECT started_at AS time, detector AS config, false_alerts_per_day
FROM backtest_runs FINAL
WHERE {IN_VIEW}
ORDER BY time, config""",
        unit="short",
        description="Alerts that matched no label, per day of the run's range, at the time each run started.",
    ).display_name("${__field.labels.config}")


# --------------------------------------------------------------------------- detections against labels


def _outcomes_over_time() -> Any:
    return timeseries_panel(
        "Detections and misses over the data's time",
        f"""
SELECT $__timeInterval(detected_at) AS time, outcome, count() AS n
FROM backtest_detections FINAL
WHERE $__timeFilter(detected_at) AND run_id IN ({RUNS_IN_VIEW})
GROUP BY time, outcome
ORDER BY time, outcome""",
        unit="short",
        description="Per interval of the data's time: hits (first detection of a label), repeats, "
        "false alerts, and missed labels (at their start). The Labels annotation shades the windows.",
        bars=True,
    ).display_name("${__field.labels.outcome}")


def _outcomes_per_run() -> Any:
    return table_panel(
        "Outcomes per run",
        f"""
SELECT run_id, countIf(outcome = 'hit') AS hits, countIf(outcome = 'repeat') AS repeats,
       countIf(outcome = 'false') AS false_alerts, countIf(outcome = 'missed') AS missed
FROM backtest_detections FINAL
WHERE run_id IN ({RUNS_IN_VIEW})
GROUP BY run_id
ORDER BY run_id""",
        description="How each run's detections and the labels fared.",
    )


def _detections() -> Any:
    return table_panel(
        "Detections and missed labels",
        f"""
SELECT run_id, outcome, detected_at, domain, kind, arrayStringConcat(keys, ' ') AS sensors,
       label_id, label_kind, label_start, label_end, ttd_s
FROM backtest_detections FINAL
WHERE $__timeFilter(detected_at) AND run_id IN ({RUNS_IN_VIEW})
ORDER BY run_id, detected_at
LIMIT 500""",
        description="Each detection of the runs in view with the label it matched (none for a false "
        "alert), and each label no detection matched.",
    )
