"""Event-level scores of one backtest run: pure functions of labelled windows and detections.

Why a model of its own beside ``evaluation.scoring``: a backtest scores what the
detect job *alerted*, and an alert names sensors and lasts from the window it was
raised in to its last update, while the benchmark scorers take one alarm row per
series. So an event here is a labelled window over a set of sensors, a detection
an interval over a set of sensors, and they match when they share a sensor and
overlap (the detection may end up to ``slack_ms`` after the window: recovery
transients are the same incident). The rules, written once:

* a label is detected when at least one detection matches it; time to detect is
  from the label's start to the first matching detection being active (0 when an
  alert already standing covers the start);
* a detection that matches no label is a false alert; a second detection of a
  label already detected is a repeat: neither a hit nor a false alert (one
  incident, one ticket - as ``evaluation.scoring.event_score`` counts alarms);
* precision = detected labels / (detected labels + false alerts), recall =
  detected labels / labels, F1 their harmonic mean; false alerts per day over
  the run's time range.

The NAB and BATADAL scores come from ``evaluation.scoring`` (the benchmarks' own
rules live there once), fed per series on the run's window grid.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from citystream.evaluation import scoring

DAY_MS = 86_400_000
#: NAB's three cost profiles, as the table and the store name them.
NAB_PROFILES = {
    "standard": "standard",
    "low_fp": "reward_low_FP_rate",
    "low_fn": "reward_low_FN_rate",
}


@dataclass(frozen=True)
class Label:
    """A labelled window: ``keys`` (sensor ids) of ``domain`` were anomalous in [start_ms, end_ms]."""

    label_id: str
    domain: str
    kind: str
    keys: tuple[str, ...]
    start_ms: int
    end_ms: int
    source: str = ""

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Label:
        """From a citystream.Label record (labels topic, the simulator's JSONL, the store's labels table)."""
        return cls(
            str(rec["label_id"]),
            str(rec["domain"]),
            str(rec["kind"]),
            tuple(sorted(rec["sensor_ids"])),
            _ms(rec["start_time"]),
            _ms(rec["end_time"]),
            str(rec.get("source") or ""),
        )


@dataclass(frozen=True)
class Detection:
    """One alert (or anomaly) of a run: raised at ``time_ms``, standing until ``end_ms``."""

    detection_id: str
    domain: str
    kind: str
    keys: tuple[str, ...]
    time_ms: int
    end_ms: int

    @classmethod
    def from_alerts(cls, messages: Iterable[Mapping[str, Any]]) -> list[Detection]:
        """citystream.Alert lifecycle messages -> one detection per ``alert_id``.

        Raised when its first message was emitted (the window it ended, ``last_seen``
        of the open message), keys the union over its updates.
        """
        by_id: dict[str, list[Mapping[str, Any]]] = {}
        for m in messages:
            by_id.setdefault(str(m["alert_id"]), []).append(m)
        out = []
        for aid, msgs in by_id.items():
            times = [_ms(m["last_seen"]) for m in msgs]
            keys = sorted({str(k) for m in msgs for k in m["affected_keys"]})
            first = msgs[times.index(min(times))]
            out.append(
                cls(aid, str(first["domain"]), str(first["kind"]), tuple(keys), min(times), max(times))
            )
        return sorted(out, key=lambda d: (d.time_ms, d.detection_id))


@dataclass(frozen=True)
class TimeRange:
    """The half-open range [from_ms, to_ms) a run covered, on a grid of ``window_ms``."""

    from_ms: int
    to_ms: int
    window_ms: int = 60_000

    @property
    def days(self) -> float:
        return (self.to_ms - self.from_ms) / DAY_MS

    @property
    def rows(self) -> int:
        return max(0, (self.to_ms - self.from_ms) // self.window_ms)

    def row(self, t_ms: int) -> int:
        return (t_ms - self.from_ms) // self.window_ms


@dataclass(frozen=True)
class Outcome:
    """How a detection (``hit``, ``repeat``, ``false``) or a label (``missed``) fared.

    A detection that is the first to detect several labels has one ``hit`` per label,
    so the hits are the detected labels, one each.
    """

    outcome: str
    detection: Detection | None
    label: Label | None
    ttd_ms: int | None = None


@dataclass
class Scores:
    """Everything a backtest reports for one configuration over one range."""

    labels: int = 0
    detections: int = 0
    detected: int = 0
    false_alerts: int = 0
    repeats: int = 0
    days: float = 0.0
    ttd_ms: list[int] = field(default_factory=list)
    nab: dict[str, float] = field(default_factory=dict)
    batadal: scoring.BatadalScore | None = None
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def precision(self) -> float:
        n = self.detected + self.false_alerts
        return self.detected / n if n else math.nan

    @property
    def recall(self) -> float:
        return self.detected / self.labels if self.labels else math.nan

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if math.isnan(p) or math.isnan(r):
            return math.nan
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def ttd_median_s(self) -> float:
        return quantile(self.ttd_ms, 0.5) / 1000.0

    @property
    def ttd_p90_s(self) -> float:
        return quantile(self.ttd_ms, 0.9) / 1000.0

    @property
    def s_score(self) -> float | None:
        return self.batadal.s if self.batadal is not None else None

    @property
    def false_alerts_per_day(self) -> float:
        return self.false_alerts / self.days if self.days > 0 else math.nan


def quantile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), NaN when empty."""
    xs = sorted(values)
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def matches(det: Detection, lab: Label, slack_ms: int) -> bool:
    """Same department, a shared sensor, and the detection stands at some time in the label's window."""
    return (
        det.domain == lab.domain
        and not set(det.keys).isdisjoint(lab.keys)
        and det.time_ms <= lab.end_ms + slack_ms
        and det.end_ms >= lab.start_ms
    )


def score_events(
    detections: Sequence[Detection],
    labels: Sequence[Label],
    rng: TimeRange,
    slack_ms: int = 180_000,
) -> Scores:
    """Precision, recall, time to detect and false alerts per day (the module's rules)."""
    labs = sorted(
        (lb for lb in labels if lb.end_ms >= rng.from_ms and lb.start_ms < rng.to_ms),
        key=lambda lb: (lb.start_ms, lb.label_id),
    )
    dets = sorted(
        (d for d in detections if rng.from_ms <= d.time_ms < rng.to_ms),
        key=lambda d: (d.time_ms, d.detection_id),
    )
    sc = Scores(labels=len(labs), detections=len(dets), days=rng.days)
    first: dict[str, int] = {}
    matched: set[str] = set()
    for lab in labs:
        hits = [d for d in dets if matches(d, lab, slack_ms)]
        if not hits:
            sc.outcomes.append(Outcome("missed", None, lab))
            continue
        t = min(max(d.time_ms, lab.start_ms) for d in hits)
        first[lab.label_id] = t
        sc.ttd_ms.append(t - lab.start_ms)
        matched.update(d.detection_id for d in hits)
    sc.detected = len(first)
    credited: set[str] = set()
    for d in dets:
        if d.detection_id not in matched:
            sc.false_alerts += 1
            sc.outcomes.append(Outcome("false", d, None))
            continue
        mine = [lb for lb in labs if matches(d, lb, slack_ms)]
        new = [lb for lb in mine if lb.label_id not in credited]
        for lb in new:  # one row per label this detection is the first to detect
            credited.add(lb.label_id)
            sc.outcomes.append(Outcome("hit", d, lb, first[lb.label_id] - lb.start_ms))
        if not new:
            sc.repeats += 1
            sc.outcomes.append(Outcome("repeat", d, mine[0]))
    return sc


def nab_scores(detections: Sequence[Detection], labels: Sequence[Label], rng: TimeRange) -> dict[str, float]:
    """The NAB score per profile, every sensor one NAB file on the run's window grid.

    A label's window is its own span (rows it covers, overlapping spans merged);
    a detection is an alarm at the row it was raised in, on every sensor it
    names. Sensors with neither add nothing to any of the sums, so only those
    with a label or a detection are scored.
    """
    n = rng.rows
    windows: dict[tuple[str, str], list[tuple[int, int]]] = {}
    alarms: dict[tuple[str, str], list[int]] = {}
    for lb in labels:
        a, b = max(rng.row(lb.start_ms), 0), min(rng.row(lb.end_ms), n - 1)
        if a <= b:
            for k in lb.keys:
                windows.setdefault((lb.domain, k), []).append((a, b))
    for d in detections:
        for k in d.keys:
            alarms.setdefault((d.domain, k), []).append(rng.row(d.time_ms))
    out: dict[str, float] = {}
    for name, profile in NAB_PROFILES.items():
        files = [
            scoring.nab_file_score(n, alarms.get(s, []), _merged(windows.get(s, [])), profile)
            for s in sorted(set(windows) | set(alarms))
        ]
        out[name] = scoring.nab_normalised(files)
    return out


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def batadal(
    detections: Sequence[Detection], labels: Sequence[Label], rng: TimeRange
) -> scoring.BatadalScore | None:
    """BATADAL's S over hourly flags (an hour is flagged when a detection is raised in it)."""
    hours = (rng.to_ms - rng.from_ms + 3_599_999) // 3_600_000
    attacks = [
        (
            max(0, (lb.start_ms - rng.from_ms) // 3_600_000),
            min(hours - 1, (lb.end_ms - rng.from_ms) // 3_600_000),
        )
        for lb in labels
    ]
    attacks = [(a, b) for a, b in attacks if a <= b]
    if not attacks or hours <= 0:
        return None
    flags = [False] * hours
    for d in detections:
        h = (d.time_ms - rng.from_ms) // 3_600_000
        if 0 <= h < hours:
            flags[h] = True
    return scoring.batadal_score(flags, attacks)


def score_run(
    detections: Sequence[Detection],
    labels: Sequence[Label],
    rng: TimeRange,
    slack_ms: int = 180_000,
) -> Scores:
    """All the scores of one run: the hook a replay (or any detection source) plugs into.

    BATADAL's S only when every label came from BATADAL (hourly data, one system).
    """
    sc = score_events(detections, labels, rng, slack_ms)
    in_range = [d for d in detections if rng.from_ms <= d.time_ms < rng.to_ms]
    sc.nab = nab_scores(in_range, labels, rng) if rng.rows else {}
    if labels and all(lb.source == "batadal" for lb in labels):
        sc.batadal = batadal(in_range, labels, rng)
    return sc


def _ms(value: Any) -> int:
    """Epoch milliseconds from an int (Avro, JSONL) or a datetime (the store)."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return round(aware.timestamp() * 1000)
    return int(value)
