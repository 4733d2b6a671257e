"""The alert lifecycle of one group: open -> update -> resolve, hysteresis, cooldown, sensor faults.

Why its own module: the lifecycle is what operators see - one leak is one
alert that grows as more gauges join and resolves once the place has been
quiet for ``quiet_windows``; a relapse within ``cooldown_windows`` re-opens
the same alert instead of paging again. It reads only evidence (from
``evidence``) and the typed group state, never the checks that produced it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from citystream.detection.config import SEVERITIES, AlertPolicy
from citystream.detection.evidence import Family, Records, WindowPass, alert, explain, max_severity
from citystream.detection.metric import OK
from citystream.detection.state import ClosedIncident, GroupState, Incident, SensorState


class KindNamer(Protocol):
    """Names an incident from its evidence (each domain's ``Relations.kind``)."""

    def kind(self, family: str, evidence: Sequence[Mapping[str, Any]]) -> str: ...


def track_health(w: WindowPass, namer: KindNamer, sid: str, status: str, detail: str) -> str:
    """Track one sensor's status; on a change emit a SensorHealth event and open/keep its fault alert.

    Returns the fault's incident key (``"sensor_fault|{sid}"``), or "" while the
    sensor is healthy, so the caller keeps the fault's alert alive.
    """
    window_end = w.window_end
    s = w.st.sensors.setdefault(sid, SensorState(OK, window_end, window_end))
    if status != "silent":
        s.seen = window_end
    fam = ("sensor_fault", sid)
    if status != s.status:
        s.status, s.since = status, window_end
        zone = sid.split("-")[1] if sid.count("-") else ""
        w.out["health"].append(
            {
                "sensor_id": sid,
                "site_id": "",
                "zone_id": zone,
                "domain": w.domain,
                "status": status,
                "since": window_end,
                "details": detail if status != OK else "sensor healthy again",
            }
        )
        if status != OK:
            ev = [
                {"key_id": sid, "metric": "", "z": 0.0, "severity": "warning", "note": f"{status}: {detail}"}
            ]
            grow(w, namer, fam, ev, kind="sensor_fault")
    return "|".join(fam) if status != OK else ""


def grow(
    w: WindowPass,
    namer: KindNamer,
    fam: Family,
    ev: Sequence[Mapping[str, Any]],
    kind: str | None = None,
) -> None:
    """Open an incident, re-open it within the cooldown, or add evidence to the open one.

    Why updates only when the incident grew or escalated: an alert re-sent
    every window with the same content is noise for whoever is paged.
    """
    st, window_end = w.st, w.window_end
    akey = "|".join(fam)
    keys = sorted({e["key_id"] for e in ev})
    sev = "info"
    for e in ev:
        sev = max_severity(sev, e["severity"])
    top = max(ev, key=lambda e: abs(e["z"]))
    a = st.open.get(akey)
    if a is None:
        closed = st.closed.pop(akey, None)
        a = Incident(
            id=closed.id if closed else f"{akey.replace('|', ':')}:{window_end}",
            family=fam[0],
            kind=kind or namer.kind(fam[0], ev),
            keys=keys,
            first_seen=closed.first_seen if closed else window_end,
            last_seen=window_end,
            severity=sev,
            count=(closed.count if closed else 0) + len(ev),
            quiet=0,
            explanation="",
        )
        a.explanation = explain(a, top)
        st.open[akey] = a
        w.out["alerts"].append(alert(a, "open", w.domain, a.explanation))
        return
    grew = set(keys) - set(a.keys)
    escalated = SEVERITIES.index(sev) > SEVERITIES.index(a.severity)
    a.keys = sorted(set(a.keys) | set(keys))
    a.last_seen = window_end
    a.count += len(ev)
    a.quiet = 0
    a.severity = max_severity(a.severity, sev)
    if kind is None and a.kind.endswith("_anomaly"):
        a.kind = namer.kind(fam[0], ev)
    if grew or escalated:
        a.explanation = explain(a, top)
        w.out["alerts"].append(alert(a, "update", w.domain, a.explanation))


def resolve_quiet(
    st: GroupState, policy: AlertPolicy, window_ms: int, domain: str, alive: set[Family], out: Records
) -> None:
    """Resolve incidents that went quiet, and forget resolved ones past their cooldown.

    Hysteresis: evidence weaker than an anomaly (``keep_z``) keeps a family
    alive, so an incident does not flap open/resolved around its threshold.
    """
    window_end = st.window_end
    assert window_end is not None
    for akey in sorted(st.open):
        a = st.open[akey]
        fam = tuple(akey.split("|", 1))
        if fam in alive or a.last_seen == window_end:
            a.quiet = 0
            continue
        a.quiet += 1
        if a.quiet >= policy.quiet_windows:
            out["alerts"].append(alert(a, "resolve", domain, f"resolved: {a.explanation}"))
            st.closed[akey] = ClosedIncident(a.id, window_end, a.first_seen, a.count)
            del st.open[akey]
    horizon = window_end - policy.cooldown_windows * window_ms
    st.closed = {k: v for k, v in st.closed.items() if v.closed_at > horizon}
