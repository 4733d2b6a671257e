"""What real sensor feeds do to a stream, injected at known rates and counted exactly.

Why exact counts: the pipeline's de-duplication, late-data handling and
dead-letter queue are tested by comparing what they report with what was
injected, so every injected imperfection is counted by kind, per domain.

Kinds (rates are shares of readings unless noted):

* ``out_of_order``: delivered up to ``watermark_s`` late, i.e. after readings
  with later event times but still inside a bounded-out-of-orderness watermark;
* ``late``: delivered between 2x ``watermark_s`` and ``late_max_s`` late, i.e.
  behind the watermark (never a poisoned or duplicated reading, never after
  the run's end);
* ``duplicates``: the same bytes (same sensor_id + seq) delivered a second time;
* ``gaps``: readings lost in transit in runs of 2-10 (seq skips them);
* ``clock_skew``: share of *sensors* whose clock is off by 5-120 s for the whole run;
* ``silent``: share of *sensors* that stop reporting at some point and never come back;
* ``poison``: readings replaced by an undecodable prefix of their bytes, a NaN
  value, or a physically impossible value, in equal shares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Named rate presets for ``--imperfections``.
PRESETS: dict[str, dict[str, float]] = {
    "none": {},
    "light": {
        "out_of_order": 0.01,
        "late": 0.002,
        "duplicates": 0.005,
        "gaps": 0.005,
        "clock_skew": 0.01,
        "silent": 0.01,
    },
    "heavy": {
        "out_of_order": 0.05,
        "late": 0.01,
        "duplicates": 0.02,
        "gaps": 0.02,
        "clock_skew": 0.05,
        "silent": 0.03,
        "poison": 0.005,
    },
}

POISON_KINDS = ("undecodable", "nan", "impossible")


@dataclass(frozen=True)
class Rates:
    """Imperfection rates; all zero means a perfect feed."""

    out_of_order: float = 0.0
    late: float = 0.0
    duplicates: float = 0.0
    gaps: float = 0.0
    clock_skew: float = 0.0
    silent: float = 0.0
    poison: float = 0.0
    watermark_s: float = 30.0
    late_max_s: float = 300.0

    @classmethod
    def preset(cls, name: str, **overrides: float | None) -> Rates:
        values: dict[str, float] = dict(PRESETS[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def validate(self) -> list[str]:
        """Problems as user-facing phrases (empty when fine)."""
        problems = []
        for name in ("out_of_order", "late", "duplicates", "gaps", "clock_skew", "silent", "poison"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                problems.append(f"--{name.replace('_', '-')} must be a share between 0 and 1, got {v}")
        if self.out_of_order + self.late > 1.0:
            problems.append("--out-of-order + --late must not exceed 1")
        if self.watermark_s <= 0:
            problems.append(f"--watermark-s must be positive, got {self.watermark_s}")
        if self.late_max_s < 2 * self.watermark_s:
            problems.append(f"--late-max-s must be at least twice --watermark-s ({2 * self.watermark_s})")
        return problems


@dataclass
class Counts:
    """What was injected into one domain's stream."""

    out_of_order: int = 0
    late: int = 0
    duplicates: int = 0
    gap_episodes: int = 0
    gap_readings: int = 0
    skewed_sensors: int = 0
    skewed_readings: int = 0
    silent_sensors: int = 0
    silent_readings: int = 0
    poison: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POISON_KINDS, 0))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sensor_count(share: float, n: int) -> int:
    """Sensors a per-sensor share affects: rounded half up, and at least one when the share is positive.

    Why at least one: a small test city (10 sensors) with a 5 % share should
    still show the behaviour it asked for.
    """
    if share <= 0 or n == 0:
        return 0
    return min(n, max(1, int(share * n + 0.5)))


class Imperfector:
    """Per-domain imperfection state across the blocks of a run (gaps continue over block edges)."""

    def __init__(self, n: int, dt_ms: int, n_steps: int, rates: Rates, rng: np.random.Generator) -> None:
        self.n = n
        self.dt_ms = dt_ms
        self.rates = rates
        self.rng = rng
        self.counts = Counts()
        n_silent = _sensor_count(rates.silent, n)
        silent = rng.choice(n, size=n_silent, replace=False) if n_silent else np.zeros(0, dtype=np.int64)
        self.silent_from = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        if n_silent:
            self.silent_from[silent] = rng.integers(
                int(0.2 * n_steps), max(int(0.8 * n_steps), int(0.2 * n_steps) + 1), n_silent
            )
        self.counts.silent_sensors = n_silent
        n_skew = _sensor_count(rates.clock_skew, n)
        self.skew_ms = np.zeros(n, dtype=np.int64)
        if n_skew:
            who = rng.choice(n, size=n_skew, replace=False)
            sign = rng.choice(np.array([-1, 1]), size=n_skew)
            self.skew_ms[who] = sign * rng.integers(5_000, 120_001, n_skew)
        self.counts.skewed_sensors = n_skew
        self.gap_left = np.zeros(n, dtype=np.int64)
        self._gap_start_p = rates.gaps / 6.0  # mean run length 6 (2..10)

    def keep(self, step0: int, k: int) -> np.ndarray:
        """(k, n) mask of readings that reach Kafka at all (not silent, not lost in a gap)."""
        steps = step0 + np.arange(k)
        alive = steps[:, None] < self.silent_from[None, :]
        self.counts.silent_readings += int((~alive).sum())
        keep = alive.copy()
        if self._gap_start_p > 0:
            starts = self.rng.random((k, self.n)) < self._gap_start_p
            lengths = self.rng.integers(2, 11, (k, self.n))
            left = self.gap_left
            for row in range(k):
                new = starts[row] & (left == 0) & alive[row]
                self.counts.gap_episodes += int(new.sum())
                left = np.where(new, lengths[row], left)
                lost = (left > 0) & alive[row]
                keep[row] &= ~lost
                self.counts.gap_readings += int(lost.sum())
                left = np.maximum(left - 1, 0)
            self.gap_left = left
        return keep

    def skew(self, sensor: np.ndarray) -> np.ndarray:
        """Clock error (ms) of each reading's sensor; counts skewed readings."""
        s = self.skew_ms[sensor]
        self.counts.skewed_readings += int(np.count_nonzero(s))
        return s

    def poison(self, m: int) -> np.ndarray:
        """Poison kind per reading: 0 none, 1 undecodable, 2 NaN, 3 impossible."""
        kinds = np.zeros(m, dtype=np.int8)
        if self.rates.poison <= 0 or m == 0:
            return kinds
        hit = self.rng.random(m) < self.rates.poison
        kinds[hit] = self.rng.integers(1, 4, int(hit.sum()))
        for j, name in enumerate(POISON_KINDS, start=1):
            self.counts.poison[name] += int((kinds == j).sum())
        return kinds

    def delays(
        self, m: int, clean: np.ndarray, room_ms: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(delay_ms per reading, duplicate mask, delay_ms of each duplicate).

        ``clean`` marks readings that are not poisoned; ``room_ms`` is how late
        each may arrive and still arrive within the run. Only clean readings
        with room are delivered late, and late readings are never duplicated,
        so that a pipeline's counts can be compared with these exactly: the
        dead-letter count is the poison count, the late count is ``late``
        (a late reading does not also hide among the dead letters or arrive
        after a bounded job has stopped reading), the duplicate count is
        ``duplicates``. Draws are the same whatever the masks, so a change of
        masks never shifts the rest of a seeded run.
        """
        r = self.rates
        u = self.rng.random(m)
        ooo = u < r.out_of_order
        late = (u >= r.out_of_order) & (u < r.out_of_order + r.late)
        delay = np.zeros(m, dtype=np.int64)
        w = int(r.watermark_s * 1000)
        delay[ooo] = self.rng.integers(1_000, max(w, 1_001) + 1, int(ooo.sum()))
        delay[late] = self.rng.integers(2 * w, int(r.late_max_s * 1000) + 1, int(late.sum()))
        allowed = clean if room_ms is None else clean & (delay <= room_ms)
        demoted = late & ~allowed
        delay[demoted] = 0  # delivered on time instead
        late &= allowed
        self.counts.out_of_order += int(ooo.sum())
        self.counts.late += int(late.sum())
        dup = (self.rng.random(m) < r.duplicates) & clean & ~late
        dup_delay = self.rng.integers(0, w + 1, int(dup.sum()))
        self.counts.duplicates += int(dup.sum())
        return delay, dup, dup_delay
