"""Anomaly detection for city sensor streams: pure, streaming, one small state per key.

Why a package of pure functions: these detectors will run inside Flink keyed
state, one state per sensor, restored from checkpoints. Each detector is an
immutable configuration object with

    init() -> State
    ready(state, t_ms=0) -> bool
    step(state, t_ms, value) -> (new_state, score in [0, 1], explanation)

where ``State`` is a plain JSON-serialisable dict (``base.dumps``/``loads``).
Layers compose: a detector (``univariate``), wrapped in ``Likelihood`` for
per-stream self-calibration, behind ``SensorHealth`` and an ``AlarmGate``
(``pipeline.Pipeline``); ``recommended(cadence_ms)`` builds the configuration
the quality report chose. Cross-sensor physics checks live in ``physics``,
sensor health in ``health``, benchmark scoring in ``scoring``, and
``citystream evaluate`` (the report) in ``evaluate``.
"""

from citystream.detect.base import Detector, ScoreInput, State, dumps, loads, run
from citystream.detect.calibrate import AlarmGate, Likelihood, combine
from citystream.detect.health import NeighbourDrift, SensorHealth
from citystream.detect.pipeline import Pipeline, Verdict, recommended
from citystream.detect.univariate import (
    RULES,
    EwmaZ,
    HoltWinters,
    MaxOf,
    Null,
    Periodic,
    RangeRule,
    RobustMad,
    SeasonalProfile,
)

__all__ = [
    "RULES",
    "AlarmGate",
    "Detector",
    "EwmaZ",
    "HoltWinters",
    "Likelihood",
    "MaxOf",
    "NeighbourDrift",
    "Null",
    "Periodic",
    "Pipeline",
    "RangeRule",
    "RobustMad",
    "ScoreInput",
    "SeasonalProfile",
    "SensorHealth",
    "State",
    "Verdict",
    "combine",
    "dumps",
    "loads",
    "recommended",
    "run",
]
