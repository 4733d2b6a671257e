"""Replays: a job's code over an exact range of its input, results under a run id, nothing live touched.

``citystream replay`` (citystream/cli/replay.py) and backtests call
:func:`replay`; :mod:`.ranges` turns times or an offsets file into the exact
offsets, :mod:`.run` runs the jobs and loads the results into a shadow
database, :mod:`.pace` feeds a paced replay.
"""

from __future__ import annotations

from citystream.replay.ranges import (
    Ranges,
    current_ranges,
    parse_time,
    read_ranges,
    resolve_times,
    write_ranges,
)
from citystream.replay.run import (
    ReplayResult,
    discard,
    load_replay,
    new_run_id,
    replay,
    replay_detect,
    shadow_database,
    suffix,
)

__all__ = [
    "Ranges",
    "ReplayResult",
    "current_ranges",
    "discard",
    "load_replay",
    "new_run_id",
    "parse_time",
    "read_ranges",
    "replay",
    "replay_detect",
    "resolve_times",
    "shadow_database",
    "suffix",
    "write_ranges",
]
