"""One registry entry, ``citystream.Sensor``, as frozen dataclasses that refuse to be invalid.

Why validate on construction: an entry is read by the jobs (which dead-letter readings
against it), the store and the dashboards; a sensor with a channel the readings do not
have, a range upside down or a retirement before its installation would silently turn
good readings into dead letters. So a :class:`Sensor` that exists is a valid one, and
the error lists every problem at once, in words an operator can act on.

Field order and names mirror ``avro/citystream.Sensor.avsc`` exactly, so ``to_record``
is the Avro record and ``tests/test_registry.py`` checks the two never drift apart.
Timestamps are UTC milliseconds since the epoch, as on the wire.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from citystream import catalog, contracts
from citystream.errors import UserError

#: The Avro record of a registry entry.
SCHEMA = "citystream.Sensor"
ACTIVE, MAINTENANCE, RETIRED = "active", "maintenance", "retired"
STATUSES: tuple[str, ...] = (ACTIVE, MAINTENANCE, RETIRED)
#: Latest plausible timestamp (year 9999): beyond it a value is seconds or microseconds mistaken for ms.
_MAX_MS = 253_402_300_799_999


class InvalidSensor(UserError):
    """A registry entry that must not be published; ``problems`` lists every reason."""

    def __init__(self, sensor_id: str, problems: list[str]) -> None:
        self.sensor_id = sensor_id
        self.problems = problems
        super().__init__(f"sensor {sensor_id or '(no id)'}: {'; '.join(problems)}")


_NUMERIC = frozenset({"int", "long", "float", "double", "boolean"})


@functools.cache
def reading_fields(domain: str) -> tuple[str, ...]:
    """The fields of ``domain``'s reading record in avro/ a channel may name: numbers and booleans.

    Text fields (a traffic lane's direction, a water sensor's type, a grid phase) have no
    physical range, and the envelope is identity, not a measurement.
    """
    record = contracts.schema(catalog.domain(domain).record)
    out = []
    for f in record["fields"]:
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        if all(b == "null" or (isinstance(b, str) and b in _NUMERIC) for b in branches):
            out.append(f["name"])
    return tuple(out)


def _id_problem(what: str, value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return f"{what} is empty"
    if any(c.isspace() for c in value):
        return f"{what} {value!r} contains whitespace"
    return None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SensorChannel:
    """One reading field a sensor reports: unit, channel type and the physically possible range."""

    name: str
    unit: str
    type: str
    min: float | None = None
    max: float | None = None

    def problems(self, domain: str) -> list[str]:
        """Why this channel cannot belong to a ``domain`` sensor (empty when it can)."""
        out = []
        if domain in catalog.DOMAIN_NAMES and self.name not in reading_fields(domain):
            out.append(
                f"channel {self.name!r} is not a field of {catalog.domain(domain).record} "
                f"(fields: {', '.join(reading_fields(domain))})"
            )
        if self.type not in catalog.CHANNEL_TYPES:
            out.append(
                f"channel {self.name!r} has type {self.type!r}; "
                f"expected one of {', '.join(catalog.CHANNEL_TYPES)}"
            )
        if not isinstance(self.unit, str):
            out.append(f"channel {self.name!r} has no unit text")
        for bound in ("min", "max"):
            value = getattr(self, bound)
            if value is not None and not _number(value):
                out.append(f"channel {self.name!r} {bound} {value!r} is not a finite number")
        if _number(self.min) and _number(self.max) and self.min > self.max:  # type: ignore[operator]
            out.append(f"channel {self.name!r} min {self.min:g} is above max {self.max:g}")
        return out

    def to_record(self) -> dict[str, Any]:
        """The ``citystream.SensorChannel`` Avro record."""
        lo, hi = self.min, self.max
        return {
            "name": self.name,
            "unit": self.unit,
            "type": self.type,
            "min": None if lo is None else float(lo),
            "max": None if hi is None else float(hi),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SensorChannel:
        return cls(record["name"], record["unit"], record["type"], record.get("min"), record.get("max"))


@dataclass(frozen=True, kw_only=True)
class Sensor:
    """One version of a registry entry (see ``avro/citystream.Sensor.avsc`` for every field's meaning).

    ``valid_from`` defaults to when the version starts to hold: ``retired_at`` for a
    retired sensor, ``installed_at`` otherwise; a changed entry passes the change's time.
    Lists (channels, areas, tags) are stored as tuples so entries compare and hash.
    """

    sensor_id: str
    domain: str
    kind: str
    channels: tuple[SensorChannel, ...]
    site_id: str
    site_name: str = ""
    zone_id: str
    zone_name: str = ""
    areas: tuple[str, ...] = ()
    lat: float | None = None
    lon: float | None = None
    installed_at: int
    retired_at: int | None = None
    status: str = ACTIVE
    owner: str = ""
    tags: tuple[str, ...] = ()
    valid_from: int = field(default=-1)

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("channels", tuple(self.channels))
        set_("areas", tuple(self.areas))
        set_("tags", tuple(self.tags))
        if self.valid_from == -1:
            set_("valid_from", self.retired_at if self.retired_at is not None else self.installed_at)
        problems = self.problems()
        if problems:
            raise InvalidSensor(self.sensor_id if isinstance(self.sensor_id, str) else "", problems)

    # -- validation ----------------------------------------------------------------------

    def problems(self) -> list[str]:
        """Every reason this entry is invalid, in field order (empty when valid)."""
        out = [
            p
            for p in (
                _id_problem("sensor_id", self.sensor_id),
                _id_problem("kind", self.kind),
                _id_problem("site_id", self.site_id),
                _id_problem("zone_id", self.zone_id),
            )
            if p
        ]
        if self.domain not in catalog.DOMAIN_NAMES:
            out.append(f"domain {self.domain!r} is not one of {', '.join(catalog.DOMAIN_NAMES)}")
        out += self._channel_problems()
        out += self._place_problems()
        out += self._time_problems()
        for what, values in (("areas", self.areas), ("tags", self.tags)):
            for v in values:
                if not isinstance(v, str) or not v.strip() or ";" in v:
                    out.append(f"{what} entry {v!r} must be non-empty text without ';'")
        return out

    def _channel_problems(self) -> list[str]:
        out = []
        names = [c.name for c in self.channels if isinstance(c, SensorChannel)]
        if len(names) != len(self.channels):
            return ["channels must be SensorChannel entries"]
        if not names:
            out.append("no channels: a sensor reports at least one reading field")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            out.append(f"channels listed twice: {', '.join(dupes)}")
        for channel in self.channels:
            out += channel.problems(self.domain)
        return out

    def _place_problems(self) -> list[str]:
        out = []
        if (self.lat is None) != (self.lon is None):
            out.append("lat and lon go together: give both or neither")
        if self.lat is not None and not (_number(self.lat) and -90 <= self.lat <= 90):
            out.append(f"lat {self.lat!r} is not a latitude in [-90, 90]")
        if self.lon is not None and not (_number(self.lon) and -180 <= self.lon <= 180):
            out.append(f"lon {self.lon!r} is not a longitude in [-180, 180]")
        return out

    def _time_problems(self) -> list[str]:
        out = []
        for what in ("installed_at", "retired_at", "valid_from"):
            value = getattr(self, what)
            if value is None and what == "retired_at":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_MS:
                out.append(f"{what} {value!r} is not a time in UTC milliseconds since 1970")
        if out:
            return out
        if self.status not in STATUSES:
            out.append(f"status {self.status!r} is not one of {', '.join(STATUSES)}")
        elif (self.status == RETIRED) != (self.retired_at is not None):
            out.append(
                "a retired sensor needs retired_at"
                if self.status == RETIRED
                else f"retired_at is set but status is {self.status!r} (it goes with status 'retired')"
            )
        if self.retired_at is not None and self.retired_at < self.installed_at:
            out.append(f"retired_at {self.retired_at} is before installed_at {self.installed_at}")
        return out

    # -- the wire ------------------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """The ``citystream.Sensor`` Avro record (lists as lists, timestamps in ms)."""
        return {
            "sensor_id": self.sensor_id,
            "domain": self.domain,
            "kind": self.kind,
            "channels": [c.to_record() for c in self.channels],
            "site_id": self.site_id,
            "site_name": self.site_name,
            "zone_id": self.zone_id,
            "zone_name": self.zone_name,
            "areas": list(self.areas),
            "lat": None if self.lat is None else float(self.lat),
            "lon": None if self.lon is None else float(self.lon),
            "installed_at": self.installed_at,
            "retired_at": self.retired_at,
            "status": self.status,
            "owner": self.owner,
            "tags": list(self.tags),
            "valid_from": self.valid_from,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Sensor:
        """The entry of a decoded Avro record; :class:`InvalidSensor` if it does not validate."""
        values = dict(record)
        values["channels"] = tuple(SensorChannel.from_record(c) for c in record.get("channels", ()))
        return cls(**values)

    def encode(self) -> bytes:
        """Raw Avro bytes, as on the sensors topic."""
        return contracts.encode(SCHEMA, self.to_record())

    @classmethod
    def decode(cls, data: bytes) -> Sensor:
        return cls.from_record(contracts.decode(SCHEMA, data))

    # -- versions ------------------------------------------------------------------------

    def retire(self, at_ms: int) -> Sensor:
        """The next version: out of service from ``at_ms`` (valid from then on)."""
        return replace(self, status=RETIRED, retired_at=at_ms, valid_from=at_ms)

    def channel(self, name: str) -> SensorChannel | None:
        return next((c for c in self.channels if c.name == name), None)


def sensors_by_id(sensors: Iterable[Sensor]) -> dict[str, Sensor]:
    """``{sensor_id: sensor}``, refusing an id given twice (one call says one thing per sensor)."""
    out: dict[str, Sensor] = {}
    for s in sensors:
        if s.sensor_id in out:
            raise UserError(f"sensor {s.sensor_id} is given twice")
        out[s.sensor_id] = s
    return out
