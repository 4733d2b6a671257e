"""How good is a detector: NAB score, BATADAL S score, event-level precision/recall/F1.

Why three: NAB rewards *early* detection and charges for every false alarm
(operators' cost model); BATADAL's S is the water-security community's
yardstick (time to detect + hourly confusion matrix); event-level P/R/F1 and
median time-to-detect are what an operator actually feels. All three are
pure functions of alarms and labelled events, so they are tested by hand.

NAB, as described in the datasets README (implemented from that description):
probationary first 15% of a file ignored; only the earliest detection inside
a window counts, rewarded ``tp * (2 / (1 + e^(5y)) - 1)`` with ``y`` going
from -1 at the window's first row to 0 at its last; a detection outside every
window costs ``fp`` times the same sigmoid continued past the previous
window's end (scaled by that window's length) or the full ``fp`` when no
window precedes it; a missed window costs ``fn``. Normalised per corpus:
``100 * (raw - null) / (perfect - null)``.

Choices the README leaves open, made explicit here:
- a window that ends inside the probationary period cannot be reached by
  any detector; it is left out (not counted as a miss for anyone);
- the "perfect" detector detects every window at its first row outside the
  probationary period;
- a one-row window (never seen in NAB) counts as ``y = -1``;
- the NAB code also caps the probationary period at 750 rows; the README
  does not, so ``probation_cap`` defaults to ``None``.
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


def nab_sigmoid(y: float) -> float:
    """2 / (1 + e^(5y)) - 1: ~+0.987 at y=-1, 0 at y=0, -> -1 far past a window."""
    if 5.0 * y > 700:  # e^700 overflows; the limit is -1
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probation_length(n_rows: int, fraction: float = 0.15, cap: int | None = None) -> int:
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


def _relative_position(i: int, start: int, end: int) -> float:
    if end == start:
        return -1.0
    return (i - end) / (end - start)


def nab_file_score(
    n_rows: int,
    detections: Iterable[int],
    windows: Sequence[tuple[int, int]],
    profile: NabProfile | str = "standard",
    probation: int | None = None,
) -> NabFileScore:
    """Score one file. ``detections`` are row indices; ``windows`` are inclusive row ranges."""
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    wins = sorted((int(a), int(b)) for a, b in windows)
    for (a, b), (c, _) in itertools.pairwise(wins):
        if c <= b:
            raise ValueError(f"NAB windows overlap: rows {a}-{b} and from {c}")
    for a, b in wins:
        if not 0 <= a <= b < n_rows:
            raise ValueError(f"NAB window rows {a}-{b} outside a file of {n_rows} rows")
    prob = probation_length(n_rows) if probation is None else probation
    scored = [w for w in wins if w[1] >= prob]
    starts = [a for a, _ in wins]

    raw = 0.0
    tp = fp = 0
    hit: set[int] = set()
    for i in sorted(set(int(d) for d in detections)):
        if i < prob or i >= n_rows:
            continue
        k = bisect.bisect_right(starts, i) - 1  # last window starting at or before i
        if k >= 0 and i <= wins[k][1]:
            if k not in hit:
                hit.add(k)
                tp += 1
                raw += prof.tp * nab_sigmoid(_relative_position(i, *wins[k]))
            continue
        fp += 1
        if k < 0:
            raw -= prof.fp
        else:
            a, b = wins[k]
            raw += prof.fp * nab_sigmoid((i - b) / max(b - a, 1))
    fn = sum(1 for k, w in enumerate(wins) if w in scored and k not in hit)
    raw -= prof.fn * fn
    null = -prof.fn * len(scored)
    perfect = sum(prof.tp * nab_sigmoid(_relative_position(max(a, prob), a, b)) for a, b in scored)
    return NabFileScore(raw, null, perfect, tp, fp, fn)


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
