"""Detection quality on the seeded simulator's small slice (3 h, seed 7), and its report row.

Pure Python on numpy aggregates (the same code as the detect job), so it is
fast and reproducible. The thresholds asserted are the small slice's
measured numbers, as floors: a change that makes detection worse fails here.
Issue 5's targets (recall >= 0.95, precision >= 0.9, median TTD <= 2 windows)
are checked per domain on the full run by ``citystream evaluate --only simulator``.
"""

from __future__ import annotations

from functools import cache

import pytest

from citystream.evaluation import evaluate


@cache
def small() -> tuple[dict, dict]:
    return evaluate.run_simulator_evaluation("small")


def test_aggregates_follow_the_job_definitions() -> None:
    records, _ = evaluate.simulator_run(evaluate.SimSlice(7, 0.1, 0.0, sensors=30))
    rows = evaluate.simulator_aggregates(records)
    keys = [(r["key_id"], r["metric"], r["window_start"]) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(
        r["window_end"] - r["window_start"] == 60_000 and r["window_start"] % 60_000 == 0 for r in rows
    )
    assert all(r["min"] <= r["mean"] <= r["max"] and r["samples"] >= 1 for r in rows)
    assert {r["domain"] for r in rows} == {"traffic", "water", "grid"}


def test_small_slice_quality_floors() -> None:
    scores, facts = small()
    assert facts["aggregates"] > 100_000
    for d, s in scores.items():
        assert s.events == 6, d
        assert s.recall >= 0.8, (d, s.missed)
        assert s.precision >= 0.8, (d, s.false)
        assert s.median_ttd <= 4.0, d  # small sample: 6 events; the full run is the acceptance


def test_stuck_sensors_give_health_events_and_at_most_one_alert() -> None:
    scores, _ = small()
    stuck = [s for s in scores.values() if s.stuck_events]
    assert stuck
    for s in stuck:
        assert s.stuck_with_health == s.stuck_events
        assert s.stuck_max_alerts <= 1


def test_report_is_reproducible() -> None:
    a = evaluate.render_simulator(*small())
    b = evaluate.render_simulator(*evaluate.run_simulator_evaluation("small"))
    strip = [line for line in a.splitlines() if line.startswith("| ")]
    assert strip == [line for line in b.splitlines() if line.startswith("| ")]


@pytest.mark.parametrize("domain", ["traffic", "water", "grid"])
def test_report_has_a_row_per_domain(domain: str) -> None:
    assert f"| {domain} |" in evaluate.render_simulator(*small())
