"""What one key said over a recording, in the shapes the scorers read; the alarm score levels.

Why its own module: stage 1's channels (``benchmarks``) and the per-place checks
(``places``, ``joint``) all report in this shape, and each of them must be
importable without the others.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from citystream.evaluation.datasets import Recording


def cadence_ms(rec: Recording) -> int:
    return int(np.median(np.diff(rec.t_ms))) if len(rec) > 1 else 1000


class RecordingAlarms(NamedTuple):
    """What one recording's keys said, per row, in the shapes the scorers read.

    ``fired``: rows where a key's verdict turns anomalous (one incident, one
    ticket: event-level scores). ``active``: a condition is active (BATADAL's
    hourly flags). ``detections``: every row with an anomalous verdict - what
    NAB counts, one detection per alarmed row. ``scores``: the strongest
    verdict score of the row in [0, 1] (the NAB results file's anomaly score).
    """

    fired: list[int]
    active: list[bool]
    detections: list[int]
    scores: np.ndarray


#: Every alarmed row scores at least this and no other row reaches it, so a scorer that turns
#: scores into detections at this threshold (NAB's way) sees exactly the detector's alarms. An
#: anomalous verdict scores at least tail_score(3) = 0.9973 (0.999 for the calibrated model).
ALARM_SCORE = 0.997
#: The most a row without an alarm scores (its evidence may be as strong, e.g. in a refractory period).
QUIET_SCORE_CAP = 0.996
