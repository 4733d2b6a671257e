"""Traffic: a loop's speed against its own occupancy, and vehicles conserved along a road.

Why these two: a loop's speed, occupancy and count must agree with each
other whatever the traffic does (the fundamental diagram), so a speed
channel that drifts is the loop's fault; and vehicles are conserved between
two stations of a road, so a persistent deficit downstream of a freely
running road is a blockage - an event no single loop's baseline sees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from citystream.catalog import TRAFFIC
from citystream.detection.config import MetricRule
from citystream.detection.evidence import WindowPass, anomaly, verdict
from citystream.detection.learned import LoopSpeedCheck
from citystream.detection.metric import OK
from citystream.detection.relations.base import BaseRelations, Ignored, relation_drift

#: A road runs freely while every lane keeps this share of its learned free-flow speed.
FREE_FLOW_SHARE = 0.85


def loop_check(r: MetricRule) -> LoopSpeedCheck:
    """The fundamental-diagram check a speed rule configures (its ``drift_*`` settings)."""
    return LoopSpeedCheck(
        tolerance=r.drift_tolerance,
        k=r.drift_k,
        halflife=r.drift_halflife,
        warmup=r.drift_warmup,
        min_vehicles=r.drift_min_count,
    )


@dataclass
class _Station:
    """One station's lanes in one window (for flow conservation)."""

    vehicles: float = 0.0
    free: list[float] = field(default_factory=list)  #: each lane's speed over its free-flow speed
    lanes: list[str] = field(default_factory=list)
    ok: bool = True  #: every lane it reported is healthy


@dataclass(frozen=True)
class TrafficRelations(BaseRelations):
    """Loops ``traffic-{zone}-s{station}-l{lane}``: stations are numbered along the road."""

    domain: str = TRAFFIC.name

    def neighbours(self, a: str, b: str) -> bool:
        """Loops of one zone at the same or an adjacent station (+-1 is up- or downstream)."""
        pa, pb = a.split("-"), b.split("-")
        if len(pa) < 3 or len(pb) < 3 or pa[1] != pb[1]:
            return False
        try:
            return abs(int(pa[2].lstrip("s")) - int(pb[2].lstrip("s"))) <= 1
        except ValueError:
            return False

    def kind(self, family: str, evidence: Sequence[Mapping[str, Any]]) -> str:
        metrics = {(a["metric"], a["z"] > 0) for a in evidence}
        if ("mean_speed_kmh", False) in metrics or ("occupancy_pct", True) in metrics:
            return "congestion"
        return "traffic_anomaly"

    def check_sensors(self, w: WindowPass, drifting: dict[str, str]) -> Ignored:
        """Loops against their own occupancy and count, not their neighbours.

        Why: adjacent stations differ by whole queues at rush hour, but one
        loop's channels must agree with each other.
        """
        for sid, vs in w.by_sensor.items():
            self._speed_physics(w, sid, vs, drifting)
        return set()

    def _speed_physics(
        self, w: WindowPass, sid: str, vs: Sequence[Mapping[str, Any]], drifting: dict[str, str]
    ) -> None:
        """A loop's speed against its own occupancy and count (the fundamental diagram).

        ``LoopSpeedCheck`` holds the physics; this feeds it the window's means
        (and the occupancy's swing, which marks windows that mix free flow and
        queue).
        """
        by_metric = {v["metric"]: v for v in vs}
        sp, cnt, occ = (by_metric.get(m) for m in ("mean_speed_kmh", "vehicle_count", "occupancy_pct"))
        if sp is None or cnt is None or occ is None:
            return
        r = w.config.rule(self.domain, "mean_speed_kmh")
        if r is None or r.drift_tolerance <= 0:
            return
        if any(v["health"] != OK or v["observed"] is None for v in (sp, cnt, occ)):
            return
        check = loop_check(r)
        key = f"{sid}|mean_speed_kmh"
        wms = w.config.window_ms
        samples = cnt.get("samples") or 1
        ds, res = check.step(
            w.st.relations.get(key) or check.init(),
            int(sp["window_end"]) // wms,
            sp["observed"],
            occ["observed"],
            occ.get("min", occ["observed"]),
            occ.get("max", occ["observed"]),
            cnt["observed"] * samples,
            wms / 3_600_000,
        )
        w.st.relations[key] = ds
        if res.drifting:
            pct = 100.0 * (math.exp(res.bias) - 1.0)
            drifting[sid] = (
                f"mean_speed_kmh reads {pct:+.1f} % against the free-flow speed its occupancy implies "
                f"({res.z:+.1f} sd; occupancy {occ['observed']:.1f} %, "
                f"{cnt['observed'] * samples:.0f} vehicles)"
            )

    def check_place(self, w: WindowPass) -> None:
        self._flow_conservation(w)

    def _stations(self, w: WindowPass) -> dict[tuple[str, int], _Station]:
        """The window's stations by (zone, number): vehicles counted and how freely each lane runs."""
        stations: dict[tuple[str, int], _Station] = {}
        for sid in sorted(w.by_sensor):
            parts = sid.split("-")
            try:
                key = (parts[1], int(parts[2].lstrip("s")))
            except (IndexError, ValueError):
                continue
            s = stations.setdefault(key, _Station())
            by_metric = {v["metric"]: v for v in w.by_sensor[sid]}
            cnt = by_metric.get("vehicle_count")
            if not w.settled(sid) or cnt is None or cnt["health"] != OK or cnt["observed"] is None:
                s.ok = False
                continue
            s.vehicles += cnt["observed"] * (cnt.get("samples") or 1)
            s.lanes.append(sid)
            sp = by_metric.get("mean_speed_kmh")
            loop = w.st.relations.get(f"{sid}|mean_speed_kmh")
            vff = LoopSpeedCheck().free_flow_speed(loop) if loop else None
            if sp is not None and sp["health"] == OK and sp["observed"] and vff:
                s.free.append(sp["observed"] / vff)
        return stations

    def _flow_conservation(self, w: WindowPass) -> None:
        """Vehicles counted at a station against those counted at the next one downstream.

        Why: between two loops of a road vehicles are conserved (up to ramps
        and the queue stored between them, which the learned ratio absorbs).
        A blockage between them shows as a persistent deficit downstream
        *while the downstream road runs freely* - traffic that is starved,
        not queued. Congestion downstream also lowers its count, but slows
        it, so a downstream that is itself slowed is not a blockage. A
        station is used only when every lane it reported is healthy.
        Evidence for the zone's traffic family, naming both stations' loops.
        """
        r = w.config.rule(self.domain, "vehicle_count")
        if r is None or r.relation_tolerance <= 0:
            return
        stations = self._stations(w)
        rel = relation_drift(r)
        states = w.st.relations
        for (zone, n), up in sorted(stations.items(), key=lambda kv: kv[0]):
            dn = stations.get((zone, n + 1))
            if dn is None or not (up.ok and dn.ok) or up.vehicles < 3.0:
                continue
            q_up, q_dn = up.vehicles + 0.5, dn.vehicles + 0.5
            key = f"{zone}-s{n:03d}>s{n + 1:03d}|flow"
            ds, res = rel.step(
                states.get(key) or rel.init(), w.t, math.log(q_dn / q_up), 1.0 / q_up + 1.0 / q_dn
            )
            states[key] = ds
            if res is None or not res.flagged or res.bias >= 0:
                continue
            if not dn.free or min(dn.free) < FREE_FLOW_SHARE:
                continue  # the downstream road is slowed: a queue there, not starvation
            fam = (self.domain, f"traffic-{zone}")
            w.alive.add(fam)
            share = 100.0 * (1.0 - math.exp(res.bias))
            note = (
                f"station s{n + 1:03d} counts {share:.0f} % fewer vehicles than s{n:03d} upstream "
                f"usually sends it ({res.z:+.1f} sd) while it runs freely: blocked between them"
            )
            v0 = verdict(
                f"traffic-{zone}-s{n:03d}",
                "vehicle_count",
                (w.window_end - w.config.window_ms, w.window_end),
                observed=dn.vehicles,
                expected=q_up * math.exp(ds["c"]) - 0.5,
                z=res.z,
                threshold=rel.k,
                detector="conservation-v1",
                severity="warning",
                note=note,
            )
            w.out["anomalies"].append(anomaly(self.domain, v0, key_kind="site"))
            for sid in up.lanes + dn.lanes:
                w.evidence.setdefault(fam, []).append({**v0, "key_id": sid})
