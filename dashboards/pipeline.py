"""Pipeline health: can the numbers on the other dashboards be trusted right now?

Late and duplicate data, dead letters, windows revised by late data and the lag
from a window's end to its row in the store; a spike here explains a strange
curve elsewhere before anyone chases it in the city.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from citystream.dashboards import queries as q
from citystream.dashboards.factories import (
    Band,
    Section,
    dashboard,
    domain_variable,
    in_filter,
    sql_annotation,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "citystream-pipeline"
TITLE = "citystream · Pipeline health"
#: Load lag: two minutes is Flink windowing plus a loader batch; ten is a stalled stage.
LAG_BAND = Band("green", ((120.0, "orange"), (600.0, "red")))


@dataclass(frozen=True)
class _Sources:
    """The sub-queries several panels share, for the selected departments."""

    #: The department filter (``$domain``).
    dom: str
    #: Sensor windows per department at the resolution the time range calls for.
    per_domain: str
    #: Load-lag histograms per bucket and department.
    lag_per_bucket: str

    @classmethod
    def selected(cls) -> _Sources:
        dom = in_filter("domain", "domain")
        sensors = f"key_kind = 'sensor' AND {dom}"
        lag_per_bucket = f"""
    SELECT t, domain, sumMap(lags) AS histogram
    FROM ({q.load_lag(dom)}
    )
    GROUP BY t, domain"""
        return cls(dom, f"({q.resolution(q.DOMAINS, sensors)}\n)", lag_per_bucket)


def build() -> dict[str, Any]:
    """Late and duplicate data, dead letters, revisions and load lag: can the other dashboards be trusted?"""
    src = _Sources.selected()
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Pipeline health: late and duplicate readings, dead letters, revisions, load lag.",
        tags=["citystream", "pipeline"],
        variables=[domain_variable()],
        annotations=[sql_annotation("Alerts", q.alerts_annotation(src.dom), color="red", enable=False)],
        sections=[
            Section(
                "In the time range",
                [
                    _late_absorbed(src),
                    _duplicates_dropped(src),
                    _too_late(),
                    _dead_letters(),
                    _windows_revised(src),
                    _lag_p95(src),
                ],
            ),
            Section(
                "Late and duplicate data",
                [
                    _late_per_department(src),
                    _duplicates_per_department(src),
                    _too_late_per_topic(),
                    _lateness_of_dropped(),
                ],
            ),
            Section("Dead letters", [_dead_letters_per_reason(), _latest_dead_letters()]),
            Section("Load lag", [_lag_per_department(src), _reported_lag()]),
        ],
    )


# --------------------------------------------------------------------------- in the time range


def _late_absorbed(src: _Sources) -> Any:
    return stat_panel(
        "Late readings absorbed",
        f"SELECT sum(late) AS late FROM {src.per_domain}",
        unit="short",
        description="Readings behind the watermark that still corrected their window "
        "(within allowed lateness).",
        width=4,
    )


def _duplicates_dropped(src: _Sources) -> Any:
    return stat_panel(
        "Duplicates dropped",
        f"SELECT sum(duplicates) AS duplicates FROM {src.per_domain}",
        unit="short",
        description="Duplicate deliveries (same sensor and sequence number) the jobs dropped.",
        width=4,
    )


def _too_late() -> Any:
    return stat_panel(
        "Too late (dropped)",
        """
SELECT count() AS late_events
FROM late_events FINAL
WHERE $__timeFilter(event_time)""",
        unit="short",
        description="Readings that arrived after their window had closed for good "
        "(late_events; kept 14 days).",
        band=Band("green", ((1.0, "orange"),)),
        width=4,
    )


def _dead_letters() -> Any:
    return stat_panel(
        "Dead letters",
        """
SELECT count() AS dead_letters
FROM dead_letters FINAL
WHERE $__timeFilter(received_at)""",
        unit="short",
        description="Records no job could process (kept byte for byte, 30 days).",
        band=Band("green", ((1.0, "red"),)),
        width=4,
    )


def _windows_revised(src: _Sources) -> Any:
    return stat_panel(
        "Windows revised",
        f"SELECT sum(revised) AS revised FROM ({q.resolution(q.DOMAINS, src.dom)}\n)",
        unit="short",
        description="1-minute windows whose stored value is a correction by late data (revision > 0).",
        width=4,
    )


def _lag_p95(src: _Sources) -> Any:
    return stat_panel(
        "Load lag p95",
        f"""
SELECT {q.lag_quantile("histogram")} AS p95
FROM (SELECT sumMap(histogram) AS histogram FROM ({src.lag_per_bucket}\n))""",
        unit="s",
        description="95th percentile of the time from a window's end to its first row in the store.",
        band=LAG_BAND,
        width=4,
    )


# --------------------------------------------------------------------------- late and duplicate data


def _late_per_department(src: _Sources) -> Any:
    return timeseries_panel(
        "Late readings absorbed per department",
        f"""
SELECT t AS time, domain, sum(late) AS late
FROM {src.per_domain}
GROUP BY time, domain
ORDER BY time, domain""",
        unit="short",
        description="Readings per interval that arrived behind the watermark but within "
        "allowed lateness, by department (counted once per reading, not per metric).",
        bars=True,
    ).display_name("${__field.labels.domain}")


def _duplicates_per_department(src: _Sources) -> Any:
    return timeseries_panel(
        "Duplicates dropped per department",
        f"""
SELECT t AS time, domain, sum(duplicates) AS duplicates
FROM {src.per_domain}
GROUP BY time, domain
ORDER BY time, domain""",
        unit="short",
        description="Duplicate deliveries dropped per interval, by department.",
        bars=True,
    ).display_name("${__field.labels.domain}")


def _too_late_per_topic() -> Any:
    return timeseries_panel(
        "Too-late readings per topic",
        """
SELECT $__timeInterval(event_time) AS time, source_topic AS topic, count() AS readings
FROM late_events FINAL
WHERE $__timeFilter(event_time)
GROUP BY time, topic
ORDER BY time, topic""",
        unit="short",
        description="Readings dropped as too late, per interval of their event time and topic.",
        bars=True,
    ).display_name("${__field.labels.topic}")


def _lateness_of_dropped() -> Any:
    return timeseries_panel(
        "Lateness of dropped readings",
        """
SELECT $__timeInterval(event_time) AS time,
       quantile(0.5)(lateness_ms) / 1000 AS p50,
       quantile(0.95)(lateness_ms) / 1000 AS p95,
       max(lateness_ms) / 1000 AS max
FROM late_events FINAL
WHERE $__timeFilter(event_time)
GROUP BY time
ORDER BY time""",
        unit="s",
        description="How far behind the watermark dropped readings were (watermark - event time).",
    )


# --------------------------------------------------------------------------- dead letters


def _dead_letters_per_reason() -> Any:
    return timeseries_panel(
        "Dead letters per reason",
        """
SELECT $__timeInterval(received_at) AS time, reason, count() AS records
FROM dead_letters FINAL
WHERE $__timeFilter(received_at)
GROUP BY time, reason
ORDER BY time, reason""",
        unit="short",
        description="Records dead-lettered per interval, by reason "
        "(undecodable, schema_mismatch, invalid_value, missing_key).",
        bars=True,
    ).display_name("${__field.labels.reason}")


def _latest_dead_letters() -> Any:
    return table_panel(
        "Latest dead letters",
        """
SELECT received_at, source_topic, source_partition, source_offset, reason, error,
       length(ifNull(original_value, '')) AS value_bytes
FROM dead_letters FINAL
WHERE $__timeFilter(received_at)
ORDER BY received_at DESC
LIMIT 100""",
        description="The newest dead-lettered records with where they came from and why.",
    )


# --------------------------------------------------------------------------- load lag


def _lag_per_department(src: _Sources) -> Any:
    return timeseries_panel(
        "Load lag per department",
        f"""
SELECT t AS time, domain, {q.lag_quantile("histogram")} AS p95
FROM ({src.lag_per_bucket}
)
ORDER BY time, domain""",
        unit="s",
        description="95th percentile per interval of window end -> first row in the store "
        "(Flink windowing + Kafka + loader), by department.",
        band=LAG_BAND,
    ).display_name("${__field.labels.domain}")


def _reported_lag() -> Any:
    return timeseries_panel(
        "Reported lag",
        """
SELECT $__timeInterval(ts) AS time, concat(component, ' ', instance, ' ', metric) AS series,
       max(value) AS value
FROM pipeline_metrics
WHERE $__timeFilter(ts) AND positionCaseInsensitive(metric, 'lag') > 0
GROUP BY time, series
ORDER BY time, series""",
        unit="short",
        description="Lag gauges the components report about themselves (pipeline_metrics, "
        "any metric whose name contains 'lag', e.g. consumer lag in records).",
    ).display_name("${__field.labels.series}")
