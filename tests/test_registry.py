"""The sensor registry without a broker: the model against its Avro contract, validation,
default channels against the ranges the jobs enforce, file imports (all or nothing), and
the entries the simulator and the importer register."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from citystream import catalog, contracts
from citystream.importer.dataset import Dataset, Series
from citystream.importer.sensors import dataset_sensors
from citystream.registry import KINDS, InvalidSensor, Sensor, SensorChannel, default_channels, reading_fields
from citystream.registry.channels import all_channels
from citystream.registry.imports import COLUMNS, RejectedFile, parse_csv, parse_geojson, read_file
from citystream.registry.kafka import merge
from citystream.simulator.engine import SCHEMAS, CaptureSink, SimConfig, Simulation
from citystream.simulator.imperfections import Rates
from citystream.simulator.model import build_city
from citystream.simulator.sensors import city_sensors

T0 = 1_767_571_200_000  # 2026-01-05T00:00:00Z


def sensor(**changes: object) -> Sensor:
    base: dict[str, object] = {
        "sensor_id": "water-z01-j01-pressure",
        "domain": "water",
        "kind": "pressure",
        "channels": default_channels("water", "pressure"),
        "site_id": "water-z01-j01",
        "site_name": "Junction 01",
        "zone_id": "z01",
        "zone_name": "Zone 01",
        "areas": ("district-north", "city"),
        "lat": 38.72,
        "lon": -9.14,
        "installed_at": T0,
        "owner": "water utility",
        "tags": ("vendor=acme",),
    }
    return Sensor(**{**base, **changes})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the contract


def test_dataclasses_mirror_the_avro_record_field_by_field() -> None:
    record = contracts.schema("citystream.Sensor")
    assert [f.name for f in dataclasses.fields(Sensor)] == [f["name"] for f in record["fields"]]
    channel = record["fields"][3]["type"]["items"]
    assert [f.name for f in dataclasses.fields(SensorChannel)] == [f["name"] for f in channel["fields"]]


def test_entry_round_trips_through_avro_bytes() -> None:
    s = sensor()
    assert Sensor.decode(s.encode()) == s
    bare = sensor(lat=None, lon=None, areas=(), tags=(), site_name="")
    assert Sensor.decode(bare.encode()) == bare
    assert contracts.decode("citystream.Sensor", s.encode()) == s.to_record()


def test_valid_from_defaults_to_installation_then_retirement() -> None:
    s = sensor()
    assert s.valid_from == T0
    retired = s.retire(T0 + 5_000)
    assert (retired.status, retired.retired_at, retired.valid_from) == ("retired", T0 + 5_000, T0 + 5_000)
    assert sensor(status="retired", retired_at=T0 + 9).valid_from == T0 + 9


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sensor_id": ""}, "sensor_id is empty"),
        ({"sensor_id": "water z01"}, "contains whitespace"),
        ({"site_id": "a\tb"}, "site_id 'a\\tb' contains whitespace"),
        ({"zone_id": ""}, "zone_id is empty"),
        ({"domain": "gas"}, "domain 'gas' is not one of traffic, water, grid"),
        ({"channels": ()}, "no channels"),
        ({"channels": (SensorChannel("speed", "km/h", "continuous", 0, 1),)}, "'speed' is not a field of"),
        ({"channels": (SensorChannel("pressure_bar", "bar", "level", 0, 1),)}, "has type 'level'"),
        ({"channels": (SensorChannel("pressure_bar", "bar", "continuous", 5, 1),)}, "min 5 is above max 1"),
        ({"channels": (SensorChannel("pressure_bar", "bar", "continuous", math.nan, 1),)}, "finite"),
        ({"channels": default_channels("water", "pressure") * 2}, "listed twice: pressure_bar"),
        ({"lat": 91.0}, "lat 91.0 is not a latitude in [-90, 90]"),
        ({"lon": -180.5}, "lon -180.5 is not a longitude in [-180, 180]"),
        ({"lat": None}, "lat and lon go together"),
        ({"status": "broken"}, "status 'broken' is not one of active, maintenance, retired"),
        ({"status": "retired"}, "a retired sensor needs retired_at"),
        ({"retired_at": T0 + 1}, "retired_at is set but status is 'active'"),
        ({"status": "retired", "retired_at": T0 - 1}, "is before installed_at"),
        ({"installed_at": 1.5}, "installed_at 1.5 is not a time"),
        ({"tags": ("a;b",)}, "tags entry 'a;b'"),
    ],
)
def test_invalid_entries_are_refused_with_the_reason(changes: dict, message: str) -> None:
    with pytest.raises(InvalidSensor) as err:
        sensor(**changes)
    assert message in str(err.value)
    assert err.value.code == 2  # the CLI's exit code for bad input


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidSensor) as err:
        sensor(sensor_id="x y", lat=100.0, status="gone")
    assert len(err.value.problems) == 3


def test_channels_are_the_domain_records_number_fields() -> None:
    assert reading_fields("traffic") == (
        "lane",
        "interval_s",
        "vehicle_count",
        "mean_speed_kmh",
        "occupancy_pct",
    )
    assert "sensor_type" not in reading_fields("water") and "phase" not in reading_fields("grid")


def test_traffic_channels_must_be_traffic_fields() -> None:
    with pytest.raises(InvalidSensor, match=r"'pressure_bar' is not a field of citystream.TrafficReading"):
        sensor(domain="traffic", kind="loop_detector")  # water channels on a traffic sensor


# --------------------------------------------------------------------------- default channels

#: The physical ranges jobs/{traffic,water,grid}.py checked in SQL before the registry (issue 15):
#: simulated and imported data valid then must stay valid. vehicle_count's check is relative
#: (10 per second of interval_s <= 3600), so its absolute max is 36,000.
JOB_RANGES = {
    "traffic": {
        "interval_s": (1, 3600),
        "vehicle_count": (0, 36_000),
        "mean_speed_kmh": (0, 300),
        "occupancy_pct": (0, 100),
    },
    "water": {
        "flow_lps": (-100_000, 100_000),
        "pressure_bar": (-1, 40),
        "tank_level_m": (0, 100),
        "pump_on": (0, 1),
        "ph": (0, 14),
        "turbidity_ntu": (0, 10_000),
        "chlorine_mgl": (0, 100),
    },
    "grid": {
        "voltage_v": (0, 500_000),
        "current_a": (0, 100_000),
        "frequency_hz": (40, 70),
        "active_power_kw": (-1_000_000, 1_000_000),
        "reactive_power_kvar": (-1_000_000, 1_000_000),
        "power_factor": (-1, 1),
    },
}


@pytest.mark.parametrize("domain", catalog.DOMAIN_NAMES)
def test_default_ranges_are_the_ones_the_jobs_checked(domain: str) -> None:
    assert {c.name: (c.min, c.max) for c in all_channels(domain)} == JOB_RANGES[domain]
    for c in all_channels(domain):
        assert c.name in reading_fields(domain)
        expected = catalog.channel_type(domain, c.name) if c.name in catalog.domain(domain).metrics else None
        assert expected in (None, c.type)  # a catalog metric keeps its declared type
    # every kind's channels are a subset, with the same ranges
    for kind in KINDS[domain]:
        assert set(default_channels(domain, kind)) <= set(all_channels(domain))


def test_unknown_kind_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown water kind 'presure'; known: flow, pressure"):
        default_channels("water", "presure")


def _simulated(seed: int, **cfg: object) -> tuple[Simulation, list[tuple[str, bytes, bytes]]]:
    sim = Simulation(SimConfig(seed=seed, duration_ms=15 * 60_000, sensors=90, **cfg))  # type: ignore[arg-type]
    sink = CaptureSink()
    sim.run(sink)
    return sim, sink.records


def test_simulated_readings_fit_their_registered_channels_and_poison_does_not() -> None:
    """Each reading's non-null values are channels of its sensor's kind, within range; 'impossible'
    poison falls outside some channel's range."""
    sim, records = _simulated(11, rates=Rates.preset("heavy"))
    entries = {s.sensor_id: s for s in sim.sensors()}
    outside = 0
    checked = 0
    for topic, _key, value in records:
        domain = topic.rsplit(".", 1)[1]
        if domain not in SCHEMAS:
            continue
        try:
            r = contracts.decode(SCHEMAS[domain], value)
        except ValueError:
            continue  # the undecodable poison
        entry = entries[r["envelope"]["sensor_id"]]
        assert r["envelope"]["event_time"] >= entry.installed_at
        channels = {c.name: c for c in entry.channels}
        fields = {k: v for k, v in r.items() if k in reading_fields(domain) and v is not None}
        for name, v in fields.items():
            if name not in channels:  # identity attributes (lane, phase ...) and neutral fields
                assert name not in {c.name for c in all_channels(domain)}, (entry.kind, name)
                continue
            checked += 1
            c = channels[name]
            if isinstance(v, float) and math.isnan(v):
                continue
            outside += not (c.min <= float(v) <= c.max)
    poison = sim.summary(1.0)["domains"]
    impossible = sum(d["imperfections"]["poison"]["impossible"] for d in poison.values())
    assert checked > 1000 and impossible > 0
    assert outside > 0  # poison really is outside ...
    assert outside <= impossible * 2  # ... and only poison is (one impossible reading: up to 2 fields)


def test_clean_simulated_readings_are_all_inside_their_ranges() -> None:
    sim, records = _simulated(7, rates=Rates())
    entries = {s.sensor_id: s for s in sim.sensors()}
    for topic, _key, value in records:
        domain = topic.rsplit(".", 1)[1]
        if domain not in SCHEMAS:
            continue
        r = contracts.decode(SCHEMAS[domain], value)
        entry = entries[r["envelope"]["sensor_id"]]
        for c in entry.channels:
            v = r[c.name]
            assert v is None or c.min <= float(v) <= c.max, (entry.sensor_id, c.name, v)


# --------------------------------------------------------------------------- the simulated city


def test_simulated_entries_are_one_per_sensor_with_their_kinds_and_places() -> None:
    city = build_city(300, seed=7)
    entries = city_sensors(city, T0)
    assert len({s.sensor_id for s in entries}) == city.sensor_count == len(entries)
    assert {(s.domain, s.kind) for s in entries} == {(d, k) for d, kinds in KINDS.items() for k in kinds}
    assert all(s.installed_at <= T0 - 86_400_000 and s.status == "active" for s in entries)
    # a later start does not move the installation (a re-run writes the same entry)
    assert city_sensors(city, T0 + 30 * 86_400_000) == entries
    assert city_sensors(city, T0 - 86_400_000)[0].installed_at == T0 - 2 * 86_400_000


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], (a[1] - b[1]) * math.cos(math.radians(a[0]))) * 111.2


@pytest.mark.parametrize("sensors", [300, 30_000])
def test_simulated_coordinates_are_one_compact_city(sensors: int) -> None:
    """All sensors within ~25 km; a site's sensors within 100 m; a zone's water and traffic sites
    within 2 km of its centre (a grid meter stands in its substation, which serves several zones)."""
    city = build_city(sensors, seed=3)
    entries = city_sensors(city, T0)
    zones = {z.zone_id: (z.lat, z.lon) for z in city.zones}
    lats = [s.lat for s in entries]
    lons = [s.lon for s in entries]
    assert _km((min(lats), min(lons)), (max(lats), max(lons))) < 35
    by_site: dict[str, list[tuple[float, float]]] = {}
    for s in entries:
        by_site.setdefault(s.site_id, []).append((s.lat, s.lon))
        if s.domain != "grid":
            assert _km((s.lat, s.lon), zones[s.zone_id]) < 2.0, s.sensor_id
    for site, points in by_site.items():
        assert max(_km(points[0], p) for p in points) < 0.1, site


# --------------------------------------------------------------------------- imported sensors


def test_imported_series_register_from_their_first_reading() -> None:
    times = np.array([T0 + 60_000, T0, T0 + 120_000], dtype=np.int64)
    ds = Dataset(
        source="csv",
        series=[
            Series(
                "water-tank-7", "water", "ctown", times, {"tank_level_m": np.ones(3), "pump_on": np.ones(3)}
            ),
            Series("grid-nab-x", "grid", "nab", times, {"active_power_kw": np.ones(3)}),
            Series("traffic-empty", "traffic", "imported", np.zeros(0, dtype=np.int64), {}),
        ],
    )
    water, grid = dataset_sensors(ds, shift_ms=1_000)
    assert water.kind == "pump" and water.installed_at == T0 + 1_000
    assert {c.name for c in water.channels} == {"pump_on", "flow_lps", "tank_level_m"}
    # grid readings carry neutral voltage, current and frequency: they are checked too
    assert {"voltage_v", "current_a", "frequency_hz", "active_power_kw"} <= {c.name for c in grid.channels}


# --------------------------------------------------------------------------- files

HEADER = ",".join(COLUMNS)
GOOD = [
    "traffic-z09-s001-l1,traffic,loop_detector,traffic-z09-s001,Main St / 5th Ave,z09,Harbour,"
    "district-south;city,38.70,-9.15,2026-01-01T00:00:00Z,active,traffic department,vendor=acme;school-zone",
    "water-z09-j01-pressure,water,pressure,water-z09-j01,,z09,,,,,2026-01-01,maintenance,,",
    "grid-ss09-bus,grid,bus_meter,grid-ss09,Substation 9,z09,,,38.7,-9.1,1767225600000,,grid operator,",
]


def test_csv_rows_become_entries_with_default_channels() -> None:
    a, b, c = parse_csv("\n".join([HEADER, *GOOD]) + "\n")
    assert a.areas == ("district-south", "city") and a.tags == ("vendor=acme", "school-zone")
    assert a.channels == default_channels("traffic", "loop_detector")
    assert a.installed_at == 1_767_225_600_000 == b.installed_at == c.installed_at
    assert (b.lat, b.lon, b.status) == (None, None, "maintenance")
    assert c.status == "active"


def test_csv_with_one_bad_row_names_it_and_imports_nothing() -> None:
    bad = "water-z09-j02-pressure,water,pressure,water-z09-j02,,z09,,,95.0,-9.1,2026-01-01,,,"
    with pytest.raises(RejectedFile) as err:
        parse_csv("\n".join([HEADER, GOOD[0], bad, GOOD[1]]))
    assert [where for where, _ in err.value.rows] == ["line 3"]
    assert "lat 95.0 is not a latitude" in str(err.value) and "nothing imported" in str(err.value)
    assert err.value.code == 2


def test_csv_reports_every_bad_row_and_duplicates() -> None:
    rows = [
        HEADER,
        GOOD[0],
        "x,traffic,loop_detector,s,,z,,,,,yesterday,,,",
        GOOD[0],
        "y,water,presure,s,,z,,,,,2026-01-01,,,",
        ",water,flow,s,,z,,,,,2026-01-01,,,",
    ]
    with pytest.raises(RejectedFile) as err:
        parse_csv("\n".join(rows))
    reasons = dict(err.value.rows)
    assert list(reasons) == ["line 3", "line 4", "line 5", "line 6"]
    assert "installed_at 'yesterday'" in reasons["line 3"]
    assert "given again (first at line 2)" in reasons["line 4"]
    assert "unknown water kind 'presure'" in reasons["line 5"]
    assert "missing sensor_id" in reasons["line 6"]


def test_csv_header_must_name_known_columns() -> None:
    with pytest.raises(Exception, match=r"unknown columns colour.*lacks installed_at"):
        parse_csv("sensor_id,domain,kind,site_id,zone_id,colour\n")


def _feature(props: dict, coords: list | None) -> dict:
    geometry = None if coords is None else {"type": "Point", "coordinates": coords}
    return {"type": "Feature", "geometry": geometry, "properties": props}


PROPS = {
    "sensor_id": "water-z09-tank1-level",
    "domain": "water",
    "kind": "level",
    "site_id": "water-z09-tank1",
    "zone_id": "z09",
    "areas": ["district-south", "city"],
    "installed_at": "2026-01-01T00:00:00Z",
    "tags": "a;b",
}


def test_geojson_points_give_lon_lat_in_that_order(tmp_path: Path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature(PROPS, [-9.15, 38.71]),
            _feature({**PROPS, "sensor_id": "water-z09-x-level"}, None),
        ],
    }
    path = tmp_path / "sensors.geojson"
    path.write_text(json.dumps(doc))
    first, second = read_file(path)
    assert (first.lat, first.lon) == (38.71, -9.15)
    assert first.areas == ("district-south", "city") and first.tags == ("a", "b")
    assert (second.lat, second.lon) == (None, None)


def test_geojson_bad_features_are_numbered_and_nothing_is_imported() -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            _feature(PROPS, [-9.15, 38.71]),
            _feature({**PROPS, "sensor_id": "b"}, [38.71, -199.0]),
            {"type": "Feature", "geometry": {"type": "LineString", "coordinates": []}, "properties": PROPS},
        ],
    }
    with pytest.raises(RejectedFile) as err:
        parse_geojson(json.dumps(doc))
    reasons = dict(err.value.rows)
    assert list(reasons) == ["feature 2 (features[1])", "feature 3 (features[2])"]
    assert "lat -199.0 is not a latitude" in reasons["feature 2 (features[1])"]  # [lat, lon] swapped
    assert "not a Point" in reasons["feature 3 (features[2])"]


# --------------------------------------------------------------------------- sources' re-registration


def test_a_source_never_moves_an_installation_later_nor_revives_a_retired_sensor() -> None:
    s = sensor()
    assert merge(None, s) is s
    assert merge(s, s) is None  # unchanged: nothing written
    later = sensor(installed_at=T0 + 10)
    assert merge(s, later) is None  # the earlier installation stays, and nothing else changed
    moved = merge(later, s)
    assert moved is not None and moved.installed_at == moved.valid_from == T0
    assert merge(s.retire(T0 + 5), sensor(site_name="new")) is None
