"""Status channels: the state model, the status/flow check, and the declared channel types.

Hand-made series at fixed epochs; each case is also run with irregular sampling, which must
give the same verdicts (the models measure time, not readings).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citystream.catalog import CHANNEL_TYPES, COUNTER, DOMAINS, STATUS, DomainSpec, channel_type
from citystream.detection.base import EXPLAIN_AT, Detector, dumps, loads
from citystream.detection.status import OnWithoutFlow, StatusModel

MIN = 60_000
HOUR = 60 * MIN
DAY = 24 * HOUR
T0 = 1_700_000_000_000 - (1_700_000_000_000 % DAY)  # a fixed midnight UTC
ALARM = EXPLAIN_AT

#: A status (or flow) as a function of the time since T0, in ms.
Signal = Callable[[int], float]


def regular(end_ms: int, every_ms: int = HOUR) -> list[int]:
    return list(range(T0, T0 + end_ms, every_ms))


def irregular(end_ms: int, seed: int = 7) -> list[int]:
    """Gaps of 10 to 50 minutes, seeded: the same series as ``regular`` seen by a jittery logger."""
    rng = random.Random(seed)
    out, t = [], T0
    while t < T0 + end_ms:
        out.append(t)
        t += rng.randint(10, 50) * MIN
    return out


def drive(times: Sequence[int], signal: Signal) -> list[tuple[int, float, str]]:
    """The model over ``signal`` sampled at ``times``; the alarms as (time since T0, score, why)."""
    m = StatusModel()
    state, alarms = m.init(), []
    for t in times:
        state, score, why = m.step(loads(dumps(state)), t, signal(t - T0))
        assert 0.0 <= score < 1.0
        if score >= ALARM:
            alarms.append((t - T0, score, why))
    return alarms


def cycling(on_h: float, off_h: float) -> Signal:
    """A pump on for ``on_h`` hours, then off for ``off_h``, for ever."""
    period = (on_h + off_h) * HOUR
    return lambda dt: 1.0 if dt % period < on_h * HOUR else 0.0


# --------------------------------------------------------------------------- StatusModel


def never_ran_then_on(dt: int) -> float:
    return 1.0 if dt >= 60 * DAY else 0.0


@pytest.mark.parametrize("times", [regular(75 * DAY), irregular(75 * DAY)], ids=["hourly", "irregular"])
def test_a_pump_that_never_ran_switching_on_is_one_event(times: list[int]) -> None:
    alarms = drive(times, never_ran_then_on)
    assert len(alarms) == 1, alarms  # not an alarm for every reading of the 15 days it then runs
    at, _, why = alarms[0]
    assert 60 * DAY <= at <= 60 * DAY + HOUR
    assert "status 1 never seen" in why and "after 0 for 60 d" in why


def test_the_switch_scores_high_and_the_new_state_is_then_learned() -> None:
    m = StatusModel()
    state = m.init()
    scores = []
    for t in regular(75 * DAY):
        state, score, _ = m.step(state, t, never_ran_then_on(t - T0))
        scores.append(score)
    switch = 60 * 24
    assert scores[switch] >= ALARM
    assert max(scores[switch + 1 :]) == 0.0
    assert set(state["st"]) == {"0", "1"} and state["s"] == "1"


def episodes(on_h: float, off_h: float, days: int, long_on_h: float, short_on_h: float) -> Signal:
    """Regular cycling for ``days``; then one long run, normal cycling, one short run, normal again."""
    base = cycling(on_h, off_h)
    period = (on_h + off_h) * HOUR
    a = days * DAY  # the long run starts here (a cycle boundary: days * 24 h is a multiple of 12 h)
    b = a + long_on_h * HOUR + off_h * HOUR  # normal cycling again
    c = b + 5 * period  # the short run
    d = c + short_on_h * HOUR + off_h * HOUR

    def signal(dt: int) -> float:
        if dt < a:
            return base(dt)
        if dt < b:
            return 1.0 if dt < a + long_on_h * HOUR else 0.0
        if dt < c:
            return base(dt - b)
        if dt < d:
            return 1.0 if dt < c + short_on_h * HOUR else 0.0
        return base(dt - d)

    signal.marks = (a, b, c, d)  # type: ignore[attr-defined]
    return signal


@pytest.mark.parametrize("sampler", [regular, irregular], ids=["hourly", "irregular"])
def test_an_unusual_dwell_is_reported_once(sampler: Callable[[int], list[int]]) -> None:
    signal = episodes(on_h=6, off_h=6, days=30, long_on_h=30, short_on_h=1)
    a, _, c, _ = signal.marks  # type: ignore[attr-defined]
    alarms = drive(sampler(40 * DAY), signal)
    assert len(alarms) == 2, alarms
    (t_long, _, why_long), (t_short, _, why_short) = alarms
    assert a + 6 * HOUR < t_long < a + 30 * HOUR and "longer than usual (usually ~6" in why_long
    assert c < t_short <= c + 2 * HOUR and "status 1 lasted only" in why_short


def test_regular_cycling_never_alarms_whatever_the_sampling() -> None:
    for times in (regular(40 * DAY), regular(40 * DAY, 10 * MIN), irregular(40 * DAY, seed=3)):
        assert drive(times, cycling(on_h=8, off_h=4)) == []


def test_a_silence_is_an_outage_not_a_long_dwell() -> None:
    """Readings stop for 30 days (history and live data are months apart): not a dwell."""
    signal = cycling(on_h=6, off_h=6)
    times = regular(30 * DAY) + [t + 60 * DAY for t in regular(10 * DAY)]
    assert drive(times, signal) == []


def test_more_states_than_a_status_channel_has_are_not_learned() -> None:
    m = StatusModel(max_states=3)
    state = m.init()
    for i, v in enumerate([0, 1, 2, 3, 4]):
        state, _, why = m.step(state, T0 + i * HOUR, float(v))
    assert set(state["st"]) == {"0", "1", "2"} and "not a status channel" in why


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6 * HOUR), st.sampled_from([0.0, 1.0, 2.0, float("nan")])), max_size=80)
)
def test_step_is_pure_and_its_state_is_plain_json(readings: list[tuple[int, float]]) -> None:
    m, state, t = StatusModel(warmup_ms=0), StatusModel().init(), T0
    for gap, value in readings:
        t += gap
        before = copy.deepcopy(state)
        new, score, _ = m.step(state, t, value)
        assert state == before  # the input is never mutated
        assert loads(dumps(new)) == new and 0.0 <= score <= 1.0
        state = new


def test_both_models_keep_the_detector_contract() -> None:
    assert isinstance(StatusModel(), Detector)
    assert json.loads(json.dumps(OnWithoutFlow().init())) == OnWithoutFlow().init()


# --------------------------------------------------------------------------- OnWithoutFlow


def pump(on_h: float = 5, off_h: float = 7, flow_on: float = 40.0) -> tuple[Signal, Signal]:
    status = cycling(on_h, off_h)
    noise = lambda dt: ((dt // MIN) * 7919 % 101 - 50) / 50.0  # noqa: E731 - deterministic +-1 "noise"
    flow = lambda dt: (flow_on + noise(dt)) if status(dt) else 0.0  # noqa: E731
    return status, flow


def check(times: Sequence[int], status: Signal, flow: Signal) -> list[tuple[int, float, str]]:
    c = OnWithoutFlow("S_PU7", "F_PU7")
    state, out = c.init(), []
    for t in times:
        before = copy.deepcopy(state)
        new, score, why = c.step(state, t, status(t - T0), flow(t - T0))
        assert state == before and loads(dumps(new)) == new
        state = new
        if score >= ALARM:
            out.append((t - T0, score, why))
    return out


@pytest.mark.parametrize("sampler", [regular, irregular], ids=["hourly", "irregular"])
def test_pump_on_with_flow_is_not_flagged(sampler: Callable[[int], list[int]]) -> None:
    status, flow = pump()
    assert check(sampler(20 * DAY), status, flow) == []


@pytest.mark.parametrize("sampler", [regular, irregular], ids=["hourly", "irregular"])
def test_pump_on_with_no_flow_is_flagged_and_the_reverse_too(sampler: Callable[[int], list[int]]) -> None:
    status, flow = pump()
    dry = (10 * DAY + 1 * HOUR, 10 * DAY + 4 * HOUR)  # on, but the flow reads 0 (a dry run)
    leak = (15 * DAY + 6 * HOUR, 15 * DAY + 10 * HOUR)  # off, but the flow reads its on level

    def bad_flow(dt: int) -> float:
        if dry[0] <= dt < dry[1]:
            return 0.0
        if leak[0] <= dt < leak[1]:
            return 40.0
        return flow(dt)

    found = check(sampler(20 * DAY), status, bad_flow)
    assert found, "no mismatch flagged"
    assert all(dry[0] <= t < dry[1] or leak[0] <= t < leak[1] for t, _, _ in found)
    no_flow = [why for t, _, why in found if t < leak[0]]
    reverse = [why for t, _, why in found if t >= leak[0]]
    assert no_flow and reverse
    assert no_flow[0].startswith("S_PU7 on, no flow: F_PU7 0 is at its off level ~0, expected ~40")
    assert reverse[0].startswith("S_PU7 off, flow: F_PU7 40 is at its on level ~40, expected ~0")


def test_a_pump_never_seen_off_still_knows_no_flow() -> None:
    """Always on in history: its off level is the physical one (no flow), not unknown."""
    c = OnWithoutFlow("S_PU1", "F_PU1")
    state = c.init()
    for i in range(48):
        state, score, _ = c.step(state, T0 + i * HOUR, 1.0, 95.0 + (i % 5))
        assert score < ALARM
    _, score, why = c.step(state, T0 + 48 * HOUR, 1.0, 0.0)
    assert score >= ALARM and "no flow" in why


# --------------------------------------------------------------------------- declared channel types


def test_the_catalog_types_every_metric_of_every_domain() -> None:
    for d in DOMAINS:
        assert [m for m, _ in d.channels] == list(d.metrics), d.name
        assert all(d.channel_type(m) in CHANNEL_TYPES for m in d.metrics)
    assert channel_type("traffic", "vehicle_count") == COUNTER
    assert channel_type("water", "flow_volume_m3") == COUNTER
    with pytest.raises(KeyError, match="no metric"):
        channel_type("grid", "pump_status")


def test_a_domain_with_an_untyped_or_mistyped_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="untyped"):
        DomainSpec("x", "r", "t", "zone", "X", metrics=("a", "b"), channels=(("a", STATUS),))
    with pytest.raises(ValueError, match="unknown types"):
        DomainSpec("x", "r", "t", "zone", "X", metrics=("a",), channels=(("a", "boolean"),))


@pytest.mark.datasets
def test_batadal_status_channels_are_typed_status_and_paired_with_their_flows(datasets: Path) -> None:
    from citystream.evaluation.datasets import load_batadal, load_skab

    rec = load_batadal(datasets, "small").recordings[0]
    assert {c for c in rec.channels if rec.channel_type(c) == STATUS} == {
        c for c in rec.channels if c[:2] == "S_"
    }
    assert rec.channel_type("F_PU7") == rec.channel_type("L_T1") == rec.channel_type("P_J280") == "continuous"
    assert ("S_PU7", "F_PU7") in rec.status_flow and ("S_V2", "F_V2") in rec.status_flow
    assert len(rec.status_flow) == 12 and all(
        s in rec.channels and f in rec.channels for s, f in rec.status_flow
    )
    assert rec.history is not None and rec.history.types == rec.types
    skab = load_skab(datasets, "small").recordings[0]
    assert set(skab.types) == set(skab.channels) and STATUS not in skab.types.values()


@pytest.mark.datasets
def test_on_batadal_status_alarms_fall_in_attacks(datasets: Path) -> None:
    """Warmed on the normal year: S_PU11 switching in attack 1 and PU7 running dry are caught,
    and the pumps that cycle every few hours raise nothing over the 4,177 labelled hours."""
    from citystream.evaluation.datasets import load_batadal

    rec = load_batadal(datasets).recordings[0]
    hist = rec.history
    assert hist is not None
    attack = np.zeros(len(rec), dtype=bool)
    for a, b in rec.events:
        attack[a : b + 1] = True

    def alarms(step: Callable, state: dict, *channels: str) -> list[int]:
        for row in zip(hist.t_ms.tolist(), *(hist.channels[c].tolist() for c in channels), strict=True):
            state, _, _ = step(state, *row)
        out = []
        for i, row in enumerate(
            zip(rec.t_ms.tolist(), *(rec.channels[c].tolist() for c in channels), strict=True)
        ):
            state, score, _ = step(state, *row)
            if score >= ALARM:
                out.append(i)
        return out

    m = StatusModel()
    pu11 = alarms(m.step, m.init(), "S_PU11")
    assert pu11 and pu11[0] == rec.events[0][0] and all(attack[pu11])
    for quiet in ("S_PU4", "S_PU8", "S_PU10", "S_V2"):
        assert alarms(m.step, m.init(), quiet) == [], quiet
    c = OnWithoutFlow("S_PU7", "F_PU7")
    dry = alarms(c.step, c.init(), "S_PU7", "F_PU7")
    assert len(dry) >= 10 and all(attack[dry])


def test_a_window_mean_through_a_switch_is_not_a_new_state() -> None:
    """The job judges window means: a window in which the pump switched averages to 0.4."""
    m = StatusModel()
    state = m.init()
    for i in range(30 * 24):
        state, _, _ = m.step(state, T0 + i * HOUR, cycling(6, 6)(i * HOUR))
    state, score, _ = m.step(state, T0 + 30 * DAY + 3 * MIN, 0.4)
    assert set(state["st"]) == {"0", "1"} and score < ALARM
    assert set(StatusModel(quantum=0.0).step(state, T0 + 30 * DAY + 4 * MIN, 0.4)[0]["st"]) == {
        "0",
        "1",
        "0.4",
    }
