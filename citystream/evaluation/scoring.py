"""How good is a detector: NAB score, BATADAL S score, event-level precision/recall/F1.

Why three: NAB rewards *early* detection and charges for every false alarm
(operators' cost model); BATADAL's S is the water-security community's
yardstick (time to detect + hourly confusion matrix); event-level P/R/F1 and
median time-to-detect are what an operator actually feels. All three are
pure functions of alarms and labelled events, so they are tested by hand.

NAB is scored as NAB's own code scores a detector at a fixed threshold
(``nab/sweeper.py``: ``calcSweepScore`` then ``calcScoreByThreshold``; the
normalisation of ``nab/runner.py``), so our numbers can be checked against it:

- every row whose score reaches the threshold is a detection (a run of
  alarmed rows outside a window is that many false positives);
- rows before ``min(floor(0.15 * rows), 750)`` are probationary: detections
  there are ignored, and so are a window's rows there (a window wholly
  inside probation is neither hit nor missed);
- inside a window of ``w`` rows ending at row ``b``, row ``i`` scores
  ``tp * S(-(b - i + 1) / w) / S(-1)`` with ``S(y) = 2 / (1 + e^(5y)) - 1``:
  exactly ``tp`` at the window's first row, a little above 0 at its last;
  a window keeps its best (= earliest) detection, or ``-fn`` without one;
- a detection outside every window scores ``fp * S(y)`` with
  ``y = (i - b) / (w - 1)`` from the last window ending before it (``S`` is
  -1 from ``y >= 3``), or ``-fp`` when no window precedes it;
- per corpus, ``100 * (raw - null) / (perfect - null)``: ``null`` is the
  score of a detector that never fires (``-fn`` per scorable window),
  ``perfect`` is ``tp`` times the number of labelled windows.

Only the one-row window (NAB's data has none; NAB divides by zero) needs a
choice: a false positive after it costs the full ``fp``.
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NabProfile:
    tp: float
    fp: float
    fn: float


PROFILES: dict[str, NabProfile] = {
    "standard": NabProfile(1.0, 0.11, 1.0),
    "reward_low_FP_rate": NabProfile(1.0, 0.22, 1.0),
    "reward_low_FN_rate": NabProfile(1.0, 0.11, 2.0),
}

#: NAB's probationary share of a file, and its cap in rows (NAB writes it as ``0.15 * 5000``).
PROBATION_FRACTION = 0.15
PROBATION_CAP = 750


def nab_sigmoid(y: float) -> float:
    """NAB's scaled sigmoid ``2 / (1 + e^(5y)) - 1``: ~+0.987 at y=-1, 0 at y=0, -1 from y=3 on."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(
    n_rows: int, fraction: float = PROBATION_FRACTION, cap: int | None = PROBATION_CAP
) -> int:
    """Rows a detector may learn in before it is scored; NAB caps them so long files count."""
    p = math.floor(fraction * n_rows)
    return p if cap is None else min(p, cap)


@dataclass(frozen=True)
class NabFileScore:
    """Raw scores of one file for the detector, the null and the perfect detector."""

    raw: float
    null: float
    perfect: float
    tp: int
    fp: int
    fn: int


def _check_windows(n_rows: int, windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    wins = sorted((int(a), int(b)) for a, b in windows)
    for (a, b), (c, _) in itertools.pairwise(wins):
        if c <= b:
            raise ValueError(f"NAB windows overlap: rows {a}-{b} and from {c}")
    for a, b in wins:
        if not 0 <= a <= b < n_rows:
            raise ValueError(f"NAB window rows {a}-{b} outside a file of {n_rows} rows")
    return wins


def nab_detection_score(i: int, windows: Sequence[tuple[int, int]], prof: NabProfile) -> tuple[int, float]:
    """(index of the window holding row ``i`` or -1, the row's weighted NAB score)."""
    k = bisect.bisect_right([a for a, _ in windows], i) - 1  # last window starting at or before i
    if k >= 0 and i <= windows[k][1]:
        a, b = windows[k]
        return k, prof.tp * nab_sigmoid(-(b - i + 1) / (b - a + 1)) / nab_sigmoid(-1.0)
    if k < 0:
        return -1, -prof.fp
    a, b = windows[k]
    y = (i - b) / (b - a) if b > a else math.inf
    return -1, prof.fp * nab_sigmoid(y)


def nab_file_score(
    n_rows: int,
    detections: Iterable[int],
    windows: Sequence[tuple[int, int]],
    profile: NabProfile | str = "standard",
    probation: int | None = None,
) -> NabFileScore:
    """Score one file. ``detections`` are row indices; ``windows`` are inclusive row ranges."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    wins = _check_windows(n_rows, windows)
    prob = probation_length(n_rows) if probation is None else probation
    scorable = [k for k, (_, b) in enumerate(wins) if b >= prob]
    best = {k: -prof.fn for k in scorable}
    fp_score, fp = 0.0, 0
    for i in sorted(set(int(d) for d in detections)):
        if i < prob or i >= n_rows:
            continue
        k, s = nab_detection_score(i, wins, prof)
        if k >= 0:
            best[k] = max(best[k], s)
        else:
            fp += 1
            fp_score += s
    tp = sum(1 for v in best.values() if v > -prof.fn)
    return NabFileScore(
        raw=sum(best.values()) + fp_score,
        null=-prof.fn * len(scorable),
        perfect=prof.tp * len(wins),
        tp=tp,
        fp=fp,
        fn=len(scorable) - tp,
    )


def nab_normalised(files: Iterable[NabFileScore]) -> float:
    """Corpus score, 0 = null detector, 100 = perfect; NaN when there is nothing to detect."""
    fs = list(files)
    raw = sum(f.raw for f in fs)
    null = sum(f.null for f in fs)
    perfect = sum(f.perfect for f in fs)
    if perfect == null:
        return math.nan
    return 100.0 * (raw - null) / (perfect - null)


# --------------------------------------------------------------------------- BATADAL


@dataclass(frozen=True)
class BatadalScore:
    s: float
    s_ttd: float
    s_cm: float
    tpr: float
    tnr: float


def batadal_score(flags: Sequence[bool], attacks: Sequence[tuple[int, int]]) -> BatadalScore:
    """S = 0.5 S_TTD + 0.5 S_CM over hourly flags; attacks are inclusive row ranges.

    S_TTD = 1 - mean(time to first flag / attack duration), a missed attack
    counting its full duration; S_CM = (TPR + TNR) / 2 over all hours.
    """
    n = len(flags)
    if not attacks:
        raise ValueError("BATADAL scoring needs at least one attack")
    under = [False] * n
    ratios = []
    for a, b in attacks:
        if not 0 <= a <= b < n:
            raise ValueError(f"attack rows {a}-{b} outside {n} hours")
        duration = b - a + 1
        ttd = next((i - a for i in range(a, b + 1) if flags[i]), duration)
        ratios.append(ttd / duration)
        for i in range(a, b + 1):
            under[i] = True
    pos = sum(under)
    neg = n - pos
    tp = sum(1 for f, u in zip(flags, under, strict=True) if f and u)
    tn = sum(1 for f, u in zip(flags, under, strict=True) if not f and not u)
    tpr = tp / pos
    tnr = tn / neg if neg else 1.0
    s_ttd = 1.0 - sum(ratios) / len(ratios)
    s_cm = 0.5 * (tpr + tnr)
    return BatadalScore(0.5 * s_ttd + 0.5 * s_cm, s_ttd, s_cm, tpr, tnr)


# --------------------------------------------------------------------------- events


@dataclass
class EventScore:
    """Counts that add up across files; ratios are derived.

    An event is detected when at least one alarm falls in [start, end + after];
    further alarms in it neither help nor hurt (one incident, one ticket). An
    alarm in no event is a false alarm. Time to detect is measured from the
    event's reference time (its start, or the labelled anomaly point).
    """

    tp: int = 0
    fn: int = 0
    fp: int = 0
    ttd: list[float] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r) or p + r == 0:
            return 0.0 if self.tp + self.fn else math.nan
        return 2 * p * r / (p + r)

    @property
    def median_ttd(self) -> float:
        return statistics.median(self.ttd) if self.ttd else math.nan

    def __add__(self, other: EventScore) -> EventScore:
        return EventScore(self.tp + other.tp, self.fn + other.fn, self.fp + other.fp, self.ttd + other.ttd)


def event_score(
    alarms: Iterable[float],
    events: Sequence[tuple[float, float]],
    refs: Sequence[float] | None = None,
    after: float = 0.0,
    ignore_before: float | None = None,
) -> EventScore:
    """Score alarm times against labelled events (all in one unit: rows, ms, hours ...).

    ``ignore_before`` drops alarms before it (a warm-up or probationary
    period) and events that end before it.
    """
    if refs is not None and len(refs) != len(events):
        raise ValueError("refs must match events one to one")
    evs = sorted(
        (float(a), float(b), float(refs[k]) if refs is not None else float(a))
        for k, (a, b) in enumerate(events)
    )
    if ignore_before is not None:
        evs = [e for e in evs if e[1] >= ignore_before]
    first: list[float | None] = [None] * len(evs)
    fp = 0
    for t in sorted(float(x) for x in alarms):
        if ignore_before is not None and t < ignore_before:
            continue
        k = next((k for k, (a, b, _) in enumerate(evs) if a <= t <= b + after), None)
        if k is None:
            fp += 1
        elif first[k] is None:
            first[k] = t
    tp = sum(1 for f in first if f is not None)
    ttd = [f - ref for f, (_, _, ref) in zip(first, evs, strict=True) if f is not None]
    return EventScore(tp, len(evs) - tp, fp, ttd)
