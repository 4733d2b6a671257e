"""Anomaly detection for city sensor streams: pure functions of window aggregates and state.

Why one package of pure code: the same detectors run in three places - the Flink detect job
(``jobs/detect.py``, state in keyed ValueState), the quality report and backtests
(``citystream.evaluation``) and the unit tests - and must give identical verdicts in all
three. Nothing here imports Flink, Kafka, ClickHouse, the simulator or the importer (an
import-linter contract keeps it so).

Two stages, because the job keys them differently: ``metric`` (one key per sensor and
metric) and ``place`` (one key per alert group: a zone, a DMA, the grid), configured by
``config``; ``Detection`` drives both in memory exactly as the job does per key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citystream.detection.base import Detector, ScoreInput, State, dumps, loads, run
from citystream.detection.calibrate import AlarmGate, Likelihood
from citystream.detection.config import (
    DEFAULT_CONFIG,
    DETECTORS,
    SEVERITIES,
    AlertPolicy,
    DetectionConfig,
    DomainRules,
    MetricRule,
    load_config,
    parse_config,
)
from citystream.detection.health import NeighbourDrift
from citystream.detection.metric import (
    FLAT,
    OK,
    OUT_OF_RANGE,
    CalibratedLevel,
    MetricDetector,
    MetricState,
    StateVersionError,
)
from citystream.detection.place import GroupEngine, family_and_locus, neighbours
from citystream.detection.state import GroupState
from citystream.detection.univariate import EwmaZ, MaxOf, SeasonalProfile

__all__ = [
    "DEFAULT_CONFIG",
    "DETECTORS",
    "FLAT",
    "OK",
    "OUT_OF_RANGE",
    "SEVERITIES",
    "AlarmGate",
    "AlertPolicy",
    "CalibratedLevel",
    "Detection",
    "DetectionConfig",
    "Detector",
    "DomainRules",
    "EwmaZ",
    "GroupEngine",
    "GroupState",
    "Likelihood",
    "MaxOf",
    "MetricDetector",
    "MetricRule",
    "MetricState",
    "NeighbourDrift",
    "ScoreInput",
    "SeasonalProfile",
    "State",
    "StateVersionError",
    "dumps",
    "family_and_locus",
    "load_config",
    "loads",
    "neighbours",
    "parse_config",
    "run",
]

# --------------------------------------------------------------------------- driving both stages


@dataclass
class Detection:
    """Both stages over a stream of WindowAggregate rows, in memory (report and tests).

    Rows must arrive in window order per group; the Flink job gets the same
    guarantee from event-time timers. ``run`` is what the job does per key,
    minus the checkpointing.
    """

    config: DetectionConfig
    #: Stage-1 state per key as the JSON text the job keeps in ValueState, so a run here
    #: exercises the same (de)serialisation as a checkpointed job.
    metric_states: dict[str, str] = field(default_factory=dict)
    group_states: dict[str, GroupState] = field(default_factory=dict)

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
            raw = self.metric_states.get(key)
            st, verdict = det.step(MetricState.from_json(raw) if raw else det.init(), row)
            self.metric_states[key] = st.to_json()
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
