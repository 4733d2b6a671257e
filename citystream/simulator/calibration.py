"""How close the simulator's daily shapes are to real city data.

Why a module and not only a test: when someone retunes a profile they need
the numbers, not just pass/fail. ``compare(datasets_dir)`` returns the Pearson
correlation between normalised (z-scored) hourly profiles of simulated and
real series:

* traffic: mean speed, weekday and weekend, vs METR-LA (207 Los Angeles
  freeway detectors, one week of 5-minute speeds; the file has no timestamps,
  its first row is Thursday 2012-03-01 00:00 local time);
* water: DMA inlet flow vs BATADAL C-Town's main pump flow ``F_PU1``, and mean
  junction pressure vs mean ``P_J*`` (one normal year, hourly);
* grid: city load vs PJM East (``PJME``) winter load, weekday and weekend.

The real data is read in place from ``../shared/datasets`` and never copied.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from citystream.simulator.model import build_city
from citystream.simulator.signals import GENERATORS, local_hour, weekday

#: Monday 2026-01-05 00:00 UTC: a winter week, like the PJM months compared.
EPOCH_MS = 1_767_571_200_000
METR_LA_FIRST_WEEKDAY = 3  # Thursday


def _profile(hours: np.ndarray, values: np.ndarray) -> np.ndarray:
    sums = np.bincount(hours, weights=values, minlength=24)
    counts = np.bincount(hours, minlength=24)
    return sums / np.maximum(counts, 1)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def simulate_week(domain: str, sensors: int = 150, seed: int = 11, step_s: float = 300.0) -> dict:
    """One week of one department at ``step_s`` resolution, no anomalies: (ticks, outputs, generator)."""
    city = build_city(sensors, (domain,), seed=seed)
    ticks = EPOCH_MS + np.arange(int(7 * 86400 / step_s), dtype=np.int64) * int(step_s * 1000)
    gen = GENERATORS[domain](city.domains[domain], step_s, np.random.default_rng(seed))
    return {"ticks": ticks, "out": gen.derive(ticks, gen.drivers(ticks)), "gen": gen}


def simulated_profiles() -> dict[str, np.ndarray]:
    """Hourly profiles of the simulated week, keyed like :func:`real_profiles`."""
    out: dict[str, np.ndarray] = {}
    t = simulate_week("traffic")
    hours = local_hour(t["ticks"]).astype(int)
    weekend = weekday(t["ticks"]) >= 5
    speed = t["out"]["mean_speed_kmh"].mean(axis=1)
    out["traffic_speed_weekday"] = _profile(hours[~weekend], speed[~weekend])
    out["traffic_speed_weekend"] = _profile(hours[weekend], speed[weekend])
    w = simulate_week("water")
    kind = w["gen"].kind
    hours = local_hour(w["ticks"]).astype(int)
    out["water_inlet_flow"] = _profile(hours, w["out"]["flow_lps"][:, kind == "flow"].sum(axis=1))
    out["water_pressure"] = _profile(hours, w["out"]["pressure_bar"][:, kind == "pressure"].mean(axis=1))
    g = simulate_week("grid")
    hours = local_hour(g["ticks"]).astype(int)
    weekend = weekday(g["ticks"]) >= 5
    load = g["out"]["active_power_kw"][:, g["gen"].is_bus].sum(axis=1)
    out["grid_load_weekday"] = _profile(hours[~weekend], load[~weekend])
    out["grid_load_weekend"] = _profile(hours[weekend], load[weekend])
    return out


def real_profiles(datasets_dir: Path) -> dict[str, np.ndarray]:
    """The same hourly profiles from the public data sets."""
    import pandas as pd  # ~0.9 s and no declared dependency: only the real-data comparison needs it

    out: dict[str, np.ndarray] = {}
    speeds = pd.read_csv(datasets_dir / "metr_la_subset" / "los_speed.csv").to_numpy(dtype=float)
    speeds[speeds <= 0] = np.nan  # METR-LA writes 0 for a missing reading
    mean = np.nanmean(speeds, axis=1)
    minutes = np.arange(len(mean)) * 5
    hours = (minutes // 60) % 24
    days = (minutes // 1440 + METR_LA_FIRST_WEEKDAY) % 7
    weekend = days >= 5
    out["traffic_speed_weekday"] = _profile(hours[~weekend], mean[~weekend])
    out["traffic_speed_weekend"] = _profile(hours[weekend], mean[weekend])

    bat = pd.read_csv(datasets_dir / "batadal" / "training_1_normal.csv", skipinitialspace=True)
    bat.columns = [c.strip() for c in bat.columns]
    hours = pd.to_datetime(bat["DATETIME"], format="%d/%m/%y %H").dt.hour.to_numpy()
    out["water_inlet_flow"] = _profile(hours, bat["F_PU1"].to_numpy(dtype=float))
    pressure = bat[[c for c in bat.columns if c.startswith("P_J")]].to_numpy(dtype=float).mean(axis=1)
    out["water_pressure"] = _profile(hours, pressure)

    pjm = pd.read_csv(datasets_dir / "pjm_load" / "est_hourly.csv.gz", usecols=["Datetime", "PJME"])
    pjm = pjm.dropna()
    when = pd.to_datetime(pjm["Datetime"])
    winter = when.dt.month.isin([12, 1, 2]).to_numpy()
    # PJM stamps the hour's end; shift to the hour's start to compare with our instantaneous load.
    hours = ((when.dt.hour - 1) % 24).to_numpy()[winter]
    weekend = (when.dt.dayofweek >= 5).to_numpy()[winter]
    load = pjm["PJME"].to_numpy(dtype=float)[winter]
    out["grid_load_weekday"] = _profile(hours[~weekend], load[~weekend])
    out["grid_load_weekend"] = _profile(hours[weekend], load[weekend])
    return out


def compare(datasets_dir: Path) -> dict[str, float]:
    """Correlation of each simulated hourly profile with its real counterpart (1.0 = same shape)."""
    sim = simulated_profiles()
    real = real_profiles(Path(datasets_dir))
    return {name: round(_corr(sim[name], real[name]), 3) for name in real}
