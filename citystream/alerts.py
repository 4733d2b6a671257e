"""Detection config, per-key window detectors, sensor health and the alert lifecycle - all pure.

Why one module of pure functions: the same code runs in three places - the
Flink detect job (jobs/detect.py, state in keyed ValueState as JSON), the
quality report on the seeded simulator (``citystream evaluate``) and the unit
tests - and must give identical verdicts in all three. Everything here is
``state in -> (state out, records out)`` with plain-JSON state, so a job
restored from a checkpoint continues exactly where it stopped.

Two stages, because they are keyed differently:

1. ``MetricDetector.step`` - one key per (sensor, metric): a robust EWMA
   baseline judges each 1-minute window mean ("level"), the within-window
   excursion judges spikes ("peak"), operating bands judge from the first
   window ("rule"); flat-lining and impossible values are *health*, not
   anomalies, and stop the model from learning garbage.
2. ``GroupEngine.step`` - one key per alert group (a zone/DMA, or the whole
   grid): decides each sensor's health from all its metrics, mutes unhealthy
   sensors, turns the rest into Anomaly records and runs the alert lifecycle
   (open -> update -> resolve, with hysteresis, a quiet period and a
   cooldown), grouping related anomalies by family and place so one leak is
   one alert and a stuck sensor is one ``sensor_fault`` alert at most.

   The group sees every sensor of a place in the same window, so this is
   where physics is checked (``citystream.detect.physics`` holds the
   learned relations): a loop's speed against its own occupancy (the
   fundamental diagram), vehicles conserved between adjacent stations, a
   junction's pressure against its DMA's inlet flow and tank (head loss),
   the tank's level against its pump and inlet flows (mass balance), a
   pump's status against its flow, a meter's P against V x I x PF, every
   meter's frequency against the grid's, and a feeder's share of its bus
   current. A relation a single sensor breaks is that sensor's fault (a
   health event); one the world breaks is evidence of an event.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from citystream.detect.base import is_missing, tail_score
from citystream.detect.health import NeighbourDrift
from citystream.detect.physics import LinearDrift, LoopSpeedCheck, RelationDrift
from citystream.errors import UserError

#: Where the job and the report read their configuration by default.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "infra" / "detection.toml"

DETECTORS = ("level", "peak", "rule")
SEVERITIES = ("info", "warning", "critical")
#: 0.6745 * this = 1: turns a mean absolute deviation into a Gaussian sigma.
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)
#: Residuals are clipped at this many scales when they update a baseline, so an
#: anomaly is absorbed slowly instead of teaching the key that it is normal.
_CLIP = 3.0
#: Verdict health values coming out of stage 1.
OK, FLAT, OUT_OF_RANGE = "ok", "flat", "out_of_range"
#: Forgetting factor of the tank balance's recursive least squares (memory ~ 1 / (1 - lambda) windows).
_RLS_LAMBDA = 0.998
#: A road runs freely while every lane keeps this share of its learned free-flow speed.
_FREE_FLOW_SHARE = 0.85


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class MetricRule:
    """How one metric of one domain is judged (one ``[domain.X.metric.Y]`` table)."""

    name: str
    detectors: tuple[str, ...] = ("level", "peak")
    warmup_windows: int = 20
    halflife_windows: float = 30.0
    level_z: float = 7.0
    peak_z: float = 9.0
    min_scale: float = 0.0
    rel_scale: float = 0.002
    stuck_windows: int = 3
    zero_is_normal: bool = False
    skip_zero: bool = False
    zone_z: float = 0.0
    zone_min_sensors: int = 3
    drift_tolerance: float = 0.0
    drift_k: float = 5.0
    drift_halflife: float = 5.0
    drift_warmup: int = 120
    drift_min_count: float = 1.0
    balance_z: float = 0.0
    relation_tolerance: float = 0.0
    relation_k: float = 5.0
    relation_halflife: float = 3.0
    relation_warmup: int = 30
    relation_floor: float = 0.0
    relation_memory: float = 360.0
    low: float | None = None
    high: float | None = None
    rule_low: float | None = None
    rule_high: float | None = None

    @property
    def alpha(self) -> float:
        return 1.0 - 0.5 ** (1.0 / self.halflife_windows)


@dataclass(frozen=True)
class AlertPolicy:
    """Lifecycle settings shared by every group (the ``[alerts]`` table), in windows."""

    keep_z: float = 3.0
    quiet_windows: int = 3
    cooldown_windows: int = 15
    silent_windows: int = 5


@dataclass(frozen=True)
class DomainRules:
    name: str
    group: str  # "zone": one group per id field 2 (zone / DMA / substation); "domain": one group
    metrics: Mapping[str, MetricRule]


@dataclass(frozen=True)
class DetectionConfig:
    """The whole of infra/detection.toml, validated."""

    window_ms: int
    domains: Mapping[str, DomainRules]
    alerts: AlertPolicy = field(default_factory=AlertPolicy)

    def rule(self, domain: str, metric: str) -> MetricRule | None:
        """The rule for a metric, or None when the metric is not configured (not judged)."""
        d = self.domains.get(domain)
        return None if d is None else d.metrics.get(metric)

    def group_of(self, domain: str, key_id: str) -> str:
        """Alert group of a sensor: ids are ``{domain}-{zone|substation}-...`` as in the city model."""
        d = self.domains[domain]
        if d.group == "domain":
            return domain
        parts = key_id.split("-")
        return f"{domain}-{parts[1]}" if len(parts) > 1 else f"{domain}-{key_id}"


_METRIC_FIELDS = {f.name for f in fields(MetricRule)} - {"name"}
_POLICY_FIELDS = {f.name for f in fields(AlertPolicy)}


def _typed(where: str, key: str, value: Any, default: Any) -> Any:
    """Coerce one TOML value to the type of its default; reject what cannot be meant."""
    if key == "detectors":
        if not isinstance(value, list) or any(v not in DETECTORS for v in value):
            raise UserError(f"{where}: detectors must be a list drawn from {', '.join(DETECTORS)}")
        return tuple(value)
    if isinstance(default, bool) or key in ("zero_is_normal", "skip_zero"):
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{where}: {key} must be a number, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        if int(value) != value or value < 0:
            raise UserError(f"{where}: {key} must be a whole number >= 0")
        return int(value)
    return float(value)


def parse_config(data: Mapping[str, Any], source: str = "detection config") -> DetectionConfig:
    """Validate the parsed TOML; every error names the table and key at fault."""
    known_top = {"window_ms", "defaults", "alerts", "domain"}
    unknown = set(data) - known_top
    if unknown:
        raise UserError(f"{source}: unknown top-level keys {sorted(unknown)}")
    window_ms = data.get("window_ms", 60_000)
    if not isinstance(window_ms, int) or window_ms <= 0:
        raise UserError(f"{source}: window_ms must be a positive integer")
    base = MetricRule("")
    defaults: dict[str, Any] = {}
    for k, v in dict(data.get("defaults", {})).items():
        if k not in _METRIC_FIELDS:
            raise UserError(f"{source} [defaults]: unknown key {k!r}")
        defaults[k] = _typed(f"{source} [defaults]", k, v, getattr(base, k))
    policy_kw: dict[str, Any] = {}
    for k, v in dict(data.get("alerts", {})).items():
        if k not in _POLICY_FIELDS:
            raise UserError(f"{source} [alerts]: unknown key {k!r}")
        policy_kw[k] = _typed(f"{source} [alerts]", k, v, getattr(AlertPolicy(), k))
    domains: dict[str, DomainRules] = {}
    for dname, dtable in dict(data.get("domain", {})).items():
        where = f"{source} [domain.{dname}]"
        extra = set(dtable) - {"group", "metric"}
        if extra:
            raise UserError(f"{where}: unknown keys {sorted(extra)}")
        group = dtable.get("group", "zone")
        if group not in ("zone", "domain"):
            raise UserError(f"{where}: group must be 'zone' or 'domain'")
        metrics: dict[str, MetricRule] = {}
        for mname, mtable in dict(dtable.get("metric", {})).items():
            mwhere = f"{source} [domain.{dname}.metric.{mname}]"
            kw = dict(defaults)
            for k, v in dict(mtable).items():
                if k not in _METRIC_FIELDS:
                    raise UserError(f"{mwhere}: unknown key {k!r}")
                kw[k] = _typed(mwhere, k, v, getattr(base, k))
            rule = MetricRule(mname, **kw)
            if rule.halflife_windows <= 0 or rule.level_z <= 0 or rule.peak_z <= 0:
                raise UserError(f"{mwhere}: halflife_windows, level_z and peak_z must be positive")
            for lo, hi in (("low", "high"), ("rule_low", "rule_high")):
                a, b = getattr(rule, lo), getattr(rule, hi)
                if a is not None and b is not None and a >= b:
                    raise UserError(f"{mwhere}: {lo} must be below {hi}")
            if "rule" in rule.detectors and rule.rule_low is None and rule.rule_high is None:
                raise UserError(f"{mwhere}: the rule detector needs rule_low and/or rule_high")
            metrics[mname] = rule
        domains[dname] = DomainRules(dname, group, metrics)
    return DetectionConfig(window_ms, domains, AlertPolicy(**policy_kw))


def load_config(path: Path | str | None = None) -> DetectionConfig:
    """Read and validate a detection config file (default: infra/detection.toml)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise UserError(f"cannot read detection config {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"detection config {p} is not valid TOML: {exc}") from None
    return parse_config(data, str(p))


# --------------------------------------------------------------------------- stage 1: per (sensor, metric)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


@dataclass(frozen=True)
class MetricDetector:
    """Level, peak and rule detection plus flat/out-of-range health for one (sensor, metric)."""

    rule: MetricRule

    @staticmethod
    def init() -> dict[str, Any]:
        return {
            "n": 0,
            "m": None,
            "s": 0.0,
            "pm": 0.0,
            "ps": 0.0,
            "last": None,
            "flat": 0,
            "w": None,
            "rs": 0,
        }

    def ready(self, state: Mapping[str, Any]) -> bool:
        return state["n"] >= self.rule.warmup_windows

    def step(self, state: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Fold one WindowAggregate row in; return (new state, verdict).

        The verdict always comes back (stage 2 needs every window for the
        hysteresis and the health decision); ``z`` is the strongest signed
        evidence, ``anomalous`` says whether a detector's threshold was met.
        Rows for a window at or before the last one seen (late revisions)
        are ignored: re-scoring a window would count the same evidence twice.
        """
        r = self.rule
        w_end = int(row["window_end"])
        mean, lo, hi = row["mean"], row["min"], row["max"]
        verdict: dict[str, Any] = {
            "key_id": row["key_id"],
            "metric": r.name,
            "window_start": int(row["window_start"]),
            "window_end": w_end,
            "observed": mean,
            "min": lo,
            "max": hi,
            "samples": row.get("samples"),
            "expected": None,
            "z": 0.0,
            "lz": 0.0,
            "score": 0.0,
            "detector": "",
            "anomalous": False,
            "severity": "info",
            "health": OK,
            "note": "",
        }
        if state["w"] is not None and w_end <= state["w"]:
            verdict["note"] = "late revision ignored"
            return dict(state), verdict
        new = dict(state)
        new["w"] = w_end
        if is_missing(mean) or is_missing(lo) or is_missing(hi):
            verdict["note"] = "no value"
            return new, verdict
        # -- health: impossible values and flat-lining are the sensor's problem, not the world's
        if (r.low is not None and lo < r.low) or (r.high is not None and hi > r.high):
            verdict["health"] = OUT_OF_RANGE
            verdict["note"] = (
                f"{r.name} {_fmt(lo)}..{_fmt(hi)} outside the instrument range [{r.low}, {r.high}]"
            )
            return new, verdict
        if r.skip_zero and lo <= 0.0:
            verdict["note"] = f"{r.name} at or through zero (equipment off): not judged"
            new["flat"] = 0
            return new, verdict
        tol = 1e-9 * max(1.0, abs(mean))
        flat_now = hi - lo <= tol and state["last"] is not None and abs(mean - state["last"]) <= tol
        if r.zero_is_normal and abs(mean) <= tol:
            # an empty road reads 0 for hours: not stuck by itself, but no evidence against a
            # sensor whose other channels froze (stage 2 decides from all of them)
            new["zf"] = state.get("zf", 0) + 1 if flat_now else 0
            verdict["zero_flat"] = bool(r.stuck_windows) and new["zf"] + 1 >= r.stuck_windows
            flat_now = False
        else:
            new.pop("zf", None)
        new["flat"] = state["flat"] + 1 if flat_now else 0
        new["last"] = mean
        if r.stuck_windows and new["flat"] + 1 >= r.stuck_windows:
            verdict["health"] = FLAT
            verdict["flat_windows"] = new["flat"] + 1
            verdict["note"] = f"{r.name} flat at {_fmt(mean)} for {new['flat'] + 1} windows"
            return new, verdict
        recovered = r.stuck_windows and state["flat"] + 1 >= r.stuck_windows
        # back from a flat spell: the first windows mix frozen and live values, so the baseline is
        # re-seeded for as many windows as it took to call the sensor stuck
        new["rs"] = r.stuck_windows if recovered else max(0, state.get("rs", 0) - 1)
        # -- models: score against the state *before* this window, then learn
        best_z, best_det, expected = 0.0, "", None
        m = state["m"]
        n = state["n"]
        if m is None or recovered or state.get("rs", 0) > 0:
            # first window, or back from a flat spell: the old baseline is stale, re-seed it
            new.update({"m": mean, "n": n + 1 if m is None else n})
            if m is None:
                new["pm"] = max(hi - mean, mean - lo)
        else:
            scale = max(state["s"], r.min_scale, r.rel_scale * abs(m), 1e-12)
            resid = mean - m
            z = resid / scale
            exc = max(hi - mean, mean - lo)
            pscale = max(state["ps"] * _MAD_TO_SIGMA, r.min_scale, r.rel_scale * abs(m), 1e-12)
            pz = (exc - state["pm"]) / pscale
            if self.ready(state) and "level" in r.detectors:
                verdict["lz"] = z
            if self.ready(state):
                if "level" in r.detectors and abs(z) > abs(best_z) and abs(z) >= r.level_z:
                    best_z, best_det, expected = z, "level-v1", m
                if "peak" in r.detectors and pz >= r.peak_z and pz > abs(best_z):
                    best_z, best_det, expected = pz if (hi - mean) >= (mean - lo) else -pz, "peak-v1", m
                if not best_det and "level" in r.detectors:
                    best_z, expected = z, m  # below threshold: still evidence for hysteresis
            a = max(r.alpha, 1.0 / (n + 1))
            warm = n >= r.warmup_windows
            d = max(-_CLIP * scale, min(_CLIP * scale, resid)) if warm else resid
            pd = exc - state["pm"]
            if warm:
                pd = max(-_CLIP * pscale, min(_CLIP * pscale, pd))
            new.update(
                {
                    "n": n + 1,
                    "m": m + a * d,
                    "s": state["s"] + a * (_MAD_TO_SIGMA * abs(d) - state["s"]),
                    "pm": state["pm"] + a * pd,
                    "ps": state["ps"] + a * (abs(pd) - state["ps"]),
                }
            )
        if "rule" in r.detectors:
            if r.rule_low is not None and mean < r.rule_low:
                best_z, best_det, expected = -math.inf, "rule-v1", r.rule_low
            elif r.rule_high is not None and mean > r.rule_high:
                best_z, best_det, expected = math.inf, "rule-v1", r.rule_high
        verdict["expected"] = expected
        verdict["z"] = _finite(best_z)
        if best_det:
            threshold = r.peak_z if best_det == "peak-v1" else r.level_z
            verdict["detector"] = best_det
            verdict["anomalous"] = True
            verdict["score"] = 1.0 if math.isinf(best_z) else tail_score(3.0 * best_z / threshold)
            verdict["severity"] = "critical" if abs(best_z) >= 2 * threshold else "warning"
            direction = "above" if best_z > 0 else "below"
            if best_det == "rule-v1":
                verdict["note"] = f"{r.name} {_fmt(mean)} {direction} its operating limit {_fmt(expected)}"
            elif best_det == "peak-v1":
                verdict["note"] = (
                    f"{r.name} swung to {_fmt(hi if best_z > 0 else lo)} within the window "
                    f"({abs(best_z):.0f} x its usual excursion)"
                )
            else:
                verdict["note"] = f"{r.name} {_fmt(mean)} {direction} expected {_fmt(m)} ({best_z:+.1f} sd)"
        return new, verdict


def _finite(z: float) -> float:
    """JSON (and Avro) cannot carry infinities; a rule breach is reported as a huge z."""
    return math.copysign(1e9, z) if math.isinf(z) else z


# --------------------------------------------------------------------------- stage 2: per alert group


def family_and_locus(domain: str, metric: str, key_id: str) -> tuple[str, str]:
    """Which anomalies belong to one incident: same domain, family and place.

    Why these: frequency is one number for the whole synchronous grid, so
    all meters agreeing on it are one event; other electrical quantities
    move together per substation (a sag, an overload behind its bus); water
    anomalies of one DMA share a cause (a leak shows on the inlet flow and
    every pressure gauge); traffic anomalies of one zone's roads are one
    queue. The place comes from the sensor id, which the city model builds
    as ``{domain}-{zone or substation}-...``.
    """
    parts = key_id.split("-")
    place = parts[1] if len(parts) > 1 else key_id
    if domain == "grid":
        if metric.startswith("frequency"):
            return "frequency", "grid"
        return "electrical", f"grid-{place}"
    return domain, f"{domain}-{place}"


def neighbours(domain: str, a: str, b: str) -> bool:
    """Do sensors ``a`` and ``b`` see the same world (so a fault shows as a change of their ratio)?

    From the city model's layout, encoded in its ids: grid meters of one
    feeder (``grid-ss01-f5-a`` .. ``-c``; its phases share load and voltage
    drop); water sensors of one DMA (``water-z03-...``); traffic loops of one
    zone at the same or an adjacent station (``traffic-z03-s006-l1``: stations
    are numbered along the road, so +-1 is up- or downstream, and the other
    lanes of a station share its queue).
    """
    pa, pb = a.split("-"), b.split("-")
    if domain == "grid":
        return len(pa) == len(pb) == 4 and pa[:3] == pb[:3]
    if domain == "traffic":
        if len(pa) < 3 or len(pb) < 3 or pa[1] != pb[1]:
            return False
        try:
            return abs(int(pa[2].lstrip("s")) - int(pb[2].lstrip("s"))) <= 1
        except ValueError:
            return False
    return len(pa) > 1 and len(pb) > 1 and pa[1] == pb[1]


def _kind(domain: str, family: str, evidence: Sequence[Mapping[str, Any]]) -> str:
    """A human name for an incident from the anomalies in it (the grouping does not depend on it)."""
    metrics = {(a["metric"], a["z"] > 0) for a in evidence}
    if family == "frequency":
        return "frequency_excursion"
    if domain == "grid":
        if ("voltage_v", False) in metrics:
            return "voltage_sag"
        if ("voltage_v", True) in metrics:
            return "voltage_swell"
        if ("current_a", True) in metrics or ("active_power_kw", True) in metrics:
            return "overload"
        return "electrical_anomaly"
    if domain == "water":
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
    if ("mean_speed_kmh", False) in metrics or ("occupancy_pct", True) in metrics:
        return "congestion"
    return "traffic_anomaly"


def _verdict(
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
    """A group check's verdict: what ``GroupEngine._anomaly`` publishes and the evidence lists hold.

    Why one builder: the relation, balance and zone checks must score alike
    (``z`` at ``threshold`` scores as a per-metric verdict at its own
    threshold does), or alerts would rank them differently by accident.
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
class _Pass:
    """One window of the group stage, as every relation check reads and extends it.

    Why one object: the checks (zone coherence, tank balance, pump delivery,
    flow conservation, feeder share) all read the window's verdicts by sensor
    and the engine state, and add evidence, live families and anomalies to the
    same collections; ``GroupEngine.step`` grows incidents from them after.
    """

    domain: str
    by_sensor: Mapping[str, Sequence[Mapping[str, Any]]]
    st: dict[str, Any]
    evidence: dict[tuple[str, str], list[Mapping[str, Any]]]
    alive: set[tuple[str, str]]
    window_end: int
    out: dict[str, list[dict[str, Any]]]

    def publish(self, anomaly: dict[str, Any], family: tuple[str, str], verdict: Mapping[str, Any]) -> None:
        """An anomaly to publish, and its verdict as evidence for the family's incident."""
        self.out["anomalies"].append(anomaly)
        self.evidence.setdefault(family, []).append(verdict)


def _max_severity(a: str, b: str) -> str:
    return a if SEVERITIES.index(a) >= SEVERITIES.index(b) else b


@dataclass(frozen=True)
class GroupEngine:
    """Sensor health, muting and the alert lifecycle for one alert group."""

    config: DetectionConfig

    @staticmethod
    def init() -> dict[str, Any]:
        return {"sensors": {}, "open": {}, "closed": {}, "drift": {}, "w": None}

    def step(
        self, state: Mapping[str, Any], domain: str, window_end: int, verdicts: Iterable[Mapping[str, Any]]
    ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
        """Process one window's verdicts of this group; return (new state, records to emit).

        Records: ``anomalies`` (citystream.Anomaly), ``alerts`` (citystream.Alert)
        and ``health`` (citystream.SensorHealth) as plain dicts.
        """
        cfg = self.config
        pol = cfg.alerts
        wms = cfg.window_ms
        out: dict[str, list[dict[str, Any]]] = {"anomalies": [], "alerts": [], "health": []}
        st: dict[str, Any] = {
            "sensors": {k: dict(v) for k, v in state["sensors"].items()},
            "open": {k: {**v, "keys": list(v["keys"])} for k, v in state["open"].items()},
            "closed": dict(state["closed"]),
            "drift": dict(state.get("drift", {})),
            "balance": dict(state.get("balance", {})),
            "w": window_end,
        }
        by_sensor: dict[str, list[Mapping[str, Any]]] = {}
        for v in verdicts:
            by_sensor.setdefault(v["key_id"], []).append(v)

        # -- 1. health per sensor, from all its metrics together (and against its neighbours)
        drifting, ignored = self._drift(domain, by_sensor, st)
        faults: dict[str, str] = {}
        for sid, vs in by_sensor.items():
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
            faults[sid] = self._health(st, domain, sid, status, window_end, detail, out)
        for sid, s in st["sensors"].items():
            if sid in by_sensor or s["status"] == "silent":
                continue
            if window_end - s["seen"] >= pol.silent_windows * wms:
                note = f"no aggregates for {(window_end - s['seen']) // wms} windows"
                faults[sid] = self._health(st, domain, sid, "silent", window_end, note, out)

        # -- 2. anomalies of healthy sensors, grouped into incidents
        evidence: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        alive: set[tuple[str, str]] = set()
        for sid, vs in by_sensor.items():
            if st["sensors"][sid]["status"] != OK:
                continue  # muted: a broken sensor raises one health event, not a flood
            for v in vs:
                if (sid, v["metric"]) in ignored:
                    continue  # disagrees with the physics of its place this window: not evidence
                fam = family_and_locus(domain, v["metric"], sid)
                if v["anomalous"]:
                    evidence.setdefault(fam, []).append(v)
                    out["anomalies"].append(self._anomaly(domain, v))
                if abs(v["z"]) >= pol.keep_z:
                    alive.add(fam)
        checks = _Pass(domain, by_sensor, st, evidence, alive, window_end, out)
        self._coherent(checks)
        if domain == "water":
            self._tank_balance(checks)
            self._pump_delivery(checks)
        if domain == "traffic":
            self._flow_conservation(checks)
        if domain == "grid":
            self._feeder_share(checks)
        for fam, ev in sorted(evidence.items()):
            self._grow(st, domain, fam, ev, window_end, out)
        for fam_s in sorted(faults.values()):
            if fam_s:
                alive.add(tuple(fam_s.split("|", 1)))  # type: ignore[arg-type]
                if fam_s in st["open"]:
                    st["open"][fam_s]["last_seen"] = window_end  # the fault is still seen

        # -- 3. resolve incidents that went quiet (hysteresis: weak evidence keeps them open)
        for akey in sorted(st["open"]):
            a = st["open"][akey]
            fam = tuple(akey.split("|", 1))
            if fam in alive or a["last_seen"] == window_end:
                a["quiet"] = 0
                continue
            a["quiet"] += 1
            if a["quiet"] >= pol.quiet_windows:
                out["alerts"].append(self._alert(a, "resolve", domain, f"resolved: {a['explanation']}"))
                st["closed"][akey] = {
                    "id": a["id"],
                    "at": window_end,
                    "first": a["first_seen"],
                    "n": a["count"],
                }
                del st["open"][akey]
        horizon = window_end - pol.cooldown_windows * wms
        st["closed"] = {k: v for k, v in st["closed"].items() if v["at"] > horizon}
        return st, out

    # -- helpers ---------------------------------------------------------------------------

    def _settled(self, st: Mapping[str, Any], sid: str, window_end: int) -> bool:
        """Healthy, and not in its first two windows back from a fault.

        Why: the window a frozen or silent sensor comes back in averages
        frozen and live readings, and a check over consecutive windows (a
        level change, a run of a pump) would read that average as an event.
        """
        s = st["sensors"].get(sid)
        return s is None or (s["status"] == OK and s["since"] < window_end - self.config.window_ms)

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

    def _drift(
        self, domain: str, by_sensor: Mapping[str, Sequence[Mapping[str, Any]]], st: dict[str, Any]
    ) -> tuple[dict[str, str], set[tuple[str, str]]]:
        """Sensors that disagree with their place or with physics: (drifting sensors, ignored verdicts).

        Why log ratio to the neighbours: sensors of one place share the world
        (a DMA's demand, a substation's voltage) but not a calibration fault,
        and they differ by a factor (elevation, road class), so the ratio to
        the neighbours' median is what stays put. ``NeighbourDrift`` learns its
        usual value and spread over ``drift_warmup`` windows, then freezes them.
        Loops are judged against their own occupancy and count instead, grid
        meters against V x I x PF and the grid's one frequency (see the
        helpers). Ignored verdicts are a single meter's frequency that the
        rest of the grid does not see: a metering problem, not a grid event.
        """
        pools: dict[str, list[tuple[str, float]]] = {}
        states = st.setdefault("drift", {})
        out: dict[str, str] = {}
        ignored: set[tuple[str, str]] = set()
        if domain == "grid":
            self._power_relation(by_sensor, states, out)
            ignored = self._frequency_agreement(by_sensor, states, out)
        if domain == "water":
            self._pressure_relation(by_sensor, states, out)
        for sid, vs in by_sensor.items():
            if domain == "traffic":
                self._speed_physics(sid, vs, states, out)
                continue
            for v in vs:
                r = self.config.rule(domain, v["metric"])
                if r is None or r.drift_tolerance <= 0 or v["health"] != OK or v["observed"] is None:
                    continue
                if v["observed"] <= 0:
                    continue
                pools.setdefault(v["metric"], []).append((sid, math.log(v["observed"])))
        for metric, members in sorted(pools.items()):
            r = self.config.rule(domain, metric)
            assert r is not None
            nd = NeighbourDrift(r.drift_warmup, r.drift_halflife, r.drift_k, r.drift_tolerance)
            for sid, x in members:
                others = [y for s2, y in members if s2 != sid and neighbours(domain, sid, s2)]
                if len(others) < 2:
                    continue
                key = f"{sid}|{metric}"
                ds, drifting, _ = nd.step(states.get(key) or nd.init(), 0, x, others)
                states[key] = ds
                if drifting and sid not in out:
                    pct = 100.0 * (math.exp(ds["e"] - ds["m"]) - 1.0)
                    out[sid] = f"{metric} drifted {pct:+.1f} % against its neighbours"
        return out, ignored

    def _relation(self, r: MetricRule) -> RelationDrift:
        return RelationDrift(
            r.relation_tolerance,
            k=r.relation_k,
            halflife=r.relation_halflife,
            warmup=r.relation_warmup,
            floor=r.relation_floor,
            memory=r.relation_memory,
        )

    def _power_relation(
        self,
        by_sensor: Mapping[str, Sequence[Mapping[str, Any]]],
        states: dict[str, Any],
        out: dict[str, str],
    ) -> None:
        """A meter's active power against V x I x PF from the same meter.

        Why: the four channels are one physical law (P = k V I PF, k set by
        the wiring and learned), so a voltage or current channel that drifts
        shows as a residual long before it leaves any operating band - and
        feeder events (sags, overloads, imbalance) move all four together and
        leave it alone. Window means of a product are not the product of the
        means when the channels swing within the window; the swing (from
        min/max) bounds that error and is added to the window's variance.
        """
        r = self.config.rule("grid", "active_power_kw")
        if r is None or r.relation_tolerance <= 0:
            return
        rel = self._relation(r)
        names = ("active_power_kw", "voltage_v", "current_a", "power_factor")
        for sid in sorted(by_sensor):
            by_metric = {v["metric"]: v for v in by_sensor[sid]}
            vs = [by_metric.get(m) for m in names]
            if any(v is None or v["health"] != OK or v["observed"] is None for v in vs):
                continue
            p, volt, amp, pf = (v["observed"] for v in vs)  # type: ignore[index]
            if min(p, volt, amp, pf) <= 0:
                continue
            swing = [
                (v.get("max", v["observed"]) - v.get("min", v["observed"])) / v["observed"]  # type: ignore[index]
                for v in vs[1:]
            ]
            bound = (swing[0] * swing[1] + swing[0] * swing[2] + swing[1] * swing[2]) / 4.0
            key = f"{sid}|power"
            t = int(vs[0]["window_end"]) // self.config.window_ms  # type: ignore[index]
            ds, res = rel.step(
                states.get(key) or rel.init(), t, math.log(p * 1000.0 / (volt * amp * pf)), bound**2
            )
            states[key] = ds
            if res is not None and res.flagged:
                out[sid] = (
                    f"active power {100.0 * (math.exp(res.bias) - 1.0):+.2f} % off V x I x PF "
                    f"(P {p:.4g} kW, V {volt:.4g} V, I {amp:.4g} A, PF {pf:.3g})"
                )

    def _pressure_relation(
        self,
        by_sensor: Mapping[str, Sequence[Mapping[str, Any]]],
        states: dict[str, Any],
        out: dict[str, str],
    ) -> None:
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
        r = self.config.rule("water", "pressure_bar")
        if r is None or r.relation_tolerance <= 0:
            return
        inlet = level = None
        for sid in sorted(by_sensor):
            for v in by_sensor[sid]:
                if v["metric"] == "flow_lps" and sid.endswith("-flow"):
                    inlet = v
                elif v["metric"] == "tank_level_m":
                    level = v
        if inlet is None or inlet["health"] != OK or inlet["observed"] is None or inlet["observed"] <= 0:
            return
        if level is not None and (level["health"] != OK or level["observed"] is None):
            return
        ref = states.setdefault("water|flow_ref", inlet["observed"])
        x = [1.0, (inlet["observed"] / ref) ** 1.852] + ([level["observed"]] if level is not None else [])
        law = LinearDrift(
            r.relation_tolerance,
            k=r.relation_k,
            halflife=r.relation_halflife,
            warmup=r.relation_warmup,
            floor=r.relation_floor,
        )
        t = int(inlet["window_end"]) // self.config.window_ms
        for sid in sorted(by_sensor):
            v = next((v for v in by_sensor[sid] if v["metric"] == "pressure_bar"), None)
            if v is None or v["health"] != OK or v["observed"] is None:
                continue
            key = f"{sid}|pressure_law"
            prev = states.get(key)
            if prev is None or len(prev["b"]) != len(x):
                prev = law.init(len(x))  # first window, or the DMA gained/lost its tank gauge
            ds, res = law.step(prev, t, v["observed"], x)
            states[key] = ds
            if res is not None and res.flagged and sid not in out:
                out[sid] = (
                    f"pressure_bar reads {100.0 * res.bias:+.1f} % against what the DMA's inlet flow "
                    f"and tank level imply ({res.z:+.1f} sd)"
                )

    def _frequency_agreement(
        self,
        by_sensor: Mapping[str, Sequence[Mapping[str, Any]]],
        states: dict[str, Any],
        out: dict[str, str],
    ) -> set[tuple[str, str]]:
        """Each meter's frequency against the median of all of them: a synchronous grid has one.

        Why: a frequency excursion is the whole grid's; one meter reading
        50.3 Hz while the others read 50.0 has a metering fault (or has
        islanded). Its frequency is no evidence of a grid event in that
        window, and if it persists the meter is flagged. Needs three meters
        to vote.
        """
        r = self.config.rule("grid", "frequency_hz")
        if r is None or r.relation_tolerance <= 0:
            return set()
        freq = {
            sid: v
            for sid, vs in by_sensor.items()
            for v in vs
            if v["metric"] == "frequency_hz" and v["health"] == OK and v["observed"] is not None
        }
        if len(freq) < 3:
            return set()
        values = sorted(v["observed"] for v in freq.values())
        mid = len(values) // 2
        med = values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])
        rel = self._relation(r)
        ignored: set[tuple[str, str]] = set()
        for sid in sorted(freq):
            v = freq[sid]
            off = v["observed"] - med
            if abs(off) > r.relation_tolerance:
                ignored.add((sid, "frequency_hz"))
            key = f"{sid}|frequency"
            ds, res = rel.step(
                states.get(key) or rel.init(), int(v["window_end"]) // self.config.window_ms, off
            )
            states[key] = ds
            if res is not None and res.flagged and sid not in out:
                out[sid] = (
                    f"frequency_hz reads {res.bias * 1000:+.0f} mHz against the grid ({len(freq)} meters)"
                )
        return ignored

    def _feeder_share(self, w: _Pass) -> None:
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
        by_sensor, st, alive, window_end = w.by_sensor, w.st, w.alive, w.window_end
        r = self.config.rule("grid", "current_a")
        if r is None or r.relation_tolerance <= 0:
            return
        cur: dict[str, Mapping[str, Any]] = {}
        for sid in sorted(by_sensor):
            if not self._settled(st, sid, window_end):
                continue
            for v in by_sensor[sid]:
                if v["metric"] == "current_a" and v["health"] == OK and v["observed"] and v["observed"] > 0:
                    cur[sid] = v
        rel = self._relation(r)
        states = st.setdefault("drift", {})
        for sid in sorted(cur):
            parts = sid.split("-")
            bus = cur.get(f"{parts[0]}-{parts[1]}-bus") if len(parts) == 4 else None
            if bus is None:
                continue
            v = cur[sid]
            key = f"{sid}|share"
            share = v["observed"] / bus["observed"]
            ds, res = rel.step(
                states.get(key) or rel.init(), window_end // self.config.window_ms, math.log(share)
            )
            states[key] = ds
            if res is None or not res.flagged or res.bias <= 0:
                continue
            fam = family_and_locus("grid", "current_a", sid)
            alive.add(fam)
            pct = 100.0 * (math.exp(res.bias) - 1.0)
            note = (
                f"current_a {v['observed']:.4g} A is {100.0 * share:.1f} % of its substation's bus, "
                f"{pct:+.0f} % on its usual share ({res.z:+.1f} sd)"
            )
            v0 = _verdict(
                sid,
                "current_a",
                (v["window_start"], window_end),
                observed=v["observed"],
                expected=bus["observed"] * math.exp(ds["c"]),
                z=res.z,
                threshold=rel.k,
                detector="share-v1",
                severity="critical" if res.bias >= 2 * rel.tolerance else "warning",
                note=note,
            )
            w.publish(self._anomaly("grid", v0), fam, v0)

    def _flow_conservation(self, w: _Pass) -> None:
        """Vehicles counted at a station against those counted at the next one downstream.

        Why: between two loops of a road vehicles are conserved (up to ramps
        and the queue stored between them, which the learned ratio absorbs).
        A blockage between them shows as a persistent deficit downstream
        *while the downstream road runs freely* - traffic that is starved,
        not queued. Congestion downstream also lowers its count, but slows
        it, so a downstream that is itself slowed is not a blockage. Stations
        are numbered along the road (``traffic-z03-s006-l1``); a station is
        used only when every lane it reported is healthy. Evidence for the
        zone's traffic family, naming both stations' loops.
        """
        by_sensor, st, alive, window_end = w.by_sensor, w.st, w.alive, w.window_end
        r = self.config.rule("traffic", "vehicle_count")
        if r is None or r.relation_tolerance <= 0:
            return
        stations: dict[tuple[str, int], dict[str, Any]] = {}
        for sid in sorted(by_sensor):
            parts = sid.split("-")
            try:
                key = (parts[1], int(parts[2].lstrip("s")))
            except (IndexError, ValueError):
                continue
            s = stations.setdefault(key, {"vehicles": 0.0, "free": [], "lanes": [], "ok": True})
            healthy = self._settled(st, sid, window_end)
            by_metric = {v["metric"]: v for v in by_sensor[sid]}
            cnt = by_metric.get("vehicle_count")
            if not healthy or cnt is None or cnt["health"] != OK or cnt["observed"] is None:
                s["ok"] = False
                continue
            s["vehicles"] += cnt["observed"] * (cnt.get("samples") or 1)
            s["lanes"].append(sid)
            sp = by_metric.get("mean_speed_kmh")
            loop = st.get("drift", {}).get(f"{sid}|mean_speed_kmh")
            vff = LoopSpeedCheck().free_flow_speed(loop) if loop else None
            if sp is not None and sp["health"] == OK and sp["observed"] and vff:
                s["free"].append(sp["observed"] / vff)
        rel = self._relation(r)
        states = st.setdefault("drift", {})
        for (zone, n), up in sorted(stations.items()):
            dn = stations.get((zone, n + 1))
            if dn is None or not (up["ok"] and dn["ok"]) or up["vehicles"] < 3.0:
                continue
            q_up, q_dn = up["vehicles"] + 0.5, dn["vehicles"] + 0.5
            key = f"{zone}-s{n:03d}>s{n + 1:03d}|flow"
            ds, res = rel.step(
                states.get(key) or rel.init(), window_end // self.config.window_ms, math.log(q_dn / q_up),
                1.0 / q_up + 1.0 / q_dn,
            )  # fmt: skip
            states[key] = ds
            if res is None or not res.flagged or res.bias >= 0:
                continue
            if not dn["free"] or min(dn["free"]) < _FREE_FLOW_SHARE:
                continue  # the downstream road is slowed: a queue there, not starvation
            fam = ("traffic", f"traffic-{zone}")
            alive.add(fam)
            share = 100.0 * (1.0 - math.exp(res.bias))
            note = (
                f"station s{n + 1:03d} counts {share:.0f} % fewer vehicles than s{n:03d} upstream "
                f"usually sends it ({res.z:+.1f} sd) while it runs freely: blocked between them"
            )
            v0 = _verdict(
                f"traffic-{zone}-s{n:03d}",
                "vehicle_count",
                (window_end - self.config.window_ms, window_end),
                observed=dn["vehicles"],
                expected=q_up * math.exp(ds["c"]) - 0.5,
                z=res.z,
                threshold=rel.k,
                detector="conservation-v1",
                severity="warning",
                note=note,
            )
            anomaly = self._anomaly("traffic", v0)
            anomaly["key_kind"] = "site"
            w.out["anomalies"].append(anomaly)
            for sid in up["lanes"] + dn["lanes"]:
                w.evidence.setdefault(fam, []).append({**v0, "key_id": sid})

    def _speed_physics(
        self, sid: str, vs: Sequence[Mapping[str, Any]], states: dict[str, Any], out: dict[str, str]
    ) -> None:
        """A loop's speed against its own occupancy and count (the fundamental diagram).

        Why the loop's own channels and not its neighbours: adjacent stations
        differ by whole queues at rush hour, but one loop's speed, occupancy
        and count must agree with each other whatever the traffic does - a
        speed channel drifting while occupancy and flow say the traffic has
        not changed is a sensor fault. ``LoopSpeedCheck`` holds the physics;
        this feeds it the window's means (and the occupancy's swing, which
        marks windows that mix free flow and queue).
        """
        by_metric = {v["metric"]: v for v in vs}
        sp, cnt, occ = (by_metric.get(m) for m in ("mean_speed_kmh", "vehicle_count", "occupancy_pct"))
        if sp is None or cnt is None or occ is None:
            return
        r = self.config.rule("traffic", "mean_speed_kmh")
        if r is None or r.drift_tolerance <= 0:
            return
        if any(v["health"] != OK or v["observed"] is None for v in (sp, cnt, occ)):
            return
        check = self._loop_check(r)
        key = f"{sid}|mean_speed_kmh"
        wms = self.config.window_ms
        samples = cnt.get("samples") or 1
        ds, res = check.step(
            states.get(key) or check.init(),
            int(sp["window_end"]) // wms,
            sp["observed"],
            occ["observed"],
            occ.get("min", occ["observed"]),
            occ.get("max", occ["observed"]),
            cnt["observed"] * samples,
            wms / 3_600_000,
        )
        states[key] = ds
        if res.drifting:
            pct = 100.0 * (math.exp(res.bias) - 1.0)
            out[sid] = (
                f"mean_speed_kmh reads {pct:+.1f} % against the free-flow speed its occupancy implies "
                f"({res.z:+.1f} sd; occupancy {occ['observed']:.1f} %, "
                f"{cnt['observed'] * samples:.0f} vehicles)"
            )

    @staticmethod
    def _loop_check(r: MetricRule) -> LoopSpeedCheck:
        return LoopSpeedCheck(
            tolerance=r.drift_tolerance,
            k=r.drift_k,
            halflife=r.drift_halflife,
            warmup=r.drift_warmup,
            min_vehicles=r.drift_min_count,
        )

    def _tank_balance(self, w: _Pass) -> None:
        """Water mass balance of a DMA's tank: level change vs what the pump and the inlet moved.

        Why learned: tank area, pump curve and the share of demand the tank
        serves are rarely on file, but over one window the balance is linear
        - dlevel = a * pump flow + b * inlet flow + c - so recursive least
        squares (forgetting factor ``_RLS_LAMBDA``) learns it per DMA. A tank
        filling faster than its metered pump can fill it (an unmetered
        inflow, a failed level control) or draining with the pump running is
        a residual no single-sensor model sees.
        """
        by_sensor, st, alive, window_end = w.by_sensor, w.st, w.alive, w.window_end
        level = pump = inlet = None
        for sid, vs in by_sensor.items():
            if not self._settled(st, sid, window_end):
                continue
            for v in vs:
                if v["metric"] == "tank_level_m":
                    level = v
                elif v["metric"] == "flow_lps" and sid.endswith("-pump"):
                    pump = v
                elif v["metric"] == "flow_lps" and sid.endswith("-flow"):
                    inlet = v
        rule = self.config.rule("water", "tank_level_m")
        if level is None or pump is None or inlet is None or rule is None or rule.balance_z <= 0:
            return
        if any(v["observed"] is None for v in (level, pump, inlet)):
            return
        b = st.setdefault("balance", {})
        prev, b["prev"] = b.get("prev"), level["observed"]
        flows, b["flows"] = b.get("flows"), [pump["observed"], inlet["observed"]]
        # the balance holds between consecutive windows only: after a gap (a sensor muted, silent
        # or missing) the level moved by flows nobody saw, so start again from this window
        last, b["at"] = b.get("at"), window_end
        if prev is None or flows is None or (last is not None and window_end - last != self.config.window_ms):
            return
        # window means are mid-window samples: the level moved between them by what flowed from
        # the middle of the previous window to the middle of this one
        x = [(flows[0] + pump["observed"]) / 2.0, (flows[1] + inlet["observed"]) / 2.0, 1.0]
        y = level["observed"] - prev
        theta = b.get("theta") or [0.0, 0.0, 0.0]
        p = b.get("P") or [[1e2 if i == j else 0.0 for j in range(3)] for i in range(3)]
        n = b.get("n", 0)
        resid = y - sum(t * xi for t, xi in zip(theta, x, strict=True))
        # prediction error, not just noise: x'Px is large where the fit has not seen such flows yet
        # (the first time a pump runs), so an unlearned regime is not called an anomaly
        xpx = sum(x[i] * p[i][j] * x[j] for i in range(3) for j in range(3))
        scale = max(b.get("s", 0.0) * _MAD_TO_SIGMA, rule.min_scale / 10.0, 1e-6) * math.sqrt(1.0 + xpx)
        z = resid / scale
        warm = n >= rule.warmup_windows * 3
        # RLS update (skipped for the evidence of an anomaly, so a failure is not learned as normal)
        if not (warm and abs(z) >= rule.balance_z):
            px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
            denom = _RLS_LAMBDA + sum(x[i] * px[i] for i in range(3))
            k = [v / denom for v in px]
            theta = [theta[i] + k[i] * resid for i in range(3)]
            p = [[(p[i][j] - k[i] * px[j]) / _RLS_LAMBDA for j in range(3)] for i in range(3)]
            a = max(1.0 / rule.halflife_windows, 1.0 / (n + 1))
            d = min(abs(resid), _CLIP * scale) if warm else abs(resid)
            b["s"] = b.get("s", 0.0) + a * (d - b.get("s", 0.0))
        b.update({"theta": theta, "P": p, "n": n + 1})
        if not warm:
            return
        fam = family_and_locus("water", "tank_level_m", level["key_id"])
        if abs(z) >= self.config.alerts.keep_z:
            alive.add(fam)
        if abs(z) < rule.balance_z:
            return
        note = (
            f"tank level moved {y * 100:+.1f} cm in a window where pump and inlet flows imply "
            f"{(y - resid) * 100:+.1f} cm ({z:+.1f} sd)"
        )
        v0 = _verdict(
            level["key_id"],
            "tank_level_m",
            (level["window_start"], window_end),
            observed=level["observed"],
            expected=prev + y - resid,
            z=z,
            threshold=rule.balance_z,
            detector="balance-v1",
            severity="critical" if abs(z) >= 2 * rule.balance_z else "warning",
            note=note,
        )
        w.publish(self._anomaly("water", v0), fam, v0)

    def _pump_delivery(self, w: _Pass) -> None:
        """A pump that reports running against the flow it delivers while running.

        Why not the flow's own baseline: a pump is either off (0) or on at
        its rated flow, and an earlier failure teaches a level model that a
        trickle is normal (the next failure then looks like nothing). Status
        and flow of one pump are one relation - running means rated flow - so
        its usual running flow is learned only from windows it ran the whole
        minute, and a run at a fraction of it (air lock, broken impeller,
        closed valve) is evidence for its DMA from the first window on.
        """
        by_sensor, st, alive, window_end = w.by_sensor, w.st, w.alive, w.window_end
        r = self.config.rule("water", "flow_lps")
        if r is None or r.relation_tolerance <= 0:
            return
        rel = self._relation(r)
        states = st.setdefault("drift", {})
        for sid in sorted(by_sensor):
            if not sid.endswith("-pump") or not self._settled(st, sid, window_end):
                continue
            by_metric = {v["metric"]: v for v in by_sensor[sid]}
            flow, status = by_metric.get("flow_lps"), by_metric.get("pump_on")
            if flow is None or status is None or flow["observed"] is None or status["observed"] is None:
                continue
            if status.get("min", status["observed"]) < 1.0 or flow["observed"] <= 0:
                continue  # not running the whole window: nothing to compare
            key = f"{sid}|delivery"
            ds, res = rel.step(
                states.get(key) or rel.init(), window_end // self.config.window_ms, math.log(flow["observed"])
            )
            states[key] = ds
            if res is None or not res.flagged or res.bias >= 0:
                continue
            fam = family_and_locus("water", "flow_lps", sid)
            alive.add(fam)
            usual = math.exp(ds["c"])
            note = (
                f"pump reports running but delivers {flow['observed']:.3g} L/s, "
                f"{100.0 * flow['observed'] / usual:.0f} % of its usual {usual:.3g} L/s"
            )
            v0 = _verdict(
                sid,
                "flow_lps",
                (flow["window_start"], window_end),
                observed=flow["observed"],
                expected=usual,
                z=res.z,
                threshold=rel.k,
                detector="pump-v1",
                severity="critical",
                note=note,
            )
            w.publish(self._anomaly("water", v0), fam, v0)

    def _coherent(self, w: _Pass) -> None:
        """Many sensors of one place moving together a little is one strong signal.

        Why: a leak lowers every pressure of its DMA by ~3 sd - no single
        gauge crosses its threshold, but 16 of them agreeing is not noise.
        Level z-scores of the healthy sensors of one (place, metric) are
        combined as sum(z) / sqrt(n) (Stouffer); the threshold (``zone_z``)
        is set well above what ordinary common-mode swings reach, because
        the sensors' residuals are correlated and the combination assumes not.
        """
        domain, by_sensor, st, alive, window_end = w.domain, w.by_sensor, w.st, w.alive, w.window_end
        pools: dict[tuple[tuple[str, str], str], list[Mapping[str, Any]]] = {}
        for sid, vs in by_sensor.items():
            if st["sensors"][sid]["status"] != OK:
                continue
            for v in vs:
                r = self.config.rule(domain, v["metric"])
                if r is None or r.zone_z <= 0 or v["lz"] == 0.0:
                    continue
                pools.setdefault((family_and_locus(domain, v["metric"], sid), v["metric"]), []).append(v)
        for (fam, metric), vs in sorted(pools.items()):
            r = self.config.rule(domain, metric)
            assert r is not None
            if len(vs) < r.zone_min_sensors:
                continue
            zz = sum(v["lz"] for v in vs) / math.sqrt(len(vs))
            if abs(zz) >= self.config.alerts.keep_z * math.sqrt(len(vs)) / 2:
                alive.add(fam)
            if abs(zz) < r.zone_z:
                continue
            sign = 1.0 if zz > 0 else -1.0
            agree = [v for v in vs if v["lz"] * sign > 0]
            mean_obs = sum(v["observed"] for v in vs) / len(vs)
            note = (
                f"{len(agree)} of {len(vs)} {metric} sensors moved together "
                f"({'up' if sign > 0 else 'down'}, combined {zz:+.1f} sd)"
            )
            v0 = _verdict(
                fam[1],
                metric,
                (window_end - self.config.window_ms, window_end),
                observed=mean_obs,
                expected=None,
                z=zz,
                threshold=r.zone_z,
                detector="zone-v1",
                severity="critical" if abs(zz) >= 2 * r.zone_z else "warning",
                note=note,
            )
            anomaly = self._anomaly(domain, v0)
            anomaly["key_kind"] = "zone"
            w.out["anomalies"].append(anomaly)
            for v in agree:
                w.evidence.setdefault(fam, []).append(
                    {**v, "z": v["lz"], "severity": v0["severity"], "note": note}
                )

    def _health(
        self,
        st: dict[str, Any],
        domain: str,
        sid: str,
        status: str,
        window_end: int,
        detail: str,
        out: dict[str, list[dict[str, Any]]],
    ) -> str:
        """Track one sensor's status; on a change emit a SensorHealth event and open/keep its fault alert."""
        s = st["sensors"].setdefault(sid, {"status": OK, "since": window_end, "seen": window_end})
        if status != "silent":
            s["seen"] = window_end
        fam = ("sensor_fault", sid)
        if status != s["status"]:
            s["status"], s["since"] = status, window_end
            zone = sid.split("-")[1] if sid.count("-") else ""
            out["health"].append(
                {
                    "sensor_id": sid,
                    "site_id": "",
                    "zone_id": zone,
                    "domain": domain,
                    "status": status,
                    "since": window_end,
                    "details": detail if status != OK else "sensor healthy again",
                }
            )
            if status != OK:
                ev = [
                    {
                        "key_id": sid,
                        "metric": "",
                        "z": 0.0,
                        "severity": "warning",
                        "note": f"{status}: {detail}",
                    }
                ]
                self._grow(st, domain, fam, ev, window_end, out, kind="sensor_fault")
        return "|".join(fam) if status != OK else ""

    def _grow(
        self,
        st: dict[str, Any],
        domain: str,
        fam: tuple[str, str],
        ev: Sequence[Mapping[str, Any]],
        window_end: int,
        out: dict[str, list[dict[str, Any]]],
        kind: str | None = None,
    ) -> None:
        """Open an incident, re-open it within the cooldown, or add evidence to the open one."""
        akey = "|".join(fam)
        keys = sorted({e["key_id"] for e in ev})
        sev = "info"
        for e in ev:
            sev = _max_severity(sev, e["severity"])
        top = max(ev, key=lambda e: abs(e["z"]))
        a = st["open"].get(akey)
        if a is None:
            closed = st["closed"].pop(akey, None)
            a = {
                "id": closed["id"] if closed else f"{akey.replace('|', ':')}:{window_end}",
                "family": fam[0],
                "kind": kind or _kind(domain, fam[0], ev),
                "keys": keys,
                "first_seen": closed["first"] if closed else window_end,
                "last_seen": window_end,
                "severity": sev,
                "count": (closed["n"] if closed else 0) + len(ev),
                "quiet": 0,
                "explanation": "",
            }
            a["explanation"] = self._explain(a, top)
            st["open"][akey] = a
            out["alerts"].append(self._alert(a, "open", domain, a["explanation"]))
            return
        grew = set(keys) - set(a["keys"])
        escalated = SEVERITIES.index(sev) > SEVERITIES.index(a["severity"])
        a["keys"] = sorted(set(a["keys"]) | set(keys))
        a["last_seen"] = window_end
        a["count"] += len(ev)
        a["quiet"] = 0
        a["severity"] = _max_severity(a["severity"], sev)
        if kind is None and a["kind"].endswith("_anomaly"):
            a["kind"] = _kind(domain, fam[0], ev)
        if grew or escalated:
            a["explanation"] = self._explain(a, top)
            out["alerts"].append(self._alert(a, "update", domain, a["explanation"]))

    @staticmethod
    def _explain(a: Mapping[str, Any], top: Mapping[str, Any]) -> str:
        n = len(a["keys"])
        where = a["keys"][0] if n == 1 else f"{n} sensors"
        return f"{a['kind'].replace('_', ' ')} at {where}: {top['note']}"

    @staticmethod
    def _alert(a: Mapping[str, Any], state: str, domain: str, text: str) -> dict[str, Any]:
        return {
            "alert_id": a["id"],
            "state": state,
            "domain": domain,
            "kind": a["kind"],
            "key_kind": "sensor",
            "affected_keys": list(a["keys"]),
            "first_seen": a["first_seen"],
            "last_seen": a["last_seen"],
            "severity": a["severity"],
            "anomaly_count": a["count"],
            "explanation": text,
        }

    @staticmethod
    def _anomaly(domain: str, v: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "domain": domain,
            "key_kind": "sensor",
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


# --------------------------------------------------------------------------- driving both stages


@dataclass
class Detection:
    """Both stages over a stream of WindowAggregate rows, in memory (report and tests).

    Rows must arrive in window order per group; the Flink job gets the same
    guarantee from event-time timers. ``run`` is what the job does per key,
    minus the checkpointing.
    """

    config: DetectionConfig
    metric_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    group_states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def window(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """One window's rows (any groups) -> records; only sensor-keyed rows are judged."""
        cfg = self.config
        per_group: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        for row in rows:
            if row["key_kind"] != "sensor":
                continue
            rule = cfg.rule(row["domain"], row["metric"])
            if rule is None:
                continue
            key = f"{row['domain']}|{row['key_id']}|{row['metric']}"
            det = MetricDetector(rule)
            st = self.metric_states.get(key) or det.init()
            st, verdict = det.step(st, row)
            self.metric_states[key] = st
            g = (row["domain"], cfg.group_of(row["domain"], row["key_id"]), int(row["window_end"]))
            per_group.setdefault(g, []).append(verdict)
        out: dict[str, list[dict[str, Any]]] = {"anomalies": [], "alerts": [], "health": []}
        engine = GroupEngine(cfg)
        for (domain, group, w_end), verdicts in sorted(
            per_group.items(), key=lambda kv: (kv[0][2], kv[0][1])
        ):
            gs = self.group_states.get(group) or engine.init()
            gs, recs = engine.step(gs, domain, w_end, verdicts)
            self.group_states[group] = gs
            for k, v in recs.items():
                out[k].extend(v)
        return out

    def run(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """All rows, grouped by window end in ascending order."""
        by_window: dict[int, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_window.setdefault(int(row["window_end"]), []).append(row)
        out: dict[str, list[dict[str, Any]]] = {"anomalies": [], "alerts": [], "health": []}
        for w in sorted(by_window):
            for k, v in self.window(by_window[w]).items():
                out[k].extend(v)
        return out
