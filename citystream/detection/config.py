"""Detection configuration: per-metric rules, alert policy, alert groups, read from TOML.

Why a typed, validated config: the same file (``infra/detection.toml``) drives the Flink
detect job, backtests and the quality report, so a typo must fail loudly at start-up with
the key's name instead of silently falling back to a default in one of them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from citystream.errors import UserError

#: Where the job and the report read their configuration by default.
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "infra" / "detection.toml"

DETECTORS = ("level", "peak", "rule")
#: Level models of stage 1 (``citystream.detection.metric``): see its docstring.
LEVEL_MODELS = ("ewma", "calibrated")
#: What a channel measures (issue 13): decides which level model may judge it.
#: continuous - a physical quantity (level, pressure, flow); the default.
#: counter    - a count per window (vehicles, pulses); validated, judged as continuous for now.
#: status     - an on/off or discrete state (pump running, valve open): a state model, not z-scores.
#: setpoint   - a commanded value that changes in steps; validated, judged as continuous for now.
CHANNELS = ("continuous", "counter", "status", "setpoint")
#: Tails of the calibration (``citystream.detection.calibrate.Likelihood``).
TAILS = ("gaussian", "gpd")
SEVERITIES = ("info", "warning", "critical")

# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class MetricRule:
    """How one metric of one domain is judged (one ``[domain.X.metric.Y]`` table)."""

    name: str
    detectors: tuple[str, ...] = ("level", "peak")
    level_model: str = "ewma"
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
    channel: str = "continuous"
    # The calibrated level model (level_model = "calibrated"; detection.metric.CalibratedLevel).
    # Counts are in windows (readings) of the key's own window length, and every gate and average
    # is measured in time (count x window length), so irregular sampling does not shift them.
    alarm_on: float = 0.999  #: calibrated score that raises an alarm condition
    alarm_off: float = 0.99  #: ... which clears below this
    alarm_hold_windows: int = 30  #: minimum time a condition stays active
    alarm_refractory_windows: int = 30  #: minimum time between two alarms of one key
    shift_after_windows: int = 0  #: a condition active this long becomes a level shift (0: never)
    lik_short_windows: int = 8  #: the calibration's short average of surprise
    lik_halflife_windows: float = 3000.0  #: memory of the calibration's long-run statistics
    lik_warmup: int = 100  #: scored readings before the calibration may alarm
    lik_clip: float = 4.0  #: long-run updates winsorised at this many sd
    lik_tail: str = "gaussian"  #: "gaussian" or "gpd" (peaks over threshold)
    cal_ewma_halflife_windows: float = 200.0  #: the calibrated model's EWMA part
    cal_ewma_warmup: int = 60
    cal_seasonal_buckets: int = 24  #: time-of-day cells of the seasonal part
    cal_seasonal_rate: float = 0.1
    cal_seasonal_min_days: int = 3  #: days seen before a cell may score
    cal_seasonal_weekly: bool = True  #: choose hour-of-week per stream once two weeks fit better
    cal_restart_after: int = 4  #: a constant channel leaving its level this many readings re-learns
    cal_scale_floor: float | None = None  #: physical scale floor (default: 1 % of [low, high] if set)

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
    #: How a metric of no configured domain is judged (imported CSV, NAB, BATADAL, SKAB
    #: series): the ``[imported]`` table over ``[defaults]``.
    imported: MetricRule = field(default_factory=lambda: MetricRule("imported"))

    def imported_rule(self, metric: str) -> MetricRule:
        """The ``[imported]`` rule under a series' own name (the name appears in notes)."""
        return replace(self.imported, name=metric)

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
    for name, allowed in (("level_model", LEVEL_MODELS), ("channel", CHANNELS), ("lik_tail", TAILS)):
        if key == name:
            if value not in allowed:
                raise UserError(f"{where}: {name} must be one of {', '.join(allowed)}")
            return value
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
    known_top = {"window_ms", "defaults", "alerts", "domain", "imported"}
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
            metrics[mname] = _metric_rule(mwhere, mname, mtable, defaults)
        domains[dname] = DomainRules(dname, group, metrics)
    imported = _metric_rule(f"{source} [imported]", "imported", dict(data.get("imported", {})), defaults)
    return DetectionConfig(window_ms, domains, AlertPolicy(**policy_kw), imported)


def _metric_rule(where: str, name: str, table: Mapping[str, Any], defaults: Mapping[str, Any]) -> MetricRule:
    """One metric's table over ``[defaults]``, validated."""
    base = MetricRule("")
    kw = dict(defaults)
    for k, v in dict(table).items():
        if k not in _METRIC_FIELDS:
            raise UserError(f"{where}: unknown key {k!r}")
        kw[k] = _typed(where, k, v, getattr(base, k))
    rule = MetricRule(name, **kw)
    if rule.halflife_windows <= 0 or rule.level_z <= 0 or rule.peak_z <= 0:
        raise UserError(f"{where}: halflife_windows, level_z and peak_z must be positive")
    _check_calibrated(where, rule)
    for lo, hi in (("low", "high"), ("rule_low", "rule_high")):
        a, b = getattr(rule, lo), getattr(rule, hi)
        if a is not None and b is not None and a >= b:
            raise UserError(f"{where}: {lo} must be below {hi}")
    if "rule" in rule.detectors and rule.rule_low is None and rule.rule_high is None:
        raise UserError(f"{where}: the rule detector needs rule_low and/or rule_high")
    return rule


def _check_calibrated(where: str, rule: MetricRule) -> None:
    """The calibrated level model's knobs: a gate that cannot clear or an empty average is a typo."""
    if not 0.0 < rule.alarm_off <= rule.alarm_on < 1.0:
        raise UserError(f"{where}: alarm_on and alarm_off need 0 < alarm_off <= alarm_on < 1")
    positive = ("lik_short_windows", "lik_halflife_windows", "lik_clip", "cal_ewma_halflife_windows")
    positive += ("cal_seasonal_buckets", "cal_seasonal_rate")
    bad = [k for k in positive if getattr(rule, k) <= 0]
    if bad:
        raise UserError(f"{where}: {', '.join(bad)} must be positive")
    if rule.lik_warmup < 2 or rule.cal_seasonal_rate > 1.0:
        raise UserError(f"{where}: lik_warmup must be >= 2 and cal_seasonal_rate at most 1")
    if 86_400 % rule.cal_seasonal_buckets:
        raise UserError(f"{where}: cal_seasonal_buckets must divide a day into whole seconds")
    if rule.shift_after_windows and rule.shift_after_windows <= rule.alarm_hold_windows:
        raise UserError(f"{where}: shift_after_windows must exceed alarm_hold_windows (or be 0: never)")


def read_toml(p: Path, what: str) -> dict[str, Any]:
    """A TOML file's table, or a one-line refusal naming ``what`` it was meant to be."""
    try:
        return tomllib.loads(p.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {what} {p}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{what} {p} is not valid TOML: {exc}") from None


def load_config(path: Path | str | None = None) -> DetectionConfig:
    """Read and validate a detection config file (default: infra/detection.toml)."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    return parse_config(read_toml(p, "detection config"), str(p))


# --------------------------------------------------------------------------- stage 1: per (sensor, metric)
