"""The file formats ``citystream import`` reads: generic CSV, NAB and BATADAL.

Why one reader per format: each public data set has its own layout and its own
way of marking anomalies (a label column, a windows JSON, an attack schedule);
each reader turns its format into the same :class:`Dataset`, so nothing
downstream knows where the readings came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from citystream.errors import UserError
from citystream.importer.dataset import (
    Dataset,
    Series,
    check_domain,
    check_field,
    make_label,
    runs,
    sensor_name,
    step_ms,
)
from citystream.importer.tables import is_number, label_flags, numeric, parse_one, parse_times, read_table

#: NAB files with an obvious city meaning; others need --domain and --field.
NAB_DEFAULTS = {"nyc_taxi": ("traffic", "vehicle_count")}
#: Metres of water head -> bar.
M_HEAD_TO_BAR = 0.0980665
#: BATADAL samples hourly: a flagged hour lasts until the next one.
_HOUR_MS = 3_600_000


def read_csv(
    path: Path,
    *,
    domain: str,
    time_col: str | None = "timestamp",
    time_format: str | None = None,
    start_ms: int | None = None,
    interval_ms: int | None = None,
    sensor_col: str | None = None,
    sensor_id: str | None = None,
    mapping: dict[str, str] | None = None,
    wide: str | None = None,
    label_col: str | None = None,
    zone: str = "imported",
    scale: float = 1.0,
    sep: str = ",",
    na_values: Sequence[str] = (),
) -> Dataset:
    """A generic CSV time series; see ``citystream import csv --help`` for the shapes it accepts."""
    domain = check_domain(domain)
    df = read_table(path, skipinitialspace=True, sep=sep, na_values=list(na_values) or None)
    columns = list(df.columns)

    def need(col: str, flag: str) -> None:
        if col not in columns:
            raise UserError(f"{path}: no column {col!r} ({flag}); columns are {', '.join(columns[:12])}")

    if time_col:
        need(time_col, "--time-col")
        times = parse_times(df[time_col], path, time_col, time_format)
    elif start_ms is not None and interval_ms:
        times = start_ms + np.arange(len(df), dtype=np.int64) * interval_ms
    else:
        raise UserError("give --time-col, or --start and --interval for files without timestamps")
    for col, flag in ((sensor_col, "--sensor-col"), (label_col, "--label-col")):
        if col:
            need(col, flag)
    if wide:
        check_field(domain, wide)
        skip = {time_col, sensor_col, label_col}
        mapping = {c: wide for c in columns if c not in skip}
    if not mapping:
        raise UserError("say which columns hold values: --map COLUMN=FIELD (repeatable) or --wide FIELD")
    for col, name in mapping.items():
        need(col, "--map")
        check_field(domain, name)
    ds = Dataset(source="csv")
    for sid, rows, cols in _csv_sensors(df, path, domain, mapping, wide, sensor_col, sensor_id):
        order = rows[np.argsort(times[rows], kind="stable")]
        values = {name: numeric(df[col].iloc[order], path, col) * scale for col, name in cols.items()}
        series = Series(sid, domain, zone, times[order], values)
        ds.series.append(series)
        if label_col:
            ds.labels += _csv_labels(df[label_col].iloc[order], series, path, label_col)
    return ds


def _csv_sensors(
    df: Any,
    path: Path,
    domain: str,
    mapping: dict[str, str],
    wide: str | None,
    sensor_col: str | None,
    sensor_id: str | None,
) -> list[tuple[str, np.ndarray, dict[str, str]]]:
    """(sensor id, its rows, its column -> field mapping) for each sensor in a CSV file."""
    stem = path.stem
    if wide:
        return [(sensor_name(domain, f"{stem}-{col}"), np.arange(len(df)), {col: wide}) for col in mapping]
    if sensor_col:
        keys = df[sensor_col].astype(str).str.strip().to_numpy()
        return [
            (sensor_name(domain, k), np.flatnonzero(keys == k), mapping) for k in sorted(set(keys.tolist()))
        ]
    return [(sensor_id or sensor_name(domain, stem), np.arange(len(df)), mapping)]


def _csv_labels(raw: Any, series: Series, path: Path, label_col: str) -> list[dict[str, Any]]:
    """One label per run of flagged rows of one sensor; a text flag names the label's kind."""
    flags = label_flags(raw)
    kinds = raw.astype(str).str.strip().to_numpy()
    step = step_ms(series.times)
    sid = series.sensor_id
    return [
        make_label(
            f"csv-{path.stem}-{sid}-{n:03d}",
            series.domain,
            kinds[a] if not is_number(kinds[a]) else "anomaly",
            [sid],
            series.times[a],
            series.times[b] + step,
            "csv",
            f"rows labelled in column {label_col!r} of {path.name}",
        )
        for n, (a, b) in enumerate(runs(flags), start=1)
    ]


def read_nab(
    paths: Sequence[Path],
    *,
    windows: Path | None = None,
    domain: str | None = None,
    field_name: str | None = None,
    zone: str = "nab",
) -> Dataset:
    """NAB series (``timestamp,value``) and their anomaly windows as labels."""
    ds = Dataset(source="nab")
    window_table: dict[str, list[list[str]]] | None = None
    for path in paths:
        stem = path.stem
        d, f = (domain, field_name) if domain and field_name else NAB_DEFAULTS.get(stem, (domain, field_name))
        if not d or not f:
            raise UserError(
                f"{path.name}: no default mapping for this NAB series: pass --domain and --field "
                "(e.g. --domain grid --field active_power_kw)"
            )
        d = check_domain(d)
        check_field(d, f)
        df = read_table(path)
        for col in ("timestamp", "value"):
            if col not in df.columns:
                raise UserError(f"{path}: not a NAB file (no {col!r} column)")
        times = parse_times(df["timestamp"], path, "timestamp", "%Y-%m-%d %H:%M:%S")
        order = np.argsort(times, kind="stable")
        sid = sensor_name(d, f"nab-{stem.replace('_', '-')}")
        values = {f: numeric(df["value"], path, "value")[order]}
        series = Series(sid, d, zone, times[order], values)
        ds.series.append(series)
        table_path = windows or path.resolve().parent.parent.parent / "labels" / "combined_windows.json"
        if window_table is None:
            window_table = _load_windows(table_path)
        key = f"{path.resolve().parent.name}/{path.name}"
        step = step_ms(series.times)
        for n, (start, end) in enumerate(window_table.get(key, []), start=1):
            t0 = parse_one(start, table_path)
            t1 = parse_one(end, table_path) + step
            ds.labels.append(
                make_label(
                    f"nab-{stem}-{n:03d}", d, "anomaly", [sid], t0, t1, "nab", f"NAB window {n} of {key}"
                )
            )
    return ds


def _load_windows(path: Path) -> dict[str, list[list[str]]]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: NAB windows file not found (pass --windows)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a NAB windows JSON file ({exc})") from None
    if not isinstance(table, dict):
        raise UserError(f"{path}: not a NAB windows JSON file (expected an object of file -> windows)")
    return table


def read_batadal(path: Path, *, attacks: Path | None = None, zone: str = "ctown") -> Dataset:
    """BATADAL C-Town hourly SCADA as water sensors; attacks as labels.

    Pressures ``P_J*`` are metres of head and become bar; ``F_PU*``/``S_PU*``
    become one pump sensor each (flow + running), ``F_V2`` a flow sensor.
    Attack hours come from ``attacks_training.csv`` (end hour inclusive) when it
    sits next to the file or is given, else from runs of ``ATT_FLAG`` = 1.
    """
    df = read_table(path, skipinitialspace=True)
    if "DATETIME" not in df.columns:
        raise UserError(f"{path}: not a BATADAL file (no DATETIME column)")
    times = parse_times(df["DATETIME"], path, "DATETIME", "%d/%m/%y %H")
    order = np.argsort(times, kind="stable")
    times = times[order]
    ds = Dataset(source="batadal")

    def col(name: str) -> np.ndarray:
        return numeric(df[name], path, name)[order]

    def add(sensor: str, site: str, values: dict[str, np.ndarray]) -> None:
        ds.series.append(
            Series(f"water-{zone}-{sensor}", "water", zone, times, values, site_id=f"water-{zone}-{site}")
        )

    for c in df.columns:
        if c.startswith("L_T"):
            t = c[3:].lower()
            add(f"t{t}-level", f"t{t}", {"tank_level_m": col(c)})
        elif c.startswith("F_PU"):
            n = c[4:]
            status = col(f"S_PU{n}") if f"S_PU{n}" in df.columns else np.full(times.size, np.nan)
            add(f"pu{n}-pump", f"pu{n}", {"flow_lps": col(c), "pump_on": status})
        elif c.startswith("F_V"):
            n = c[3:]
            add(f"v{n}-flow", f"v{n}", {"flow_lps": col(c)})
        elif c.startswith("P_J"):
            j = c[3:]
            add(f"j{j}-pressure", f"j{j}", {"pressure_bar": np.round(col(c) * M_HEAD_TO_BAR, 5)})
    if not ds.series:
        raise UserError(f"{path}: no BATADAL sensor columns (L_T*, F_PU*, F_V*, P_J*)")
    sensors = [s.sensor_id for s in ds.series]
    attacks = attacks or (path.parent / "attacks_training.csv")
    if attacks.is_file() and "ATT_FLAG" in df.columns:
        ds.labels += _attack_schedule(attacks, sensors, times)
    elif "ATT_FLAG" in df.columns:
        flags = col("ATT_FLAG") == 1
        for n, (a, b) in enumerate(runs(flags), start=1):
            ds.labels.append(
                make_label(
                    f"batadal-{path.stem}-{n:03d}",
                    "water",
                    "attack",
                    sensors,
                    times[a],
                    times[b] + _HOUR_MS,
                    "batadal",
                    f"ATT_FLAG run {n} of {path.name}",
                )
            )
    return ds


def _attack_schedule(attacks: Path, sensors: list[str], times: np.ndarray) -> list[dict[str, Any]]:
    """Labels from BATADAL's attack list (end hour inclusive) for the attacks inside ``times``."""
    table = read_table(attacks)
    for col_name in ("attack_no", "start", "end_inclusive"):
        if col_name not in table.columns:
            raise UserError(f"{attacks}: not a BATADAL attack list (no {col_name!r} column)")
    starts = parse_times(table["start"], attacks, "start", None)
    ends = parse_times(table["end_inclusive"], attacks, "end_inclusive", None)
    labels = []
    for no, a, b in zip(table["attack_no"].tolist(), starts.tolist(), ends.tolist(), strict=True):
        if b < times[0] or a > times[-1]:
            continue  # an attack of another file of the same split
        labels.append(
            make_label(
                f"batadal-attack-{no}",
                "water",
                "attack",
                sensors,
                a,
                b + _HOUR_MS,
                "batadal",
                f"BATADAL attack {no}",
            )
        )
    return labels
