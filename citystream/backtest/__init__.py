"""Backtests: run detection configurations over a time range and score them against labels.

Why a package beside ``evaluation``: evaluation scores the detector on the
public benchmarks; a backtest answers an operator's question about *their*
data - would this configuration have caught last month's main break, and how
many false alarms would it have raised - and keeps the answer (store,
dashboard, report). The scoring is pure (:mod:`.events`); detections come from
in-process detection over stored or simulated aggregates (:mod:`.runner`) or,
through :func:`.events.score_run` / :func:`.runner.result_of`, from a replay.
"""

from citystream.backtest.events import Detection, Label, Scores, TimeRange, score_run
from citystream.backtest.runner import RunResult, result_of

__all__ = ["Detection", "Label", "RunResult", "Scores", "TimeRange", "result_of", "score_run"]
