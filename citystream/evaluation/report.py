"""The quality report's markdown: one table per benchmark, one per simulator seed.

Why apart from the drivers: the same text goes to the terminal and to
``reports/quality.md``, and its layout changes for other reasons than the scoring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from citystream.detection import CalibratedLevel, DetectionConfig
from citystream.evaluation.benchmarks import Result, Variant
from citystream.evaluation.scoring import EventScore
from citystream.evaluation.selection import HeldOut, ScoreMatrix, best_by_mean_rank, rank_table, spread
from citystream.evaluation.simulator import SimScore


def _f(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ttd(ev: EventScore, unit_ms: float, unit: str) -> str:
    return "–" if not ev.ttd else f"{ev.median_ttd / unit_ms:+.1f} {unit}"


def _event_cells(r: Result, unit_ms: float, unit: str) -> list[str]:
    e = r.events
    return [_f(e.precision, 2), _f(e.recall, 2), _f(e.f1, 2), _ttd(e, unit_ms, unit), str(r.alarms)]


def render(results: dict[str, list[Result]], header: str = "") -> str:
    """Markdown tables, one per dataset; the same text goes to the terminal and the report file."""
    lines = [header] if header else []
    for name, rows in results.items():
        lines += ["", f"### {name}", ""]
        if name == "NAB":
            lines += [
                "| detector | NAB standard | NAB low FP | NAB low FN "
                "| P | R | F1 | median TTD | alarms | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            for r in rows:
                cells = [_f(r.nab), _f(r.nab_low_fp), _f(r.nab_low_fn), *_event_cells(r, 3.6e6, "h")]
                lines.append(f"| {r.detector} | {' | '.join(cells)} | {r.note} |")
        elif name == "BATADAL":
            lines += [
                "| detector | S | S_TTD | S_CM | hours active | P | R | F1 | median TTD | alarms | note |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            ]
            for r in rows:
                cells = [
                    _f(r.batadal, 3),
                    _f(r.s_ttd, 3),
                    _f(r.s_cm, 3),
                    f"{100 * r.active:.0f}%",
                    *_event_cells(r, 3.6e6, "h"),
                ]
                lines.append(f"| {r.detector} | {' | '.join(cells)} | {r.note} |")
        else:
            lines += [
                "| detector | P | R | F1 | median TTD | alarms | note |",
                "|---|---:|---:|---:|---:|---:|---|",
            ]
            for r in rows:
                lines.append(f"| {r.detector} | {' | '.join(_event_cells(r, 1e3, 's'))} | {r.note} |")
    return "\n".join(lines) + "\n"


def render_simulator(scores: dict[str, SimScore], facts: dict[str, Any]) -> str:
    lines = [
        "",
        f"### Simulator seed {facts['seed']} (alerts vs labels)",
        "",
        f"Seed {facts['seed']}{' (held out: no threshold tuned on it)' if facts.get('held_out') else ''}, "
        f"{facts['hours']:g} h, {facts['sensors']} sensors, 1-minute aggregates "
        f"({facts['aggregates']} rows); detectors and alert lifecycle from infra/detection.toml. "
        "Targets per domain: recall >= 0.95, precision >= 0.9, median TTD <= 2 windows.",
        "",
        "| domain | events | recall | alerts | precision | median TTD (windows) "
        "| stuck: health / max alerts |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for d, s in scores.items():
        lines.append(
            f"| {d} | {s.events} | {_f(s.recall, 2)} | {s.alerts} | {_f(s.precision, 2)} | "
            f"{_f(s.median_ttd, 2)} | {s.stuck_with_health}/{s.stuck_events} / {s.stuck_max_alerts} |"
        )
    return "\n".join(lines) + "\n"


def describe_protocol(slice_: str, config: DetectionConfig) -> str:
    """The report's first paragraph: what was run, with the settings in force."""
    r, lvl = config.imported, CalibratedLevel()
    return (
        f"Slice `{slice_}`. Every row is the detect job's per-metric stage (`MetricDetector`), one key per "
        f"channel, one row per reading (its window as long as the series' sampling interval), called as the "
        "job calls it; the rule is "
        f"`[imported]` of infra/detection.toml (level model `{r.level_model}`). Calibrated level model: "
        f"seasonal profile + EWMA, each self-calibrated, alarm at {lvl.on} (clears below {lvl.off}), hold "
        f"{lvl.hold_windows} and refractory {lvl.refractory_windows} readings. EWMA level model: |z| >= "
        f"{r.level_z:g} after {r.warmup_windows} readings. A recording's alarms are the union over its "
        "channels. NAB: scored as NAB's code scores a fixed threshold (probationary period "
        "min(floor(15% of rows), 750), every alarmed row a detection, normalised between the null and the "
        "perfect detector); TTD from the labelled point (negative = before it). BATADAL: "
        "warmed on training 1, S from hourly active flags. SKAB: experiments of a folder concatenated."
    )


def _overrides(v: Variant) -> str:
    if not v.overrides:
        return "as configured"
    return ", ".join(f"`{k}={list(x) if isinstance(x, tuple) else x}`" for k, x in v.overrides.items())


def _score(dataset: str, x: float) -> str:
    return _f(x, 1 if dataset.startswith("NAB") else 3)


def render_selection(
    m: ScoreMatrix, candidates: Sequence[Variant], rounds: Sequence[HeldOut], facts: dict[str, Any]
) -> str:
    """The leave-one-dataset-out section: every candidate's scores, each round's choice, the spread."""
    table = rank_table(m)
    overall, mean = best_by_mean_rank(table)
    cols = " | ".join(m.datasets)
    lines = [
        "",
        "## Selection of the `[imported]` settings (leave-one-dataset-out)",
        "",
        f"Made by `{facts['command']}` (slice `{facts['slice']}`, {facts['workers']} worker process(es), "
        f"wall time {facts['seconds']:.0f} s for this whole report). Candidates: `{facts['candidates']}`, "
        "each an override of `[imported]`. Scores: NAB standard profile (capped probationary period, per "
        "category), BATADAL S on training 2 (warmed on training 1; the shared folder holds no BATADAL test "
        "set), SKAB event F1. The simulator runs judge its domains with the domain rules, not `[imported]`: "
        "the candidates do not apply there, so it is fixed (see the simulator tables, when run) and left out "
        "of the ranking. Rank 1 = best on that dataset; mean rank over all development datasets.",
        "",
        f"| candidate | overrides | {cols} | mean rank |",
        "|---|---|" + "---:|" * (len(m.datasets) + 1),
    ]
    for i, v in enumerate(candidates):
        cells = [f"{_score(d, m.scores[i, j])} ({table[i, j]:g})" for j, d in enumerate(m.datasets)]
        lines.append(f"| {v.name} | {_overrides(v)} | {' | '.join(cells)} | {mean[i]:.2f} |")
    lines += [
        "",
        "Leave one dataset out: the candidate with the best mean rank on the other datasets, scored on "
        "the held-out one; rho = rank correlation between that development ranking and the held-out "
        "ranking (1: the development data predicted the held-out order exactly).",
        "",
        "| held out | chosen on the others | its dev mean rank | held-out score | held-out rank "
        "| best on held-out | rho |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in rounds:
        lines.append(
            f"| {r.dataset} | {r.chosen} | {r.dev_mean_rank:.2f} | {_score(r.dataset, r.score)} | "
            f"{r.rank:g} of {len(m.candidates)} | {r.best} ({_score(r.dataset, r.best_score)}) | "
            f"{_f(r.rho, 2)} |"
        )
    s = spread(rounds)
    lines += [
        "",
        "Spread over the held-out rounds (min / median / max): score "
        f"{' / '.join(_f(x, 3) for x in s.scores)} (NAB / 100, S and F1 as they are); held-out rank "
        f"{' / '.join(_f(x, 1) for x in s.ranks)}; rho {' / '.join(_f(x, 2) for x in s.rho)}.",
        "",
        f"Chosen on all development datasets (best mean rank): **{candidates[overall].name}** "
        f"(mean rank {mean[overall]:.2f}).",
    ]
    return "\n".join(lines) + "\n"
