"""The citystream dashboards: one per department, a city overview, alerts, sensors and pipeline health.

Why these dashboards: each department dashboard (:mod:`dashboards.department`)
answers "is my network inside its operating band, where not, and since when";
the overview answers "which department needs attention" for the control room
and shows the city's sensors on a map; alerts lists the incidents of every
department with their evidence; sensors lists the registry with each sensor's
health and last reading;
pipeline health answers "can the numbers on the other dashboards be trusted
right now" (late and duplicate data, dead letters, load lag). One module per
dashboard, one function per panel.

Metric names are the reading fields with their unit (WindowAggregate.metric,
as the domain jobs in jobs/ write them). Uids are fixed: links, bookmarks
and provisioning depend on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from citystream.catalog import GRID, TRAFFIC, WATER
from citystream.dashboards import alerts, backtests, grid, overview, pipeline, sensors, traffic, water
from citystream.dashboards.department import title, uid

#: (uid, title, builder) of every dashboard, in the order they are listed and built.
BOARDS: tuple[tuple[str, str, Callable[[], dict[str, Any]]], ...] = (
    (overview.UID, overview.TITLE, overview.build),
    (alerts.UID, alerts.TITLE, alerts.build),
    (sensors.UID, sensors.TITLE, sensors.build),
    (uid(GRID), title(GRID), grid.build),
    (uid(TRAFFIC), title(TRAFFIC), traffic.build),
    (uid(WATER), title(WATER), water.build),
    (pipeline.UID, pipeline.TITLE, pipeline.build),
    (backtests.UID, backtests.TITLE, backtests.build),
)

#: uid -> title; tests pin this so a uid never changes by accident.
UIDS: dict[str, str] = {u: t for u, t, _ in BOARDS}


def all_dashboards() -> list[dict[str, Any]]:
    """Every dashboard model, in :data:`UIDS` order."""
    return [build() for _, _, build in BOARDS]
