"""The simulated city: zones, sites and sensors of the three departments, with topology.

Why topology and not just a sensor list: the detectors that run on this data
need to know which loop detectors are up- and downstream of each other, which
pressure sensors share a district-metered area (DMA) and which phase meters
sit on the same feeder. The model is plain data (``City.to_dict()``), so a
detector can load it from JSON without importing the simulator.

Ids are stable for a given (sensor count, domains, seed): ``traffic-z03-s012-l1``
(zone 3, station 12, lane 1), ``water-z03-j04-pressure``, ``grid-ss02-f3-b``.
The fictional city sits on UTC (local time = UTC) around 38.72 N, 9.14 W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from citystream.catalog import DOMAIN_NAMES

CENTRE_LAT = 38.72
CENTRE_LON = -9.14
#: Distance between zone centres, degrees of latitude (~2.2 km).
ZONE_SPACING_DEG = 0.02
#: Longest a zone's road of loop-detector stations gets, degrees (~1.8 km): a zone's sites stay
#: near each other however many sensors a city has (the registry puts them on a map).
ROAD_SPAN_DEG = 0.016


@dataclass
class Zone:
    zone_id: str
    lat: float
    lon: float


@dataclass
class DomainModel:
    """One department's sensors as parallel columns (index i = sensor i of this domain).

    Columns are what the vectorised generator needs; ``extra`` holds the
    per-domain topology (roads, DMAs, feeders).
    """

    domain: str
    sensor_ids: list[str] = field(default_factory=list)
    site_ids: list[str] = field(default_factory=list)
    zone_ids: list[str] = field(default_factory=list)
    lat: list[float] = field(default_factory=list)
    lon: list[float] = field(default_factory=list)
    attrs: dict[str, list[Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, sensor_id: str, site_id: str, zone_id: str, lat: float, lon: float, **attrs: Any) -> int:
        self.sensor_ids.append(sensor_id)
        self.site_ids.append(site_id)
        self.zone_ids.append(zone_id)
        self.lat.append(round(lat, 6))
        self.lon.append(round(lon, 6))
        for k, v in attrs.items():
            self.attrs.setdefault(k, []).append(v)
        return len(self.sensor_ids) - 1

    def __len__(self) -> int:
        return len(self.sensor_ids)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.attrs[name])

    def index_of(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sensor_ids)}


@dataclass
class City:
    """Zones plus one :class:`DomainModel` per simulated department."""

    seed: int
    zones: list[Zone]
    domains: dict[str, DomainModel]

    @property
    def sensor_count(self) -> int:
        return sum(len(d) for d in self.domains.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: every sensor with its ids, coordinates and neighbours."""
        out: dict[str, Any] = {
            "seed": self.seed,
            "zones": [{"zone_id": z.zone_id, "lat": z.lat, "lon": z.lon} for z in self.zones],
        }
        for name, dm in self.domains.items():
            sensors = []
            for i, sid in enumerate(dm.sensor_ids):
                row = {
                    "sensor_id": sid,
                    "site_id": dm.site_ids[i],
                    "zone_id": dm.zone_ids[i],
                    "lat": dm.lat[i],
                    "lon": dm.lon[i],
                }
                for k, col in dm.attrs.items():
                    if not k.startswith("_"):
                        row[k] = _plain(col[i])
                sensors.append(row)
            out[name] = {"sensors": sensors, **{k: _plain(v) for k, v in dm.extra.items()}}
        return out

    def neighbours(self, sensor_id: str) -> dict[str, list[str]]:
        """Topological neighbours a detector can compare a sensor with.

        traffic: same-lane (or nearest-lane) detectors one station up- and downstream;
        water: the other sensors of the same DMA; grid: the other phases of the same feeder.
        """
        domain = sensor_id.split("-", 1)[0]
        dm = self.domains.get(domain)
        if dm is None or sensor_id not in dm.index_of():
            raise KeyError(sensor_id)
        i = dm.index_of()[sensor_id]
        if domain == "traffic":
            return {"upstream": list(dm.attrs["upstream"][i]), "downstream": list(dm.attrs["downstream"][i])}
        if domain == "water":
            dma = dm.attrs["dma_id"][i]
            return {
                "dma": [s for j, s in enumerate(dm.sensor_ids) if j != i and dm.attrs["dma_id"][j] == dma]
            }
        feeder = dm.attrs["feeder_id"][i]
        return {
            "feeder": [
                s for j, s in enumerate(dm.sensor_ids) if j != i and dm.attrs["feeder_id"][j] == feeder
            ]
        }


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, tuple):
        return list(v)
    return v


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers differing by at most one (larger first)."""
    base, rem = divmod(total, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]


def build_city(sensors: int = 300, domains: tuple[str, ...] = DOMAIN_NAMES, seed: int = 7) -> City:
    """A city with exactly ``sensors`` sensors split evenly over ``domains``."""
    if sensors < len(domains):
        raise ValueError(f"need at least one sensor per domain ({len(domains)}), got {sensors}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC17]))
    n_zones = max(1, min(99, math.ceil(sensors / 60)))
    side = math.ceil(math.sqrt(n_zones))
    zones = []
    for z in range(n_zones):
        r, c = divmod(z, side)
        zones.append(
            Zone(
                f"z{z + 1:02d}",
                round(CENTRE_LAT + (r - side / 2) * ZONE_SPACING_DEG, 6),
                round(CENTRE_LON + (c - side / 2) * ZONE_SPACING_DEG * 1.28, 6),
            )
        )
    counts = dict(zip(domains, split_evenly(sensors, len(domains)), strict=True))
    builders = {"traffic": _build_traffic, "water": _build_water, "grid": _build_grid}
    built = {d: builders[d](counts[d], zones, rng) for d in DOMAIN_NAMES if d in domains}
    return City(seed=seed, zones=zones, domains=built)


# -- traffic -----------------------------------------------------------------------------

_DIRECTIONS = ("N", "E", "S", "W")
_BEARING = {"N": (1.0, 0.0), "E": (0.0, 1.0), "S": (-1.0, 0.0), "W": (0.0, -1.0)}


def _build_traffic(total: int, zones: list[Zone], rng: np.random.Generator) -> DomainModel:
    """Loop detectors per lane at stations strung along one or two roads per zone.

    Traffic on a road flows from station k to k+1, so station k-1 is upstream.
    """
    dm = DomainModel("traffic")
    per_zone = split_evenly(total, len(zones))
    roads: list[dict[str, Any]] = []
    site_sensors: dict[str, list[int]] = {}
    for zi, (zone, budget) in enumerate(zip(zones, per_zone, strict=True)):
        if budget == 0:
            continue
        lanes_per_station: list[int] = []
        left = budget
        while left > 0:
            lanes = min(left, int(rng.choice([2, 2, 3])))
            lanes_per_station.append(lanes)
            left -= lanes
        n_roads = 2 if len(lanes_per_station) >= 8 else 1
        station_no = 0
        for r, stations in enumerate(split_evenly(len(lanes_per_station), n_roads)):
            direction = _DIRECTIONS[(zi + r) % 4]
            highway = bool(rng.random() < 0.5)
            road = {
                "road_id": f"traffic-z{zi + 1:02d}-r{r + 1}",
                "zone_id": zone.zone_id,
                "direction": direction,
                "class": "highway" if highway else "arterial",
                "sites": [],
            }
            dlat, dlon = _BEARING[direction]
            offset = (r - 0.5) * 0.004
            # ~280 m between stations, closer on a long road so it stays inside its zone (~1.8 km)
            spacing = min(0.0025, ROAD_SPAN_DEG / max(1, stations))
            for k in range(stations):
                lanes = lanes_per_station[station_no]
                station_no += 1
                site = f"traffic-z{zi + 1:02d}-s{station_no:03d}"
                along = (k - stations / 2) * spacing
                lat = zone.lat + dlat * along + (offset if dlon else 0.0)
                lon = zone.lon + dlon * along * 1.28 + (offset if dlat else 0.0)
                road["sites"].append(site)
                site_sensors[site] = []
                free_flow = float(rng.uniform(95, 110) if highway else rng.uniform(48, 62))
                scale = float(rng.uniform(0.72, 1.12))
                for lane in range(1, lanes + 1):
                    i = dm.add(
                        f"{site}-l{lane}",
                        site,
                        zone.zone_id,
                        lat + rng.normal(0, 0.00005),
                        lon + rng.normal(0, 0.00005),
                        lane=lane,
                        direction=direction,
                        road_id=road["road_id"],
                        road_index=len(roads),
                        station_order=k,
                        free_flow_kmh=round(free_flow * (1.0 - 0.04 * (lane - 1)), 2),
                        demand_scale=round(scale * (1.0 - 0.12 * (lane - 1)), 4),
                        upstream=(),
                        downstream=(),
                    )
                    site_sensors[site].append(i)
            roads.append(road)
    # Neighbours: the same lane one station up/downstream (the nearest lane if it has fewer).
    for road in roads:
        sites = road["sites"]
        for k, site in enumerate(sites):
            for i in site_sensors[site]:
                lane = dm.attrs["lane"][i]
                up = _lane_match(dm, site_sensors[sites[k - 1]], lane) if k > 0 else ()
                down = _lane_match(dm, site_sensors[sites[k + 1]], lane) if k + 1 < len(sites) else ()
                dm.attrs["upstream"][i] = up
                dm.attrs["downstream"][i] = down
    dm.extra["roads"] = roads
    return dm


def _lane_match(dm: DomainModel, candidates: list[int], lane: int) -> tuple[str, ...]:
    best = min(candidates, key=lambda j: abs(dm.attrs["lane"][j] - lane))
    return (dm.sensor_ids[best],)


# -- water -------------------------------------------------------------------------------

#: Order in which a DMA's sensor budget is spent; extra sensors are pressure sensors.
_WATER_ROLES = ("flow", "pressure", "level", "pump", "quality")


def _build_water(total: int, zones: list[Zone], rng: np.random.Generator) -> DomainModel:
    """Per zone one district-metered area: inlet flow + quality, a tank fed by a pump, junction pressures."""
    dm = DomainModel("water")
    dmas = []
    for zi, (zone, budget) in enumerate(zip(zones, split_evenly(total, len(zones)), strict=True)):
        if budget == 0:
            continue
        z = f"z{zi + 1:02d}"
        roles = list(_WATER_ROLES[:budget]) + ["pressure"] * max(0, budget - len(_WATER_ROLES))
        demand = float(rng.uniform(20, 80))  # mean DMA demand, L/s
        dma = {
            "dma_id": zone.zone_id,
            "mean_demand_lps": round(demand, 2),
            "inlet": None,
            "tank": None,
            "pump": None,
            "quality": None,
            "pressure": [],
        }
        junction = 0
        for role in roles:
            if role == "flow":
                site, name, lat, lon = f"water-{z}-inlet", "flow", zone.lat + 0.004, zone.lon - 0.004
            elif role == "quality":
                site, name, lat, lon = f"water-{z}-inlet", "quality", zone.lat + 0.004, zone.lon - 0.004
            elif role == "level":
                site, name, lat, lon = f"water-{z}-tank1", "level", zone.lat + 0.006, zone.lon + 0.003
            elif role == "pump":
                site, name, lat, lon = f"water-{z}-ps1", "pump", zone.lat + 0.005, zone.lon + 0.001
            else:
                junction += 1
                site, name = f"water-{z}-j{junction:02d}", "pressure"
                lat = zone.lat + rng.uniform(-0.007, 0.007)
                lon = zone.lon + rng.uniform(-0.009, 0.009)
            sid = f"{site}-{name}"
            i = dm.add(
                sid,
                site,
                zone.zone_id,
                lat,
                lon,
                sensor_type=role,
                dma_id=zone.zone_id,
                dma_index=len(dmas),
                # Static pressure from elevation (bar) and how strongly head loss bites here.
                static_bar=round(float(rng.uniform(3.4, 5.4)), 3) if role == "pressure" else 0.0,
                headloss_bar=round(float(rng.uniform(0.25, 0.7)), 3) if role == "pressure" else 0.0,
            )
            key = {"flow": "inlet", "level": "tank", "pump": "pump", "quality": "quality"}.get(role)
            if key:
                dma[key] = sid
            else:
                dma["pressure"].append(sid)
            del i
        dmas.append(dma)
    dm.extra["dmas"] = dmas
    return dm


# -- grid --------------------------------------------------------------------------------


def _build_grid(total: int, zones: list[Zone], rng: np.random.Generator) -> DomainModel:
    """Secondary substations with a three-phase bus meter and per-phase meters at each feeder head.

    Voltages are low-voltage line-to-neutral (230 V nominal, 50 Hz).
    """
    dm = DomainModel("grid")
    n_ss = max(1, min(total, math.ceil(len(zones) / 2)))
    phase_budget = total - n_ss
    n_feeders = math.ceil(phase_budget / 3) if phase_budget > 0 else 0
    substations = []
    for s in range(n_ss):
        served = [z for j, z in enumerate(zones) if j % n_ss == s] or [zones[s % len(zones)]]
        substations.append(
            {"substation_id": f"grid-ss{s + 1:02d}", "zones": [z.zone_id for z in served], "feeders": []}
        )
    feeders = []
    zone_by_id = {z.zone_id: z for z in zones}
    for f in range(n_feeders):
        ss = substations[f % n_ss]
        number = len(ss["feeders"]) + 1
        zone_id = ss["zones"][(number - 1) % len(ss["zones"])]
        mix = float(rng.uniform(0.0, 0.6))  # 0 = residential, 1 = commercial
        feeder = {
            "feeder_id": f"{ss['substation_id']}-f{number}",
            "substation_id": ss["substation_id"],
            "zone_id": zone_id,
            "commercial_share": round(mix, 3),
            "rated_kw": round(float(rng.uniform(60, 140)), 1),
            "phases": [],
        }
        ss["feeders"].append(feeder["feeder_id"])
        feeders.append(feeder)
    # Bus meters first (one per substation), then phases feeder by feeder.
    for s, ss in enumerate(substations):
        zone = zone_by_id[ss["zones"][0]]
        dm.add(
            f"{ss['substation_id']}-bus",
            ss["substation_id"],
            zone.zone_id,
            zone.lat - 0.003,
            zone.lon + 0.004,
            phase="",
            feeder_id="",
            feeder_index=-1,
            substation_index=s,
            role="bus",
        )
    left = phase_budget
    for fi, feeder in enumerate(feeders):
        zone = zone_by_id[feeder["zone_id"]]
        s = int(feeder["substation_id"][-2:]) - 1
        # a feeder-head meter stands in its substation (the site), whichever area the feeder serves
        site = zone_by_id[substations[s]["zones"][0]]
        for phase in ("a", "b", "c")[: min(3, left)]:
            dm.add(
                f"{feeder['feeder_id']}-{phase}",
                feeder["substation_id"],
                zone.zone_id,
                site.lat - 0.003,
                site.lon + 0.004,
                phase=phase,
                feeder_id=feeder["feeder_id"],
                feeder_index=fi,
                substation_index=s,
                role="phase",
            )
            feeder["phases"].append(f"{feeder['feeder_id']}-{phase}")
            left -= 1
    dm.extra["substations"] = substations
    dm.extra["feeders"] = feeders
    return dm
