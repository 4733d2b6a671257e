"""The comparison table of several configurations' runs, as text and as rows.

Why one column list: the printed table, the HTML report and the store use the
same names and the same formatting, so a number read in the terminal is the
number in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from citystream.backtest.runner import RunResult

Column = tuple[str, Callable[[RunResult], Any], str]

#: (header, value of a run, format) in display order.
COLUMNS: tuple[Column, ...] = (
    ("config", lambda r: r.config, "s"),
    ("labels", lambda r: r.scores.labels, "d"),
    ("detections", lambda r: r.scores.detections, "d"),
    ("detected", lambda r: r.scores.detected, "d"),
    ("false", lambda r: r.scores.false_alerts, "d"),
    ("precision", lambda r: r.scores.precision, ".3f"),
    ("recall", lambda r: r.scores.recall, ".3f"),
    ("F1", lambda r: r.scores.f1, ".3f"),
    ("TTD median s", lambda r: r.scores.ttd_median_s, ".0f"),
    ("TTD p90 s", lambda r: r.scores.ttd_p90_s, ".0f"),
    ("FA/day", lambda r: r.scores.false_alerts_per_day, ".2f"),
    ("NAB std", lambda r: r.scores.nab.get("standard"), ".1f"),
    ("NAB low FP", lambda r: r.scores.nab.get("low_fp"), ".1f"),
    ("NAB low FN", lambda r: r.scores.nab.get("low_fn"), ".1f"),
    ("S", lambda r: r.scores.s_score, ".3f"),
)


def cell(value: Any, fmt: str) -> str:
    """A value as the table shows it: '-' where a score does not apply."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt)


def table_rows(results: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells, one row per run; columns empty in every run are left out."""
    cols = [c for c in COLUMNS if c[2] == "s" or any(c[1](r) is not None for r in results)]
    rows = [[cell(get(r), fmt) for _, get, fmt in cols] for r in results]
    return [h for h, _, _ in cols], rows


def comparison_table(results: Sequence[RunResult]) -> str:
    """A fixed-width text table for the terminal, numbers right-aligned."""
    headers, rows = table_rows(results)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out) + "\n"
