"""Honest selection of the ``[imported]`` settings: leave-one-dataset-out over the development data.

Why: picking the setting with the best scores on the benchmarks it is then reported on
measures how well it was fitted, not how it does on a stream nobody looked at (on new
data the development ranking predicted nothing: rank correlation about -0.2). So every
candidate is scored on each development dataset separately, and for each dataset held
out in turn the candidate with the best *mean rank* on the others is chosen and scored
on the held-out one. Mean rank, not mean score: scores live on different scales (NAB
0-100, BATADAL S and SKAB F1 in 0-1), and a candidate that wins one dataset by a mile and
loses the rest must not be chosen. The spread of the held-out results, and how well
the development ranking predicted the held-out one, are the honest numbers.

The ranking logic is pure (a score matrix in, choices out) so tests can check it on a
hand-made matrix; ``score_candidates`` fills the matrix from the benchmark drivers.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from citystream.detection import DetectionConfig, MetricRule
from citystream.detection.config import DEFAULT_CONFIG, parse_config, read_toml
from citystream.errors import UserError
from citystream.evaluation.benchmarks import RecordingAlarms, Variant, score_dataset
from citystream.evaluation.datasets import Dataset

#: Where ``evaluate --select`` reads its candidates by default.
DEFAULT_CANDIDATES = DEFAULT_CONFIG.parent / "detection_candidates.toml"


# --------------------------------------------------------------------------- candidates


def parse_candidates(data: Mapping[str, Any], config: DetectionConfig, source: str) -> list[Variant]:
    """``[[candidate]]`` tables (name, note, overrides) as variants of the ``[imported]`` rule.

    Overrides are validated by the detection config's own parser (an unknown key or a
    wrong type fails here, naming the candidate, not in the middle of a long run).
    """
    unknown = set(data) - {"candidate"}
    if unknown:
        raise UserError(f"{source}: unknown top-level keys {sorted(unknown)}")
    out: list[Variant] = []
    for i, table in enumerate(data.get("candidate", [])):
        name = table.get("name")
        where = f"{source} candidate {i + 1} ({name!r})"
        if not isinstance(name, str) or not name or name == "null":
            raise UserError(f"{where}: needs a name (not 'null')")
        extra = set(table) - {"name", "note", "overrides"}
        if extra:
            raise UserError(f"{where}: unknown keys {sorted(extra)}")
        overrides = dict(table.get("overrides", {}))
        typed = parse_config({"imported": overrides}, where).imported
        values = {k: getattr(typed, k) for k in overrides}
        _check_rule(dataclasses.replace(config.imported, **values), where)
        out.append(Variant(name, values, str(table.get("note", ""))))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: candidate names must be unique")
    if len(out) < 2:
        raise UserError(f"{source}: selection needs at least two candidates")
    return out


def _check_rule(rule: MetricRule, where: str) -> None:
    """The whole rule a candidate stands for, through the config's validator (cross-field checks too)."""
    default = MetricRule(rule.name)
    table: dict[str, Any] = {}
    for f in dataclasses.fields(MetricRule):
        value = getattr(rule, f.name)
        if f.name == "name" or value is None or value == getattr(default, f.name):
            continue
        table[f.name] = list(value) if isinstance(value, tuple) else value
    parse_config({"imported": table}, where)


def load_candidates(config: DetectionConfig, path: Path | None = None) -> list[Variant]:
    p = path if path is not None else DEFAULT_CANDIDATES
    return parse_candidates(read_toml(p, "candidates file"), config, str(p))


# --------------------------------------------------------------------------- development datasets


def development_sets(loaded: Mapping[str, Dataset]) -> dict[str, tuple[str, list[int]]]:
    """Selection's datasets: each NAB category on its own, the other benchmarks whole.

    Maps a label ("NAB realKnownCause", "SKAB", ...) to (loaded dataset, recording indices).
    """
    out: dict[str, tuple[str, list[int]]] = {}
    for name, ds in loaded.items():
        if name != "NAB":
            out[name] = (name, list(range(len(ds.recordings))))
            continue
        for r, rec in enumerate(ds.recordings):
            category = rec.name.split("/", 1)[0]
            out.setdefault(f"NAB {category}", (name, []))[1].append(r)
    return out


def common_scale(label: str, score: float) -> float:
    """Scores on one scale for the spread: NAB / 100, BATADAL S and F1 as they are."""
    return score / 100.0 if label.startswith("NAB") else score


@dataclass(frozen=True)
class ScoreMatrix:
    """Candidates x datasets, higher is better (NAB standard, BATADAL S, SKAB event F1)."""

    candidates: tuple[str, ...]
    datasets: tuple[str, ...]
    scores: np.ndarray

    def column(self, dataset: str) -> np.ndarray:
        return self.scores[:, self.datasets.index(dataset)]


def score_candidates(
    loaded: Mapping[str, Dataset],
    candidates: Sequence[Variant],
    alarms: Mapping[tuple[str, str], list[RecordingAlarms]],
) -> ScoreMatrix:
    """Each candidate's headline score on each development set (alarms from ``compute_alarms``)."""
    sets = development_sets(loaded)
    scores = np.full((len(candidates), len(sets)), np.nan)
    for j, (name, idx) in enumerate(sets.values()):
        ds = loaded[name]
        part = Dataset(ds.name, [ds.recordings[r] for r in idx])
        for i, cand in enumerate(candidates):
            found = alarms[(cand.name, name)]
            scores[i, j] = score_dataset(part, [found[r] for r in idx]).primary
    return ScoreMatrix(tuple(c.name for c in candidates), tuple(sets), scores)


# --------------------------------------------------------------------------- ranking


def ranks(scores: np.ndarray) -> np.ndarray:
    """Rank 1 = highest score; ties share their average rank; a missing score ranks last."""
    x = np.where(np.isnan(scores), -np.inf, scores)
    out = np.empty(len(x))
    order = sorted(range(len(x)), key=lambda i: -x[i])
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def rank_table(m: ScoreMatrix) -> np.ndarray:
    """Per dataset (column), every candidate's rank."""
    return np.column_stack([ranks(m.scores[:, j]) for j in range(len(m.datasets))])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (Pearson on average ranks); NaN when either side has no spread."""
    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def best_by_mean_rank(rank_cols: np.ndarray) -> tuple[int, np.ndarray]:
    """The candidate with the lowest mean rank (first listed wins a tie), and every mean rank."""
    mean = rank_cols.mean(axis=1)
    return int(np.argmin(mean)), mean


@dataclass(frozen=True)
class HeldOut:
    """One leave-one-dataset-out round."""

    dataset: str
    chosen: str
    dev_mean_rank: float
    score: float  #: the chosen candidate's score on the held-out dataset
    rank: float  #: ... and its rank there among all candidates
    best: str  #: the candidate that would have won the held-out dataset
    best_score: float
    rho: float  #: rank correlation between the development ranking and the held-out one


def leave_one_out(m: ScoreMatrix) -> list[HeldOut]:
    """For each dataset held out: choose on the others by mean rank, score on it."""
    table = rank_table(m)
    rounds: list[HeldOut] = []
    for j, name in enumerate(m.datasets):
        others = [k for k in range(len(m.datasets)) if k != j]
        chosen, mean = best_by_mean_rank(table[:, others])
        col = m.scores[:, j]
        best = int(np.nanargmax(col)) if not np.all(np.isnan(col)) else chosen
        rounds.append(
            HeldOut(
                dataset=name,
                chosen=m.candidates[chosen],
                dev_mean_rank=float(mean[chosen]),
                score=float(col[chosen]),
                rank=float(table[chosen, j]),
                best=m.candidates[best],
                best_score=float(col[best]),
                # low mean rank = good, high score = good: correlate -mean rank with the score
                rho=spearman(-mean, col),
            )
        )
    return rounds


@dataclass(frozen=True)
class Spread:
    """How the held-out results vary across the datasets held out."""

    scores: tuple[float, float, float]  #: min / median / max, on the common scale
    ranks: tuple[float, float, float]  #: min / median / max held-out rank of the chosen candidate
    rho: tuple[float, float, float]  #: min / median / max rank correlation dev vs held-out


def _mmm(xs: Sequence[float]) -> tuple[float, float, float]:
    ys = [x for x in xs if x == x]
    if not ys:
        return (float("nan"),) * 3  # type: ignore[return-value]
    return min(ys), statistics.median(ys), max(ys)


def spread(rounds: Sequence[HeldOut]) -> Spread:
    return Spread(
        _mmm([common_scale(r.dataset, r.score) for r in rounds]),
        _mmm([r.rank for r in rounds]),
        _mmm([r.rho for r in rounds]),
    )
