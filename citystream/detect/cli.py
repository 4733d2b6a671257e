"""``citystream evaluate``: the detector quality report.

Why a CLI command: the quality table is the evidence for which detector
ships; anyone (and CI, on the small slice) must be able to regenerate it
with one command from the shared datasets.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DATASETS = ("nab", "batadal", "skab", "simulator")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score the anomaly detectors on NAB, BATADAL, SKAB and a seeded simulator run; write a report",
        description="Run every detector over the labelled benchmarks and print NAB score, BATADAL S, "
        "event-level precision/recall/F1 and median time-to-detect per detector.",
    )
    p.add_argument(
        "--datasets",
        type=Path,
        default=None,
        help="folder holding nab/, batadal/, skab/ (default: ../shared/datasets next to the repository)",
    )
    p.add_argument(
        "--slice",
        dest="slice_",
        choices=("small", "full"),
        default="full",
        help="small: a few files per benchmark, for CI (seconds); full: everything",
    )
    p.add_argument("--out", type=Path, default=Path("reports/quality.md"), help="markdown report to write")
    p.add_argument(
        "--only", action="append", choices=DATASETS, help="evaluate only this benchmark (repeatable)"
    )
    p.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    import sys
    import time

    from citystream.detect import evaluate
    from citystream.detect.datasets import default_root
    from citystream.errors import UserError
    from citystream.settings import ROOT

    root = args.datasets if args.datasets is not None else default_root(ROOT)
    if not root.is_dir() and set(args.only or DATASETS) - {"simulator"}:
        raise UserError(f"datasets folder {root} not found: pass --datasets DIR")
    chosen = tuple(args.only or DATASETS)
    benchmarks = tuple(d for d in chosen if d != "simulator")
    started = time.perf_counter()
    results = evaluate.run_evaluation(
        root, args.slice_, benchmarks, progress=lambda m: print(m, file=sys.stderr)
    )
    sim_text = ""
    if "simulator" in chosen:
        seeds: list[int | None] = [None]
        if args.slice_ == "full":
            seeds += list(evaluate.SIM_HELD_OUT_SEEDS)
        for seed in seeds:
            scores, facts = evaluate.run_simulator_evaluation(
                args.slice_, progress=lambda m: print(m, file=sys.stderr), seed=seed
            )
            facts["held_out"] = seed is not None
            sim_text += evaluate.render_simulator(scores, facts)
    took = time.perf_counter() - started
    header = (
        "## Anomaly detection quality\n\n"
        + (evaluate.describe_protocol(args.slice_) if benchmarks else f"Slice `{args.slice_}`.")
        + f"\n\nDatasets: `{root}`; wall time {took:.0f} s."
    )
    text = evaluate.render(results, header) + sim_text
    print(text, end="")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write the report to {args.out}: {exc.strerror}") from None
    print(f"report written to {args.out}", file=sys.stderr)
    return 0
