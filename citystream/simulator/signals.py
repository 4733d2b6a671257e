"""Vectorised signal generators: one numpy step computes every sensor of a department.

Why two stages (``drivers`` then ``derive``): anomalies act on causes, not on
symptoms. A traffic incident raises the demand/capacity ratio at a station and
the fundamental diagram turns that into slower speed *and* higher occupancy;
a leak adds demand to a DMA and head loss turns it into lower pressure *and*
higher inlet flow. Anomalies therefore edit the drivers, and the physics in
``derive`` keeps related quantities consistent.

Profiles are parametric (sums of smooth bumps) and were tuned against public
data (see ``tests/test_simulator_calibration.py``): weekday/weekend speed dips
of METR-LA, the diurnal supply pattern of BATADAL's C-Town, and PJM's winter
load curve. Local time is UTC (see ``model``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from citystream.simulator.model import DomainModel

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def local_hour(t_ms: np.ndarray) -> np.ndarray:
    """Hour of day as a float in [0, 24)."""
    return (np.asarray(t_ms, dtype=np.int64) % DAY_MS) / HOUR_MS


def weekday(t_ms: np.ndarray) -> np.ndarray:
    """Monday = 0 ... Sunday = 6 (1970-01-01 was a Thursday)."""
    return ((np.asarray(t_ms, dtype=np.int64) // DAY_MS) + 3) % 7


def _bump(h: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Gaussian bump on the 24 h circle, so evening peaks wrap into the night smoothly."""
    d = (h - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def traffic_demand(h: np.ndarray, wd: np.ndarray) -> np.ndarray:
    """Demand / capacity ratio of a typical station: weekday rush hours, a weekend midday hump."""
    weekday_profile = (
        0.06 + 0.90 * _bump(h, 8.2, 1.3) + 0.45 * _bump(h, 13.0, 3.2) + 0.85 * _bump(h, 17.5, 1.8)
    )
    weekend_profile = 0.06 + 0.62 * _bump(h, 14.5, 3.6) + 0.15 * _bump(h, 19.0, 1.5)
    return np.where(wd >= 5, weekend_profile, weekday_profile)


def water_demand(h: np.ndarray, wd: np.ndarray) -> np.ndarray:
    """DMA demand relative to its mean: low at night, rising through the day, evening peak."""
    weekday_profile = (
        0.60 + 0.22 * _bump(h, 9.0, 1.8) + 0.32 * _bump(h, 15.0, 3.5) + 0.50 * _bump(h, 20.8, 2.2)
    )
    weekend_profile = (
        0.60 + 0.16 * _bump(h, 10.5, 2.0) + 0.32 * _bump(h, 15.0, 3.5) + 0.50 * _bump(h, 20.8, 2.2)
    )
    return np.where(wd >= 5, weekend_profile, weekday_profile)


def grid_load(h: np.ndarray, wd: np.ndarray, commercial_share: np.ndarray) -> np.ndarray:
    """Load relative to rating: residential (morning + evening peak) blended with commercial (office hours).

    The blend of a city's feeders reproduces PJM's winter curve: night trough
    around 4 h, morning ramp, a plateau, and the evening peak near 19 h.
    """
    h = h[:, None]
    wd = wd[:, None]
    weekend = wd >= 5
    residential = 0.50 + 0.30 * _bump(h, 7.8, 1.5) + 0.12 * _bump(h, 13.0, 3.0) + 0.55 * _bump(h, 19.2, 2.0)
    residential_we = (
        0.50 + 0.20 * _bump(h, 10.0, 2.3) + 0.08 * _bump(h, 14.0, 3.0) + 0.52 * _bump(h, 19.2, 2.0)
    )
    commercial = 0.40 + 0.45 * np.clip((h - 5.5) / 2.0, 0, 1) * np.clip((19.5 - h) / 2.5, 0, 1)
    commercial_we = 0.40 + 0.12 * _bump(h, 13.0, 3.5)
    res = np.where(weekend, residential_we, residential)
    com = np.where(weekend, commercial_we, commercial)
    c = commercial_share[None, :]
    return (1 - c) * res + c * com


def _ar1(state: np.ndarray, eps: np.ndarray, phi: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """AR(1) noise over the K steps of ``eps`` (K, n) with stationary std ``sigma``: (series, last state)."""
    out = np.empty_like(eps)
    innovation = sigma * np.sqrt(1.0 - phi * phi)
    x = state
    for k in range(eps.shape[0]):
        x = phi * x + innovation * eps[k]
        out[k] = x
    return out, x


def poisson(lam: np.ndarray, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Poisson counts by inverting the CDF at uniforms ``u`` (normal approximation via ``z`` above 50).

    Why not ``Generator.poisson``: its rejection sampler consumes a number of
    random draws that depends on ``lam``, so an anomaly that changes one
    sensor's demand would reshuffle the noise of every later sensor. Here each
    reading consumes exactly one ``u`` and one ``z``.
    """
    lam = np.maximum(lam, 0.0)
    small = lam <= 50.0
    count = np.where(small, 0, np.maximum(np.round(lam + np.sqrt(lam) * z), 0)).astype(np.int64)
    if small.any():
        ls, us = lam[small], u[small]
        pmf = np.exp(-ls)
        cdf = pmf.copy()
        k = np.zeros(ls.shape, dtype=np.int64)
        limit = int(ls.max() + 8 * np.sqrt(ls.max()) + 10)
        for i in range(1, limit + 1):
            below = us > cdf
            if not below.any():
                break
            k += below
            pmf = pmf * ls / i
            cdf = cdf + pmf
        count[small] = k
    return count


def _phi(dt_s: float, tau_s: float) -> float:
    return float(np.exp(-dt_s / tau_s))


class TrafficGenerator:
    """Loop detectors: demand ratio x -> flow, speed and occupancy via a fundamental diagram.

    Speed is nearly flat up to x ~ 0.85, then falls steeply (congested branch);
    in congestion density follows a triangular fundamental diagram, so flow
    drops with speed (a standing queue passes few vehicles); occupancy is
    density times effective vehicle length, so it rises exactly when speed falls.
    """

    domain = "traffic"
    CAPACITY_VPH = 1900.0  # vehicles per hour per lane
    JAM_DENSITY = 145.0  # vehicles per km per lane, standing queue
    CRITICAL_X = 0.85  # demand/capacity ratio where flow breaks down
    SF_CRITICAL = 1.0 - 0.08 * CRITICAL_X  # speed factor at the critical point
    VEHICLE_LENGTH_KM = 0.0055  # vehicle + loop length that occupies the detector

    def __init__(self, dm: DomainModel, dt_s: float, rng: np.random.Generator) -> None:
        self.dm = dm
        self.dt_s = dt_s
        self.rng = rng
        self.n = len(dm)
        self.road = dm.column("road_index").astype(np.int64)
        self.n_roads = int(self.road.max()) + 1 if self.n else 0
        self.free_flow = dm.column("free_flow_kmh").astype(float)
        self.scale = dm.column("demand_scale").astype(float)
        self.road_state = rng.normal(0, 0.07, self.n_roads)
        self.local_state = rng.normal(0, 0.04, self.n)
        self.static_fields = {"interval_s": round(dt_s), "lane": dm.column("lane")}

    def drivers(self, ticks: np.ndarray) -> dict[str, np.ndarray]:
        k = ticks.shape[0]
        base = traffic_demand(local_hour(ticks), weekday(ticks))[:, None] * self.scale[None, :]
        road_noise, self.road_state = _ar1(
            self.road_state, self.rng.standard_normal((k, self.n_roads)), _phi(self.dt_s, 900.0), 0.07
        )
        local_noise, self.local_state = _ar1(
            self.local_state, self.rng.standard_normal((k, self.n)), _phi(self.dt_s, 180.0), 0.04
        )
        x = base * (1.0 + road_noise[:, self.road] + local_noise)
        return {"x": np.clip(x, 0.005, None), "flow_factor": np.ones((k, self.n))}

    def derive(self, ticks: np.ndarray, d: dict[str, np.ndarray]) -> dict[str, Any]:
        x = d["x"]
        vf = self.free_flow[None, :]
        congested = x > self.CRITICAL_X
        speed_factor = np.where(
            congested, np.clip(self.SF_CRITICAL - 2.2 * (x - self.CRITICAL_X), 0.08, None), 1.0 - 0.08 * x
        )
        speed = vf * speed_factor
        # Free flow: density = flow / speed. Congested: triangular diagram, density from speed via the
        # backward wave speed w chosen so both branches meet at the critical point.
        v_crit = vf * self.SF_CRITICAL
        q_crit = self.CAPACITY_VPH * self.CRITICAL_X
        w = q_crit * v_crit / (self.JAM_DENSITY * v_crit - q_crit)
        density = np.where(
            congested,
            self.JAM_DENSITY * w / (speed + w),
            self.CAPACITY_VPH * x / np.maximum(speed, 1.0),
        )
        density = density * d["flow_factor"]
        q = density * speed
        count = poisson(q * self.dt_s / 3600.0, self.rng.random(x.shape), self.rng.standard_normal(x.shape))
        occupancy = np.clip(
            density * self.VEHICLE_LENGTH_KM * 100.0 * (1.0 + 0.06 * self.rng.standard_normal(x.shape)),
            0.0,
            98.0,
        )
        # A spot-speed mean over few vehicles is noisy; none passed -> no speed at all.
        spread = 6.0 / np.sqrt(np.maximum(count, 1))
        measured = np.clip(speed + spread * self.rng.standard_normal(x.shape), 2.0, None)
        return {
            "vehicle_count": count.astype(np.int64),
            "mean_speed_kmh": np.round(measured, 2),
            "mean_speed_kmh.present": count > 0,
            "occupancy_pct": np.round(occupancy, 2),
        }


class WaterGenerator:
    """DMAs: demand drives inlet flow and head loss; tanks integrate pump inflow minus outflow.

    Pumps follow level hysteresis (on below 1.5 m, off above 4.8 m), the same
    control BATADAL's C-Town uses. ``pump_force`` lets anomalies override it:
    -1 automatic, 0 off, 1 on, 2 on with the bypass stuck open (overflow),
    3 motor running but delivering almost nothing (failure: air lock, broken
    impeller), which a status-vs-flow check can always see.
    """

    domain = "water"
    LOW_M, HIGH_M, OVERFLOW_M = 1.5, 4.8, 5.6

    def __init__(self, dm: DomainModel, dt_s: float, rng: np.random.Generator) -> None:
        self.dm = dm
        self.dt_s = dt_s
        self.rng = rng
        self.n = len(dm)
        dmas = dm.extra["dmas"]
        self.n_dma = len(dmas)
        self.mean_demand = np.array([d["mean_demand_lps"] for d in dmas], dtype=float)
        self.dma = dm.column("dma_index").astype(np.int64)
        self.kind = np.asarray(dm.attrs["sensor_type"])
        self.static_bar = dm.column("static_bar").astype(float)
        self.headloss_bar = dm.column("headloss_bar").astype(float)
        # Tank served by each DMA's pump: sized for a few fill cycles a day.
        self.tank_outflow_share = 0.35
        self.pump_rate = self.mean_demand * self.tank_outflow_share * rng.uniform(1.8, 2.4, self.n_dma)
        self.tank_area = self.mean_demand * self.tank_outflow_share / 1000.0 * 3600 * 3.0 / 3.3
        self.level = rng.uniform(2.0, 4.0, self.n_dma)
        self.pump_on = rng.random(self.n_dma) < 0.5
        self.demand_state = rng.normal(0, 0.04, self.n_dma)
        self.chlorine_state = rng.normal(0, 0.03, self.n_dma)
        self.turbidity_state = rng.normal(0, 0.05, self.n_dma)
        self.present = {
            "flow_lps": np.isin(self.kind, ("flow", "pump")),
            "pressure_bar": self.kind == "pressure",
            "tank_level_m": self.kind == "level",
            "pump_on": self.kind == "pump",
            "ph": self.kind == "quality",
            "turbidity_ntu": self.kind == "quality",
            "chlorine_mgl": self.kind == "quality",
        }

    def drivers(self, ticks: np.ndarray) -> dict[str, np.ndarray]:
        k = ticks.shape[0]
        profile = water_demand(local_hour(ticks), weekday(ticks))[:, None]
        noise, self.demand_state = _ar1(
            self.demand_state, self.rng.standard_normal((k, self.n_dma)), _phi(self.dt_s, 1200.0), 0.04
        )
        demand = self.mean_demand[None, :] * profile * (1.0 + noise)
        return {
            "demand_lps": demand,
            "leak_lps": np.zeros((k, self.n_dma)),
            "pump_force": np.full((k, self.n_dma), -1, dtype=np.int8),
            "turbidity_add": np.zeros((k, self.n_dma)),
            "chlorine_factor": np.ones((k, self.n_dma)),
        }

    def derive(self, ticks: np.ndarray, d: dict[str, np.ndarray]) -> dict[str, Any]:
        k = ticks.shape[0]
        total = d["demand_lps"] + d["leak_lps"]
        levels = np.empty((k, self.n_dma))
        pumps = np.empty((k, self.n_dma), dtype=bool)
        pump_flow = np.empty((k, self.n_dma))
        level, on = self.level, self.pump_on
        for step in range(k):
            auto = np.where(level < self.LOW_M, True, np.where(level > self.HIGH_M, False, on))
            force = d["pump_force"][step]
            on = np.where(force < 0, auto, force >= 1)
            delivered = np.where(on, self.pump_rate, 0.0) * np.where(force == 3, 0.03, 1.0)
            inflow = delivered * np.where(force == 2, 2.5, 1.0)
            outflow = d["demand_lps"][step] * self.tank_outflow_share
            level = level + (inflow - outflow) / 1000.0 * self.dt_s / self.tank_area
            level = np.clip(level, 0.05, self.OVERFLOW_M)
            levels[step], pumps[step], pump_flow[step] = level, on, delivered
        self.level, self.pump_on = level, on
        ratio = total / self.mean_demand[None, :]
        rnd = self.rng.standard_normal((k, self.n))
        dma = self.dma
        flow = np.where(
            self.kind == "pump",
            np.where(pumps[:, dma], pump_flow[:, dma] * (1 + 0.01 * rnd), 0.0),
            total[:, dma] * (1 + 0.015 * rnd),
        )
        pressure = (
            self.static_bar[None, :]
            - self.headloss_bar[None, :] * ratio[:, dma] ** 1.85
            + 0.03 * (levels[:, dma] - 3.0)
            + 0.02 * rnd
        )
        cl_noise, self.chlorine_state = _ar1(
            self.chlorine_state, self.rng.standard_normal((k, self.n_dma)), _phi(self.dt_s, 3600.0), 0.03
        )
        tb_noise, self.turbidity_state = _ar1(
            self.turbidity_state, self.rng.standard_normal((k, self.n_dma)), _phi(self.dt_s, 1800.0), 0.05
        )
        # residence time follows what customers draw (a leak's extra flow is not used to model it)
        use = d["demand_lps"] / self.mean_demand[None, :]
        chlorine = (0.55 + 0.08 * (use - 1.0) + cl_noise) * d["chlorine_factor"]
        turbidity = 0.25 + np.abs(tb_noise) + d["turbidity_add"]
        ph = 7.35 + 0.03 * rnd
        return {
            "flow_lps": np.round(flow, 3),
            "pressure_bar": np.round(pressure, 3),
            "tank_level_m": np.round(levels[:, dma], 3),
            "pump_on": pumps[:, dma],
            "ph": np.round(ph, 3),
            "turbidity_ntu": np.round(np.clip(turbidity[:, dma], 0.02, None), 3),
            "chlorine_mgl": np.round(np.clip(chlorine[:, dma], 0.0, None), 3),
        }


class GridGenerator:
    """Feeder loads -> per-phase current and voltage drop; one grid-wide frequency.

    Frequency is a single AR(1) process shared by every meter (the grid is
    synchronous); voltage sags with a feeder's loading; the substation bus
    meter sums its feeders.
    """

    domain = "grid"
    NOMINAL_V = 230.0
    NOMINAL_HZ = 50.0

    def __init__(self, dm: DomainModel, dt_s: float, rng: np.random.Generator) -> None:
        self.dm = dm
        self.dt_s = dt_s
        self.rng = rng
        self.n = len(dm)
        feeders = dm.extra["feeders"]
        self.n_feeders = len(feeders)
        self.n_ss = len(dm.extra["substations"])
        self.rated = np.array([f["rated_kw"] for f in feeders], dtype=float)
        self.commercial = np.array([f["commercial_share"] for f in feeders], dtype=float)
        self.phases_per_feeder = np.array([max(1, len(f["phases"])) for f in feeders], dtype=float)
        self.feeder = dm.column("feeder_index").astype(np.int64)
        self.ss = dm.column("substation_index").astype(np.int64)
        self.is_bus = np.asarray(dm.attrs["role"]) == "bus"
        self.phase_share = np.where(self.is_bus, 1.0, 1.0 + rng.normal(0, 0.03, self.n))
        self.pf_base = np.clip(rng.normal(0.95, 0.015, self.n), 0.85, 0.995)
        self.load_state = rng.normal(0, 0.04, self.n_feeders)
        self.freq_state = rng.normal(0, 0.02, 1)
        self.ss_state = rng.normal(0, 0.005, self.n_ss)
        # feeder -> substation incidence, for bus sums
        self.feeder_ss = np.array([int(f["substation_id"][-2:]) - 1 for f in feeders], dtype=np.int64)

    def drivers(self, ticks: np.ndarray) -> dict[str, np.ndarray]:
        k = ticks.shape[0]
        shape = grid_load(local_hour(ticks), weekday(ticks), self.commercial)
        noise, self.load_state = _ar1(
            self.load_state, self.rng.standard_normal((k, self.n_feeders)), _phi(self.dt_s, 900.0), 0.04
        )
        freq, self.freq_state = _ar1(
            self.freq_state, self.rng.standard_normal((k, 1)), _phi(self.dt_s, 120.0), 0.02
        )
        ss_v, self.ss_state = _ar1(
            self.ss_state, self.rng.standard_normal((k, self.n_ss)), _phi(self.dt_s, 1800.0), 0.005
        )
        return {
            "load_kw": self.rated[None, :] * shape * (1.0 + noise),
            "frequency_hz": self.NOMINAL_HZ + freq[:, 0],
            "ss_voltage_pu": 1.01 + ss_v,
            "phase_factor": np.ones((k, self.n)),
            "voltage_factor": np.ones((k, self.n)),
        }

    def derive(self, ticks: np.ndarray, d: dict[str, np.ndarray]) -> dict[str, Any]:
        k = ticks.shape[0]
        load = d["load_kw"]
        feeder = np.where(self.is_bus, 0, self.feeder)
        loading = load / self.rated[None, :]
        phase_kw = load[:, feeder] / self.phases_per_feeder[feeder] * self.phase_share * d["phase_factor"]
        if self.n_feeders:
            bus_kw = np.zeros((k, self.n_ss))
            for s in range(self.n_ss):
                bus_kw[:, s] = load[:, self.feeder_ss == s].sum(axis=1)
        else:
            bus_kw = np.zeros((k, self.n_ss))
            phase_kw = np.zeros((k, self.n))
            loading = np.zeros((k, 1))
        rnd = self.rng.standard_normal((k, self.n))
        ss_v = d["ss_voltage_pu"][:, self.ss] * self.NOMINAL_V
        drop = np.where(self.is_bus, 0.0, 0.045 * loading[:, feeder] * d["phase_factor"])
        voltage = ss_v * (1.0 - drop) * d["voltage_factor"] + 0.25 * rnd
        power = np.where(self.is_bus[None, :], bus_kw[:, self.ss], phase_kw)
        power = power * (1.0 + 0.004 * self.rng.standard_normal((k, self.n)))
        pf = np.clip(self.pf_base[None, :] + 0.005 * self.rng.standard_normal((k, self.n)), 0.5, 1.0)
        conductors = np.where(self.is_bus, 3.0, 1.0)
        current = power * 1000.0 / (np.maximum(voltage, 1.0) * pf * conductors)
        reactive = power * np.tan(np.arccos(pf))
        freq = d["frequency_hz"][:, None] + 0.001 * self.rng.standard_normal((k, self.n))
        return {
            "voltage_v": np.round(voltage, 2),
            "current_a": np.round(current, 2),
            "frequency_hz": np.round(freq, 4),
            "active_power_kw": np.round(power, 3),
            "reactive_power_kvar": np.round(reactive, 3),
            "power_factor": np.round(pf, 4),
        }


GENERATORS = {"traffic": TrafficGenerator, "water": WaterGenerator, "grid": GridGenerator}
