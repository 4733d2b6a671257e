"""Water: head loss across a DMA, its tank's mass balance, and each pump's delivery.

Why these: a DMA (``water-z03-...``) is one hydraulic system fed through
its inlet. Each junction's pressure follows the inlet flow and the tank
(head loss), so a gauge that drifts against that law is the gauge's fault;
the tank's level follows its pump and inlet flows (mass balance) and a pump
that runs delivers its rated flow, so breaking either is an event of the
place (an unmetered inflow, a failed level control, a broken impeller).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citystream.catalog import WATER
from citystream.detection.evidence import WindowPass, anomaly, verdict
from citystream.detection.learned import LinearDrift
from citystream.detection.metric import CLIP, MAD_TO_SIGMA, OK
from citystream.detection.relations.base import BaseRelations, Ignored, neighbour_drift, relation_drift
from citystream.detection.state import TankBalance

#: Hazen-Williams: head loss grows with flow to this power.
HEAD_LOSS_EXPONENT = 1.852
#: Forgetting factor of the tank balance's recursive least squares (memory ~ 1 / (1 - lambda) windows).
RLS_LAMBDA = 0.998


@dataclass(frozen=True)
class WaterRelations(BaseRelations):
    """Sensors ``water-{dma}-...``: the inlet ``-flow``, pumps ``-pump``, junctions, one tank."""

    domain: str = WATER.name

    def kind(self, family: str, evidence: Sequence[Mapping[str, Any]]) -> str:
        metrics = {(a["metric"], a["z"] > 0) for a in evidence}
        names = {m for m, _ in metrics}
        if any(a.get("detector") == "pump-v1" for a in evidence):
            return "pump_failure"
        if names & {"turbidity_ntu", "chlorine_mgl", "ph"}:
            return "water_quality"
        if "tank_level_m" in names:
            return "tank_level"
        if ("flow_lps", True) in metrics or ("pressure_bar", False) in metrics:
            return "leak"
        return "hydraulic_anomaly"

    def check_sensors(self, w: WindowPass, drifting: dict[str, str]) -> Ignored:
        self._pressure_relation(w, drifting)
        neighbour_drift(w, self, drifting)
        return set()

    def check_place(self, w: WindowPass) -> None:
        self._tank_balance(w)
        self._pump_delivery(w)

    def _pressure_relation(self, w: WindowPass, drifting: dict[str, str]) -> None:
        """Each junction's pressure against its DMA's inlet flow and tank level (hydraulics).

        Why not the neighbours' median: pressures of a DMA are affine, not
        proportional, in the head loss (elevations differ), and the median of
        a set whose members come and go (a gauge muted) jumps - both need a
        wide tolerance. The law itself - static head - k x flow^1.852 + tank
        head - is linear in what is unknown, so ``LinearDrift`` learns it per
        junction and a gauge drifting by 2 % stands out within minutes. A
        leak moves inlet flow and pressures along the law. The flow is scaled
        by the first value seen (kept in the state), for a well-conditioned fit.
        """
        r = w.config.rule(self.domain, "pressure_bar")
        if r is None or r.relation_tolerance <= 0:
            return
        inlet = level = None
        for sid in sorted(w.by_sensor):
            for v in w.by_sensor[sid]:
                if v["metric"] == "flow_lps" and sid.endswith("-flow"):
                    inlet = v
                elif v["metric"] == "tank_level_m":
                    level = v
        if inlet is None or inlet["health"] != OK or inlet["observed"] is None or inlet["observed"] <= 0:
            return
        if level is not None and (level["health"] != OK or level["observed"] is None):
            return
        if w.st.flow_ref is None:
            w.st.flow_ref = inlet["observed"]
        x = [1.0, (inlet["observed"] / w.st.flow_ref) ** HEAD_LOSS_EXPONENT]
        x += [level["observed"]] if level is not None else []
        law = LinearDrift(
            r.relation_tolerance,
            k=r.relation_k,
            halflife=r.relation_halflife,
            warmup=r.relation_warmup,
            floor=r.relation_floor,
        )
        t = int(inlet["window_end"]) // w.config.window_ms
        states = w.st.relations
        for sid in sorted(w.by_sensor):
            v = next((v for v in w.by_sensor[sid] if v["metric"] == "pressure_bar"), None)
            if v is None or v["health"] != OK or v["observed"] is None:
                continue
            key = f"{sid}|pressure_law"
            prev = states.get(key)
            if prev is None or len(prev["b"]) != len(x):
                prev = law.init(len(x))  # first window, or the DMA gained/lost its tank gauge
            ds, res = law.step(prev, t, v["observed"], x)
            states[key] = ds
            if res is not None and res.flagged and sid not in drifting:
                drifting[sid] = (
                    f"pressure_bar reads {100.0 * res.bias:+.1f} % against what the DMA's inlet flow "
                    f"and tank level imply ({res.z:+.1f} sd)"
                )

    def _pump_delivery(self, w: WindowPass) -> None:
        """A pump that reports running against the flow it delivers while running.

        Why not the flow's own baseline: a pump is either off (0) or on at
        its rated flow, and an earlier failure teaches a level model that a
        trickle is normal (the next failure then looks like nothing). Status
        and flow of one pump are one relation - running means rated flow - so
        its usual running flow is learned only from windows it ran the whole
        minute, and a run at a fraction of it (air lock, broken impeller,
        closed valve) is evidence for its DMA from the first window on.
        """
        r = w.config.rule(self.domain, "flow_lps")
        if r is None or r.relation_tolerance <= 0:
            return
        rel = relation_drift(r)
        states = w.st.relations
        for sid in sorted(w.by_sensor):
            if not sid.endswith("-pump") or not w.settled(sid):
                continue
            by_metric = {v["metric"]: v for v in w.by_sensor[sid]}
            flow, status = by_metric.get("flow_lps"), by_metric.get("pump_on")
            if flow is None or status is None or flow["observed"] is None or status["observed"] is None:
                continue
            if status.get("min", status["observed"]) < 1.0 or flow["observed"] <= 0:
                continue  # not running the whole window: nothing to compare
            key = f"{sid}|delivery"
            ds, res = rel.step(states.get(key) or rel.init(), w.t, math.log(flow["observed"]))
            states[key] = ds
            if res is None or not res.flagged or res.bias >= 0:
                continue
            fam = self.family_and_locus("flow_lps", sid)
            w.alive.add(fam)
            usual = math.exp(ds["c"])
            note = (
                f"pump reports running but delivers {flow['observed']:.3g} L/s, "
                f"{100.0 * flow['observed'] / usual:.0f} % of its usual {usual:.3g} L/s"
            )
            v0 = verdict(
                sid,
                "flow_lps",
                (flow["window_start"], w.window_end),
                observed=flow["observed"],
                expected=usual,
                z=res.z,
                threshold=rel.k,
                detector="pump-v1",
                severity="critical",
                note=note,
            )
            w.publish(anomaly(self.domain, v0), fam, v0)

    def _tank_inputs(
        self, w: WindowPass
    ) -> tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]] | None:
        """The settled tank level, pump flow and inlet flow of the DMA this window, if all reported."""
        level = pump = inlet = None
        for sid, vs in w.by_sensor.items():
            if not w.settled(sid):
                continue
            for v in vs:
                if v["metric"] == "tank_level_m":
                    level = v
                elif v["metric"] == "flow_lps" and sid.endswith("-pump"):
                    pump = v
                elif v["metric"] == "flow_lps" and sid.endswith("-flow"):
                    inlet = v
        if level is None or pump is None or inlet is None:
            return None
        if any(v["observed"] is None for v in (level, pump, inlet)):
            return None
        return level, pump, inlet

    def _tank_balance(self, w: WindowPass) -> None:
        """Water mass balance of a DMA's tank: level change vs what the pump and the inlet moved.

        Why learned: tank area, pump curve and the share of demand the tank
        serves are rarely on file, but over one window the balance is linear
        - dlevel = a * pump flow + b * inlet flow + c - so recursive least
        squares (forgetting factor ``RLS_LAMBDA``) learns it per DMA. A tank
        filling faster than its metered pump can fill it (an unmetered
        inflow, a failed level control) or draining with the pump running is
        a residual no single-sensor model sees.
        """
        rule = w.config.rule(self.domain, "tank_level_m")
        inputs = self._tank_inputs(w)
        if inputs is None or rule is None or rule.balance_z <= 0:
            return
        level, pump, inlet = inputs
        b = w.st.balance
        prev, b.prev_level = b.prev_level, level["observed"]
        flows, b.prev_flows = b.prev_flows, [pump["observed"], inlet["observed"]]
        # the balance holds between consecutive windows only: after a gap (a sensor muted, silent
        # or missing) the level moved by flows nobody saw, so start again from this window
        last, b.at = b.at, w.window_end
        if prev is None or flows is None or (last is not None and w.window_end - last != w.config.window_ms):
            return
        # window means are mid-window samples: the level moved between them by what flowed from
        # the middle of the previous window to the middle of this one
        x = [(flows[0] + pump["observed"]) / 2.0, (flows[1] + inlet["observed"]) / 2.0, 1.0]
        y = level["observed"] - prev
        resid = y - sum(t * xi for t, xi in zip(b.theta, x, strict=True))
        # prediction error, not just noise: x'Px is large where the fit has not seen such flows yet
        # (the first time a pump runs), so an unlearned regime is not called an anomaly
        xpx = sum(x[i] * b.cov[i][j] * x[j] for i in range(3) for j in range(3))
        scale = max(b.spread * MAD_TO_SIGMA, rule.min_scale / 10.0, 1e-6) * math.sqrt(1.0 + xpx)
        z = resid / scale
        warm = b.count >= rule.warmup_windows * 3
        # learn, except from the evidence of an anomaly (so a failure is not learned as normal)
        if not (warm and abs(z) >= rule.balance_z):
            _rls_update(b, x, resid, scale, warm, rule.halflife_windows)
        b.count += 1
        if not warm:
            return
        fam = self.family_and_locus("tank_level_m", level["key_id"])
        if abs(z) >= w.config.alerts.keep_z:
            w.alive.add(fam)
        if abs(z) < rule.balance_z:
            return
        note = (
            f"tank level moved {y * 100:+.1f} cm in a window where pump and inlet flows imply "
            f"{(y - resid) * 100:+.1f} cm ({z:+.1f} sd)"
        )
        v0 = verdict(
            level["key_id"],
            "tank_level_m",
            (level["window_start"], w.window_end),
            observed=level["observed"],
            expected=prev + y - resid,
            z=z,
            threshold=rule.balance_z,
            detector="balance-v1",
            severity="critical" if abs(z) >= 2 * rule.balance_z else "warning",
            note=note,
        )
        w.publish(anomaly(self.domain, v0), fam, v0)


def _rls_update(
    b: TankBalance, x: list[float], resid: float, scale: float, warm: bool, halflife: float
) -> None:
    """One recursive least squares step of the tank balance, and the residuals' spread."""
    p = b.cov
    px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
    denom = RLS_LAMBDA + sum(x[i] * px[i] for i in range(3))
    k = [v / denom for v in px]
    b.theta = [b.theta[i] + k[i] * resid for i in range(3)]
    b.cov = [[(p[i][j] - k[i] * px[j]) / RLS_LAMBDA for j in range(3)] for i in range(3)]
    a = max(1.0 / halflife, 1.0 / (b.count + 1))
    d = min(abs(resid), CLIP * scale) if warm else abs(resid)
    b.spread = b.spread + a * (d - b.spread)
