"""Golden tests of the thin-slice window job on a real Flink MiniCluster, at parallelism 1 and 2.

The job's pure function gets a bounded table with fixed event times (one
reading delivered out of order, within the watermark's bound) and must give
exactly the expected rows, computed by hand below.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from citystream.settings import Settings

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 5, 0, 0, 0)  # fixed epoch, naive UTC as Flink's TIMESTAMP(3) is


def reading(sensor: str, second: int, voltage: float, seq: int) -> dict:
    when = (T0 + dt.timedelta(seconds=second)).strftime("%Y-%m-%d %H:%M:%S.000")
    return {
        "envelope": {"sensor_id": sensor, "site_id": "ss1", "zone_id": "z1", "domain": "grid",
                     "event_time": when, "seq": seq, "lat": None, "lon": None, "quality": 0},
        "phase": "a", "voltage_v": voltage, "current_a": 10.0, "frequency_hz": 50.0,
        "active_power_kw": 2.0, "reactive_power_kvar": 0.0, "power_factor": 1.0,
    }  # fmt: skip


# Delivery order as a broker would hand them over: g1@80s arrives after g1@100s.
READINGS = [
    reading("g1", 0, 230.0, 1),
    reading("g2", 5, 220.0, 1),
    reading("g1", 20, 232.0, 2),
    reading("g2", 35, 224.0, 2),
    reading("g1", 40, 234.0, 3),
    reading("g1", 60, 240.0, 4),
    reading("g1", 100, 242.0, 6),
    reading("g1", 80, 241.0, 5),
    reading("g2", 130, 210.0, 3),
]

# (sensor, metric, window_start, window_end, samples, mean, min, max)
EXPECTED_VOLTAGE = [
    ("g1", "voltage_v", "00:00", "00:01", 3, 232.0, 230.0, 234.0),
    ("g1", "voltage_v", "00:01", "00:02", 3, 241.0, 240.0, 242.0),
    ("g2", "voltage_v", "00:00", "00:01", 2, 222.0, 220.0, 224.0),
    ("g2", "voltage_v", "00:02", "00:03", 1, 210.0, 210.0, 210.0),
]


def _source(t_env, path: Path):
    from citystream.jobs.sql import columns

    path.write_text("".join(json.dumps(r) + "\n" for r in READINGS))
    t_env.execute_sql(
        f"""CREATE TEMPORARY TABLE readings ({columns("citystream.GridReading")},
              ts AS envelope.event_time, WATERMARK FOR ts AS ts - INTERVAL '30' SECOND)
            WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json',
                  'json.timestamp-format.standard' = 'SQL')"""
    )
    return t_env.from_path("readings")


def _rows(table) -> list[tuple]:
    with table.execute().collect() as results:
        rows = [tuple(r) for r in results]
    return sorted(
        (r[2], r[3], r[4].strftime("%H:%M"), r[5].strftime("%H:%M"), r[6], r[7], r[8], r[9]) for r in rows
    )


@pytest.mark.parametrize("parallelism", [1, 2])
def test_tumbling_averages_per_sensor(tmp_path: Path, parallelism: int) -> None:
    from citystream.jobs.runtime import table_environment
    from citystream.jobs.windows import window_aggregates

    t_env = table_environment(Settings(), parallelism=parallelism)
    result = window_aggregates(t_env, _source(t_env, tmp_path / "in.json"), metrics=("voltage_v",))
    assert _rows(result) == EXPECTED_VOLTAGE


def test_one_row_per_sensor_metric_and_window(tmp_path: Path) -> None:
    from citystream.jobs.runtime import table_environment
    from citystream.jobs.windows import GRID_METRICS, window_aggregates

    t_env = table_environment(Settings(), parallelism=1)
    rows = _rows(window_aggregates(t_env, _source(t_env, tmp_path / "in.json")))
    keys = [(r[0], r[1], r[2]) for r in rows]
    assert len(keys) == len(set(keys)) == len(EXPECTED_VOLTAGE) * len(GRID_METRICS)
    frequency = [r for r in rows if r[1] == "frequency_hz"]
    assert {r[5] for r in frequency} == {50.0}
    assert [r[4] for r in frequency] == [3, 3, 2, 1]
