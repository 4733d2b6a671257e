"""``citystream import``: real time series onto the reading topics, with their labels.

Why: a detector is only trustworthy once it has run on real data, and it
should not need a second code path for that. The importer maps public data
sets onto the same Avro schemas, topics, keys and ``citystream.Label`` ground
truth the simulator produces, so a detector cannot tell them apart:

* ``csv``: any CSV time series (one sensor, a ``--sensor-col`` column naming
  sensors, or ``--wide`` with one sensor per column), optional label column;
* ``nab``: Numenta Anomaly Benchmark files plus their anomaly windows
  (``labels/combined_windows.json``);
* ``batadal``: BATADAL C-Town SCADA files (tank levels, pumps, valve,
  junction pressures) plus the attack schedule (``attacks_training.csv``,
  else the ``ATT_FLAG`` column).

Values are taken as they are (``--scale`` converts units). Required schema
fields the data does not provide get a fixed neutral value (traffic: 0
vehicles, 0 % occupancy; grid: 230 V, 0 A, 50 Hz, 0 kW); nullable ones stay
null. Rows whose mapped value is missing are skipped and counted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from citystream.errors import UserError

DOMAIN_NAMES = ("traffic", "water", "grid")
SCHEMAS = {
    "traffic": "citystream.TrafficReading",
    "water": "citystream.WaterReading",
    "grid": "citystream.GridReading",
}

#: Value fields a column may be mapped to, per domain.
FIELDS: dict[str, tuple[str, ...]] = {
    "traffic": ("vehicle_count", "mean_speed_kmh", "occupancy_pct"),
    "water": ("flow_lps", "pressure_bar", "tank_level_m", "pump_on", "ph", "turbidity_ntu", "chlorine_mgl"),
    "grid": (
        "voltage_v",
        "current_a",
        "frequency_hz",
        "active_power_kw",
        "reactive_power_kvar",
        "power_factor",
    ),
}
#: Neutral values for required fields the data does not provide.
REQUIRED_DEFAULTS: dict[str, dict[str, float]] = {
    "traffic": {"vehicle_count": 0, "occupancy_pct": 0.0},
    "water": {},
    "grid": {"voltage_v": 230.0, "current_a": 0.0, "frequency_hz": 50.0, "active_power_kw": 0.0},
}
_INT_FIELDS = {"vehicle_count"}
_BOOL_FIELDS = {"pump_on"}
#: Water sensor type implied by the first mapped field found in this order.
_WATER_TYPE = (
    ("pump_on", "pump"),
    ("flow_lps", "flow"),
    ("pressure_bar", "pressure"),
    ("tank_level_m", "level"),
    ("ph", "quality"),
    ("turbidity_ntu", "quality"),
    ("chlorine_mgl", "quality"),
)
#: NAB files with an obvious city meaning; others need --domain and --field.
NAB_DEFAULTS = {"nyc_taxi": ("traffic", "vehicle_count")}
#: Metres of water head -> bar.
M_HEAD_TO_BAR = 0.0980665


@dataclass
class Series:
    """One sensor's readings, time-sorted; values keyed by schema field (NaN = missing)."""

    sensor_id: str
    domain: str
    zone_id: str
    times: np.ndarray
    values: dict[str, np.ndarray]
    site_id: str = ""

    def __post_init__(self) -> None:
        self.site_id = self.site_id or self.sensor_id


@dataclass
class Dataset:
    """Everything one import sends: series, labels and what was left out."""

    source: str
    series: list[Series] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)
    skipped_rows: int = 0


# --------------------------------------------------------------------------- reading helpers


def _read_table(path: Path, **kwargs: Any) -> Any:
    """A pandas DataFrame, or a UserError naming the file and what is wrong with it."""
    import pandas as pd

    try:
        df = pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a CSV file") from None
    except PermissionError:
        raise UserError(f"{path}: not readable (permission denied)") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: empty file, no CSV header") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV file ({first})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise UserError(f"{path}: no data rows")
    return df


def _parse_times(raw: Any, path: Path, column: str, fmt: str | None) -> np.ndarray:
    """UTC epoch ms for a column of timestamps (no zone = UTC); names the first bad row."""
    import pandas as pd

    text = raw.astype(str).str.strip()
    try:
        parsed = pd.to_datetime(text, format=fmt, utc=True, errors="coerce")
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: column {column!r}: bad --time-format {fmt!r} ({exc})") from None
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        hint = f" (expected format {fmt})" if fmt else ""
        raise UserError(
            f"{path}: bad timestamp {text.iloc[row]!r} in data row {row + 1}, column {column!r}{hint}"
        )
    return (parsed.astype("int64") // 1_000_000).to_numpy(dtype=np.int64)


def _numeric(raw: Any, path: Path, column: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    text_missing = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    bad = np.isnan(values) & ~text_missing
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: column {column!r} has a non-number {raw.iloc[row]!r} in data row {row + 1}")
    return values


def _check_field(domain: str, name: str) -> None:
    if name not in FIELDS[domain]:
        raise UserError(f"unknown {domain} field {name!r}: choose from {', '.join(FIELDS[domain])}")


def _check_domain(domain: str) -> str:
    d = domain.strip().lower()
    if d not in DOMAIN_NAMES:
        raise UserError(f"unknown domain {domain!r}: choose from {', '.join(DOMAIN_NAMES)}")
    return d


def _sensor_name(domain: str, raw: str) -> str:
    text = "-".join(str(raw).strip().split())
    return text if text.startswith(f"{domain}-") else f"{domain}-{text}"


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index pairs of consecutive True values."""
    padded = np.concatenate([[False], flags.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _step_ms(times: np.ndarray) -> int:
    """Typical sampling interval (median spacing), at least 1 ms."""
    if times.size < 2:
        return 1000
    return max(1, int(np.median(np.diff(np.sort(times)))))


def _label(
    label_id: str,
    domain: str,
    kind: str,
    sensors: Sequence[str],
    start: int,
    end: int,
    source: str,
    details: str,
) -> dict[str, Any]:
    return {
        "label_id": label_id,
        "domain": domain,
        "kind": kind,
        "sensor_ids": sorted(sensors),
        "start_time": int(start),
        "end_time": int(end),
        "source": source,
        "details": details,
    }


# --------------------------------------------------------------------------- formats


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
    domain = _check_domain(domain)
    df = _read_table(path, skipinitialspace=True, sep=sep, na_values=list(na_values) or None)
    columns = list(df.columns)

    def need(col: str, flag: str) -> None:
        if col not in columns:
            raise UserError(f"{path}: no column {col!r} ({flag}); columns are {', '.join(columns[:12])}")

    if time_col:
        need(time_col, "--time-col")
        times = _parse_times(df[time_col], path, time_col, time_format)
    elif start_ms is not None and interval_ms:
        times = start_ms + np.arange(len(df), dtype=np.int64) * interval_ms
    else:
        raise UserError("give --time-col, or --start and --interval for files without timestamps")
    for col, flag in ((sensor_col, "--sensor-col"), (label_col, "--label-col")):
        if col:
            need(col, flag)
    if wide:
        _check_field(domain, wide)
        skip = {time_col, sensor_col, label_col}
        mapping = {c: wide for c in columns if c not in skip}
    if not mapping:
        raise UserError("say which columns hold values: --map COLUMN=FIELD (repeatable) or --wide FIELD")
    for col, name in mapping.items():
        need(col, "--map")
        _check_field(domain, name)
    labels_raw = df[label_col] if label_col else None
    ds = Dataset(source="csv")
    stem = path.stem
    if wide:
        groups: list[tuple[str, np.ndarray, dict[str, str]]] = [
            (_sensor_name(domain, f"{stem}-{col}"), np.arange(len(df)), {col: wide}) for col in mapping
        ]
    elif sensor_col:
        keys = df[sensor_col].astype(str).str.strip().to_numpy()
        groups = [
            (_sensor_name(domain, k), np.flatnonzero(keys == k), mapping) for k in sorted(set(keys.tolist()))
        ]
    else:
        groups = [(sensor_id or _sensor_name(domain, stem), np.arange(len(df)), mapping)]
    for sid, rows, cols in groups:
        order = rows[np.argsort(times[rows], kind="stable")]
        values = {name: _numeric(df[col].iloc[order], path, col) * scale for col, name in cols.items()}
        series = Series(sid, domain, zone, times[order], values)
        ds.series.append(series)
        if labels_raw is not None:
            flags = _label_flags(labels_raw.iloc[order])
            kinds = labels_raw.iloc[order].astype(str).str.strip().to_numpy()
            step = _step_ms(series.times)
            for n, (a, b) in enumerate(_runs(flags), start=1):
                kind = kinds[a] if not _is_number(kinds[a]) else "anomaly"
                ds.labels.append(
                    _label(
                        f"csv-{stem}-{sid}-{n:03d}",
                        domain,
                        kind,
                        [sid],
                        series.times[a],
                        series.times[b] + step,
                        "csv",
                        f"rows labelled in column {label_col!r} of {path.name}",
                    )
                )
    return ds


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _label_flags(raw: Any) -> np.ndarray:
    """True where a label column marks an anomaly: non-zero numbers, or any text but 0/false/normal/empty."""
    text = raw.astype(str).str.strip().str.lower().to_numpy()
    out = np.zeros(text.size, dtype=bool)
    for i, t in enumerate(text.tolist()):
        if t in ("", "nan", "none", "false", "normal", "no"):
            continue
        out[i] = float(t) != 0.0 if _is_number(t) else True
    return out


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
        d = _check_domain(d)
        _check_field(d, f)
        df = _read_table(path)
        for col in ("timestamp", "value"):
            if col not in df.columns:
                raise UserError(f"{path}: not a NAB file (no {col!r} column)")
        times = _parse_times(df["timestamp"], path, "timestamp", "%Y-%m-%d %H:%M:%S")
        order = np.argsort(times, kind="stable")
        sid = _sensor_name(d, f"nab-{stem.replace('_', '-')}")
        values = {f: _numeric(df["value"], path, "value")[order]}
        series = Series(sid, d, zone, times[order], values)
        ds.series.append(series)
        table_path = windows or path.resolve().parent.parent.parent / "labels" / "combined_windows.json"
        if window_table is None:
            window_table = _load_windows(table_path)
        key = f"{path.resolve().parent.name}/{path.name}"
        step = _step_ms(series.times)
        for n, (start, end) in enumerate(window_table.get(key, []), start=1):
            t0 = _parse_one(start, table_path)
            t1 = _parse_one(end, table_path) + step
            ds.labels.append(
                _label(f"nab-{stem}-{n:03d}", d, "anomaly", [sid], t0, t1, "nab", f"NAB window {n} of {key}")
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


def _parse_one(text: str, where: Path) -> int:
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"{where}: bad timestamp {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def read_batadal(path: Path, *, attacks: Path | None = None, zone: str = "ctown") -> Dataset:
    """BATADAL C-Town hourly SCADA as water sensors; attacks as labels.

    Pressures ``P_J*`` are metres of head and become bar; ``F_PU*``/``S_PU*``
    become one pump sensor each (flow + running), ``F_V2`` a flow sensor.
    Attack hours come from ``attacks_training.csv`` (end hour inclusive) when it
    sits next to the file or is given, else from runs of ``ATT_FLAG`` = 1.
    """
    df = _read_table(path, skipinitialspace=True)
    if "DATETIME" not in df.columns:
        raise UserError(f"{path}: not a BATADAL file (no DATETIME column)")
    times = _parse_times(df["DATETIME"], path, "DATETIME", "%d/%m/%y %H")
    order = np.argsort(times, kind="stable")
    times = times[order]
    ds = Dataset(source="batadal")

    def col(name: str) -> np.ndarray:
        return _numeric(df[name], path, name)[order]

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
    hour = 3_600_000
    attacks = attacks or (path.parent / "attacks_training.csv")
    if attacks.is_file() and "ATT_FLAG" in df.columns:
        table = _read_table(attacks)
        for col_name in ("attack_no", "start", "end_inclusive"):
            if col_name not in table.columns:
                raise UserError(f"{attacks}: not a BATADAL attack list (no {col_name!r} column)")
        starts = _parse_times(table["start"], attacks, "start", None)
        ends = _parse_times(table["end_inclusive"], attacks, "end_inclusive", None)
        for no, a, b in zip(table["attack_no"].tolist(), starts.tolist(), ends.tolist(), strict=True):
            if b < times[0] or a > times[-1]:
                continue  # an attack of another file of the same split
            ds.labels.append(
                _label(
                    f"batadal-attack-{no}",
                    "water",
                    "attack",
                    sensors,
                    a,
                    b + hour,
                    "batadal",
                    f"BATADAL attack {no}",
                )
            )
    elif "ATT_FLAG" in df.columns:
        flags = col("ATT_FLAG") == 1
        for n, (a, b) in enumerate(_runs(flags), start=1):
            ds.labels.append(
                _label(
                    f"batadal-{path.stem}-{n:03d}",
                    "water",
                    "attack",
                    sensors,
                    times[a],
                    times[b] + hour,
                    "batadal",
                    f"ATT_FLAG run {n} of {path.name}",
                )
            )
    return ds


# --------------------------------------------------------------------------- encoding and delivery


@dataclass
class Encoded:
    """One topic's messages in event-time order."""

    topic: str
    times: np.ndarray
    keys: list[bytes]
    values: list[bytes]


def encode(ds: Dataset, topic_prefix: str, shift_ms: int = 0) -> tuple[list[Encoded], int]:
    """Encode every series onto its domain topic; (per-topic messages, rows skipped for missing values)."""
    from citystream.simulator.codec import BulkEncoder, Nullable, Strings

    out: list[Encoded] = []
    skipped = 0
    for domain in DOMAIN_NAMES:
        group = [s for s in ds.series if s.domain == domain]
        if not group:
            continue
        encoder = BulkEncoder(SCHEMAS[domain])
        nullable = {f.path for f in encoder.fields if f.nullable}
        chunks: list[tuple[np.ndarray, np.ndarray, list[bytes]]] = []
        for si, s in enumerate(group):
            n = s.times.size
            keep = np.ones(n, dtype=bool)
            for name, v in s.values.items():
                if name not in nullable:
                    keep &= ~np.isnan(v)  # a required value that is missing: the row cannot be sent
            skipped += int((~keep).sum())
            idx = np.flatnonzero(keep)
            m = idx.size
            if m == 0:
                continue
            cols: dict[str, Any] = {
                "envelope.sensor_id": Strings([s.sensor_id], np.zeros(m, dtype=np.int64)),
                "envelope.site_id": s.site_id,
                "envelope.zone_id": s.zone_id,
                "envelope.domain": domain,
                "envelope.event_time": s.times[idx] + shift_ms,
                "envelope.seq": np.arange(m, dtype=np.int64),
                "envelope.lat": None,
                "envelope.lon": None,
                "envelope.quality": 0,
            }
            for name, default in REQUIRED_DEFAULTS[domain].items():
                cols[name] = default
            for name, v in s.values.items():
                v = v[idx]
                present = ~np.isnan(v)
                if name in _INT_FIELDS:
                    v = np.round(np.nan_to_num(v)).astype(np.int64)
                elif name in _BOOL_FIELDS:
                    v = np.nan_to_num(v) != 0
                cols[name] = Nullable(v, present) if name in nullable else v
            if domain == "water":
                cols["sensor_type"] = next((t for f, t in _WATER_TYPE if f in s.values), "flow")
                cols["dma_id"] = s.zone_id
            elif domain == "traffic":
                cols["interval_s"] = max(1, min(2**31 - 1, round(_step_ms(s.times) / 1000)))
            values = encoder.encode(m, cols)
            chunks.append((s.times[idx] + shift_ms, np.full(m, si), values))
            del values
        if not chunks:
            continue
        times = np.concatenate([c[0] for c in chunks])
        who = np.concatenate([c[1] for c in chunks])
        all_values = [v for c in chunks for v in c[2]]
        order = np.lexsort((who, times)).tolist()
        keys_by_series = [s.sensor_id.encode("utf-8") for s in group]
        whos = who.tolist()
        out.append(
            Encoded(
                f"{topic_prefix}readings.{domain}",
                times[order],
                [keys_by_series[whos[i]] for i in order],
                [all_values[i] for i in order],
            )
        )
    return out, skipped


def publish(
    ds: Dataset,
    sink: Any,
    topic_prefix: str,
    *,
    speed: float | None = None,
    shift_ms: int = 0,
    labels_file: Path | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Send labels first (they are known up front), then readings in event-time order; the summary."""
    from citystream import contracts

    began = clock()
    encoded, skipped = encode(ds, topic_prefix, shift_ms)
    labels = [
        {**lb, "start_time": lb["start_time"] + shift_ms, "end_time": lb["end_time"] + shift_ms}
        for lb in ds.labels
    ]
    if labels_file is not None:
        try:
            labels_file.parent.mkdir(parents=True, exist_ok=True)
            labels_file.write_text(
                "".join(json.dumps(lb, sort_keys=True) + "\n" for lb in labels), encoding="utf-8"
            )
        except OSError as exc:
            raise UserError(f"cannot write {labels_file}: {exc.strerror}") from None
    if labels:
        sink.emit(
            f"{topic_prefix}labels",
            [lb["label_id"].encode("utf-8") for lb in labels],
            [contracts.encode("citystream.Label", lb) for lb in labels],
        )
    if speed is None:
        for e in encoded:
            sink.emit(e.topic, e.keys, e.values)
    elif encoded:
        first = min(int(e.times[0]) for e in encoded)
        last = max(int(e.times[-1]) for e in encoded)
        chunk = max(1, int(250 * speed))
        pos = [0] * len(encoded)
        for t in range(first + chunk, last + chunk + 1, chunk):
            wait = began + (t - first) / 1000.0 / speed - clock()
            if wait > 0:
                sleep(wait)
            for j, e in enumerate(encoded):
                cut = int(np.searchsorted(e.times, t))
                if cut > pos[j]:
                    sink.emit(e.topic, e.keys[pos[j] : cut], e.values[pos[j] : cut])
                    pos[j] = cut
    sink.flush()
    elapsed = clock() - began
    readings = {e.topic: len(e.values) for e in encoded}
    total = sum(readings.values())
    return {
        "source": ds.source,
        "sensors": len(ds.series),
        "readings": readings,
        "readings_sent": total,
        "skipped_rows": skipped + ds.skipped_rows,
        "labels": len(labels),
        "labels_topic": f"{topic_prefix}labels",
        "first_event_ms": min((int(e.times[0]) for e in encoded), default=None),
        "last_event_ms": max((int(e.times[-1]) for e in encoded), default=None),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(total / elapsed) if elapsed > 0 else None,
    }


# --------------------------------------------------------------------------- CLI


def _mapping(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        col, sep, name = item.partition("=")
        if not sep or not col.strip() or not name.strip():
            raise UserError(f"--map {item!r}: use COLUMN=FIELD, e.g. --map speed=mean_speed_kmh")
        out[col.strip()] = name.strip()
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="send real time series (CSV, NAB, BATADAL) to the reading topics, with their labels",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    formats = p.add_subparsers(dest="import_format", metavar="FORMAT", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dry-run", action="store_true", help="read and encode, send nothing")
        q.add_argument("--labels-file", type=Path, default=None, help="also write the labels as JSONL here")
        q.add_argument("--speed", default="max", help="max (default), realtime or a factor like 3600")
        q.add_argument(
            "--shift-to", default=None, help="move the first reading to this ISO time (labels move along)"
        )
        q.add_argument(
            "--bootstrap", default=None, help="Kafka HOST:PORT (default: CITYSTREAM_KAFKA_BOOTSTRAP)"
        )
        q.add_argument("--summary-json", type=Path, default=None, help="write the summary as JSON here")

    c = formats.add_parser(
        "csv", help="a CSV time series: one sensor, a sensor column, or one sensor per column"
    )
    c.add_argument("file", type=Path)
    c.add_argument("--domain", required=True, help="traffic, water or grid")
    c.add_argument(
        "--time-col", default="timestamp", help="timestamp column (default 'timestamp'); '' = none"
    )
    c.add_argument(
        "--time-format", default=None, help="strftime format, e.g. '%%d/%%m/%%y %%H' (default: ISO)"
    )
    c.add_argument("--start", default=None, help="first timestamp when the file has none (with --interval)")
    c.add_argument("--interval", default=None, help="spacing when the file has no timestamps, e.g. 5m")
    c.add_argument("--sensor-col", default=None, help="column naming the sensor of each row")
    c.add_argument(
        "--sensor-id", default=None, help="sensor id for a single-sensor file (default DOMAIN-FILESTEM)"
    )
    c.add_argument(
        "--map", action="append", default=[], metavar="COLUMN=FIELD", help="value column -> schema field"
    )
    c.add_argument("--wide", default=None, metavar="FIELD", help="every other column is one sensor's FIELD")
    c.add_argument(
        "--label-col", default=None, help="column marking anomalous rows (non-zero or a kind name)"
    )
    c.add_argument("--zone", default="imported", help="zone_id of the sensors (default 'imported')")
    c.add_argument(
        "--scale", type=float, default=1.0, help="multiply every value, e.g. 1.609344 for mph -> km/h"
    )
    c.add_argument("--sep", default=",", help="field separator (default ','; SKAB uses ';')")
    c.add_argument(
        "--na-value",
        action="append",
        default=[],
        help="text that means 'missing' (repeatable), e.g. 0 for METR-LA",
    )
    common(c)
    c.set_defaults(handler=_cmd_csv)

    n = formats.add_parser("nab", help="Numenta Anomaly Benchmark series with their anomaly windows")
    n.add_argument("files", type=Path, nargs="+")
    n.add_argument(
        "--windows", type=Path, default=None, help="combined_windows.json (default: NAB's labels/)"
    )
    n.add_argument("--domain", default=None, help="domain for series without a default mapping")
    n.add_argument("--field", default=None, help="schema field the value goes to")
    common(n)
    n.set_defaults(handler=_cmd_nab)

    b = formats.add_parser("batadal", help="BATADAL C-Town SCADA (water) with its attack schedule")
    b.add_argument("file", type=Path)
    b.add_argument("--attacks", type=Path, default=None, help="attacks_training.csv (default: next to FILE)")
    common(b)
    b.set_defaults(handler=_cmd_batadal)


def _cmd_csv(args: argparse.Namespace) -> int:
    from citystream.simulator.cli import parse_duration, parse_time

    start = parse_time(args.start, "--start") if args.start else None
    interval = parse_duration(args.interval) if args.interval else None
    ds = read_csv(
        args.file,
        domain=args.domain,
        time_col=args.time_col or None,
        time_format=args.time_format,
        start_ms=start,
        interval_ms=interval,
        sensor_col=args.sensor_col,
        sensor_id=args.sensor_id,
        mapping=_mapping(args.map),
        wide=args.wide,
        label_col=args.label_col,
        zone=args.zone,
        scale=args.scale,
        sep=args.sep,
        na_values=args.na_value,
    )
    return _send(ds, args)


def _cmd_nab(args: argparse.Namespace) -> int:
    return _send(read_nab(args.files, windows=args.windows, domain=args.domain, field_name=args.field), args)


def _cmd_batadal(args: argparse.Namespace) -> int:
    return _send(read_batadal(args.file, attacks=args.attacks), args)


def _send(ds: Dataset, args: argparse.Namespace) -> int:
    from citystream import settings
    from citystream.simulator.cli import parse_speed, parse_time
    from citystream.simulator.engine import CountingSink, KafkaSink

    try:
        current = settings.load()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    speed = parse_speed(args.speed)
    shift = 0
    if args.shift_to:
        first = min((int(s.times[0]) for s in ds.series if s.times.size), default=0)
        shift = parse_time(args.shift_to, "--shift-to") - first
    prefix = current.topic_prefix
    if args.dry_run:
        summary = publish(
            ds, CountingSink(), prefix, speed=speed, shift_ms=shift, labels_file=args.labels_file
        )
    else:
        from citystream.connectors.producer import ReadingProducer
        from citystream.simulator.cli import prepare_topics

        bootstrap = args.bootstrap or current.kafka_bootstrap
        compression = prepare_topics(bootstrap, prefix, current.topics_spec)
        with ReadingProducer(bootstrap, compression=compression, client_id="citystream-importer") as producer:
            summary = publish(
                ds, KafkaSink(producer), prefix, speed=speed, shift_ms=shift, labels_file=args.labels_file
            )
            expected = summary["readings_sent"] + summary["labels"]
            if producer.sent != expected:
                raise UserError(f"Kafka acknowledged {producer.sent} of {expected} records")
    if args.summary_json:
        try:
            args.summary_json.parent.mkdir(parents=True, exist_ok=True)
            args.summary_json.write_text(
                json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            raise UserError(f"cannot write {args.summary_json}: {exc.strerror}") from None
    print(_format(summary, args.dry_run))
    return 0


def _format(summary: dict[str, Any], dry_run: bool) -> str:
    from datetime import UTC, datetime

    def iso(ms: int | None) -> str:
        if ms is None:
            return "-"
        return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    per_topic = ", ".join(f"{t} {n}" for t, n in summary["readings"].items()) or "none"
    lines = [
        f"imported {summary['source']}: {summary['sensors']} sensors, {iso(summary['first_event_ms'])} .. "
        f"{iso(summary['last_event_ms'])}" + (" (dry run: nothing sent)" if dry_run else ""),
        f"readings: {summary['readings_sent']} ({per_topic}); skipped rows with missing values: "
        f"{summary['skipped_rows']}",
        f"labels: {summary['labels']} -> {summary['labels_topic'] if not dry_run else '(dry run)'}",
    ]
    if summary.get("events_per_s"):
        lines.append(f"sent in {summary['elapsed_s']:.2f} s ({summary['events_per_s']:,} events/s)")
    return "\n".join(lines)
