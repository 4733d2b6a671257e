"""Golden tests of the grid, traffic and water jobs: Kafka -> MiniCluster -> Kafka, at parallelism 1 and 2.

One bounded input per domain with fixed event times, delivered in a chosen
order: out-of-order readings, duplicates (same sensor and seq), readings late
but within the allowed lateness (they re-fire a window with a higher
revision), readings beyond it (late-events topic) and poisoned records
(undecodable, truncated, trailing bytes, tombstone, NaN, Inf, impossible
values, event times in 1970 and 2099: dead-letter topic).

The expected outputs come from an independent reference in plain Python and
pandas (``reference`` below): it replays the arrival order to know each
reading's watermark, then aggregates with pandas group-bys. The job's final
emission per window (highest revision) must equal it exactly: window bounds,
counts and revisions, and aggregates to 1e-9 relative.

Why one partition: which reading is late depends on the watermark when it
arrives; with one partition and per-record watermarks that is a function of
the delivery order alone, so the test is deterministic at any parallelism.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import math
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import load_schema
from kafka import KafkaConsumer

from citystream import contracts
from citystream.connectors.producer import ReadingProducer
from citystream.jobs.common import Windows, process, window_options
from citystream.jobs.grid import GRID
from citystream.jobs.kafka_io import add_inserts, build
from citystream.jobs.runtime import table_environment
from citystream.jobs.traffic import TRAFFIC
from citystream.jobs.water import WATER
from citystream.settings import ROOT

pytestmark = pytest.mark.integration

T0_MS = int(dt.datetime(2026, 1, 5, tzinfo=dt.UTC).timestamp() * 1000)  # fixed epoch
STEP_S = 10
MINUTES = 8
TUMBLE_MS, HOP_SIZE_MS, HOP_SLIDE_MS, ZONE_MS = 60_000, 300_000, 60_000, 60_000
LATENESS_MS = 120_000
MIN_EVENT_MS = int(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
DOMAINS = ("grid", "traffic", "water")
#: Sensor number that stops reporting after SILENT_AFTER_STEPS readings (3 minutes).
SILENT_SENSOR, SILENT_AFTER_STEPS = 3, 18
SILENCE_MS = 120_000
RECORDS = {
    "grid": "citystream.GridReading",
    "traffic": "citystream.TrafficReading",
    "water": "citystream.WaterReading",
}
OUT_OF_ORDER_S = {"grid": 5, "traffic": 10, "water": 10}


# ----------------------------------------------------------------------------- input


def _envelope(domain: str, sensor: str, site: str, zone: str, t_ms: int, seq: int) -> dict:
    return {
        "sensor_id": sensor,
        "site_id": site,
        "zone_id": zone,
        "domain": domain,
        "event_time": t_ms,
        "seq": seq,
        "lat": None,
        "lon": None,
        "quality": 0,
    }


def _reading(domain: str, sensor_no: int, t_ms: int, seq: int, rng: random.Random) -> dict:
    zone = f"z{sensor_no // 2}"
    sensor = f"{domain[0]}{sensor_no}"
    if domain == "grid":
        env = _envelope(domain, sensor, f"ss{sensor_no // 2}", zone, t_ms, seq)
        return {
            "envelope": env,
            "phase": "a",
            "voltage_v": 230 + rng.uniform(-5, 5),
            "current_a": rng.uniform(5, 50),
            "frequency_hz": 50 + rng.uniform(-0.1, 0.1),
            "active_power_kw": rng.uniform(1, 40),
            "reactive_power_kvar": rng.uniform(0, 5),
            "power_factor": rng.uniform(0.85, 1.0),
        }
    if domain == "traffic":
        env = _envelope(domain, sensor, f"x{sensor_no}", zone, t_ms, seq)
        count = rng.randint(0, 12)
        speed = None if count == 0 else rng.uniform(10, 90)
        return {
            "envelope": env,
            "lane": 1,
            "direction": "N",
            "interval_s": STEP_S,
            "vehicle_count": count,
            "mean_speed_kmh": speed,
            "occupancy_pct": rng.uniform(0, 60),
        }
    env = _envelope(domain, sensor, f"p{sensor_no}", zone, t_ms, seq)
    kind = ("flow", "pressure", "level", "quality")[sensor_no % 4]
    r = {
        "envelope": env,
        "sensor_type": kind,
        "dma_id": "" if sensor_no == 3 else f"dma{sensor_no // 2}",
        "flow_lps": None,
        "pressure_bar": None,
        "tank_level_m": None,
        "pump_on": None,
        "ph": None,
        "turbidity_ntu": None,
        "chlorine_mgl": None,
    }
    if kind == "flow":
        r["flow_lps"] = rng.uniform(5, 50)
    elif kind == "pressure":
        r["pressure_bar"] = rng.uniform(2, 6)
    elif kind == "level":
        r["tank_level_m"] = 4 + 0.002 * (t_ms - T0_MS) / 1000 + rng.uniform(-0.01, 0.01)
    else:
        r["ph"], r["turbidity_ntu"], r["chlorine_mgl"] = (
            rng.uniform(6.5, 8),
            rng.uniform(0, 2),
            rng.uniform(0.2, 1),
        )
    return r


@functools.cache
def _schema(name: str) -> dict:
    return load_schema(str(ROOT / "avro" / f"{name}.avsc"))


def _encode(domain: str, record: dict) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, _schema(RECORDS[domain]), record)
    return buf.getvalue()


@dataclass
class Delivery:
    arrival: float  # sort key: the delivery order
    key: bytes | None
    value: bytes | None


def deliveries(domain: str) -> list[Delivery]:
    """The domain's input in delivery order; readings, then injected disorder and poison."""
    rng = random.Random({"grid": 1, "traffic": 2, "water": 3}[domain])
    ooo_ms = OUT_OF_ORDER_S[domain] * 1000
    out: list[Delivery] = []
    readings = []
    for sensor_no in range(4):
        steps = SILENT_AFTER_STEPS if sensor_no == SILENT_SENSOR else MINUTES * 60 // STEP_S
        for i in range(steps):
            t_ms = T0_MS + i * STEP_S * 1000 + sensor_no * 1000
            readings.append(_reading(domain, sensor_no, t_ms, i + 1, rng))
    for r in readings:
        t = r["envelope"]["event_time"]
        out.append(
            Delivery(
                t + rng.uniform(0, 0.8 * ooo_ms), r["envelope"]["sensor_id"].encode(), _encode(domain, r)
            )
        )
    # Disorder only for the sensors that keep reporting: the silent one just stops.
    talkative = [
        i for i, r in enumerate(readings) if not r["envelope"]["sensor_id"].endswith(str(SILENT_SENSOR))
    ]
    picks = rng.sample(talkative, 24)
    # Duplicates: re-delivered soon, or ~30 s later.
    for j, idx in enumerate(picks[:6]):
        r = readings[idx]
        out.append(
            Delivery(r["envelope"]["event_time"] + (1_000 if j % 2 else 30_000), out[idx].key, out[idx].value)
        )
    # Late within allowed lateness (re-fires windows), late beyond it (late-events topic).
    for idx, delay in zip(
        picks[6:18],
        [
            70_000,
            90_000,
            110_000,
            130_000,
            150_000,
            75_000,
            200_000,
            260_000,
            300_000,
            400_000,
            95_000,
            180_000,
        ],
        strict=True,
    ):
        out[idx].arrival = readings[idx]["envelope"]["event_time"] + delay
    # A duplicate of a late reading, itself late.
    idx = picks[18]
    out[idx].arrival = readings[idx]["envelope"]["event_time"] + 80_000
    out.append(Delivery(readings[idx]["envelope"]["event_time"] + 85_000, out[idx].key, out[idx].value))
    # Poison, spread over the run.
    good = readings[5]
    poison: list[bytes | None] = [
        b"\x01\x02garbage",
        _encode(domain, good)[:20],
        _encode(domain, good) + b"\x00\x07",
        None,
    ]
    for field, value in {
        "grid": [("voltage_v", math.nan), ("frequency_hz", math.inf), ("voltage_v", -3.0)],
        "traffic": [("occupancy_pct", math.nan), ("mean_speed_kmh", math.inf), ("occupancy_pct", 140.0)],
        "water": [("pressure_bar", math.nan), ("pressure_bar", -math.inf), ("pressure_bar", 99.0)],
    }[domain]:
        bad = {**good, field: value}
        if domain == "water":
            bad = {**readings[1], field: value}
        poison.append(_encode(domain, bad))
    for year in (1970, 2099):
        when = int(dt.datetime(year, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)
        poison.append(_encode(domain, {**good, "envelope": {**good["envelope"], "event_time": when}}))
    for k, value in enumerate(poison):
        out.append(Delivery(T0_MS + 20_000 + k * 37_000 + 0.5, b"poison", value))
    out.sort(key=lambda d: d.arrival)
    return out


# ----------------------------------------------------------------------------- reference


def _envelope_time(value: bytes | None) -> int | None:
    """Event time from the Avro envelope prefix (4 strings, then a zig-zag long), as the watermark sees it."""
    if value is None:
        return None
    buf = io.BytesIO(value)

    def varint() -> int:
        shift = result = 0
        while True:
            b = buf.read(1)
            if not b:
                raise EOFError
            result |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                return (result >> 1) ^ -(result & 1)

    try:
        for _ in range(4):
            n = varint()
            if n < 0 or len(buf.read(n)) != n:
                return None
        t = varint()
    except EOFError:
        return None
    if t < MIN_EVENT_MS or t > int(dt.datetime.now(dt.UTC).timestamp() * 1000) + 86_400_000:
        return None
    return t


def _decode(domain: str, value: bytes | None) -> tuple[dict | None, str | None]:
    if value is None:
        return None, "undecodable"
    buf = io.BytesIO(value)
    try:
        rec = schemaless_reader(buf, _schema(RECORDS[domain]), None)
    except Exception:
        return None, "undecodable"
    if buf.tell() != len(value):
        return None, "schema_mismatch"
    flat = {**rec["envelope"], **{k: v for k, v in rec.items() if k != "envelope"}}
    flat["event_time"] = round(flat["event_time"].timestamp() * 1000)  # fastavro gives an aware datetime
    for v in flat.values():
        if isinstance(v, float) and not math.isfinite(v):
            return None, "invalid_value"
    return flat, None


def _valid(domain: str, r: dict) -> bool:
    def within(v: float | None, lo: float, hi: float) -> bool:
        return v is None or lo <= v <= hi

    if domain == "grid":
        return (
            0 <= r["voltage_v"] <= 500_000
            and 0 <= r["current_a"] <= 100_000
            and 40 <= r["frequency_hz"] <= 70
            and abs(r["active_power_kw"]) <= 1e6
            and abs(r["reactive_power_kvar"]) <= 1e6
            and -1 <= r["power_factor"] <= 1
        )
    if domain == "traffic":
        return (
            0 < r["interval_s"] <= 3600
            and 0 <= r["vehicle_count"] <= 10 * r["interval_s"]
            and within(r["mean_speed_kmh"], 0, 300)
            and 0 <= r["occupancy_pct"] <= 100
        )
    return (
        within(r["flow_lps"], -1e5, 1e5)
        and within(r["pressure_bar"], -1, 40)
        and within(r["tank_level_m"], 0, 100)
        and within(r["ph"], 0, 14)
        and within(r["turbidity_ntu"], 0, 1e4)
        and within(r["chlorine_mgl"], 0, 100)
    )


def replay(domain: str, ds: list[Delivery]) -> tuple[pd.DataFrame, list[tuple], list[tuple]]:
    """Arrival-order replay: accepted readings (with flags), late events, dead letters."""
    ooo_ms = OUT_OF_ORDER_S[domain] * 1000
    max_ts = None
    seen: set[tuple[str, int]] = set()
    accepted, late_events, dead = [], [], []
    for offset, d in enumerate(ds):
        wm = None if max_ts is None else max_ts - ooo_ms
        et = _envelope_time(d.value)
        rec, reason = _decode(domain, d.value)
        if reason is None and (et is None or not _valid(domain, rec)):
            reason = "invalid_value"
        if et is not None:
            max_ts = et if max_ts is None else max(max_ts, et)
        if reason is not None:
            dead.append((offset, reason))
            continue
        ts = rec["event_time"]
        first_end = ts - ts % 60_000 + 60_000
        if wm is not None and wm >= first_end - 1 + LATENESS_MS:
            late_events.append((offset, rec["sensor_id"], ts, wm, wm - ts))
            continue
        dup = (rec["sensor_id"], rec["seq"]) in seen
        seen.add((rec["sensor_id"], rec["seq"]))
        accepted.append({**rec, "ts": ts, "wm": wm, "dup": dup, "is_late": wm is not None and ts < wm})
    return pd.DataFrame(accepted), late_events, dead


def _metric_rows(domain: str, g: pd.DataFrame, window_s: float) -> dict[str, tuple[int, float, float, float]]:
    """metric -> (samples, mean, min, max) for one window's first deliveries ``g``."""
    out: dict[str, tuple[int, float, float, float]] = {}

    def stats(name: str, s: pd.Series) -> None:
        s = s.dropna().astype(float)
        if len(s):
            out[name] = (len(s), float(np.mean(s)), float(s.min()), float(s.max()))

    def single(name: str, n: int, v: float | None) -> None:
        if n > 0 and v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[name] = (n, float(v), float(v), float(v))

    if domain == "grid":
        for c in (
            "voltage_v",
            "current_a",
            "frequency_hz",
            "active_power_kw",
            "reactive_power_kvar",
            "power_factor",
        ):
            stats(c, g[c])
        stats("frequency_deviation_hz", (g["frequency_hz"] - 50.0).abs())
        single(
            "energy_kwh", len(g), g["active_power_kw"].mean() * g["sensor_id"].nunique() * window_s / 3600.0
        )
    elif domain == "traffic":
        counts = g["vehicle_count"].astype(float)
        stats("vehicle_count", counts)
        single("vehicles", len(g), counts.sum())
        single("flow_vph", len(g), counts.sum() * 3600.0 / window_s)
        moving = g[(g["vehicle_count"] > 0) & (g["mean_speed_kmh"].fillna(0) > 0)]
        speeds = g["mean_speed_kmh"].dropna()
        if len(speeds) and len(moving):
            tm = (moving["vehicle_count"] * moving["mean_speed_kmh"]).sum() / moving["vehicle_count"].sum()
            out["mean_speed_kmh"] = (len(speeds), float(tm), float(speeds.min()), float(speeds.max()))
        if len(moving):
            hm = moving["vehicle_count"].sum() / (moving["vehicle_count"] / moving["mean_speed_kmh"]).sum()
            single("harmonic_mean_speed_kmh", len(moving), hm)
        stats("occupancy_pct", g["occupancy_pct"])
        occ = g["occupancy_pct"].mean()
        single(
            "congestion_level", len(g), float(3 if occ >= 40 else 2 if occ >= 25 else 1 if occ >= 15 else 0)
        )
    else:
        for c in ("pressure_bar", "flow_lps", "tank_level_m", "ph", "turbidity_ntu", "chlorine_mgl"):
            stats(c, g[c])
        flow = g["flow_lps"].dropna()
        if len(flow):
            single("flow_volume_m3", len(flow), flow.mean() * window_s / 1000.0)
        lvl = g.dropna(subset=["tank_level_m"])
        if len(lvl) >= 2:
            slope = np.polyfit(
                (lvl["ts"] - lvl["ts"].min()).astype(float), lvl["tank_level_m"].astype(float), 1
            )[0]
            single("tank_level_rate_m_per_h", len(lvl), slope * 3_600_000.0)
    return out


def reference(domain: str, accepted: pd.DataFrame) -> dict[tuple, tuple]:
    """Final rows: (key_kind, key_id, metric, start, end) -> (samples, mean, min, max, late, dups, revision).

    The revision is the number of readings that arrived after the watermark passed the window's end.
    """
    zone_kind = {"grid": "substation", "traffic": "zone", "water": "dma"}[domain]
    df = accepted.copy()
    if domain == "grid":
        df["zone_key"] = df["site_id"]
    elif domain == "water":
        df["zone_key"] = np.where(df["dma_id"] == "", df["zone_id"], df["dma_id"])
    else:
        df["zone_key"] = df["zone_id"]
    expected: dict[tuple, tuple] = {}
    plans = [
        ("sensor", "sensor_id", TUMBLE_MS, TUMBLE_MS),
        ("sensor", "sensor_id", HOP_SIZE_MS, HOP_SLIDE_MS),
        (zone_kind, "zone_key", ZONE_MS, ZONE_MS),
    ]
    for key_kind, key_col, size, slide in plans:
        rows = []
        for r in df.itertuples(index=False):
            last = r.ts - r.ts % slide
            for start in range(last, r.ts - size, -slide):
                rows.append({**r._asdict(), "w_start": start, "w_end": start + size})
        windows = pd.DataFrame(rows)
        for (key, start, end), g in windows.groupby([key_col, "w_start", "w_end"]):
            first = g[~g["dup"]]
            late = int((first["is_late"]).sum())
            dups = int(g["dup"].sum())
            revision = int((g["is_late"] & (g["wm"].fillna(-1) >= end - 1)).sum())
            for metric, (n, mean, lo, hi) in _metric_rows(domain, first, size / 1000).items():
                expected[(key_kind, key, metric, start, end)] = (n, mean, lo, hi, late, dups, revision)
    return expected


# ----------------------------------------------------------------------------- the run


@pytest.fixture(scope="module")
def inputs(kafka) -> dict[str, list[Delivery]]:
    """Every domain's deliveries written to a one-partition topic per parallelism."""
    data = {d: deliveries(d) for d in DOMAINS}
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    for p in (1, 2):
        settings = kafka.settings_.replace(topic_prefix=f"golden{p}.")
        topics = [NewTopic(settings.topic(f"readings.{d}"), 1, 1) for d in DOMAINS]
        for f in admin.create_topics(topics).values():
            f.result()
        with ReadingProducer(settings.kafka_bootstrap) as producer:
            for d in DOMAINS:
                for x in data[d]:
                    producer.send_encoded(settings.topic(f"readings.{d}"), x.key, x.value)
    return data


def _consume(settings, topic: str, record: str) -> list[dict]:
    consumer = KafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=4000,
        isolation_level="read_committed",
    )
    try:
        return [contracts.decode(record, m.value) for m in consumer]
    finally:
        consumer.close()


@pytest.fixture(scope="module", params=[1, 2], ids=["p1", "p2"])
def outputs(request, kafka, inputs) -> dict[str, list[dict]]:
    """All three jobs in one bounded Flink run (exactly-once sinks), their topics read back."""
    specs = {"grid": GRID, "traffic": TRAFFIC, "water": WATER}

    p = request.param
    settings = kafka.settings_.replace(topic_prefix=f"golden{p}.")
    windows = Windows(silence_s=SILENCE_MS // 1000)
    t_env = table_environment(
        settings, job="golden", parallelism=p, checkpoint_interval="2 s", overrides=window_options(windows)
    )
    stmt = t_env.create_statement_set()
    for name in DOMAINS:
        domain = specs[name]
        sinks = build(t_env, settings, domain, windows, bounded=True, watermark_on_event=True)
        out = process(t_env, domain, t_env.from_path(f"{name}_raw"), windows)
        add_inserts(stmt, out, sinks)
    stmt.execute().wait()
    return {
        "aggregates": _consume(settings, "aggregates", "citystream.WindowAggregate"),
        "late": _consume(settings, "late-events", "citystream.LateEvent"),
        "dead": _consume(settings, "dead-letter", "citystream.DeadLetter"),
        "health": _consume(settings, "sensor-health", "citystream.SensorHealth"),
    }


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("domain", DOMAINS)
def test_aggregates_equal_reference(outputs, inputs, domain: str) -> None:
    accepted, _, _ = replay(domain, inputs[domain])
    want = reference(domain, accepted)
    emissions: dict[tuple, list[dict]] = {}
    for a in outputs["aggregates"]:
        if a["domain"] == domain:
            key = (a["key_kind"], a["key_id"], a["metric"], a["window_start"], a["window_end"])
            emissions.setdefault(key, []).append(a)
    assert set(emissions) == set(want)
    mismatches = []
    for key, rows in emissions.items():
        revisions = [r["revision"] for r in rows]
        assert len(revisions) == len(set(revisions)), (key, revisions)  # one row per revision
        final = max(rows, key=lambda r: r["revision"])
        n, mean, lo, hi, late, dups, revision = want[key]
        got = (final["samples"], final["late"], final["duplicates"], final["revision"])
        if got != (n, late, dups, revision) or not all(
            _close(x, y) for x, y in ((final["mean"], mean), (final["min"], lo), (final["max"], hi))
        ):
            mismatches.append((key, final, want[key]))
    assert mismatches == []
    # The input really exercised every path.
    assert (
        any(v[4] for v in want.values())
        and any(v[5] for v in want.values())
        and any(v[6] for v in want.values())
    )


@pytest.mark.parametrize("domain", DOMAINS)
def test_late_beyond_lateness_go_to_late_events(outputs, inputs, domain: str) -> None:
    _, late, _ = replay(domain, inputs[domain])
    got = sorted(
        (e["source_offset"], e["sensor_id"], e["event_time"], e["watermark"], e["lateness_ms"])
        for e in outputs["late"]
        if e["source_topic"].endswith(f"readings.{domain}")
    )
    assert got == sorted(late) and len(late) >= 2
    assert all(e["lateness_ms"] > 0 and e["original"] for e in outputs["late"])


@pytest.mark.parametrize("domain", DOMAINS)
def test_poisoned_records_go_to_dead_letters(outputs, inputs, domain: str) -> None:
    _, _, dead = replay(domain, inputs[domain])
    got = sorted(
        (e["source_offset"], e["reason"])
        for e in outputs["dead"]
        if e["source_topic"].endswith(f"readings.{domain}")
    )
    assert got == sorted(dead)
    assert {r for _, r in dead} == {"undecodable", "schema_mismatch", "invalid_value"}
    assert len(dead) == 9


def test_silent_sensor_reported_once(outputs, inputs) -> None:
    """The sensor that stops is 'silent' since its last reading; end of input is not a silence."""
    expected = []
    for domain in DOMAINS:
        accepted, _, _ = replay(domain, inputs[domain])
        sensor = f"{domain[0]}{SILENT_SENSOR}"
        last = int(accepted.loc[accepted["sensor_id"] == sensor, "ts"].max())
        deadline = (last // 60_000 + 1) * 60_000 + SILENCE_MS  # SensorSilence moves its timer per minute
        assert deadline < int(accepted["ts"].max()) - OUT_OF_ORDER_S[domain] * 1000  # the watermark passes it
        expected.append((domain, sensor, "silent", last))
    got = sorted((h["domain"], h["sensor_id"], h["status"], h["since"]) for h in outputs["health"])
    assert got == sorted(expected)
