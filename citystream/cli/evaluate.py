"""``citystream evaluate``: the detector quality report.

Why a CLI command: the quality table is the evidence for which detector
ships; anyone (and CI, on the small slice) must be able to regenerate it
with one command from the shared datasets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from citystream.errors import UserError

DATASETS = ("nab", "batadal", "skab", "simulator")
#: Marks "--select" given without a file (the default candidates are read when the command runs).
_DEFAULT_CANDIDATES = Path("infra/detection_candidates.toml")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score the anomaly detectors on NAB, BATADAL, SKAB and a seeded simulator run; write a report",
        description="Run every detector over the labelled benchmarks and print NAB score, BATADAL S, "
        "event-level precision/recall/F1 and median time-to-detect per detector. With --select, also "
        "score every candidate setting of [imported] per development dataset and choose by "
        "leave-one-dataset-out (the section is appended to the same report).",
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
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="detection config (default: infra/detection.toml, as the job)",
    )
    p.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the shipped detector's output as NAB results files "
        "(DIR/citystream/<category>/citystream_<file>.csv: timestamp,value,anomaly_score,label; "
        "label 1 = alarm) and BATADAL hourly DATETIME,flag files (DIR/batadal/)",
    )
    p.add_argument(
        "--select",
        nargs="?",
        type=Path,
        const=_DEFAULT_CANDIDATES,
        default=None,
        metavar="CANDIDATES",
        help="also score every candidate setting of [imported] (default file: "
        "infra/detection_candidates.toml) on each development dataset and choose by "
        "leave-one-dataset-out; appends that section to the report",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes that share the work (default 2; 1 = this process only); results do not depend on it",
    )
    p.set_defaults(handler=_evaluate)


def _command(args: argparse.Namespace) -> str:
    """The command line that made the report, as the report quotes it."""
    parts = ["citystream evaluate", f"--slice {args.slice_}"]
    parts += [f"--only {d}" for d in args.only or ()]
    if args.select is not None:
        parts.append("--select" if args.select == _DEFAULT_CANDIDATES else f"--select {args.select}")
    if args.config is not None:
        parts.append(f"--config {args.config}")
    return " ".join([*parts, f"--out {args.out}"])


def _evaluate(args: argparse.Namespace) -> int:
    # numpy, the simulator and the datasets are heavy: imported only when the command runs
    from citystream.detection import load_config
    from citystream.evaluation.datasets import default_root
    from citystream.evaluation.evaluate import report
    from citystream.evaluation.selection import load_candidates
    from citystream.settings import ROOT

    root = args.datasets if args.datasets is not None else default_root(ROOT)
    if not root.is_dir() and set(args.only or DATASETS) - {"simulator"}:
        raise UserError(f"datasets folder {root} not found: pass --datasets DIR")
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    config = load_config(args.config)
    candidates = None
    if args.select is not None:
        path = None if args.select == _DEFAULT_CANDIDATES else args.select
        candidates = load_candidates(config, path)
    started = time.perf_counter()
    text = report(
        root,
        config,
        args.slice_,
        tuple(args.only or DATASETS),
        lambda m: print(m, file=sys.stderr, flush=True),
        export=args.export,
        workers=args.workers,
        candidates=candidates,
        facts={"command": _command(args), "candidates": str(args.select)},
    )
    text += f"\nDatasets: `{root}`; wall time {time.perf_counter() - started:.0f} s.\n"
    print(text, end="")
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write the report to {args.out}: {exc.strerror}") from None
    print(f"report written to {args.out}", file=sys.stderr)
    return 0
