"""Status channels (on/off, open/closed, mode): a state model, and the status/flow pair check.

Why not z-scores: a pump's status is 0 or 1. A robust scale fitted to a channel that
was 0 all year collapses to the numeric floor, so the day the pump runs every reading
is a many-sigma event and the alarm stays on for as long as the pump does. What is
unusual about a status channel is *when and how it changes*: a state never seen, a
transition that rarely happens, a run much longer or shorter than usual.

``StatusModel`` is a small semi-Markov model learned online: per state, the time spent
in it and how often it was left (both forgotten with a half-life in time), and the
distribution of completed dwell times (log-normal, in ms). Everything is measured in
time, never in readings, so hourly, 10-minute and irregular sampling give the same
verdicts. A surprise is an *event*: a new state scores high once, at the switch, and is
then learned; a dwell that runs too long is reported once per dwell, not every reading.

``OnWithoutFlow`` checks a status channel against the flow it commands ("pump on, no
flow", "pump off, flow"): it learns the flow's level in each status and flags readings
where the flow sits nearer the *other* status's level.

Both keep the ``Detector`` contract of ``citystream.detection.base``: plain-JSON state,
pure ``step`` that never mutates its input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from citystream.detection.base import EXPLAIN_AT, MIN_TAIL, State, Step, is_missing, tail_score, warming

_SQRT2 = math.sqrt(2.0)
_LN2 = math.log(2.0)
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
#: Dwell updates are clipped at this many log-sd once a state's dwells are known.
_CLIP = 3.0


def _upper(z: float) -> float:
    """One-sided score: P(Z < z) for a standard normal, i.e. how far into the upper tail z is."""
    return 0.5 * math.erfc(-z / _SQRT2)


def _cap(score: float) -> float:
    return min(max(score, 0.0), 1.0 - MIN_TAIL)


def _hours(ms: float) -> str:
    h = ms / _HOUR_MS
    if h >= 48.0:
        return f"{h / 24.0:.3g} d"
    return f"{h:.3g} h" if h >= 1.0 else f"{ms / 60_000:.3g} min"


def state_label(value: float, quantum: float = 1.0) -> str:
    """The name of a status value: the nearest multiple of ``quantum`` (0: the value to 1e-6).

    Why snap: the job judges window means, and a window in which the pump switched
    averages to 0.4; that is the state the window mostly had, not a new state.
    """
    v = round(value / quantum) * quantum if quantum > 0 else value
    v = round(v, 6)
    return f"{v:g}" if v != 0 else "0"


@dataclass(frozen=True)
class StatusModel:
    """Learned states, exit rates and dwell times of one status channel; scores rare changes.

    ``memory_ms`` is the half-life of the time and exit counts (a pump that starts
    running daily stops being news within days); ``dwell_memory`` bounds how many
    completed dwells the log-normal remembers. A dwell is judged only once a state
    has ``min_dwells`` completed dwells. ``min_log_sd`` keeps a perfectly regular
    dwell (always exactly 2 h) from making 2 h 5 min an anomaly. ``prior`` is the
    pseudo-count of exits (Laplace-style) that keeps a state never left from
    having an exit rate of zero. Rare changes are scored as the chance of seeing
    one within ``rate_window_ms`` - a fixed time, not a reading gap, so the verdict
    does not depend on the sampling. Values snap to multiples of ``quantum``
    (status codes are integers; a window mean of 0.4 is state 0). ``max_states``
    bounds the state: a channel with more distinct values is not a status channel
    and is reported as such. A silence longer than ``outage_gaps`` typical reading
    gaps is an outage, not a dwell.
    """

    memory_ms: float = 30.0 * _DAY_MS
    dwell_memory: int = 200
    min_dwells: int = 5
    min_log_sd: float = 0.15
    prior: float = 0.5
    warmup_ms: int = _DAY_MS
    max_states: int = 8
    outage_gaps: float = 24.0
    rate_window_ms: float = float(_HOUR_MS)
    quantum: float = 1.0
    name: str = "status-v1"

    def init(self) -> State:
        return {"s": None, "t0": None, "last": None, "since": None, "sg": None, "gap": 0.0,
                "obs": 0.0, "novel": 0.0, "f": 0, "st": {}, "tr": {}}  # fmt: skip

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["t0"] is not None and t_ms - state["t0"] >= self.warmup_ms

    def step(self, state: State, t_ms: int, value: float) -> Step:
        if is_missing(value):
            return state, 0.0, "missing value skipped"
        label = state_label(value, self.quantum)
        if state["s"] is None:
            new = {**state, "s": label, "t0": t_ms, "last": t_ms, "since": t_ms, "sg": None,
                   "st": {label: _fresh()}}  # fmt: skip
            return new, 0.0, warming(0, 1)
        last = state["last"]
        if t_ms <= last:
            return state, 0.0, "late reading ignored"
        dt = t_ms - last
        if state["gap"] > 0.0 and dt > self.outage_gaps * state["gap"]:
            return self._outage(state, t_ms, label)
        new = self._forget(state, dt)
        if label == state["s"]:
            return self._stay(new, t_ms)
        if label not in state["st"] and len(state["st"]) >= self.max_states:
            new["last"] = t_ms  # bounded state: the value is not learned, and not judged
            return new, 0.0, f"more than {self.max_states} distinct values: not a status channel"
        return self._switch(new, t_ms, label, dt)

    def _outage(self, state: State, t_ms: int, label: str) -> Step:
        """Readings resume after a gap: the time in between is unknown, so it is neither
        counted nor forgotten, and the current dwell restarts with an unseen start."""
        st, novel, score, why = state["st"], state["novel"], 0.0, ""
        if label not in st and len(st) < self.max_states:
            score, why = (
                _cap(1.0 - self._p_new(state)),
                f"status {label} never seen (readings resumed after a gap)",
            )
            st, novel = {**st, label: _fresh()}, novel + 1.0
        new = {**state, "s": label, "since": t_ms, "sg": None, "f": 0, "st": st, "last": t_ms, "novel": novel}
        if not self.ready(new, t_ms):
            return new, 0.0, ""
        return new, score, why if score >= EXPLAIN_AT else "readings resumed after a gap"

    # ------------------------------------------------------------------ learning

    def _forget(self, state: State, dt: int) -> State:
        """Time passes in the current state; old time and exits fade with the half-life."""
        k = math.exp(-_LN2 * dt / self.memory_ms)
        cur = state["s"]
        st = {}
        for lab, s in state["st"].items():
            t = s["t"] * k + (dt if lab == cur else 0.0)
            st[lab] = {**s, "t": t, "x": s["x"] * k}
        tr = {key: c * k for key, c in state["tr"].items()}
        gap = state["gap"]
        gap = float(dt) if gap <= 0.0 else gap + 0.1 * (dt - gap)
        return {**state, "st": st, "tr": tr, "gap": gap, "last": None, "obs": state["obs"] * k + dt,
                "novel": state["novel"] * k}  # fmt: skip

    def _learn_dwell(self, s: dict, dwell: float) -> dict:
        n = s["k"] + 1
        a = max(1.0 / n, 1.0 / self.dwell_memory)
        d = math.log(max(dwell, 1.0)) - s["m"]
        if s["k"] >= self.min_dwells:  # winsorised: one odd dwell must not redefine the usual
            lim = _CLIP * max(math.sqrt(s["v"]), self.min_log_sd)
            d = max(-lim, min(lim, d))
        return {
            **s,
            "k": min(n, self.dwell_memory),
            "m": s["m"] + a * d,
            "v": (1.0 - a) * (s["v"] + a * d * d),
        }

    # ------------------------------------------------------------------ scoring

    def _p_new(self, state: State) -> float:
        """Chance of a never-seen state within one rate window: new states per observed time."""
        ref = self.rate_window_ms
        return min(1.0, (state["novel"] + self.prior) * ref / (state["obs"] + ref))

    def _dwell_z(self, s: dict, dwell: float) -> float | None:
        """Standardised log dwell against the state's completed dwells; None until enough are seen."""
        if s["k"] < self.min_dwells:
            return None
        sd = max(math.sqrt(s["v"]), self.min_log_sd) * math.sqrt(1.0 + 1.0 / s["k"])
        return (math.log(max(dwell, 1.0)) - s["m"]) / sd

    def _typical(self, s: dict) -> str:
        return f"usually ~{_hours(math.exp(s['m']))}"

    def _stay(self, new: State, t_ms: int) -> Step:
        """Still in the same state: a dwell far longer than usual is reported once."""
        new["last"] = t_ms
        cur = new["s"]
        if new["f"] or not self.ready(new, t_ms):
            return new, 0.0, ""
        dwell = t_ms - new["since"]
        z = self._dwell_z(new["st"][cur], dwell)
        if z is None:
            return new, 0.0, ""
        score = _cap(_upper(z))
        if score < EXPLAIN_AT:
            return new, score, ""
        new["f"] = 1  # one event per dwell: later readings of this dwell are not news
        typical = self._typical(new["st"][cur])
        return new, score, f"status {cur} for {_hours(dwell)}, longer than usual ({typical})"

    def _switch(self, new: State, t_ms: int, label: str, dt: int) -> Step:
        """A change of state: scored against the model before it, then learned."""
        old = new["s"]
        dwell = t_ms - new["since"]
        ready = self.ready(new, t_ms)
        ref = self.rate_window_ms
        found: list[tuple[float, str]] = []
        so = new["st"][old]
        held = f"after {old} for {_hours(dwell)}"
        # leaving a state that is rarely left: its exits per unit time, over one rate window
        p_exit = min(1.0, (so["x"] + self.prior) * ref / max(so["t"], ref))
        seen = f"{so['x']:.2g} exits in {_hours(so['t'])}, recent time weighted"
        found.append((1.0 - p_exit, f"status {old} rarely left ({seen}), {held}"))
        news = ""
        if label not in new["st"]:
            news = f"status {label} never seen, {held}"
            found.append((1.0 - self._p_new(new), news))
        else:
            exits = sum(c for key, c in new["tr"].items() if key.startswith(f"{old}>"))
            kinds = len(new["st"])  # the other known states plus a possible new one
            p_kind = (new["tr"].get(f"{old}>{label}", 0.0) + self.prior) / (exits + self.prior * kinds)
            found.append((1.0 - min(1.0, p_kind), f"transition {old}->{label} rare ({p_kind:.1e} of exits)"))
        if new["sg"] is not None:  # the dwell's start was seen: judge its length (lenient by one gap)
            z = self._dwell_z(so, dwell + new["sg"])
            if z is not None:
                typical = self._typical(so)
                found.append((_upper(-z), f"status {old} lasted only {_hours(dwell)} ({typical})"))
        score, why = max(found)
        why = news or why  # whatever scored highest, a new state is the news
        new = self._enter(new, t_ms, label, dwell, dt)
        if not ready:
            return new, 0.0, warming(0, 1)
        score = _cap(score)
        return new, score, why if score >= EXPLAIN_AT else ""

    def _enter(self, new: State, t_ms: int, label: str, dwell: float, dt: int) -> State:
        old = new["s"]
        st = dict(new["st"])
        so = {**st[old], "x": st[old]["x"] + 1.0}
        if new["sg"] is not None:
            so = self._learn_dwell(so, dwell)
        st[old] = so
        novel = new["novel"]
        if label not in st:
            st[label] = _fresh()
            novel += 1.0
        key = f"{old}>{label}"
        tr = {**new["tr"], key: new["tr"].get(key, 0.0) + 1.0}
        return {**new, "s": label, "since": t_ms, "sg": float(dt), "f": 0, "st": st, "tr": tr,
                "novel": novel, "last": t_ms}  # fmt: skip


def _fresh() -> dict:
    """A state just seen: no time, no exits, no completed dwell."""
    return {"t": 0.0, "x": 0.0, "k": 0, "m": 0.0, "v": 0.0}


# --------------------------------------------------------------------------- status x flow


@dataclass(frozen=True)
class OnWithoutFlow:
    """ "Pump on, no flow" and "pump off, flow" for one (status channel, flow channel) pair.

    The flow's level and spread are learned per status (on: status > ``on_above``).
    A reading whose flow lies nearer the other status's level, in units of each
    level's spread, is a mismatch; its score is how incompatible the flow is with
    the level the status implies. Until "off" has been seen, its flow level is
    ``off_flow`` (a stopped pump or shut valve passes nothing). Spreads never go
    below ``floor_frac`` of the distance between the two levels, nor below
    ``min_flow`` (the smallest flow the meter reports as real, in its units): a
    flow that read exactly 0 all year must not make 0.01 an anomaly.
    Mismatches within ``grace_ms`` of a status change are not judged (flow lags
    the command). A mismatch is a condition, not an event: it scores for as long as
    it lasts (the alarm gate downstream sends one alarm), and is never learned as
    the status's normal flow.
    """

    status_name: str = "status"
    flow_name: str = "flow"
    on_above: float = 0.5
    off_flow: float = 0.0
    floor_frac: float = 0.05
    min_flow: float = 1.0
    min_readings: int = 10
    memory: int = 2000
    grace_ms: int = 0
    name: str = "on-without-flow-v1"

    def init(self) -> State:
        return {"on": [0, 0.0, 0.0], "off": [0, 0.0, 0.0], "s": None, "since": None, "last": None}

    def ready(self, state: State, t_ms: int = 0) -> bool:
        return state["on"][0] >= self.min_readings or state["off"][0] >= self.min_readings

    def level(self, state: State, which: str) -> tuple[float, float] | None:
        """(level, spread) of the flow in status ``which``; None when not known."""
        n, m, dev = state[which]
        if n < self.min_readings:
            return (self.off_flow, 0.0) if which == "off" else None
        return m, dev * math.sqrt(math.pi / 2.0)

    def step(self, state: State, t_ms: int, status: float, flow: float) -> Step:
        if is_missing(status) or is_missing(flow):
            return state, 0.0, "missing value skipped"
        if state["last"] is not None and t_ms <= state["last"]:
            return state, 0.0, "late reading ignored"
        which = "on" if status > self.on_above else "off"
        other = "off" if which == "on" else "on"
        since = t_ms if state["s"] != which else state["since"]
        score, why = 0.0, ""
        mine, theirs = self.level(state, which), self.level(state, other)
        if mine is not None and theirs is not None and t_ms - since >= self.grace_ms:
            score, why = self._judge(which, mine, theirs, flow)
        new = {**state, "s": which, "since": since, "last": t_ms}
        if score < EXPLAIN_AT:
            new[which] = self._learn(state[which], flow, mine)
            why = ""
        return new, _cap(score), why

    def _judge(
        self, which: str, mine: tuple[float, float], theirs: tuple[float, float], flow: float
    ) -> tuple[float, str]:
        """Does the flow sit at the other status's level? Score: how far it is from its own."""
        sep = abs(mine[0] - theirs[0])
        floor = max(self.floor_frac * sep, self.min_flow)
        z_mine = abs(flow - mine[0]) / max(mine[1], floor)
        z_theirs = abs(flow - theirs[0]) / max(theirs[1], floor)
        if z_theirs >= z_mine:
            return 0.0, ""
        what, at = ("no flow", "off") if which == "on" else ("flow", "on")
        why = (
            f"{self.status_name} {which}, {what}: {self.flow_name} {flow:.4g} is at its {at} level "
            f"~{theirs[0]:.3g}, expected ~{mine[0]:.3g} when {which}"
        )
        return tail_score(z_mine), why

    def _learn(self, lv: list, flow: float, mine: tuple[float, float] | None) -> list:
        n, m, dev = lv
        if n == 0:
            return [1, flow, 0.0]
        a = max(1.0 / (n + 1), 1.0 / self.memory)
        d = flow - m
        if n >= self.min_readings and mine is not None:  # winsorised: a transient does not move the level
            lim = 4.0 * max(mine[1], self.min_flow)
            d = max(-lim, min(lim, d))
        return [min(n + 1, self.memory), m + a * d, dev + a * (abs(d) - dev)]
