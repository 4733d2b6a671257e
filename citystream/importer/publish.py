"""Encoding an import onto the readings and labels topics, paced or as fast as possible.

Why sensors first: the domain jobs dead-letter readings of sensors the registry does not
know, so a sink that can register (Kafka) gets the registry entries before anything else.
Why labels next: they are known up front, and a detector scored against them
must never see a reading whose label has not arrived yet. Readings go out in
event-time order per topic, optionally at ``speed`` times real time, so a live
pipeline sees them as it would see real sensors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from citystream import catalog, contracts
from citystream.errors import UserError
from citystream.importer.dataset import (
    BOOL_FIELDS,
    INT_FIELDS,
    REQUIRED_DEFAULTS,
    WATER_TYPE,
    Dataset,
    Series,
    step_ms,
)
from citystream.importer.sensors import dataset_sensors
from citystream.simulator.codec import BulkEncoder, Nullable, Strings


@dataclass
class Encoded:
    """One topic's messages in event-time order."""

    topic: str
    times: np.ndarray
    keys: list[bytes]
    values: list[bytes]


def encode(ds: Dataset, topic_prefix: str, shift_ms: int = 0) -> tuple[list[Encoded], int]:
    """Encode every series onto its domain topic; (per-topic messages, rows skipped for missing values)."""
    out: list[Encoded] = []
    skipped = 0
    for spec in catalog.DOMAINS:
        group = [s for s in ds.series if s.domain == spec.name]
        if not group:
            continue
        encoder = BulkEncoder(spec.record)
        nullable = {f.path for f in encoder.fields if f.nullable}
        chunks: list[tuple[np.ndarray, np.ndarray, list[bytes]]] = []
        for si, s in enumerate(group):
            keep = np.ones(s.times.size, dtype=bool)
            for name, v in s.values.items():
                if name not in nullable:
                    keep &= ~np.isnan(v)  # a required value that is missing: the row cannot be sent
            skipped += int((~keep).sum())
            idx = np.flatnonzero(keep)
            if idx.size == 0:
                continue
            values = encoder.encode(idx.size, _columns(s, idx, nullable, shift_ms))
            chunks.append((s.times[idx] + shift_ms, np.full(idx.size, si), values))
            del values
        if chunks:
            out.append(_in_event_time_order(f"{topic_prefix}{spec.topic}", group, chunks))
    return out, skipped


def _columns(s: Series, idx: np.ndarray, nullable: set[str], shift_ms: int) -> dict[str, Any]:
    """The encoder's columns for the rows ``idx`` of one series: envelope, neutral defaults, values."""
    m = idx.size
    domain = s.domain
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
        if name in INT_FIELDS:
            v = np.round(np.nan_to_num(v)).astype(np.int64)
        elif name in BOOL_FIELDS:
            v = np.nan_to_num(v) != 0
        cols[name] = Nullable(v, present) if name in nullable else v
    if domain == "water":
        cols["sensor_type"] = next((t for f, t in WATER_TYPE if f in s.values), "flow")
        cols["dma_id"] = s.zone_id
    elif domain == "traffic":
        cols["interval_s"] = max(1, min(2**31 - 1, round(step_ms(s.times) / 1000)))
    return cols


def _in_event_time_order(
    topic: str, group: list[Series], chunks: list[tuple[np.ndarray, np.ndarray, list[bytes]]]
) -> Encoded:
    """One topic's messages merged across sensors by event time (ties: series order)."""
    times = np.concatenate([c[0] for c in chunks])
    who = np.concatenate([c[1] for c in chunks])
    all_values = [v for c in chunks for v in c[2]]
    order = np.lexsort((who, times)).tolist()
    keys_by_series = [s.sensor_id.encode("utf-8") for s in group]
    whos = who.tolist()
    return Encoded(
        topic,
        times[order],
        [keys_by_series[whos[i]] for i in order],
        [all_values[i] for i in order],
    )


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
    """Register the sensors (if the sink can), send labels, then readings in event-time order; the summary."""
    began = clock()
    encoded, skipped = encode(ds, topic_prefix, shift_ms)
    register = getattr(sink, "register", None)
    registered = register(f"{topic_prefix}sensors", dataset_sensors(ds, shift_ms)) if register else 0
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
        "registered": registered,
        "sensors_topic": f"{topic_prefix}sensors",
        "first_event_ms": min((int(e.times[0]) for e in encoded), default=None),
        "last_event_ms": max((int(e.times[-1]) for e in encoded), default=None),
        "elapsed_s": round(elapsed, 3),
        "events_per_s": round(total / elapsed) if elapsed > 0 else None,
    }
