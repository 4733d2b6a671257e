"""``citystream evaluate`` as a library: the quality report from the detection classes the job runs.

Why a facade: the command, the tests and the lead's README table all want "the report"
without knowing how it is split - benchmark drivers (``benchmarks``), the seeded
simulator run (``simulator``) and the markdown (``report``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from citystream.detection import DetectionConfig
from citystream.errors import UserError
from citystream.evaluation.benchmarks import (
    VARIANTS,
    RecordingAlarms,
    Result,
    Variant,
    compute_alarms,
    load_datasets,
    run_evaluation,
    score_variants,
)
from citystream.evaluation.export import exporter
from citystream.evaluation.report import describe_protocol, render, render_selection, render_simulator
from citystream.evaluation.selection import leave_one_out, score_candidates
from citystream.evaluation.simulator import (
    SIM_HELD_OUT_SEEDS,
    SIM_METRICS,
    SIM_SLACK_WINDOWS,
    SIM_SLICES,
    SimScore,
    SimSlice,
    run_simulator_evaluation,
    score_simulator,
    simulator_aggregates,
    simulator_run,
)

__all__ = [
    "SIM_HELD_OUT_SEEDS",
    "SIM_METRICS",
    "SIM_SLACK_WINDOWS",
    "SIM_SLICES",
    "VARIANTS",
    "Result",
    "SimScore",
    "SimSlice",
    "Variant",
    "describe_protocol",
    "render",
    "render_simulator",
    "report",
    "run_evaluation",
    "run_simulator_evaluation",
    "score_simulator",
    "simulator_aggregates",
    "simulator_run",
]


def report(
    root: Path,
    config: DetectionConfig,
    slice_: str,
    chosen: Sequence[str],
    progress: Callable[[str], None] | None = None,
    export: Path | None = None,
    workers: int = 1,
    candidates: Sequence[Variant] | None = None,
    facts: dict[str, Any] | None = None,
) -> str:
    """The whole report text for the chosen datasets ("nab", "batadal", "skab", "simulator").

    ``export``: a folder for the shipped configuration's detections in NAB's results
    layout and BATADAL's flag files (``export.py``). ``candidates``: also run the
    leave-one-dataset-out selection over them (``selection.py``) and append its section;
    the report's own variants and the candidates share one pass over the loaded data.
    ``facts``: the command line and candidates file, quoted in that section.
    """
    started = time.perf_counter()
    benchmarks = tuple(d for d in chosen if d != "simulator")
    if candidates is not None and len(benchmarks) < 2:
        raise UserError("selection needs at least two benchmarks (leave-one-dataset-out)")
    hook = exporter(export) if export is not None else None
    loaded = load_datasets(root, slice_, benchmarks, progress)
    extra = _extra_candidates(candidates or ())
    alarms = compute_alarms(loaded, [*VARIANTS, *extra], config, workers, progress)
    results = score_variants(loaded, VARIANTS, alarms, hook)
    sim_text = ""
    if "simulator" in chosen:
        seeds: list[int | None] = [None]
        if slice_ == "full":
            seeds += list(SIM_HELD_OUT_SEEDS)
        for seed in seeds:
            scores, sim_facts = run_simulator_evaluation(slice_, config=config, progress=progress, seed=seed)
            sim_facts["held_out"] = seed is not None
            sim_text += render_simulator(scores, sim_facts)
    header = "## Anomaly detection quality\n\n" + (
        describe_protocol(slice_, config) if benchmarks else f"Slice `{slice_}`."
    )
    text = render(results, header) + sim_text
    if candidates is not None:
        named = _alias_alarms(alarms, candidates)
        matrix = score_candidates(loaded, candidates, named)
        rounds = leave_one_out(matrix)
        info = {"command": "citystream evaluate", "candidates": "infra/detection_candidates.toml"}
        info |= dict(facts or {})
        info |= {"slice": slice_, "workers": workers, "seconds": time.perf_counter() - started}
        text += render_selection(matrix, candidates, rounds, info)
    return text


def _key(v: Variant) -> tuple[object, ...]:
    """What makes two variants compute the same alarms: their overrides and whether places run."""
    return (v.places, *sorted(v.overrides.items()))


def _extra_candidates(candidates: Sequence[Variant]) -> list[Variant]:
    """Candidates that are not already a report variant (same overrides: computed once)."""
    known = {_key(v) for v in VARIANTS if v.name != "null"}
    return [c for c in candidates if _key(c) not in known]


def _alias_alarms(
    alarms: dict[tuple[str, str], list[RecordingAlarms]], candidates: Sequence[Variant]
) -> dict[tuple[str, str], list[RecordingAlarms]]:
    """Alarms under the candidates' names, reusing a report variant's run when the settings match."""
    by_key = {_key(v): v.name for v in VARIANTS if v.name != "null"}
    out = dict(alarms)
    for c in candidates:
        source = by_key.get(_key(c), c.name)
        for (name, ds), found in alarms.items():
            if name == source:
                out[(c.name, ds)] = found
    return out
