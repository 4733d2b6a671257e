"""The simulated city's registry entries: one ``citystream.Sensor`` per simulated sensor.

Why a pure function: ``citystream simulate`` registers its sensors before the first
reading (the domain jobs dead-letter readings of unregistered sensors), and tests, the
demo and backtests need the same entries of a seeded run without a broker.

Why installed a day before the default start (or a day before the run, if that is
earlier): the jobs join each reading with the entry valid at its event time, and a
simulated reading's event time may be up to two minutes before the run's start (clock
skew). A fixed date also means a re-run with a later ``--start`` writes the same entry,
so it never moves a sensor's installation after readings an earlier run produced.
"""

from __future__ import annotations

from typing import Any

from citystream.registry.channels import default_channels
from citystream.registry.model import Sensor
from citystream.simulator.model import CENTRE_LAT, CENTRE_LON, City, DomainModel, Zone

#: How long before the run's start the simulated sensors were installed at the latest, ms.
INSTALLED_LEAD_MS = 86_400_000
#: 2026-01-04T00:00:00Z, a day before the simulator's default start: the usual installation date.
INSTALLED_BY_MS = 1_767_484_800_000
OWNERS = {"traffic": "traffic department", "water": "water utility", "grid": "grid operator"}
CITY_AREA = "simcity"


def city_sensors(city: City, start_ms: int) -> list[Sensor]:
    """Every sensor of ``city`` as a registry entry, installed before any reading of a run from start_ms."""
    installed = min(start_ms - INSTALLED_LEAD_MS, INSTALLED_BY_MS)
    zones = {z.zone_id: z for z in city.zones}
    out: list[Sensor] = []
    for domain, dm in city.domains.items():
        for i, sid in enumerate(dm.sensor_ids):
            kind, site_name, tags = _describe(domain, dm, i)
            zone = zones[dm.zone_ids[i]]
            out.append(
                Sensor(
                    sensor_id=sid,
                    domain=domain,
                    kind=kind,
                    channels=default_channels(domain, kind),
                    site_id=dm.site_ids[i],
                    site_name=site_name,
                    zone_id=zone.zone_id,
                    zone_name=f"Zone {zone.zone_id[1:]} ({_district(zone).replace('-', ' ')})",
                    areas=(f"district-{_district(zone)}", CITY_AREA),
                    lat=dm.lat[i],
                    lon=dm.lon[i],
                    installed_at=installed,
                    owner=OWNERS[domain],
                    tags=("simulated", *tags),
                )
            )
    return out


def _district(zone: Zone) -> str:
    """The quarter of the city a zone lies in, seen from the centre."""
    ns = "north" if zone.lat >= CENTRE_LAT else "south"
    ew = "east" if zone.lon >= CENTRE_LON else "west"
    return f"{ns}-{ew}"


def _describe(domain: str, dm: DomainModel, i: int) -> tuple[str, str, tuple[str, ...]]:
    """(kind, site name, tags) of sensor ``i`` from the simulator's per-domain attributes."""
    a: dict[str, Any] = {k: v[i] for k, v in dm.attrs.items()}
    site = dm.site_ids[i]
    if domain == "traffic":
        road = str(a["road_id"]).rsplit("-", 1)[-1]
        name = f"Road {road[1:]} ({a['direction']}), station {site.rsplit('-s', 1)[-1]}"
        return (
            "loop_detector",
            name,
            (f"road={a['road_id']}", f"lane={a['lane']}", f"direction={a['direction']}"),
        )
    if domain == "water":
        kind = str(a["sensor_type"])
        place = site.rsplit("-", 1)[-1]
        names = {"inlet": "DMA inlet", "tank1": "Tank 1", "ps1": "Pumping station 1"}
        name = names.get(place, f"Junction {place[1:]}" if place.startswith("j") else place)
        return kind, f"{name}, DMA {a['dma_id']}", (f"dma={a['dma_id']}",)
    if a["role"] == "bus":
        return "bus_meter", f"Substation {site.removeprefix('grid-ss')}", ("role=bus",)
    tags = (f"feeder={a['feeder_id']}", f"phase={a['phase']}")
    return "feeder_meter", f"Substation {site.removeprefix('grid-ss')}", tags
