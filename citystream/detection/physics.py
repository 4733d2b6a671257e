"""Physical-consistency checks across sensors, as pure functions of one window's aggregates.

Why: single-stream statistics cannot tell "demand rose" from "a pipe burst"
- both raise the flow. Conservation laws can: water that left the pumps and
did not show up in the tanks or the metered demand went somewhere. The same
holds for vehicles between two loop detectors and for power on a feeder.
These checks need no training, so they work from the first window, and an
inconsistency points at a place (a district, a road segment, a substation).

Every check returns a ``Consistency``: the residual in physical units, the
tolerance it was judged against, a score in [0, 1] and a sentence. The
tolerance is treated as a 3-sigma band: a residual equal to the tolerance
scores 0.997, half of it 0.87, so the calibration layer and the alarm gate
can be applied to these scores like to any detector's.

The same laws in the form the detect job can use on 1-minute aggregates,
where the constants are not on file, live in ``citystream.detection.learned``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from citystream.detection.base import is_missing, tail_score

#: Effective vehicle length (vehicle + detector loop) used to turn occupancy into density.
EFFECTIVE_VEHICLE_LENGTH_M = 6.5


@dataclass(frozen=True)
class Consistency:
    residual: float
    tolerance: float
    score: float
    explanation: str
    culprit: str = ""


def _judge(residual: float, tolerance: float, text: str, culprit: str = "") -> Consistency:
    if is_missing(residual):
        return Consistency(math.nan, tolerance, 0.0, "not enough data to check", culprit)
    z = 3.0 * residual / tolerance if tolerance > 0 else (math.inf if residual else 0.0)
    score = 1.0 if math.isinf(z) else tail_score(z)
    return Consistency(residual, tolerance, score, text if score >= 0.997 else "", culprit)


def _check_inputs(**values: float) -> None:
    for name, v in values.items():
        if is_missing(v):
            raise ValueError(f"{name} is missing")


def water_mass_balance(
    tanks: Sequence[tuple[float, float, float]],
    inflow_m3: float,
    outflow_m3: float,
    demand_m3: float = 0.0,
    rel_tol: float = 0.05,
    abs_tol_m3: float = 1.0,
) -> Consistency:
    """Volume stored in a district's tanks vs what the pumps moved and customers drew.

    ``tanks`` are ``(area_m2, level_start_m, level_end_m)``; flows are volumes
    over the same window. A negative residual (water missing) is the leak
    signature; a positive one usually means an unmetered inflow or a gauge
    fault. Tolerance grows with the volume moved, because flow meters are
    accurate to a few percent of what they measure.
    """
    _check_inputs(inflow_m3=inflow_m3, outflow_m3=outflow_m3, demand_m3=demand_m3)
    stored = 0.0
    for area, start, end in tanks:
        _check_inputs(area=area, level_start=start, level_end=end)
        stored += area * (end - start)
    expected = inflow_m3 - outflow_m3 - demand_m3
    residual = stored - expected
    tol = max(abs_tol_m3, rel_tol * (abs(inflow_m3) + abs(outflow_m3) + abs(demand_m3)))
    kind = "water unaccounted for (leak?)" if residual < 0 else "more water stored than delivered"
    return _judge(residual, tol, f"{kind}: {residual:+.1f} m3 against {expected:+.1f} m3 expected")


def flow_conservation(
    upstream_veh: float,
    downstream_veh: float,
    on_ramp_veh: float = 0.0,
    off_ramp_veh: float = 0.0,
    storage_change_veh: float = 0.0,
    rel_tol: float = 0.1,
    abs_tol_veh: float = 5.0,
) -> Consistency:
    """Vehicles into a road segment minus vehicles out must equal the change of vehicles on it.

    A persistent shortfall downstream with rising storage is a blockage; a
    mismatch with no storage change is usually a miscounting detector.
    """
    _check_inputs(upstream=upstream_veh, downstream=downstream_veh)
    residual = upstream_veh + on_ramp_veh - off_ramp_veh - downstream_veh - storage_change_veh
    tol = max(abs_tol_veh, rel_tol * max(upstream_veh + on_ramp_veh, downstream_veh + off_ramp_veh))
    return _judge(residual, tol, f"{residual:+.0f} vehicles entered the segment and did not leave it")


def speed_occupancy(
    flow_veh_h: float,
    speed_kmh: float,
    occupancy: float,
    lanes: int = 1,
    effective_length_m: float = EFFECTIVE_VEHICLE_LENGTH_M,
    rel_tol: float = 0.35,
    abs_tol_veh_h: float = 100.0,
) -> Consistency:
    """Measured flow vs the fundamental relation flow = density x speed.

    Density per lane is occupancy / effective vehicle length. A loop reporting
    high occupancy at motorway speed with little flow is physically
    impossible: a stuck loop or a wrong speed estimate, not congestion.
    """
    _check_inputs(flow=flow_veh_h, speed=speed_kmh, occupancy=occupancy)
    density_per_km = occupancy * 1000.0 / effective_length_m * lanes
    expected = density_per_km * speed_kmh
    residual = flow_veh_h - expected
    tol = max(abs_tol_veh_h, rel_tol * max(flow_veh_h, expected))
    return _judge(
        residual, tol, f"flow {flow_veh_h:.0f} veh/h but occupancy x speed implies {expected:.0f} veh/h"
    )


def frequency_agreement(frequencies_hz: Mapping[str, float], tol_hz: float = 0.02) -> Consistency:
    """Substations in one synchronous area must see the same frequency.

    Frequency is a system-wide quantity: a substation that disagrees with
    the median of the others by more than a few tens of mHz has a metering
    fault or has islanded. The culprit is the most distant one.
    """
    vals = {k: v for k, v in frequencies_hz.items() if not is_missing(v)}
    if len(vals) < 3:
        return Consistency(math.nan, tol_hz, 0.0, "need at least three substations to vote")
    ordered = sorted(vals.values())
    mid = len(ordered) // 2
    med = ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
    culprit = max(vals, key=lambda k: abs(vals[k] - med))
    residual = vals[culprit] - med
    return _judge(
        residual, tol_hz, f"{culprit} reads {vals[culprit]:.3f} Hz, the others {med:.3f} Hz", culprit
    )


def power_consistency(
    p_kw: float,
    voltage_v: float,
    current_a: float,
    power_factor: float,
    phases: int = 3,
    rel_tol: float = 0.05,
    abs_tol_kw: float = 1.0,
) -> Consistency:
    """Metered active power vs V x I x PF (x sqrt(3) for three phases, line-to-line voltage).

    A mismatch means one of the four meters is wrong (CT ratio, failed phase)
    - worth knowing before trusting the overload alarm computed from them.
    """
    _check_inputs(p=p_kw, v=voltage_v, i=current_a, pf=power_factor)
    if phases not in (1, 3):
        raise ValueError("phases must be 1 or 3")
    k = math.sqrt(3.0) if phases == 3 else 1.0
    expected = k * voltage_v * current_a * power_factor / 1000.0
    residual = p_kw - expected
    tol = max(abs_tol_kw, rel_tol * max(abs(p_kw), abs(expected)))
    return _judge(residual, tol, f"metered {p_kw:.1f} kW but V*I*PF gives {expected:.1f} kW")


@dataclass(frozen=True)
class LinearBalance:
    """A water balance whose coefficients were learned from normal operation.

    Why: the physical balance (``water_mass_balance``) needs tank areas,
    pump curves and metered demand, which a utility rarely hands over for
    every district. Over one step the same law is linear - level change =
    sum of (flow x 1/area) minus average demand - so a least-squares fit on a
    period known to be normal recovers it. The fit is done once, offline
    (``fit_linear_balance``); the per-step check is plain arithmetic.
    """

    target: str
    inputs: tuple[str, ...]
    coefs: tuple[float, ...]
    intercept: float
    sigma: float

    def residual(self, level_before: float, level_now: float, inputs_before: Mapping[str, float]) -> float:
        """Observed minus expected level change, in units of the normal residual spread."""
        if is_missing(level_before) or is_missing(level_now):
            return math.nan
        expected = self.intercept
        for name, c in zip(self.inputs, self.coefs, strict=True):
            x = inputs_before.get(name, math.nan)
            if is_missing(x):
                return math.nan
            expected += c * x
        return (level_now - level_before - expected) / self.sigma

    def check(self, level_before: float, level_now: float, inputs_before: Mapping[str, float]) -> Consistency:
        z = self.residual(level_before, level_now, inputs_before)
        if is_missing(z):
            return Consistency(math.nan, self.sigma, 0.0, "not enough data to check")
        score = tail_score(z)
        why = f"{self.target} moved {z:+.1f} sd against what the flows imply" if score >= 0.999 else ""
        return Consistency(z * self.sigma, self.sigma, score, why)


def fit_linear_balance(
    target: str, levels: Sequence[float], inputs: Mapping[str, Sequence[float]]
) -> LinearBalance:
    """Least-squares fit of level(t+1) - level(t) on the inputs at t, over normal history."""
    import numpy as np

    y = np.diff(np.asarray(levels, dtype=float))
    names = tuple(inputs)
    x = np.column_stack([np.asarray(inputs[k], dtype=float)[:-1] for k in names] + [np.ones(len(y))])
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    if ok.sum() <= x.shape[1]:
        raise ValueError(f"not enough complete rows to fit the balance of {target}")
    coef, *_ = np.linalg.lstsq(x[ok], y[ok], rcond=None)
    resid = y[ok] - x[ok] @ coef
    sigma = float(np.std(resid)) or 1e-9
    return LinearBalance(target, names, tuple(float(c) for c in coef[:-1]), float(coef[-1]), sigma)
