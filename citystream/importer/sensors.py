"""An import's registry entries: one ``citystream.Sensor`` per imported series.

Why: the domain jobs dead-letter readings of sensors the registry does not know, so an
import registers its sensors before its first reading. Each is installed at its first
reading's event time (after ``--shift-to``), the earliest time the jobs join it at; its
channels are its kind's defaults plus every field the data maps (ranges as the jobs check).
"""

from __future__ import annotations

from citystream.importer.dataset import REQUIRED_DEFAULTS, WATER_TYPE, Dataset, Series
from citystream.registry.channels import KINDS, channels_for_fields
from citystream.registry.model import Sensor

#: The kind an imported series of each domain registers as (water: from its fields).
_KIND = {"traffic": "loop_detector", "grid": "feeder_meter"}


def series_kind(s: Series) -> str:
    """The registry kind of an imported series, as the readings' ``sensor_type`` says for water."""
    if s.domain == "water":
        return next((t for f, t in WATER_TYPE if f in s.values), "flow")
    return _KIND[s.domain]


def dataset_sensors(ds: Dataset, shift_ms: int = 0) -> list[Sensor]:
    """The registry entries of every series with readings (see the module doc)."""
    out = []
    for s in ds.series:
        if not s.times.size:
            continue
        kind = series_kind(s)
        fields = {*KINDS[s.domain][kind], *s.values, *REQUIRED_DEFAULTS[s.domain]}
        out.append(
            Sensor(
                sensor_id=s.sensor_id,
                domain=s.domain,
                kind=kind,
                channels=channels_for_fields(s.domain, fields),
                site_id=s.site_id,
                zone_id=s.zone_id,
                installed_at=int(s.times.min()) + shift_ms,
                owner=f"imported from {ds.source}",
                tags=("imported", f"source={ds.source}"),
            )
        )
    return out
