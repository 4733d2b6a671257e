"""Loaders for the labelled benchmark data in ../shared/datasets (read-only, never copied).

Why a loader per benchmark: each has its own date format, separator and
label convention (NAB windows in JSON, BATADAL attack list, SKAB per-row
flags). They all end up as ``Recording``s - timestamps, named channels and
labelled events as inclusive row ranges - so evaluation code is one loop.
Only the standard library and numpy are used (pandas is not a dependency).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from citystream.catalog import CONTINUOUS, STATUS
from citystream.errors import UserError

#: The small slice: files that cover spikes, level shifts, broken daily shapes and
#: slow failures while keeping `evaluate --slice small` to seconds.
NAB_SMALL = (
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "artificialWithAnomaly/art_daily_flatmiddle.csv",
    "artificialWithAnomaly/art_increase_spike_density.csv",
    "realKnownCause/ec2_request_latency_system_failure.csv",
    "realKnownCause/rogue_agent_key_hold.csv",
    "realKnownCause/nyc_taxi.csv",
)
#: SKAB's folder of normal running only: nothing to detect in it.
SKAB_NORMAL_FOLDER = "anomaly-free"
SKAB_SMALL = tuple(f"valve2/{i}.csv" for i in range(4)) + tuple(f"other/{i}.csv" for i in range(5, 10))
BATADAL_SMALL_HISTORY_HOURS = 24 * 7 * 8


@dataclass(frozen=True)
class Recording:
    """One labelled multichannel recording; events are inclusive row ranges."""

    name: str
    t_ms: np.ndarray
    channels: dict[str, np.ndarray]
    events: list[tuple[int, int]] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)  #: labelled anomaly row per event (else its start)
    history: Recording | None = None  #: unlabelled normal data to warm up on, if any
    #: Channel -> type (``citystream.catalog.CHANNEL_TYPES``), from the dataset's documented layout.
    types: dict[str, str] = field(default_factory=dict)
    #: (status channel, the flow it commands) pairs: "pump on, no flow" checks.
    status_flow: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.t_ms)

    def channel_type(self, channel: str) -> str:
        """The declared type of ``channel``: continuous unless the layout says otherwise."""
        return self.types.get(channel, CONTINUOUS)


@dataclass(frozen=True)
class Dataset:
    name: str
    recordings: list[Recording]


def default_root(repo_root: Path) -> Path:
    return Path(repo_root).parent / "shared" / "datasets"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} not found at {path}: pass --datasets DIR pointing at the shared datasets")
    return path


def _iso_ms(stamps: list[str]) -> np.ndarray:
    try:
        return np.array([s.strip()[:19] for s in stamps], dtype="datetime64[ms]").astype(np.int64)
    except ValueError as exc:
        raise UserError(f"unreadable timestamp in dataset: {exc}") from None


def _read_csv(path: Path, delimiter: str = ",") -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter=delimiter))
    if len(rows) < 2:
        raise UserError(f"{path} has no data rows")
    return [h.strip() for h in rows[0]], rows[1:]


def _floats(rows: list[list[str]], col: int, path: Path) -> np.ndarray:
    try:
        return np.array([float(r[col]) if r[col].strip() else np.nan for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: bad number in column {col + 1}: {exc}") from None


def _rows_between(t_ms: np.ndarray, start_ms: int, end_ms: int) -> tuple[int, int] | None:
    a = int(np.searchsorted(t_ms, start_ms, side="left"))
    b = int(np.searchsorted(t_ms, end_ms, side="right")) - 1
    return (a, b) if a <= b else None


def nab_files(base: Path) -> list[str]:
    """Every ``category/file.csv`` under ``nab/data``: whichever categories the folder holds."""
    data = _need(base / "data", "NAB data folder")
    return sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.csv"))


def load_nab(root: Path, slice_: str = "full") -> Dataset:
    """Every NAB file under ``nab/data/<category>/`` with its windows from ``combined_windows.json``."""
    base = _need(root / "nab", "NAB")
    windows = json.loads(_need(base / "labels" / "combined_windows.json", "NAB windows").read_text())
    labels = json.loads(_need(base / "labels" / "combined_labels.json", "NAB labels").read_text())
    names = nab_files(base)
    if slice_ == "small":
        names = [n for n in names if n in NAB_SMALL]
    missing = [n for n in names if n not in windows]
    if missing:
        raise UserError(f"NAB files without windows in combined_windows.json: {', '.join(missing)}")
    recs = []
    for name in names:
        path = base / "data" / name
        header, rows = _read_csv(path)
        t = _iso_ms([r[0] for r in rows])
        values = _floats(rows, header.index("value"), path)
        events, refs = [], []
        points = _iso_ms(labels.get(name, [])) if labels.get(name) else np.array([], dtype=np.int64)
        for a, b in windows[name]:
            rng = _rows_between(t, int(_iso_ms([a])[0]), int(_iso_ms([b])[0]))
            if rng is None:
                continue
            inside = [p for p in points if t[rng[0]] <= p <= t[rng[1]]]
            ref = int(np.searchsorted(t, inside[0])) if inside else rng[0]
            events.append(rng)
            refs.append(ref)
        # NAB's series are single continuous measurements (demand, temperature, CPU, latency)
        recs.append(Recording(name, t, {"value": values}, events, refs, types={"value": CONTINUOUS}))
    if not recs:
        raise UserError(f"no NAB files found under {base / 'data'}")
    return Dataset("NAB", recs)


def _batadal_ms(stamps: list[str]) -> np.ndarray:
    out = np.empty(len(stamps), dtype=np.int64)
    for i, s in enumerate(stamps):
        try:
            dt = datetime.strptime(s.strip(), "%d/%m/%y %H").replace(tzinfo=UTC)
        except ValueError:
            raise UserError(f"BATADAL timestamp {s!r} is not DD/MM/YY HH") from None
        out[i] = int(dt.timestamp() * 1000)
    return out


def _batadal_table(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    header, rows = _read_csv(path)
    t = _batadal_ms([r[0] for r in rows])
    chans = {h: _floats(rows, j, path) for j, h in enumerate(header) if j > 0 and h != "ATT_FLAG"}
    return t, chans


def batadal_channel_type(channel: str) -> str:
    """C-Town's SCADA layout: ``S_PU*``/``S_V*`` are on/off and open/closed status; flows
    (``F_``), pressures (``P_``) and tank levels (``L_``) are continuous."""
    return STATUS if channel.startswith("S_") else CONTINUOUS


def batadal_status_flow(channels: list[str] | dict[str, np.ndarray]) -> tuple[tuple[str, str], ...]:
    """Each status channel with the flow of the same pump or valve (``S_PU7`` with ``F_PU7``)."""
    names = set(channels)
    return tuple(
        (c, "F_" + c[2:]) for c in channels if batadal_channel_type(c) == STATUS and "F_" + c[2:] in names
    )


def load_batadal(root: Path, slice_: str = "full") -> Dataset:
    base = _need(root / "batadal", "BATADAL")
    t1, normal = _batadal_table(_need(base / "training_1_normal.csv", "BATADAL training 1"))
    t2, chans = _batadal_table(_need(base / "training_2_labeled.csv", "BATADAL training 2"))
    if slice_ == "small":
        keep = slice(len(t1) - BATADAL_SMALL_HISTORY_HOURS, None)
        t1, normal = t1[keep], {k: v[keep] for k, v in normal.items()}
    _, rows = _read_csv(_need(base / "attacks_training.csv", "BATADAL attack list"))
    events = []
    for r in rows:
        if r[0].strip() != "training_dataset_2":
            continue
        a, b = (int(x) for x in _iso_ms([r[2], r[3]]))
        rng = _rows_between(t2, a, b)
        if rng is None:
            raise UserError(f"BATADAL attack {r[1]} ({r[2]}..{r[3]}) lies outside training 2")
        events.append(rng)
    types = {c: batadal_channel_type(c) for c in chans}
    pairs = batadal_status_flow(chans)
    history = Recording("training_1_normal", t1, normal, types=types, status_flow=pairs)
    rec = Recording("training_2_labeled", t2, chans, events, [a for a, _ in events], history, types, pairs)
    return Dataset("BATADAL", [rec])


#: SKAB's testbed channels: all physical measurements at 1 Hz (the pump's on/off is not logged).
SKAB_TYPES = {
    c: CONTINUOUS
    for c in (
        "Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
        "Thermocouple", "Voltage", "Volume Flow RateRMS",
    )
}  # fmt: skip


def _skab_file(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    header, rows = _read_csv(path, delimiter=";")
    if "anomaly" not in header or "datetime" not in header:
        raise UserError(f"{path}: expected 'datetime' and 'anomaly' columns")
    t = _iso_ms([r[header.index("datetime")] for r in rows])
    flags = _floats(rows, header.index("anomaly"), path) > 0.5
    skip = ("datetime", "anomaly", "changepoint")
    chans = {h: _floats(rows, j, path) for j, h in enumerate(header) if h not in skip}
    return t, chans, flags


def load_skab(root: Path, slice_: str = "full") -> Dataset:
    """One recording per SKAB folder: its experiments concatenated in time order.

    Why concatenate: the experiments of a folder were run back to back on
    the same rig, so together they are what a streaming detector would have
    seen - one warm-up, then normal running, anomaly, normal running, ...
    Scoring each 20-minute file from a cold start would mostly measure
    warm-up. Rows that overlap the previous file's last timestamp are dropped.
    """
    base = _need(root / "skab" / "data", "SKAB")
    recs = []
    folders = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != SKAB_NORMAL_FOLDER)
    for folder in folders:
        paths = sorted((base / folder).glob("*.csv"))
        if slice_ == "small":
            paths = [p for p in paths if f"{folder}/{p.name}" in SKAB_SMALL]
        parts = sorted((_skab_file(p) for p in paths), key=lambda part: int(part[0][0]))
        if not parts:
            continue
        ts, flags, chans = [], [], {}
        last = None
        for t, ch, fl in parts:
            keep = t > last if last is not None else np.ones(len(t), dtype=bool)
            ts.append(t[keep])
            flags.append(fl[keep])
            for k, v in ch.items():
                chans.setdefault(k, []).append(v[keep])
            last = int(t[keep][-1]) if keep.any() else last
        t_all = np.concatenate(ts)
        f_all = np.concatenate(flags)
        events, start = [], None
        for i, f in enumerate(f_all.tolist()):
            if f and start is None:
                start = i
            elif not f and start is not None:
                events.append((start, i - 1))
                start = None
        if start is not None:
            events.append((start, len(f_all) - 1))
        channels = {k: np.concatenate(v) for k, v in chans.items()}
        types = {c: SKAB_TYPES.get(c, CONTINUOUS) for c in channels}
        recs.append(Recording(folder, t_all, channels, events, [a for a, _ in events], types=types))
    if not recs:
        raise UserError(f"no SKAB files found under {base}")
    return Dataset("SKAB", recs)


LOADERS = {"nab": load_nab, "batadal": load_batadal, "skab": load_skab}
