"""Evidence of the group stage: verdicts, the window pass that gathers them, and the records they become.

Why one module: every check of a place - a sensor's own verdict, a zone's
combined shift, a broken physical relation - must score, publish and
explain alike, or alerts would rank them differently by accident. The
builders here are the only place an Anomaly or an Alert record takes shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citystream.detection.base import tail_score
from citystream.detection.config import SEVERITIES, DetectionConfig
from citystream.detection.metric import OK
from citystream.detection.state import GroupState, Incident

#: What one window of a group emits: "anomalies", "alerts" and "health" records as plain dicts.
Records = dict[str, list[dict[str, Any]]]
#: (family, place): the anomalies of one family at one place are one incident.
Family = tuple[str, str]


def verdict(
    key_id: str,
    metric: str,
    window: tuple[int, int],
    observed: float,
    expected: float | None,
    z: float,
    threshold: float,
    detector: str,
    severity: str,
    note: str,
) -> dict[str, Any]:
    """A group check's verdict: what ``anomaly`` publishes and the evidence lists hold.

    Why one builder: the relation, balance and zone checks must score alike
    (``z`` at ``threshold`` scores as a per-metric verdict at its own
    threshold does).
    """
    return {
        "key_id": key_id,
        "metric": metric,
        "window_start": window[0],
        "window_end": window[1],
        "observed": observed,
        "expected": expected,
        "z": z,
        "score": tail_score(3.0 * z / threshold),
        "detector": detector,
        "severity": severity,
        "note": note,
    }


@dataclass(frozen=True)
class WindowPass:
    """One window of one group, as every check reads and extends it.

    Why one object: the checks (sensor health, zone coherence and each
    domain's physical relations) all read the window's verdicts by sensor
    and the group state, and add evidence, live families and records to the
    same collections; ``GroupEngine.step`` grows incidents from them after.
    """

    config: DetectionConfig
    domain: str
    by_sensor: Mapping[str, Sequence[Mapping[str, Any]]]
    st: GroupState
    evidence: dict[Family, list[Mapping[str, Any]]]
    alive: set[Family]
    window_end: int
    out: Records

    @property
    def t(self) -> int:
        """The window's index (what the learned relations count time in)."""
        return self.window_end // self.config.window_ms

    def publish(self, record: dict[str, Any], family: Family, evidence: Mapping[str, Any]) -> None:
        """An anomaly to publish, and its verdict as evidence for the family's incident."""
        self.out["anomalies"].append(record)
        self.evidence.setdefault(family, []).append(evidence)

    def healthy(self, sid: str) -> bool:
        """The sensor is not muted this window."""
        return self.st.sensors[sid].status == OK

    def settled(self, sid: str) -> bool:
        """Healthy, and not in its first two windows back from a fault.

        Why: the window a frozen or silent sensor comes back in averages
        frozen and live readings, and a check over consecutive windows (a
        level change, a run of a pump) would read that average as an event.
        """
        s = self.st.sensors.get(sid)
        return s is None or (s.status == OK and s.since < self.window_end - self.config.window_ms)


def max_severity(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


def explain(a: Incident, top: Mapping[str, Any]) -> str:
    """One sentence for an alert: what, where, and the strongest evidence's own words."""
    n = len(a.keys)
    where = a.keys[0] if n == 1 else f"{n} sensors"
    return f"{a.kind.replace('_', ' ')} at {where}: {top['note']}"


def alert(a: Incident, state: str, domain: str, text: str) -> dict[str, Any]:
    """A citystream.Alert record of an incident in lifecycle state ``state`` (open/update/resolve)."""
    return {
        "alert_id": a.id,
        "state": state,
        "domain": domain,
        "kind": a.kind,
        "key_kind": "sensor",
        "affected_keys": list(a.keys),
        "first_seen": a.first_seen,
        "last_seen": a.last_seen,
        "severity": a.severity,
        "anomaly_count": a.count,
        "explanation": text,
    }


def anomaly(domain: str, v: Mapping[str, Any], key_kind: str = "sensor") -> dict[str, Any]:
    """A citystream.Anomaly record of a verdict (a sensor's, or a place's for zone/site checks)."""
    return {
        "domain": domain,
        "key_kind": key_kind,
        "key_id": v["key_id"],
        "metric": v["metric"],
        "detector": v["detector"],
        "event_time": v["window_end"],
        "window_start": v["window_start"],
        "window_end": v["window_end"],
        "score": v["score"],
        "severity": v["severity"],
        "observed": v["observed"],
        "expected": v["expected"],
        "explanation": v["note"],
    }
