"""``citystream evaluate`` as a library: the quality report from the detection classes the job runs.

Why a facade: the command, the tests and the lead's README table all want "the report"
without knowing how it is split - benchmark drivers (``benchmarks``), the seeded
simulator run (``simulator``) and the markdown (``report``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from citystream.detection import DetectionConfig
from citystream.evaluation.benchmarks import VARIANTS, Result, Variant, run_evaluation
from citystream.evaluation.export import exporter
from citystream.evaluation.report import describe_protocol, render, render_simulator
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
) -> str:
    """The whole report text for the chosen datasets ("nab", "batadal", "skab", "simulator").

    ``export``: a folder for the shipped configuration's detections in NAB's results
    layout and BATADAL's flag files (``export.py``).
    """
    benchmarks = tuple(d for d in chosen if d != "simulator")
    hook = exporter(export) if export is not None else None
    results = (
        run_evaluation(root, config, slice_, benchmarks, progress=progress, on_shipped=hook)
        if benchmarks
        else {}
    )
    sim_text = ""
    if "simulator" in chosen:
        seeds: list[int | None] = [None]
        if slice_ == "full":
            seeds += list(SIM_HELD_OUT_SEEDS)
        for seed in seeds:
            scores, facts = run_simulator_evaluation(slice_, config=config, progress=progress, seed=seed)
            facts["held_out"] = seed is not None
            sim_text += render_simulator(scores, facts)
    header = "## Anomaly detection quality\n\n" + (
        describe_protocol(slice_, config) if benchmarks else f"Slice `{slice_}`."
    )
    return render(results, header) + sim_text
