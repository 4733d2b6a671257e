"""Issue 13 on small hand-made series: a weekly surge, a channel constant in history, irregular sampling."""

from __future__ import annotations

import json
import random

from citystream.detection import EwmaZ, SeasonalProfile
from citystream.detection.base import dumps, loads, run, tail_score

HOUR = 3_600_000
DAY = 24 * HOUR
T0 = 1_700_000_000_000 - (1_700_000_000_000 % DAY)  # a fixed midnight UTC
ALARM = 0.999
MANY_SIGMA = tail_score(5.0)  # a raw score no Gaussian noise reaches in these series


def weekday(t_ms: int) -> int:
    """0 = Monday, as in datetime (1970-01-01 was a Thursday)."""
    return (t_ms // DAY + 3) % 7


def town(days: int, seed: int = 5, surge_days: tuple[int, ...] = (4,)) -> tuple[list[int], list[float]]:
    """Hourly demand with a daily shape; +60 from 18:00 to 21:00 on ``surge_days`` (4 = Friday)."""
    rnd = random.Random(seed)
    times = [T0 + i * HOUR for i in range(days * 24)]
    values = []
    for t in times:
        hour = (t % DAY) // HOUR
        base = 100.0 if 7 <= hour < 22 else 40.0
        surge = 60.0 if weekday(t) in surge_days and 18 <= hour < 21 else 0.0
        values.append(base + surge + rnd.gauss(0, 2))
    return times, values


def evening(times: list[int], day: int) -> list[int]:
    return [i for i, t in enumerate(times) if (t - T0) // DAY == day and 18 <= (t % DAY) // HOUR < 21]


# --------------------------------------------------------------------------- weekly surge


def test_a_weekly_surge_is_learned_and_an_unusual_one_is_caught() -> None:
    times, values = town(22)
    fridays = sorted({(t - T0) // DAY for t in times if weekday(t) == 4})
    tuesday = next(d for d in range(15, 22) if weekday(T0 + d * DAY) == 1)
    for i in evening(times, tuesday):
        values[i] += 60.0  # the same surge on a Tuesday evening: never seen there
    det = SeasonalProfile()
    state, scores, notes = run(det, times, values)
    assert state["sel"] == 1  # this stream chose the weekly profile
    week3_friday = [d for d in fridays if 14 <= d < 21]
    assert week3_friday and max(scores[i] for i in evening(times, week3_friday[0])) < ALARM
    assert max(scores[i] for i in evening(times, tuesday)) >= ALARM
    assert "time of the week" in notes[evening(times, tuesday)[0]]
    daily_only = SeasonalProfile(auto_weekly=False)  # what a daily profile makes of the same stream
    _, daily_scores, _ = run(daily_only, times, values)
    assert max(daily_scores[i] for i in evening(times, week3_friday[0])) >= ALARM


def test_a_stream_without_a_weekly_pattern_keeps_its_daily_profile() -> None:
    times, values = town(28, surge_days=())
    state, scores, _ = run(SeasonalProfile(), times, values)
    assert state["sel"] == 0 and state["ne"] >= 7 * 24
    _, daily_scores, _ = run(SeasonalProfile(auto_weekly=False), times, values)
    assert scores == daily_scores  # the weekly cells learned alongside, but never judged


def test_weekly_choice_waits_for_two_weeks() -> None:
    times, values = town(13)
    state, _, _ = run(SeasonalProfile(), times, values)
    assert state["sel"] == 0


def test_state_stays_small_json_and_old_states_load() -> None:
    times, values = town(22)
    det = SeasonalProfile()
    state, _, _ = run(det, times[:400], values[:400])
    assert len(dumps(state)) < 16_000 and loads(dumps(state)) == state
    old = {k: state[k] for k in ("m", "d", "c", "k", "ld")}  # what a build before issue 13 checkpointed
    raw = json.dumps(old)
    new_state, scores, _ = run(det, times[400:], values[400:], json.loads(raw))
    assert [len(day) for day in new_state["w"]] == [4 * 24] * 7 and new_state["t0"] == times[400]
    assert json.loads(raw) == old  # the old state itself was not mutated
    assert max(scores) > 0.0  # its daily cells kept judging straight away


# --------------------------------------------------------------------------- constant in history


def switch_on(n_off: int = 600, n_on: int = 900) -> tuple[list[int], list[float]]:
    """A pump that never ran (0.0, every 10 minutes) and then runs at 37.2 with a little noise."""
    rnd = random.Random(11)
    times = [T0 + i * 600_000 for i in range(n_off + n_on)]
    values = [0.0] * n_off + [37.2 + rnd.gauss(0, 0.3) for _ in range(n_on)]
    return times, values


def test_a_constant_channel_that_switches_on_is_one_event_then_quiet() -> None:
    times, values = switch_on()
    for det in (EwmaZ(), SeasonalProfile()):
        _, scores, _ = run(det, times, values)
        flagged = [i for i, s in enumerate(scores) if s >= MANY_SIGMA]
        assert flagged == [600, 601, 602, 603], (det.name, flagged[:10])  # one event: restart_after readings
        assert max(scores[:600]) == 0.0  # constant history: nothing to report before the switch


def test_without_the_restart_the_switch_is_an_endless_event() -> None:
    """The failure the restart fixes, measured on the same series with it switched off."""
    times, values = switch_on()
    _, scores, _ = run(EwmaZ(restart_after=0), times, values)
    assert sum(s >= MANY_SIGMA for s in scores) > 100


def test_spikes_on_a_constant_channel_stay_events_and_do_not_move_its_level() -> None:
    times = [T0 + i * 600_000 for i in range(900)]
    values = [20.0 if i in (600, 700) else 0.0 for i in range(900)]  # two lone spikes on a flat zero
    for det in (EwmaZ(), SeasonalProfile()):
        _, scores, _ = run(det, times, values)
        assert [i for i, s in enumerate(scores) if s >= MANY_SIGMA] == [600, 700], det.name


def test_after_the_switch_the_baseline_is_the_new_level() -> None:
    times, values = switch_on()
    state, _, _ = run(EwmaZ(), times[:606], values[:606])
    assert abs(state["m"] - 37.2) < 1.0 and state["n"] < EwmaZ().warmup  # re-learning, not 37 sd off
    state, _, _ = run(EwmaZ(), times, values)
    assert 0.1 < 1.2533 * state["v"] ** 0.5 < 0.6  # and its spread is the noise's (0.3), not the switch's


def test_a_physical_floor_sets_the_scale_of_a_constant_channel() -> None:
    times = [T0 + i * 60_000 for i in range(200)]
    det = EwmaZ(warmup=20, scale_floor=0.5)
    state, _, _ = run(det, times, [3.0] * 200)
    _, score, _ = det.step(state, times[-1] + 60_000, 4.0)  # one unit above: z = 1 / 0.5 = 2
    assert abs(score - 0.9545) < 1e-3
    _, score, _ = EwmaZ(warmup=20).step(state, times[-1] + 60_000, 4.0)  # no floor, no step seen: the event
    assert score >= ALARM


def test_the_quantum_floor_comes_from_the_values_seen() -> None:
    times = [T0 + i * 60_000 for i in range(300)]
    values = [5.0 if i % 50 else 6.0 for i in range(300)]  # an integer channel: its quantum is 1
    state, _, _ = run(EwmaZ(warmup=20), times, values)
    assert state["qv"] == 1.0


# --------------------------------------------------------------------------- irregular sampling


SHIFT = T0 + 2 * DAY + 6 * HOUR  # the level steps up from 10 to 14 as a lull in the sampling starts


def shift_series(times: list[int]) -> list[float]:
    rnd = random.Random(21)
    return [(10.0 if t < SHIFT else 14.0) + rnd.gauss(0, 0.5) for t in times]


def test_an_irregularly_sampled_series_learns_per_hour_like_the_regular_one() -> None:
    step = 300_000
    regular = [T0 + i * step for i in range(4 * 288)]
    # the same clock, but readings come in bursts (every 5 min) and lulls (every 20 min)
    irregular = [t for t in regular if (t // (6 * HOUR)) % 2 == 0 or (t // step) % 4 == 0]
    by_time = EwmaZ(halflife=24, warmup=24)
    by_count = EwmaZ(halflife=24, warmup=24, cadence_ms=1.0, max_gap=1.0)  # every reading weighs one
    learned = {}
    for name, det in (("time", by_time), ("count", by_count)):
        for series, times in (("regular", regular), ("irregular", irregular)):
            cut = [t for t in times if t <= SHIFT + 3 * HOUR]
            learned[name, series] = run(det, cut, shift_series(cut))[0]
    assert learned["time", "regular"]["m"] == learned["count", "regular"]["m"]  # regular: nothing changes
    lag_time = learned["time", "regular"]["m"] - learned["time", "irregular"]["m"]
    lag_count = learned["count", "regular"]["m"] - learned["count", "irregular"]["m"]
    assert abs(lag_time) < 0.5 < 1.5 < lag_count  # three hours after the step: counted readings lag
    assert abs(learned["time", "irregular"]["cad"] - step) < 0.1 * step  # the cadence it learned


def test_irregular_sampling_scores_a_spike_as_regular_sampling_does() -> None:
    """A jittered clock with 40 % of the readings missing: the spike is caught, the rest stays quiet."""
    rnd = random.Random(8)
    grid = range(6 * 288)
    spike = 5 * 288 + 150
    jittered = {i: T0 + i * 300_000 + rnd.randrange(-120_000, 120_001) for i in grid}
    kept = [i for i in grid if i == spike or rnd.random() > 0.4]

    def reading(i: int, t: int) -> float:
        daytime = 8 <= (t % DAY) // HOUR < 18
        return (
            50.0 + (10.0 if daytime else 0.0) + random.Random(i).gauss(0, 1) + (12.0 if i == spike else 0.0)
        )

    rates: dict[tuple[str, str], float] = {}
    for det in (SeasonalProfile(min_days=2), EwmaZ()):
        clocks = {
            "regular": [(i, T0 + i * 300_000) for i in grid],
            "irregular": [(i, jittered[i]) for i in kept],
        }
        for name, clock in clocks.items():
            _, scores, _ = run(det, [t for _, t in clock], [reading(i, t) for i, t in clock])
            by_index = dict(zip((i for i, _ in clock), scores, strict=True))
            assert by_index[spike] >= ALARM, (det.name, name)
            quiet = [s for i, s in by_index.items() if i != spike and i >= 3 * 288]
            assert max(quiet) < MANY_SIGMA, (det.name, name)
            rates[det.name, name] = sum(s >= ALARM for s in quiet) / len(quiet)
    assert max(rates.values()) <= 0.01, rates  # near the raw score's own 1-in-1000 on either clock
