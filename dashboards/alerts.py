"""Alerts: open and recent incidents across departments, with the verdicts behind them.

Why across departments: a burst main floods a street and trips a feeder, and
the incidents of water, traffic and grid belong on one list for the control
room. Every incident shows where it is (site and zone names from the sensor
registry) and its evidence: the detector verdicts on its keys while it was
active.
"""

from __future__ import annotations

from typing import Any

from citystream.dashboards import registry_sql
from citystream.dashboards.factories import (
    Band,
    Section,
    dashboard,
    domain_variable,
    in_filter,
    stat_panel,
    table_panel,
)
from citystream.dashboards.overview import per_domain_counts

UID = "citystream-alerts"
TITLE = "citystream · Alerts"
#: Critical first, then warning, then the rest; most recently active first within each.
BY_SEVERITY = "multiIf(severity = 'critical', 0, severity = 'warning', 1, 2), last_seen DESC"


def build() -> dict[str, Any]:
    """Open incidents, incidents in range and their evidence, for the selected departments."""
    dom = in_filter("domain", "domain")
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Open and recent incidents across departments, where they are and why they were raised.",
        tags=["citystream", "alerts"],
        variables=[domain_variable()],
        sections=[
            Section("Now", [_open_count(dom)]),
            Section("Incidents", [_open_table(dom), _recent_table(dom)]),
            Section("Evidence", [_evidence(dom)]),
        ],
    )


def _open_count(dom: str) -> Any:
    return stat_panel(
        "Open incidents",
        per_domain_counts("alerts_latest", f"state != 'resolve' AND {dom}"),
        unit="none",
        description="Incidents whose latest lifecycle step is not 'resolve', per department "
        "('cross' spans departments).",
        band=Band("green", ((1.0, "orange"), (5.0, "red"))),
        width=24,
    )


def _open_table(dom: str) -> Any:
    return table_panel(
        "Open incidents",
        registry_sql.alerts_table(f"state != 'resolve' AND {dom}", BY_SEVERITY),
        description="Every incident not yet resolved, critical first, with the site and zone names of the "
        "keys it affects and the detector's explanation.",
        width=24,
        height=9,
    )


def _recent_table(dom: str) -> Any:
    return table_panel(
        "Incidents in range",
        registry_sql.alerts_table(
            f"last_seen >= $__fromTime AND first_seen <= $__toTime AND {dom}", "last_seen DESC"
        ),
        description="Incidents active at some point of the time range, resolved ones included, most "
        "recently active first.",
        width=24,
        height=9,
    )


def _evidence(dom: str) -> Any:
    return table_panel(
        "Evidence: verdicts behind the incidents",
        f"""
WITH {registry_sql.PLACES}
SELECT
    a.alert_id AS alert_id, a.kind AS incident, n.event_time AS time, n.severity AS severity,
    n.key_kind AS key_kind, n.key_id AS key_id,
    {registry_sql.site_of("n.key_kind", "n.key_id")} AS site,
    {registry_sql.zone_of("n.key_kind", "n.key_id")} AS zone,
    n.metric AS metric, n.detector AS detector, round(n.score, 3) AS score,
    n.observed AS observed, n.expected AS expected, n.explanation AS explanation
FROM
(
    SELECT alert_id, kind, first_seen, last_seen, arrayJoin(affected_keys) AS key
    FROM alerts_latest
    WHERE last_seen >= $__fromTime AND first_seen <= $__toTime AND {dom}
) AS a
INNER JOIN
(
    SELECT key_kind, key_id, event_time, severity, metric, detector, score, observed, expected, explanation
    FROM anomalies FINAL
    WHERE $__timeFilter(event_time)
) AS n ON n.key_id = a.key
WHERE n.event_time >= a.first_seen AND n.event_time <= a.last_seen
ORDER BY a.alert_id, n.event_time
LIMIT 500""",
        description="For each incident active in the range, the detector verdicts on its keys between its "
        "first and last sighting: the evidence it was raised and kept open on.",
        width=24,
        height=10,
    )
