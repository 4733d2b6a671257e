"""The registry on the dashboards: the map's states, place names on alert and anomaly tables, new boards.

Every query is expanded as Grafana and the ClickHouse plugin would
(tests/test_dashboards.py's expander) and run by the read-only user on the
real engine, in a store of its own seeded with a small registry, health,
windows, anomalies and alerts at fixed epochs. "Now" is the end of the range.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from citystream.catalog import DOMAIN_NAMES
from citystream.dashboards import alerts, overview, registry_sql, sensors
from citystream.dashboards.boards import UIDS
from citystream.settings import Settings
from tests.conftest import stack_settings
from tests.test_dashboards import ALL, MODELS, TimeRange, expand, queries

T0 = datetime(2001, 1, 2, 12, 0, tzinfo=UTC)  # "now": the end of every range below
RANGE = TimeRange(T0 - timedelta(hours=1), T0, interval_s=60)
MINUTE = timedelta(minutes=1)

#: sensor id -> (domain, zone id, the state the map must show). r-gone is deleted, u-1 unregistered.
EXPECTED = {
    "r-ok": ("water", "dma-n", "ok"),
    "r-resolved": ("water", "dma-n", "ok"),  # its incident is resolved
    "r-anom": ("water", "dma-n", "anomaly"),
    "r-silent": ("water", "dma-n", "silent"),  # never reported
    "r-old": ("traffic", "cor-1", "silent"),  # last window 30 minutes before now
    "r-alert": ("grid", "sub-1", "alert"),
    "r-zone": ("traffic", "cor-9", "alert"),  # its zone is in an open incident
    "r-fault": ("grid", "sub-1", "sensor fault"),
    "r-moved": ("grid", "sub-1", "ok"),
}
SENSOR_COLUMNS = [
    "sensor_id", "domain", "kind", "channels", "site_id", "site_name", "zone_id", "zone_name", "areas",
    "lat", "lon", "installed_at", "retired_at", "status", "owner", "tags", "valid_from",
]  # fmt: skip


def _sensor(sensor_id: str, domain: str, zone: str, lat: float, status: str = "active") -> list[Any]:
    channel = ("value", "unit", "continuous", 0.0, None)
    return [
        sensor_id, domain, "meter", [channel], f"site-{sensor_id}", f"Site {sensor_id}", zone,
        f"Zone {zone}", ["city"], lat, 4.9, T0 - timedelta(days=30), None, status, domain, [], T0,
    ]  # fmt: skip


def _window(key: str, domain: str, end: datetime) -> list[Any]:
    return [domain, "sensor", key, "value", end - MINUTE, end, 60, 1.0, 0.0, 2.0, 0, 0, 0]


def _seed(client: Any) -> None:
    lat = {k: 52.30 + i / 100 for i, k in enumerate(EXPECTED)}
    rows = [_sensor(k, d, z, lat[k]) for k, (d, z, _) in EXPECTED.items()]
    rows[-1][9] = 10.0  # r-moved first registered elsewhere ...
    rows.append(_sensor("r-gone", "water", "dma-n", 52.0))
    client.insert("sensors", rows, column_names=SENSOR_COLUMNS)
    client.insert(
        "sensors", [_sensor("r-moved", "grid", "sub-1", lat["r-moved"])], column_names=SENSOR_COLUMNS
    )
    client.insert("sensors", [_sensor("r-gone", "", "", 0.0, status="deleted")], column_names=SENSOR_COLUMNS)
    fresh = [k for k in EXPECTED if k not in ("r-silent", "r-old")]
    windows = [_window(k, EXPECTED[k][0], T0 - MINUTE) for k in fresh]
    windows += [_window("r-old", "traffic", T0 - 30 * MINUTE), _window("u-1", "water", T0 - MINUTE)]
    client.insert(
        "window_aggregates",
        windows,
        column_names=["domain", "key_kind", "key_id", "metric", "window_start", "window_end", "samples",
                      "mean", "min", "max", "late", "duplicates", "revision"],
    )  # fmt: skip
    client.insert(
        "sensor_health",
        [
            ["r-ok", "site-r-ok", "dma-n", "water", "ok", T0 - 50 * MINUTE, "fine"],
            ["r-fault", "site-r-fault", "sub-1", "grid", "stuck", T0 - 20 * MINUTE, "value repeated"],
        ],
        column_names=["sensor_id", "site_id", "zone_id", "domain", "status", "since", "details"],
    )
    anomaly = ["domain", "key_kind", "key_id", "metric", "detector", "event_time", "score", "severity",
               "observed", "expected", "explanation"]  # fmt: skip
    client.insert(
        "anomalies",
        [
            [
                "water",
                "sensor",
                "r-anom",
                "value",
                "zscore",
                T0 - 5 * MINUTE,
                4.0,
                "warning",
                9.0,
                1.0,
                "high",
            ],
            ["water", "zone", "dma-n", "value", "zscore", T0 - 6 * MINUTE, 3.0, "info", 5.0, 1.0, "zone"],
            [
                "grid",
                "sensor",
                "r-alert",
                "value",
                "zscore",
                T0 - 20 * MINUTE,
                5.0,
                "critical",
                9.0,
                1.0,
                "why",
            ],
            [
                "water",
                "sensor",
                "r-resolved",
                "value",
                "zscore",
                T0 - 50 * MINUTE,
                2.0,
                "info",
                3.0,
                1.0,
                "old",
            ],
        ],
        column_names=anomaly,
    )
    _seed_alerts(client)


def _seed_alerts(client: Any) -> None:
    columns = ["alert_id", "state", "domain", "kind", "key_kind", "affected_keys", "first_seen", "last_seen",
               "severity", "anomaly_count", "explanation"]  # fmt: skip
    rows = [
        ("a-1", "open", "grid", "feeder", "sensor", ["r-alert"], 30, 2, "critical", 3, "voltage sag"),
        ("a-2", "update", "traffic", "jam", "zone", ["cor-9"], 10, 1, "warning", 2, "corridor jam"),
        ("a-3", "resolve", "water", "leak", "sensor", ["r-resolved"], 55, 40, "warning", 1, "small leak"),
    ]  # first and last seen: minutes before now
    client.insert(
        "alerts",
        [[*r[:6], T0 - r[6] * MINUTE, T0 - r[7] * MINUTE, *r[8:]] for r in rows],
        column_names=columns,
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A store of its own whose project database is migrated and seeded (the viewer reads that one)."""
    from citystream.stack import Store
    from citystream.store.client import connect
    from citystream.store.migrate import migrate

    settings = stack_settings(tmp_path_factory.mktemp("dash_registry"), clickhouse_database="dash_registry")
    server = Store(settings, loader=False)
    server.start()
    try:
        migrate(settings)
        client = connect(settings)
        try:
            _seed(client)
        finally:
            client.close()
        yield settings
    finally:
        server.stop()


@pytest.fixture(scope="module")
def viewer(seeded: Settings) -> Iterator[Any]:
    from citystream.store.client import connect

    client = connect(seeded, readonly=True)
    try:
        yield client
    finally:
        client.close()


def _panel(uid: str, kind: str, title: str) -> dict[str, Any]:
    (panel,) = [p for p in MODELS[uid]["panels"] if p["type"] == kind and p["title"] == title]
    return panel


def _rows(
    viewer: Any, panel: Mapping[str, Any], variables: Mapping[str, Sequence[str] | None]
) -> list[dict[str, Any]]:
    (target,) = panel["targets"]
    return list(viewer.query(expand(target["rawSql"], RANGE, variables)).named_results())


def _map(viewer: Any, domains: Sequence[str] | None = ALL) -> list[dict[str, Any]]:
    return _rows(viewer, _panel(overview.UID, "geomap", "Sensors on the map"), {"domain": domains})


# --------------------------------------------------------------------------- the map


@pytest.mark.integration
def test_map_shows_every_registered_sensor_with_coordinates_and_state(viewer: Any) -> None:
    rows = _map(viewer)
    by_id = {r["sensor_id"]: r for r in rows}
    assert len(rows) == len(by_id) == len(EXPECTED)  # one point per sensor; r-gone deleted, u-1 unknown
    assert {k: r["state"] for k, r in by_id.items()} == {k: e[2] for k, e in EXPECTED.items()}
    assert {r["state"] for r in rows} == {state for state, _, _ in registry_sql.STATES}
    for k, r in by_id.items():
        assert r["latitude"] == pytest.approx(52.30 + list(EXPECTED).index(k) / 100), k  # r-moved: latest
        assert r["longitude"] == pytest.approx(4.9)
        assert r["domain"] == EXPECTED[k][0]


@pytest.mark.integration
def test_map_follows_the_department_picker(viewer: Any) -> None:
    rows = _map(viewer, ["water"])
    assert sorted(r["sensor_id"] for r in rows) == sorted(k for k, e in EXPECTED.items() if e[0] == "water")


@pytest.mark.integration
def test_map_panel_reads_the_columns_its_query_returns(viewer: Any) -> None:
    panel = _panel(overview.UID, "geomap", "Sensors on the map")
    columns = set(_map(viewer)[0])
    (layer,) = panel["options"]["layers"]
    assert layer["type"] == "markers"
    assert {layer["location"]["latitude"], layer["location"]["longitude"]} <= columns
    assert layer["config"]["style"]["color"]["field"] == "state" and "state" in columns
    (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
    assert set(mapping["options"]) == {state for state, _, _ in registry_sql.STATES}
    (link,) = panel["fieldConfig"]["defaults"]["links"]
    assert link["url"].startswith(
        "/d/citystream-${__data.fields.domain}?var-sensor=${__data.fields.sensor_id}"
    )
    assert {"domain", "sensor_id"} <= columns
    for domain in DOMAIN_NAMES:  # the link's target exists for every department, with a sensor picker
        uid = f"citystream-{domain}"
        assert uid in UIDS
        assert "sensor" in [v["name"] for v in MODELS[uid]["templating"]["list"]]


# --------------------------------------------------------------------------- names on alerts and anomalies


@pytest.mark.integration
def test_anomaly_tables_show_site_and_zone_names(viewer: Any) -> None:
    rows = _rows(viewer, _panel("citystream-water", "table", "Anomalies"), {"zone": ALL, "sensor": ALL})
    names = {(r["key_kind"], r["key_id"]): (r["site"], r["zone"]) for r in rows}
    assert names[("sensor", "r-anom")] == ("Site r-anom", "Zone dma-n")
    assert names[("zone", "dma-n")] == ("", "Zone dma-n")


@pytest.mark.integration
def test_alert_tables_show_site_and_zone_names(viewer: Any) -> None:
    open_overview = _rows(viewer, _panel(overview.UID, "table", "Open incidents"), {"domain": ALL})
    open_alerts = _rows(viewer, _panel(alerts.UID, "table", "Open incidents"), {"domain": ALL})
    for rows in (open_overview, open_alerts):
        by_id = {r["alert_id"]: r for r in rows}
        assert set(by_id) == {"a-1", "a-2"}  # a-3 is resolved
        assert (by_id["a-1"]["sites"], by_id["a-1"]["zones"]) == ("Site r-alert", "Zone sub-1")
        assert (by_id["a-2"]["sites"], by_id["a-2"]["zones"]) == ("", "Zone cor-9")
    recent = _rows(viewer, _panel(alerts.UID, "table", "Incidents in range"), {"domain": ALL})
    assert {r["alert_id"]: r["sites"] for r in recent} == {
        "a-1": "Site r-alert",
        "a-2": "",
        "a-3": "Site r-resolved",
    }


# --------------------------------------------------------------------------- the new dashboards


@pytest.mark.integration
def test_alerts_dashboard_shows_the_evidence_of_each_incident(viewer: Any) -> None:
    panel = _panel(alerts.UID, "table", "Evidence: verdicts behind the incidents")
    rows = _rows(viewer, panel, {"domain": ALL})
    evidence = [(r["alert_id"], r["key_id"], r["severity"], r["site"]) for r in rows]
    # Resolved incidents keep their evidence (a-3: T0-55..T0-40 min, its verdict at T0-50 min); r-anom's
    # verdict belongs to no incident, a-2's zone had no verdict.
    assert evidence == [
        ("a-1", "r-alert", "critical", "Site r-alert"),
        ("a-3", "r-resolved", "info", "Site r-resolved"),
    ]
    (count,) = _rows(viewer, _panel(alerts.UID, "stat", "Open incidents"), {"domain": ALL})
    assert (count["grid"], count["traffic"], count["water"], count["cross"]) == (1, 1, 0, 0)


@pytest.mark.integration
def test_sensors_dashboard_lists_the_registry_with_health_and_last_reading(viewer: Any) -> None:
    rows = _rows(viewer, _panel(sensors.UID, "table", "Registered sensors"), {"domain": ALL})
    by_id = {r["sensor_id"]: r for r in rows}
    assert set(by_id) == set(EXPECTED)
    assert by_id["r-ok"]["last_reading"].replace(tzinfo=UTC) == T0 - MINUTE
    assert by_id["r-old"]["last_reading"].replace(tzinfo=UTC) == T0 - 30 * MINUTE
    assert by_id["r-silent"]["last_reading"] is None
    assert (by_id["r-fault"]["health"], by_id["r-ok"]["health"], by_id["r-anom"]["health"]) == (
        "stuck",
        "ok",
        "unknown",
    )
    assert by_id["r-ok"]["channels"] == "value unit [0, ]"
    unregistered = _rows(
        viewer, _panel(sensors.UID, "table", "Reporting but not registered"), {"domain": ALL}
    )
    assert [(r["sensor_id"], r["domain"]) for r in unregistered] == [("u-1", "water")]
    (in_service,) = _rows(viewer, _panel(sensors.UID, "stat", "Sensors in service"), {"domain": ALL})
    assert (in_service["grid"], in_service["traffic"], in_service["water"]) == (3, 2, 4)
    (not_ok,) = _rows(viewer, _panel(sensors.UID, "stat", "Sensors not ok now"), {"domain": ALL})
    assert (not_ok["grid"], not_ok["traffic"], not_ok["water"]) == (2, 2, 2)


@pytest.mark.integration
@pytest.mark.parametrize("uid", [overview.UID, alerts.UID, sensors.UID, "citystream-water"])
def test_every_query_of_the_registry_dashboards_runs_on_the_seeded_store(viewer: Any, uid: str) -> None:
    names = [v["name"] for v in MODELS[uid]["templating"]["list"]]
    for query in queries(MODELS[uid]):
        everything = viewer.query(expand(query.sql, RANGE, dict.fromkeys(names, ALL))).result_rows
        if uid in (alerts.UID, sensors.UID):  # every panel of the new boards has seeded rows to show
            assert everything, str(query)
        viewer.query(expand(query.sql, RANGE, {n: ["water", "grid"] for n in names}))  # raises on an error
