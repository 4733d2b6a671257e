"""Stage 2: per place - sensor health, muting, physics across sensors and the alert lifecycle.

Why pure ``state in -> (state out, records out)``: the same code runs in
three places - the Flink detect job (``jobs/detect.py``, the state
checkpointed as ``GroupState.to_json``), the quality report on the seeded
simulator (``citystream evaluate``) and the unit tests - and must give
identical verdicts in all three, so a job restored from a checkpoint
continues exactly where it stopped.

``GroupEngine.step`` runs one key per alert group (a zone/DMA, or the whole
grid) and one window at a time:

1. decides each sensor's health from all its metrics together and from the
   physics of its place (a relation a single sensor breaks is that sensor's
   fault), and mutes unhealthy sensors - a broken sensor raises one health
   event and one ``sensor_fault`` alert, not a flood;
2. turns the healthy sensors' verdicts, the place's combined shift and the
   relations the world breaks into anomalies, grouped by family and place
   so one leak is one alert (``evidence``, ``relations``);
3. runs the alert lifecycle: open -> update -> resolve, with hysteresis, a
   quiet period and a cooldown (``lifecycle``).

What differs between departments - how ids name places, which physical
relations tie sensors together, what an incident is called - is the
domain's ``Relations`` object (``citystream.detection.relations``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citystream.detection.config import DetectionConfig
from citystream.detection.evidence import Records, WindowPass, anomaly
from citystream.detection.lifecycle import grow, resolve_quiet, track_health
from citystream.detection.metric import FLAT, OK, OUT_OF_RANGE
from citystream.detection.relations import (
    Ignored,
    Relations,
    coherent,
    family_and_locus,
    neighbours,
    relations_for,
)
from citystream.detection.state import GroupState

__all__ = ["GroupEngine", "GroupState", "family_and_locus", "neighbours"]


@dataclass(frozen=True)
class GroupEngine:
    """Sensor health, muting and the alert lifecycle for one alert group."""

    config: DetectionConfig

    @staticmethod
    def init() -> GroupState:
        return GroupState()

    def step(
        self, state: GroupState, domain: str, window_end: int, verdicts: Iterable[Mapping[str, Any]]
    ) -> tuple[GroupState, Records]:
        """Process one window's verdicts of this group; return (new state, records to emit).

        Records: ``anomalies`` (citystream.Anomaly), ``alerts`` (citystream.Alert)
        and ``health`` (citystream.SensorHealth) as plain dicts. ``state`` is
        not changed.
        """
        st = state.copy()
        st.window_end = window_end
        out: Records = {"anomalies": [], "alerts": [], "health": []}
        by_sensor: dict[str, list[Mapping[str, Any]]] = {}
        for v in verdicts:
            by_sensor.setdefault(v["key_id"], []).append(v)
        rel = relations_for(domain)
        w = WindowPass(self.config, domain, by_sensor, st, {}, set(), window_end, out)

        faults, ignored = self._sensor_health(w, rel)
        self._sensor_evidence(w, rel, ignored)
        coherent(w, rel)
        rel.check_place(w)
        for fam, ev in sorted(w.evidence.items()):
            grow(w, rel, fam, ev)
        for fam_s in sorted(faults.values()):
            if fam_s:
                w.alive.add(tuple(fam_s.split("|", 1)))  # type: ignore[arg-type]
                if fam_s in st.open:
                    st.open[fam_s].last_seen = window_end  # the fault is still seen
        resolve_quiet(st, self.config.alerts, self.config.window_ms, domain, w.alive, out)
        return st, out

    def _sensor_health(self, w: WindowPass, rel: Relations) -> tuple[dict[str, str], Ignored]:
        """Each sensor's status this window, from all its metrics and its place's physics.

        Returns (open fault incident per sensor, or "" while healthy; verdicts
        to ignore as evidence). A sensor that stopped reporting for
        ``silent_windows`` is "silent".
        """
        cfg, domain, window_end = self.config, w.domain, w.window_end
        drifting: dict[str, str] = {}
        ignored = rel.check_sensors(w, drifting)
        faults: dict[str, str] = {}
        for sid, vs in w.by_sensor.items():
            checked = [v for v in vs if (r := cfg.rule(domain, v["metric"])) is not None and r.stuck_windows]
            oor = [v for v in vs if v["health"] == OUT_OF_RANGE]
            if oor:
                status, detail = "out_of_range", oor[0]["note"]
            elif self._stuck(domain, checked):
                status, detail = "stuck", "; ".join(v["note"] for v in checked if v["health"] == FLAT)
            elif sid in drifting:
                status, detail = "drift", drifting[sid]
            else:
                status, detail = OK, ""
            faults[sid] = track_health(w, rel, sid, status, detail)
        wms = cfg.window_ms
        for sid, s in w.st.sensors.items():
            if sid in w.by_sensor or s.status == "silent":
                continue
            if window_end - s.seen >= cfg.alerts.silent_windows * wms:
                note = f"no aggregates for {(window_end - s.seen) // wms} windows"
                faults[sid] = track_health(w, rel, sid, "silent", note)
        return faults, ignored

    def _sensor_evidence(self, w: WindowPass, rel: Relations, ignored: Ignored) -> None:
        """The healthy sensors' own verdicts: anomalies to publish, evidence and live families.

        Muted sensors say nothing (their fault is one health event), and a
        verdict that disagrees with the physics of its place this window is
        not evidence.
        """
        keep_z = self.config.alerts.keep_z
        for sid, vs in w.by_sensor.items():
            if not w.healthy(sid):
                continue
            for v in vs:
                if (sid, v["metric"]) in ignored:
                    continue
                fam = rel.family_and_locus(v["metric"], sid)
                if v["anomalous"]:
                    w.publish(anomaly(w.domain, v), fam, v)
                if abs(v["z"]) >= keep_z:
                    w.alive.add(fam)

    def _stuck(self, domain: str, checked: Sequence[Mapping[str, Any]]) -> bool:
        """Every channel of the sensor frozen.

        Stage 1 calls a channel flat when a window repeats the previous one
        exactly (``stuck_windows``). Two shortcuts and one extension, all
        from the sensor's channels together: several live channels (speed
        and occupancy, voltage and current) each repeating one value in every
        reading of a window cannot be noise, so that is stuck at once; a
        count frozen at 0 next to an occupancy frozen at 1.7 % is frozen too
        (an empty road reads 0 %, not 1.7 %), but a lone live channel that
        repeated itself is weaker evidence, so that case needs one window more.
        """
        flat = [v for v in checked if v["health"] == FLAT]
        if flat and len(flat) == len(checked):
            return True
        frozen = [v for v in checked if (v.get("samples") or 0) >= 3 and v.get("min") == v.get("max")]
        if len(frozen) == len(checked) and sum(1 for v in frozen if v["observed"] != 0) >= 2:
            return True
        if not flat or not all(v["health"] == FLAT or v.get("zero_flat") for v in checked):
            return False
        need = [r.stuck_windows + 1 for v in flat if (r := self.config.rule(domain, v["metric"])) is not None]
        return all(v.get("flat_windows", 0) >= n for v, n in zip(flat, need, strict=True))
