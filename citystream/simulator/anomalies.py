"""Injected anomalies with ground truth: what happened, where, from when to when.

Why planned up front: a label must name the affected sensors and the whole
interval before the first affected reading is produced (detectors are scored
against it), and planning from its own random stream keeps the readings of a
seed stable when only the anomaly rate changes.

Each anomaly edits generator *drivers* (cause: demand, leak flow, pump
command, load, frequency) or *outputs* (sensor faults: flatline, spike,
drift) only for ticks in ``[onset, end)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from citystream.simulator.model import City, DomainModel

MINUTE_MS = 60_000

#: Kinds per department, in the order a run cycles through them.
KINDS: dict[str, tuple[str, ...]] = {
    "traffic": ("incident", "stuck_sensor", "spike", "drift"),
    "water": ("leak", "pump_failure", "contamination", "tank_overflow", "stuck_sensor", "spike", "drift"),
    "grid": (
        "voltage_sag",
        "voltage_swell",
        "frequency_excursion",
        "feeder_overload",
        "phase_imbalance",
        "stuck_sensor",
        "spike",
        "drift",
    ),
}

#: Typical length of each kind, minutes (min, max); shortened to fit short runs.
_LENGTH_MIN = {
    "incident": (15, 40),
    "stuck_sensor": (10, 30),
    "spike": (0, 0),  # 1-3 readings, see plan
    "drift": (30, 90),
    "leak": (30, 120),
    "pump_failure": (20, 60),
    "contamination": (15, 45),
    "tank_overflow": (40, 90),
    "voltage_sag": (1, 4),
    "voltage_swell": (1, 5),
    "frequency_excursion": (2, 8),
    "feeder_overload": (20, 60),
    "phase_imbalance": (20, 60),
}

_DESCRIPTION = {
    "incident": "road incident: speed collapse and occupancy rise, queue spreading upstream",
    "stuck_sensor": "sensor stuck: every value flat-lines at its last reading",
    "spike": "sensor spike: implausible short burst",
    "drift": "sensor drift: slowly growing calibration bias",
    "leak": "leak in a district-metered area: inlet flow rises, pressures fall",
    "pump_failure": "pump failure: motor runs but delivers almost no flow, tank drains",
    "contamination": "contamination: turbidity up, free chlorine down",
    "tank_overflow": "tank overflow: level control failed, tank fills past its alarm level",
    "voltage_sag": "voltage sag at a substation",
    "voltage_swell": "voltage swell at a substation",
    "frequency_excursion": "grid-wide frequency excursion",
    "feeder_overload": "feeder overload: current above rating, voltage drop",
    "phase_imbalance": "phase imbalance on a feeder",
}


@dataclass
class Anomaly:
    """One injected anomaly; ``sensors`` are indices into its domain's sensor columns."""

    label_id: str
    domain: str
    kind: str
    sensors: np.ndarray
    onset_ms: np.ndarray  # per affected sensor (a queue reaches upstream detectors later)
    start_ms: int
    end_ms: int
    severity: float
    target: int = -1  # DMA / feeder / substation / road index where the kind needs one
    params: dict[str, Any] = field(default_factory=dict)
    frozen: dict[str, np.ndarray] = field(default_factory=dict)

    def label(self, dm: DomainModel) -> dict[str, Any]:
        """Ground truth as a ``citystream.Label`` record (labels topic and JSONL file alike)."""
        sensor_ids = sorted(dm.sensor_ids[i] for i in self.sensors)
        zones = sorted({dm.zone_ids[i] for i in self.sensors})
        return {
            "label_id": self.label_id,
            "domain": self.domain,
            "kind": self.kind,
            "sensor_ids": sensor_ids,
            "start_time": int(self.start_ms),
            "end_time": int(self.end_ms),
            "source": "simulator",
            "details": (
                f"{_DESCRIPTION[self.kind]}; severity {self.severity:.2f}; zones {', '.join(zones)}; "
                f"{_iso(self.start_ms)} to {_iso(self.end_ms)}"
            ),
        }

    def active(self, ticks: np.ndarray) -> np.ndarray:
        """(K, m) mask: tick k affects sensor j of this anomaly."""
        return (ticks[:, None] >= self.onset_ms[None, :]) & (ticks[:, None] < self.end_ms)

    def progress(self, ticks: np.ndarray) -> np.ndarray:
        """(K,) share of the anomaly elapsed, 0 at start and 1 at end (for ramps and drifts)."""
        span = max(1, self.end_ms - self.start_ms)
        return np.clip((ticks - self.start_ms) / span, 0.0, 1.0)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def plan(
    city: City,
    start_ms: int,
    end_ms: int,
    dt_ms: int,
    per_hour: float,
    rng: np.random.Generator,
    label_prefix: str = "sim",
) -> list[Anomaly]:
    """The anomalies of a run, ``per_hour`` per domain per simulated hour (at least one if > 0)."""
    duration = end_ms - start_ms
    if per_hour <= 0 or duration < 4 * dt_ms:
        return []
    out: list[Anomaly] = []
    for domain, dm in city.domains.items():
        count = max(1, round(per_hour * duration / 3_600_000))
        kinds = list(KINDS[domain])
        rng.shuffle(kinds)
        for n in range(count):
            kind = kinds[n % len(kinds)]
            anomaly = _make(
                domain, kind, dm, start_ms, end_ms, dt_ms, rng, f"{label_prefix}-{domain}-{n + 1:03d}"
            )
            if anomaly is None:  # the city lacks what this kind needs (e.g. no tank): a sensor fault instead
                anomaly = _make(
                    domain,
                    "stuck_sensor",
                    dm,
                    start_ms,
                    end_ms,
                    dt_ms,
                    rng,
                    f"{label_prefix}-{domain}-{n + 1:03d}",
                )
            if anomaly is not None:
                out.append(anomaly)
    out.sort(key=lambda a: (a.start_ms, a.label_id))
    return out


def _window(kind: str, start_ms: int, end_ms: int, dt_ms: int, rng: np.random.Generator) -> tuple[int, int]:
    """Start and end aligned to ticks, inside the middle of the run."""
    duration = end_ms - start_ms
    if kind == "spike":
        length = int(rng.integers(1, 4)) * dt_ms
    else:
        lo, hi = _LENGTH_MIN[kind]
        length = int(rng.uniform(lo, hi) * MINUTE_MS)
        length = min(length, int(0.4 * duration))
        length = max(length, 2 * dt_ms)
    earliest = start_ms + int(0.1 * duration)
    latest = max(earliest, end_ms - length - dt_ms)
    begin = int(rng.integers(earliest, latest + 1))
    begin = start_ms + math.ceil((begin - start_ms) / dt_ms) * dt_ms
    return begin, begin + length


def _make(
    domain: str,
    kind: str,
    dm: DomainModel,
    start_ms: int,
    end_ms: int,
    dt_ms: int,
    rng: np.random.Generator,
    label_id: str,
) -> Anomaly | None:
    n = len(dm)
    if n == 0:
        return None
    t0, t1 = _window(kind, start_ms, end_ms, dt_ms, rng)
    severity = float(rng.uniform(0.5, 1.0))

    def single(candidates: np.ndarray | None = None) -> Anomaly | None:
        pool = np.arange(n) if candidates is None else candidates
        if pool.size == 0:
            return None
        i = int(rng.choice(pool))
        return Anomaly(label_id, domain, kind, np.array([i]), np.array([t0]), t0, t1, severity)

    if kind in ("stuck_sensor", "spike", "drift"):
        if domain == "water":
            types = np.asarray(dm.attrs["sensor_type"])
            allowed = {
                "stuck_sensor": None,
                "spike": ("flow", "pressure"),
                "drift": ("pressure", "level", "quality"),
            }
            pool = np.arange(n) if allowed[kind] is None else np.flatnonzero(np.isin(types, allowed[kind]))
            return single(pool)
        return single()

    if domain == "traffic" and kind == "incident":
        return _incident(dm, t0, t1, dt_ms, severity, rng, label_id)

    if domain == "water":
        return _water_event(dm, kind, t0, t1, severity, rng, label_id)
    if domain == "grid":
        return _grid_event(dm, kind, t0, t1, severity, rng, label_id)
    raise ValueError(f"unknown anomaly kind {domain}/{kind}")


def _water_event(
    dm: DomainModel, kind: str, t0: int, t1: int, severity: float, rng: np.random.Generator, label_id: str
) -> Anomaly | None:
    """A network event of one DMA: every sensor of the types it shows on is affected."""
    domain = "water"
    types = np.asarray(dm.attrs["sensor_type"])
    dma_of = dm.column("dma_index")
    dmas = dm.extra["dmas"]
    need = {
        "leak": ("flow", "pressure"),
        "pump_failure": ("pump", "level"),
        "contamination": ("quality",),
        "tank_overflow": ("pump", "level"),
    }[kind]
    ok = [d for d in range(len(dmas)) if all(((dma_of == d) & (types == t)).any() for t in need)]
    if not ok:
        return None
    d = int(rng.choice(ok))
    # the tank's level feeds the DMA's pressures, so tank incidents show there too
    shows = (*need, "pressure") if kind in ("pump_failure", "tank_overflow") else need
    sensors = np.flatnonzero((dma_of == d) & np.isin(types, shows))
    a = Anomaly(label_id, domain, kind, sensors, np.full(sensors.size, t0), t0, t1, severity, target=d)
    if kind == "leak":
        a.params["leak_share"] = 0.15 + 0.25 * severity
    elif kind == "contamination":
        a.params["turbidity_ntu"] = 3.0 + 6.0 * severity
        a.params["chlorine_factor"] = 0.45 - 0.3 * severity
    return a


def _grid_event(
    dm: DomainModel, kind: str, t0: int, t1: int, severity: float, rng: np.random.Generator, label_id: str
) -> Anomaly | None:
    """A grid event of a substation, a feeder or the whole system (frequency)."""
    domain = "grid"
    n = len(dm)
    feeders = dm.extra["feeders"]
    ss_of = dm.column("substation_index")
    feeder_of = dm.column("feeder_index")
    if kind in ("voltage_sag", "voltage_swell"):
        s = int(rng.integers(0, len(dm.extra["substations"])))
        sensors = np.flatnonzero(ss_of == s)
        a = Anomaly(label_id, domain, kind, sensors, np.full(sensors.size, t0), t0, t1, severity, target=s)
        a.params["factor"] = (
            (1 - (0.1 + 0.15 * severity)) if kind == "voltage_sag" else 1 + 0.06 + 0.08 * severity
        )
        return a
    if kind == "frequency_excursion":
        sensors = np.arange(n)
        a = Anomaly(label_id, domain, kind, sensors, np.full(n, t0), t0, t1, severity)
        a.params["delta_hz"] = float(rng.choice([-1.0, 1.0])) * (0.2 + 0.4 * severity)
        return a
    candidates = [
        f for f, fd in enumerate(feeders) if len(fd["phases"]) >= (2 if kind == "phase_imbalance" else 1)
    ]
    if not candidates:
        return None
    f = int(rng.choice(candidates))
    sensors = np.flatnonzero(feeder_of == f)
    if kind == "feeder_overload":
        bus = np.flatnonzero((ss_of == ss_of[sensors[0]]) & (feeder_of < 0))
        sensors = np.concatenate([sensors, bus])
    a = Anomaly(label_id, domain, kind, sensors, np.full(sensors.size, t0), t0, t1, severity, target=f)
    a.params["factor"] = 1.5 + 0.5 * severity
    return a


def _incident(
    dm: DomainModel, t0: int, t1: int, dt_ms: int, severity: float, rng: np.random.Generator, label_id: str
) -> Anomaly:
    """Blocked station plus its queue: upstream stations join one by one, the next one downstream starves."""
    roads = dm.extra["roads"]
    road = roads[int(rng.integers(0, len(roads)))]
    sites = road["sites"]
    k = int(rng.integers(min(1, len(sites) - 1), len(sites)))
    by_site: dict[str, list[int]] = {}
    for i, s in enumerate(dm.site_ids):
        by_site.setdefault(s, []).append(i)
    hop_ms = max(dt_ms, min(4 * MINUTE_MS, (t1 - t0) // 5))
    hop_ms = (hop_ms // dt_ms) * dt_ms
    sensors: list[int] = []
    onsets: list[int] = []
    hops: list[int] = []
    for hop in range(0, 4):
        if k - hop < 0:
            break
        onset = t0 + hop * hop_ms
        if onset >= t1:
            break
        for i in by_site[sites[k - hop]]:
            sensors.append(i)
            onsets.append(onset)
            hops.append(hop)
    downstream = by_site[sites[k + 1]] if k + 1 < len(sites) else []
    for i in downstream:
        sensors.append(i)
        onsets.append(t0)
        hops.append(-1)
    a = Anomaly(
        label_id, "traffic", "incident", np.array(sensors), np.array(onsets, dtype=np.int64), t0, t1, severity
    )
    a.params["hops"] = np.array(hops)
    return a


# -- effects ----------------------------------------------------------------------------


def apply_drivers(anomalies: list[Anomaly], domain: str, ticks: np.ndarray, d: dict[str, np.ndarray]) -> None:
    """Edit the generator drivers in place for every anomaly active in these ticks."""
    for a in anomalies:
        if a.domain != domain or a.end_ms <= ticks[0] or a.start_ms > ticks[-1]:
            continue
        act = a.active(ticks)
        if not act.any():
            continue
        if a.kind == "incident":
            hops = a.params["hops"]
            target = np.where(hops >= 0, 1.1 + 0.25 * a.severity - 0.07 * np.maximum(hops, 0), 0.0)
            x = d["x"][:, a.sensors]
            queued = act & (hops >= 0)[None, :]
            d["x"][:, a.sensors] = np.where(queued, np.maximum(x, target[None, :]), x)
            starved = act & (hops < 0)[None, :]
            ff = d["flow_factor"][:, a.sensors]
            d["flow_factor"][:, a.sensors] = np.where(starved, ff * (0.55 - 0.3 * a.severity), ff)
        elif a.kind == "leak":
            on = act.any(axis=1)
            ramp = np.clip(a.progress(ticks) * 6.0, 0.0, 1.0)  # a burst reaches full flow early
            base = d["demand_lps"][:, a.target]
            d["leak_lps"][:, a.target] += np.where(on, a.params["leak_share"] * base.mean() * ramp, 0.0)
        elif a.kind == "pump_failure":
            on = act.any(axis=1)
            d["pump_force"][:, a.target] = np.where(on, 3, d["pump_force"][:, a.target])
        elif a.kind == "tank_overflow":
            on = act.any(axis=1)
            d["pump_force"][:, a.target] = np.where(on, 2, d["pump_force"][:, a.target])
        elif a.kind == "contamination":
            on = act.any(axis=1)
            ramp = np.clip(a.progress(ticks) * 4.0, 0.0, 1.0)
            d["turbidity_add"][:, a.target] += np.where(on, a.params["turbidity_ntu"] * ramp, 0.0)
            factor = 1.0 - (1.0 - a.params["chlorine_factor"]) * ramp
            d["chlorine_factor"][:, a.target] *= np.where(on, factor, 1.0)
        elif a.kind in ("voltage_sag", "voltage_swell"):
            d["voltage_factor"][:, a.sensors] = np.where(
                act, a.params["factor"], d["voltage_factor"][:, a.sensors]
            )
        elif a.kind == "frequency_excursion":
            on = act.any(axis=1)
            p = a.progress(ticks)
            # fast drop to the nadir in the first fifth, slow recovery afterwards
            shape = np.where(p < 0.2, p / 0.2, 1.0 - (p - 0.2) / 0.8 * 0.9)
            d["frequency_hz"] += np.where(on, a.params["delta_hz"] * shape, 0.0)
        elif a.kind == "feeder_overload":
            on = act.any(axis=1)
            ramp = np.clip(a.progress(ticks) * 3.0, 0.0, 1.0)
            d["load_kw"][:, a.target] *= np.where(on, 1.0 + (a.params["factor"] - 1.0) * ramp, 1.0)
        elif a.kind == "phase_imbalance":
            pattern = np.array([a.params["factor"], 2.0 - a.params["factor"], 1.0])[: a.sensors.size]
            pf = d["phase_factor"][:, a.sensors]
            d["phase_factor"][:, a.sensors] = np.where(act, pf * pattern[None, :], pf)


#: Field a generic sensor fault acts on.
def _primary(domain: str, dm: DomainModel, i: int, kind: str) -> str:
    if domain == "traffic":
        return "occupancy_pct" if kind == "spike" else "mean_speed_kmh"
    if domain == "water":
        return {
            "flow": "flow_lps",
            "pump": "flow_lps",
            "pressure": "pressure_bar",
            "level": "tank_level_m",
            "quality": "chlorine_mgl",
        }[dm.attrs["sensor_type"][i]]
    return "current_a" if kind == "spike" else "voltage_v"


def apply_outputs(
    anomalies: list[Anomaly], dm: DomainModel, ticks: np.ndarray, out: dict[str, np.ndarray]
) -> None:
    """Sensor faults (flatline, spike, drift) edit what the sensor reports, not the world."""
    for a in anomalies:
        if a.domain != dm.domain or a.kind not in ("stuck_sensor", "spike", "drift"):
            continue
        if a.end_ms <= ticks[0] or a.start_ms > ticks[-1]:
            continue
        act = a.active(ticks)[:, 0]
        if not act.any():
            continue
        i = int(a.sensors[0])
        rows = np.flatnonzero(act)
        if a.kind == "stuck_sensor":
            for name, col in out.items():
                if name not in a.frozen:
                    a.frozen[name] = col[rows[0], i].copy()
                col[rows, i] = a.frozen[name]
            continue
        name = _primary(a.domain, dm, i, a.kind)
        col = out[name]
        if a.kind == "spike":
            if name == "occupancy_pct":
                col[rows, i] = 85.0 + 10.0 * a.severity
                out["vehicle_count"][rows, i] = out["vehicle_count"][rows, i] * 3 + 25
            else:
                col[rows, i] = np.round(col[rows, i] * (2.5 + 2.0 * a.severity), 3)
        else:  # drift: bias grows linearly to 10-25 % (1.5-3 % for voltages, which are tightly regulated)
            scale = 0.03 if name == "voltage_v" else 0.25
            bias = 1.0 + scale * a.severity * a.progress(ticks[rows])
            col[rows, i] = np.round(col[rows, i] * bias, 3)
