"""The group stage's state, typed, with the versioned JSON form the Flink job checkpoints.

Why dataclasses and a version: the state of one alert group (a zone, a DMA,
the grid) lives for months in Flink ValueState and in savepoints, and is
carried from one code version to the next. Named fields say what each value
means where the engine uses it, and the ``"v"`` field lets a later version
read an older checkpoint - or refuse, loudly, one it does not understand
instead of running on a misread state.

The learned relations' own states (``RelationDrift``, ``LinearDrift``,
``LoopSpeedCheck``, ``NeighbourDrift``) stay the plain-JSON dicts their
detectors define and test; ``GroupState.relations`` holds them by
``"{sensor or place}|{relation}"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: The JSON form's version; ``GroupState.from_json`` refuses any other.
STATE_VERSION = 1


@dataclass
class SensorState:
    """One sensor's health as the group last decided it."""

    status: str
    since: int  #: window end the status took effect
    seen: int  #: last window end the sensor reported in (for "silent")


@dataclass
class Incident:
    """An open alert: the anomalies of one (family, place) grown into one incident."""

    id: str
    family: str
    kind: str
    keys: list[str]
    first_seen: int
    last_seen: int
    severity: str
    count: int
    quiet: int  #: consecutive windows without evidence (resolved at ``quiet_windows``)
    explanation: str


@dataclass(frozen=True)
class ClosedIncident:
    """A resolved alert, kept for the cooldown so a relapse re-opens the same incident."""

    id: str
    closed_at: int
    first_seen: int
    count: int


def _identity(n: int) -> list[list[float]]:
    return [[1e2 if i == j else 0.0 for j in range(n)] for i in range(n)]


@dataclass
class TankBalance:
    """The recursive least squares fit of a DMA's tank: dlevel = a * pump + b * inlet + c."""

    prev_level: float | None = None  #: last window's level (the balance needs two in a row)
    prev_flows: list[float] | None = None  #: last window's [pump, inlet] flows
    at: int | None = None  #: window end of the last complete window
    theta: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    cov: list[list[float]] = field(default_factory=lambda: _identity(3))
    count: int = 0  #: windows fitted
    spread: float = 0.0  #: mean absolute residual (the scale of the z-score)


@dataclass
class GroupState:
    """Everything one alert group remembers between windows."""

    sensors: dict[str, SensorState] = field(default_factory=dict)
    open: dict[str, Incident] = field(default_factory=dict)
    closed: dict[str, ClosedIncident] = field(default_factory=dict)
    relations: dict[str, dict[str, Any]] = field(default_factory=dict)
    balance: TankBalance = field(default_factory=TankBalance)
    flow_ref: float | None = None  #: first inlet flow seen (scales the head-loss fit)
    window_end: int | None = None  #: last window judged (later verdicts for it are ignored)

    def copy(self) -> GroupState:
        """A copy ``GroupEngine.step`` may change without touching the caller's state.

        Why not a deep copy: the learned relations' states are replaced, never
        changed in place, so the dicts holding them are all that needs copying.
        """
        return GroupState(
            sensors={k: replace(v) for k, v in self.sensors.items()},
            open={k: replace(v, keys=list(v.keys)) for k, v in self.open.items()},
            closed=dict(self.closed),
            relations=dict(self.relations),
            balance=replace(self.balance),
            flow_ref=self.flow_ref,
            window_end=self.window_end,
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (what the Flink job stores), with the format's version."""
        return {
            "v": STATE_VERSION,
            "sensors": {k: asdict(v) for k, v in self.sensors.items()},
            "open": {k: asdict(v) for k, v in self.open.items()},
            "closed": {k: asdict(v) for k, v in self.closed.items()},
            "relations": self.relations,
            "balance": asdict(self.balance),
            "flow_ref": self.flow_ref,
            "window_end": self.window_end,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GroupState:
        """The state ``to_json`` wrote; an unknown version is an error, never a guess."""
        version = data.get("v")
        if version != STATE_VERSION:
            raise ValueError(
                f"group state has format version {version!r}, this code reads version {STATE_VERSION}: "
                "restore from a checkpoint written by a matching citystream, or start the job without one"
            )
        return cls(
            sensors={k: SensorState(**v) for k, v in data["sensors"].items()},
            open={k: Incident(**v) for k, v in data["open"].items()},
            closed={k: ClosedIncident(**v) for k, v in data["closed"].items()},
            relations=dict(data["relations"]),
            balance=TankBalance(**data["balance"]),
            flow_ref=data["flow_ref"],
            window_end=data["window_end"],
        )
