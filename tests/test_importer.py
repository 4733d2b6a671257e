"""``citystream import``: real series onto the reading schemas and topics, with labels; bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from citystream import cli, contracts
from citystream.importer import Dataset, encode, publish, read_batadal, read_csv, read_nab
from citystream.simulator.engine import CaptureSink

T0 = "2026-01-05 00:00:00"


def write(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


@pytest.fixture
def long_csv(tmp_path: Path) -> Path:
    rows = ["timestamp,sensor,speed,occ,label"]
    for i in range(12):
        for s in ("a", "b"):
            label = "incident" if s == "a" and 4 <= i < 7 else "0"
            rows.append(f"2026-01-05 00:{i * 5:02d}:00,{s},{50 + i},{10 + i / 2},{label}")
    return write(tmp_path / "loops.csv", "\n".join(rows))


def decoded(records: list[tuple[str, bytes, bytes]], topic_suffix: str, schema: str) -> list[dict]:
    return [contracts.decode(schema, v) for t, _, v in records if t.endswith(topic_suffix)]


def test_long_csv_with_sensor_column_and_labels(long_csv: Path) -> None:
    ds = read_csv(
        long_csv,
        domain="traffic",
        sensor_col="sensor",
        mapping={"speed": "mean_speed_kmh", "occ": "occupancy_pct"},
        label_col="label",
    )
    assert [s.sensor_id for s in ds.series] == ["traffic-a", "traffic-b"]
    sink = CaptureSink()
    summary = publish(ds, sink, "t.")
    rows = decoded(sink.records, "readings.traffic", "citystream.TrafficReading")
    assert len(rows) == summary["readings_sent"] == 24
    a = [r for r in rows if r["envelope"]["sensor_id"] == "traffic-a"]
    assert [r["envelope"]["seq"] for r in a] == list(range(12))
    assert a[3]["mean_speed_kmh"] == 53.0 and a[3]["occupancy_pct"] == 11.5
    assert a[0]["interval_s"] == 300 and a[0]["vehicle_count"] == 0  # unmapped required field: neutral value
    times = [r["envelope"]["event_time"] for r in rows]
    assert times == sorted(times)  # event-time order across sensors
    [label] = decoded(sink.records, "labels", "citystream.Label")
    assert label["kind"] == "incident" and label["sensor_ids"] == ["traffic-a"] and label["source"] == "csv"
    assert label["start_time"] == a[4]["envelope"]["event_time"]
    assert label["end_time"] == a[7]["envelope"]["event_time"]  # exclusive: the first normal row


def test_wide_csv_without_timestamps(tmp_path: Path) -> None:
    path = write(tmp_path / "speeds.csv", "101,102\n60,0\n61,55\n62,57")
    ds = read_csv(
        path,
        domain="traffic",
        time_col=None,
        start_ms=1_330_560_000_000,
        interval_ms=300_000,
        wide="mean_speed_kmh",
        scale=1.609344,
        na_values=["0"],
    )
    sink = CaptureSink()
    publish(ds, sink, "t.")
    rows = decoded(sink.records, "readings.traffic", "citystream.TrafficReading")
    speeds = {(r["envelope"]["sensor_id"], r["envelope"]["seq"]): r["mean_speed_kmh"] for r in rows}
    assert speeds[("traffic-speeds-101", 0)] == pytest.approx(60 * 1.609344)
    assert speeds[("traffic-speeds-102", 0)] is None  # "0" declared missing -> null, row kept
    assert rows[0]["envelope"]["event_time"] == 1_330_560_000_000


def test_water_and_grid_mapping_and_missing_required_values(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mix.csv",
        f"timestamp,p,pump,kw\n{T0},40,1,12.5\n2026-01-05 01:00:00,,0,\n2026-01-05 02:00:00,42,1,13",
    )
    water = read_csv(path, domain="water", mapping={"p": "pressure_bar"})
    pump = read_csv(path, domain="water", mapping={"pump": "pump_on"}, sensor_id="water-x-pump")
    grid = read_csv(path, domain="grid", mapping={"kw": "active_power_kw"})
    merged = Dataset("csv", water.series + pump.series + grid.series)
    msgs, skipped = encode(merged, "t.")
    assert skipped == 1  # grid row without active power (required) cannot be sent
    by_topic = {m.topic: m for m in msgs}
    w = [contracts.decode("citystream.WaterReading", v) for v in by_topic["t.readings.water"].values]
    pressures = [r for r in w if r["sensor_type"] == "pressure"]
    assert [r["pressure_bar"] for r in pressures] == [40.0, None, 42.0]  # nullable: kept as null
    assert [r["pump_on"] for r in w if r["sensor_type"] == "pump"] == [True, False, True]
    g = [contracts.decode("citystream.GridReading", v) for v in by_topic["t.readings.grid"].values]
    assert [r["active_power_kw"] for r in g] == [12.5, 13.0] and g[0]["voltage_v"] == 230.0


def test_shift_moves_readings_and_labels_together(long_csv: Path) -> None:
    ds = read_csv(
        long_csv,
        domain="traffic",
        sensor_col="sensor",
        mapping={"speed": "mean_speed_kmh"},
        label_col="label",
    )
    plain, shifted = CaptureSink(), CaptureSink()
    publish(ds, plain, "t.")
    publish(ds, shifted, "t.", shift_ms=86_400_000)
    a = decoded(plain.records, "labels", "citystream.Label")[0]
    b = decoded(shifted.records, "labels", "citystream.Label")[0]
    assert b["start_time"] - a["start_time"] == 86_400_000 == b["end_time"] - a["end_time"]


def test_cli_dry_run_csv(long_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "labels.jsonl"
    code = cli.main(
        [
            "import", "csv", str(long_csv), "--domain", "traffic", "--sensor-col", "sensor",
            "--map", "speed=mean_speed_kmh", "--label-col", "label",
            "--dry-run", "--labels-file", str(labels),
        ]
    )  # fmt: skip
    assert code == 0
    assert "readings: 24" in capsys.readouterr().out
    assert json.loads(labels.read_text())["kind"] == "incident"


@pytest.mark.parametrize(
    ("make", "argv", "message"),
    [
        (
            None,
            ["csv", "{dir}/missing.csv", "--domain", "traffic", "--map", "v=occupancy_pct"],
            "no such file",
        ),
        (
            "ok",
            ["csv", "{file}", "--domain", "sewage", "--map", "v=occupancy_pct"],
            "unknown domain 'sewage'",
        ),
        ("ok", ["csv", "{file}", "--domain", "grid", "--map", "v=speed"], "unknown grid field 'speed'"),
        ("ok", ["csv", "{file}", "--domain", "grid", "--map", "nope=current_a"], "no column 'nope'"),
        ("ok", ["csv", "{file}", "--domain", "grid", "--map", "v"], "use COLUMN=FIELD"),
        ("ok", ["csv", "{file}", "--domain", "grid"], "say which columns hold values"),
        ("badtime", ["csv", "{file}", "--domain", "grid", "--map", "v=current_a"], "bad timestamp 'noon'"),
        ("badnum", ["csv", "{file}", "--domain", "grid", "--map", "v=current_a"], "non-number 'lots'"),
        ("binary", ["csv", "{file}", "--domain", "grid", "--map", "v=current_a"], "not a readable CSV"),
        ("empty", ["csv", "{file}", "--domain", "grid", "--map", "v=current_a"], "empty file"),
        ("ok", ["csv", "{dir}", "--domain", "grid", "--map", "v=current_a"], "is a directory"),
        ("ok", ["nab", "{file}"], "no default mapping"),
        ("ok", ["batadal", "{file}"], "not a BATADAL file"),
        (
            "ok",
            ["csv", "{file}", "--domain", "grid", "--map", "v=current_a", "--speed", "-3"],
            "--speed must be",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    make: str | None, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contents = {
        "ok": f"timestamp,v\n{T0},1.5\n",
        "badtime": f"timestamp,v\n{T0},1\nnoon,2\n",
        "badnum": f"timestamp,v\n{T0},1\n{T0},lots\n",
        "empty": "",
    }
    file = tmp_path / "data.csv"
    if make == "binary":
        file.write_bytes(b"\xff\xfe\x00\x81garbage\x00\x9c\n\x00\xff" * 20)
    elif make:
        file.write_text(contents[make], encoding="utf-8")
    args = [a.format(file=file, dir=tmp_path) for a in argv]
    assert cli.main(["import", *args, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


# --------------------------------------------------------------------------- public data sets


@pytest.mark.datasets
def test_nab_series_and_windows(datasets: Path) -> None:
    path = datasets / "nab" / "data" / "realKnownCause" / "nyc_taxi.csv"
    ds = read_nab([path])
    [series] = ds.series
    windows = json.loads((datasets / "nab" / "labels" / "combined_windows.json").read_text())
    assert len(ds.labels) == len(windows["realKnownCause/nyc_taxi.csv"]) == 5
    assert series.sensor_id == "traffic-nab-nyc-taxi" and series.times.size == 10320
    for label in ds.labels:
        contracts.encode("citystream.Label", label)
        inside = (series.times >= label["start_time"]) & (series.times < label["end_time"])
        assert inside.any() and label["source"] == "nab"
    msgs, skipped = encode(ds, "t.")
    assert skipped == 0
    first = contracts.decode("citystream.TrafficReading", msgs[0].values[0])
    assert first["vehicle_count"] == 10844  # the file's first value (2014-07-01 00:00)


@pytest.mark.datasets
def test_batadal_sensors_units_and_attacks(datasets: Path) -> None:
    path = datasets / "batadal" / "training_2_labeled.csv"
    ds = read_batadal(path)
    ids = {s.sensor_id for s in ds.series}
    assert {
        "water-ctown-t1-level",
        "water-ctown-pu1-pump",
        "water-ctown-v2-flow",
        "water-ctown-j280-pressure",
    } <= ids
    assert len(ds.labels) == 7  # the seven attacks of attacks_training.csv
    times = ds.series[0].times
    hours = np.zeros(times.size, dtype=bool)
    for label in ds.labels:
        hours |= (times >= label["start_time"]) & (times < label["end_time"])
    import pandas as pd

    flags = pd.read_csv(path, skipinitialspace=True)["ATT_FLAG"].to_numpy()
    assert hours.sum() == (flags == 1).sum() == 492  # labels cover exactly the ATT_FLAG hours
    pressure = next(s for s in ds.series if s.sensor_id == "water-ctown-j269-pressure")
    assert 1.0 < np.nanmean(pressure.values["pressure_bar"]) < 5.0  # metres of head became bar


# --------------------------------------------------------------------------- broker


@pytest.mark.integration
def test_import_into_kafka_reads_back(
    kafka, long_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_producer import read_topic

    monkeypatch.setenv("CITYSTREAM_TOPIC_PREFIX", "imptest.")
    summary_file = tmp_path / "summary.json"
    code = cli.main(
        [
            "import", "csv", str(long_csv), "--domain", "traffic", "--sensor-col", "sensor",
            "--map", "speed=mean_speed_kmh", "--label-col", "label",
            "--bootstrap", kafka.bootstrap, "--summary-json", str(summary_file),
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(summary_file.read_text())
    records = read_topic(kafka.bootstrap, "imptest.readings.traffic")
    assert len(records) == summary["readings_sent"] == 24
    for key, value in records:
        assert key == contracts.decode("citystream.TrafficReading", value)["envelope"]["sensor_id"].encode()
    assert len(read_topic(kafka.bootstrap, "imptest.labels")) == summary["labels"] == 1
