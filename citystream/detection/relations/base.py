"""What a domain tells the group stage: its places, its incidents and the physics its sensors obey.

Why an object per domain: a department (traffic, water, grid) differs from
the others only in how its sensor ids name places, what its incidents are
called and which physical relations tie its sensors together. Everything
else - health, muting, grouping, the alert lifecycle - is the same engine,
so adding a department means adding one ``Relations`` object to the
registry in ``citystream.detection.relations``.

The checks come in two kinds, run at two points of a window:

* ``check_sensors`` before the sensors' health is decided: a relation one
  sensor breaks alone is that sensor's fault (a drift health event);
* ``check_place`` after muting: a relation the world breaks is evidence of
  an event at the place, published like any anomaly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from citystream.detection.config import MetricRule
from citystream.detection.evidence import Family, WindowPass, anomaly, verdict
from citystream.detection.health import NeighbourDrift
from citystream.detection.learned import RelationDrift
from citystream.detection.metric import OK

#: (sensor, metric) pairs whose verdicts this window are no evidence (they disagree with physics).
Ignored = set[tuple[str, str]]


class Relations(Protocol):
    """One domain's places, incident names and physical relations."""

    domain: str

    def family_and_locus(self, metric: str, key_id: str) -> Family:
        """Which anomalies belong to one incident: same family and place."""
        ...

    def neighbours(self, a: str, b: str) -> bool:
        """Do sensors ``a`` and ``b`` see the same world (so a fault shows as a change of their ratio)?"""
        ...

    def kind(self, family: str, evidence: Sequence[Mapping[str, Any]]) -> str:
        """A human name for an incident from the anomalies in it (the grouping does not depend on it)."""
        ...

    def check_sensors(self, w: WindowPass, drifting: dict[str, str]) -> Ignored:
        """Add sensors breaking a relation alone to ``drifting`` (sensor -> why); return ignored verdicts."""
        ...

    def check_place(self, w: WindowPass) -> None:
        """Publish evidence of events at the place from relations across its healthy sensors."""
        ...


def place_of(key_id: str) -> str:
    """The place in a sensor id: the city model builds ids as ``{domain}-{zone or substation}-...``."""
    parts = key_id.split("-")
    return parts[1] if len(parts) > 1 else key_id


@dataclass(frozen=True)
class BaseRelations:
    """A domain with no physics of its own: places from the ids, drift against the neighbours.

    Why a usable default: a new department gets grouping, health and
    neighbour drift before anyone has written down its physics.
    """

    domain: str

    def family_and_locus(self, metric: str, key_id: str) -> Family:
        """Anomalies of one domain at one place (a zone, a DMA) share a cause."""
        return self.domain, f"{self.domain}-{place_of(key_id)}"

    def neighbours(self, a: str, b: str) -> bool:
        """Sensors of one place (``water-z03-...``) share its world."""
        pa, pb = a.split("-"), b.split("-")
        return len(pa) > 1 and len(pb) > 1 and pa[1] == pb[1]

    def kind(self, family: str, evidence: Sequence[Mapping[str, Any]]) -> str:
        return f"{self.domain}_anomaly"

    def check_sensors(self, w: WindowPass, drifting: dict[str, str]) -> Ignored:
        neighbour_drift(w, self, drifting)
        return set()

    def check_place(self, w: WindowPass) -> None:
        return None


def relation_drift(r: MetricRule) -> RelationDrift:
    """The learned relation a rule configures (its ``relation_*`` settings)."""
    return RelationDrift(
        r.relation_tolerance,
        k=r.relation_k,
        halflife=r.relation_halflife,
        warmup=r.relation_warmup,
        floor=r.relation_floor,
        memory=r.relation_memory,
    )


def neighbour_drift(w: WindowPass, rel: Relations, drifting: dict[str, str]) -> None:
    """Sensors drifting against the neighbours of their place (log ratio to the neighbours' median).

    Why the log ratio: sensors of one place share the world (a DMA's demand,
    a substation's voltage) but not a calibration fault, and they differ by
    a factor (elevation, road class), so the ratio to the neighbours' median
    is what stays put. ``NeighbourDrift`` learns its usual value and spread
    over ``drift_warmup`` windows, then freezes them. A sensor already
    flagged by a stronger check keeps that check's reason.
    """
    pools: dict[str, list[tuple[str, float]]] = {}
    for sid, vs in w.by_sensor.items():
        for v in vs:
            r = w.config.rule(w.domain, v["metric"])
            if r is None or r.drift_tolerance <= 0 or v["health"] != OK or v["observed"] is None:
                continue
            if v["observed"] <= 0:
                continue
            pools.setdefault(v["metric"], []).append((sid, math.log(v["observed"])))
    states = w.st.relations
    for metric, members in sorted(pools.items()):
        r = w.config.rule(w.domain, metric)
        assert r is not None
        nd = NeighbourDrift(r.drift_warmup, r.drift_halflife, r.drift_k, r.drift_tolerance)
        for sid, x in members:
            others = [y for s2, y in members if s2 != sid and rel.neighbours(sid, s2)]
            if len(others) < 2:
                continue
            key = f"{sid}|{metric}"
            ds, is_drifting, _ = nd.step(states.get(key) or nd.init(), 0, x, others)
            states[key] = ds
            if is_drifting and sid not in drifting:
                pct = 100.0 * (math.exp(ds["e"] - ds["m"]) - 1.0)
                drifting[sid] = f"{metric} drifted {pct:+.1f} % against its neighbours"


def coherent(w: WindowPass, rel: Relations) -> None:
    """Many sensors of one place moving together a little is one strong signal.

    Why: a leak lowers every pressure of its DMA by ~3 sd - no single gauge
    crosses its threshold, but 16 of them agreeing is not noise. Level
    z-scores of the healthy sensors of one (place, metric) are combined as
    sum(z) / sqrt(n) (Stouffer); the threshold (``zone_z``) is set well above
    what ordinary common-mode swings reach, because the sensors' residuals
    are correlated and the combination assumes not.
    """
    pools: dict[tuple[Family, str], list[Mapping[str, Any]]] = {}
    for sid, vs in w.by_sensor.items():
        if not w.healthy(sid):
            continue
        for v in vs:
            r = w.config.rule(w.domain, v["metric"])
            if r is None or r.zone_z <= 0 or v["lz"] == 0.0:
                continue
            pools.setdefault((rel.family_and_locus(v["metric"], sid), v["metric"]), []).append(v)
    for (fam, metric), vs in sorted(pools.items()):
        r = w.config.rule(w.domain, metric)
        assert r is not None
        if len(vs) < r.zone_min_sensors:
            continue
        zz = sum(v["lz"] for v in vs) / math.sqrt(len(vs))
        if abs(zz) >= w.config.alerts.keep_z * math.sqrt(len(vs)) / 2:
            w.alive.add(fam)
        if abs(zz) < r.zone_z:
            continue
        sign = 1.0 if zz > 0 else -1.0
        agree = [v for v in vs if v["lz"] * sign > 0]
        note = (
            f"{len(agree)} of {len(vs)} {metric} sensors moved together "
            f"({'up' if sign > 0 else 'down'}, combined {zz:+.1f} sd)"
        )
        v0 = verdict(
            fam[1],
            metric,
            (w.window_end - w.config.window_ms, w.window_end),
            observed=sum(v["observed"] for v in vs) / len(vs),
            expected=None,
            z=zz,
            threshold=r.zone_z,
            detector="zone-v1",
            severity="critical" if abs(zz) >= 2 * r.zone_z else "warning",
            note=note,
        )
        w.out["anomalies"].append(anomaly(w.domain, v0, key_kind="zone"))
        for v in agree:
            w.evidence.setdefault(fam, []).append(
                {**v, "z": v["lz"], "severity": v0["severity"], "note": note}
            )
