"""Grid: each meter's P against V x I x PF, the grid's one frequency, and a feeder's share of its bus.

Why these: a meter's four channels obey one law (P = k V I PF), so a channel
drifting against the others is the meter's fault; a synchronous grid has one
frequency, so a meter alone off it is a metering fault, not a grid event;
and a bus carries the sum of its feeders (Kirchhoff), so a feeder taking a
growing share of it is an overload in the making, whatever the daily curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citystream.catalog import GRID
from citystream.detection.evidence import Family, WindowPass, anomaly, verdict
from citystream.detection.metric import OK
from citystream.detection.relations.base import (
    BaseRelations,
    Ignored,
    neighbour_drift,
    place_of,
    relation_drift,
)

_METER_CHANNELS = ("active_power_kw", "voltage_v", "current_a", "power_factor")


@dataclass(frozen=True)
class GridRelations(BaseRelations):
    """Meters ``grid-{substation}-f{feeder}-{phase}`` and buses ``grid-{substation}-bus``."""

    domain: str = GRID.name

    def family_and_locus(self, metric: str, key_id: str) -> Family:
        """Frequency is one number for the whole synchronous grid, so all meters agreeing on it
        are one event; other electrical quantities move together per substation (a sag, an
        overload behind its bus)."""
        if metric.startswith("frequency"):
            return "frequency", "grid"
        return "electrical", f"grid-{place_of(key_id)}"

    def neighbours(self, a: str, b: str) -> bool:
        """Meters of one feeder (``grid-ss01-f5-a`` .. ``-c``): its phases share load and voltage drop."""
        pa, pb = a.split("-"), b.split("-")
        return len(pa) == len(pb) == 4 and pa[:3] == pb[:3]

    def kind(self, family: str, evidence: Sequence[Mapping[str, Any]]) -> str:
        if family == "frequency":
            return "frequency_excursion"
        metrics = {(a["metric"], a["z"] > 0) for a in evidence}
        if ("voltage_v", False) in metrics:
            return "voltage_sag"
        if ("voltage_v", True) in metrics:
            return "voltage_swell"
        if ("current_a", True) in metrics or ("active_power_kw", True) in metrics:
            return "overload"
        return "electrical_anomaly"

    def check_sensors(self, w: WindowPass, drifting: dict[str, str]) -> Ignored:
        """Power law and frequency first (they name the fault best), then drift against the feeder."""
        self._power_relation(w, drifting)
        ignored = self._frequency_agreement(w, drifting)
        neighbour_drift(w, self, drifting)
        return ignored

    def check_place(self, w: WindowPass) -> None:
        self._feeder_share(w)

    def _power_relation(self, w: WindowPass, drifting: dict[str, str]) -> None:
        """A meter's active power against V x I x PF from the same meter.

        Why: the four channels are one physical law (P = k V I PF, k set by
        the wiring and learned), so a voltage or current channel that drifts
        shows as a residual long before it leaves any operating band - and
        feeder events (sags, overloads, imbalance) move all four together and
        leave it alone. Window means of a product are not the product of the
        means when the channels swing within the window; the swing (from
        min/max) bounds that error and is added to the window's variance.
        """
        r = w.config.rule(self.domain, "active_power_kw")
        if r is None or r.relation_tolerance <= 0:
            return
        rel = relation_drift(r)
        states = w.st.relations
        for sid in sorted(w.by_sensor):
            by_metric = {v["metric"]: v for v in w.by_sensor[sid]}
            vs = [by_metric.get(m) for m in _METER_CHANNELS]
            if any(v is None or v["health"] != OK or v["observed"] is None for v in vs):
                continue
            p, volt, amp, pf = (v["observed"] for v in vs)  # type: ignore[index]
            if min(p, volt, amp, pf) <= 0:
                continue
            swing = [
                (v.get("max", v["observed"]) - v.get("min", v["observed"])) / v["observed"]  # type: ignore[union-attr]
                for v in vs[1:]
            ]
            bound = (swing[0] * swing[1] + swing[0] * swing[2] + swing[1] * swing[2]) / 4.0
            key = f"{sid}|power"
            t = int(vs[0]["window_end"]) // w.config.window_ms  # type: ignore[index]
            ds, res = rel.step(
                states.get(key) or rel.init(), t, math.log(p * 1000.0 / (volt * amp * pf)), bound**2
            )
            states[key] = ds
            if res is not None and res.flagged:
                drifting[sid] = (
                    f"active power {100.0 * (math.exp(res.bias) - 1.0):+.2f} % off V x I x PF "
                    f"(P {p:.4g} kW, V {volt:.4g} V, I {amp:.4g} A, PF {pf:.3g})"
                )

    def _frequency_agreement(self, w: WindowPass, drifting: dict[str, str]) -> Ignored:
        """Each meter's frequency against the median of all of them: a synchronous grid has one.

        Why: a frequency excursion is the whole grid's; one meter reading
        50.3 Hz while the others read 50.0 has a metering fault (or has
        islanded). Its frequency is no evidence of a grid event in that
        window, and if it persists the meter is flagged. Needs three meters
        to vote.
        """
        r = w.config.rule(self.domain, "frequency_hz")
        if r is None or r.relation_tolerance <= 0:
            return set()
        freq = {
            sid: v
            for sid, vs in w.by_sensor.items()
            for v in vs
            if v["metric"] == "frequency_hz" and v["health"] == OK and v["observed"] is not None
        }
        if len(freq) < 3:
            return set()
        values = sorted(v["observed"] for v in freq.values())
        mid = len(values) // 2
        med = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
        rel = relation_drift(r)
        states = w.st.relations
        ignored: Ignored = set()
        for sid in sorted(freq):
            v = freq[sid]
            off = v["observed"] - med
            if abs(off) > r.relation_tolerance:
                ignored.add((sid, "frequency_hz"))
            key = f"{sid}|frequency"
            ds, res = rel.step(states.get(key) or rel.init(), int(v["window_end"]) // w.config.window_ms, off)
            states[key] = ds
            if res is not None and res.flagged and sid not in drifting:
                drifting[sid] = (
                    f"frequency_hz reads {res.bias * 1000:+.0f} mHz against the grid ({len(freq)} meters)"
                )
        return ignored

    def _feeder_share(self, w: WindowPass) -> None:
        """A feeder phase's share of its substation's bus current (Kirchhoff: the bus carries the sum).

        Why the share and not the current: every feeder follows the city's
        daily load curve, so a feeder's own current climbs for hours every
        evening and a level model lags it; its share of the bus moves only
        as its customers' mix differs from the rest (slowly, learned with a
        short memory). An overload - or one phase taking another's load -
        raises the share by a third within minutes. Evidence for the
        substation's electrical family; a share that falls is the other side
        of someone else's event and is not reported.
        """
        r = w.config.rule(self.domain, "current_a")
        if r is None or r.relation_tolerance <= 0:
            return
        cur: dict[str, Mapping[str, Any]] = {}
        for sid in sorted(w.by_sensor):
            if not w.settled(sid):
                continue
            for v in w.by_sensor[sid]:
                if v["metric"] == "current_a" and v["health"] == OK and v["observed"] and v["observed"] > 0:
                    cur[sid] = v
        rel = relation_drift(r)
        states = w.st.relations
        for sid in sorted(cur):
            parts = sid.split("-")
            bus = cur.get(f"{parts[0]}-{parts[1]}-bus") if len(parts) == 4 else None
            if bus is None:
                continue
            v = cur[sid]
            key = f"{sid}|share"
            share = v["observed"] / bus["observed"]
            ds, res = rel.step(states.get(key) or rel.init(), w.t, math.log(share))
            states[key] = ds
            if res is None or not res.flagged or res.bias <= 0:
                continue
            fam = self.family_and_locus("current_a", sid)
            w.alive.add(fam)
            pct = 100.0 * (math.exp(res.bias) - 1.0)
            note = (
                f"current_a {v['observed']:.4g} A is {100.0 * share:.1f} % of its substation's bus, "
                f"{pct:+.0f} % on its usual share ({res.z:+.1f} sd)"
            )
            v0 = verdict(
                sid,
                "current_a",
                (v["window_start"], w.window_end),
                observed=v["observed"],
                expected=bus["observed"] * math.exp(ds["c"]),
                z=res.z,
                threshold=rel.k,
                detector="share-v1",
                severity="critical" if res.bias >= 2 * rel.tolerance else "warning",
                note=note,
            )
            w.publish(anomaly(self.domain, v0), fam, v0)
