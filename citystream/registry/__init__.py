"""The sensor registry: what each sensor is, where it stands, what it measures, since when.

Why one registry for every department: traffic, water and grid already share sensor, site
and zone ids, but nothing said which sensors exist, in which ranges their channels may
move, or whether they are in service. The source of truth is the compacted ``sensors``
topic (``citystream.Sensor`` records keyed by sensor id); the jobs join readings against
it, the loader copies it into the store, and ``citystream sensors`` edits it.

Modules: ``model`` (the record as frozen dataclasses, with validation), ``channels``
(each kind's default channels, units and physical ranges), ``imports`` (CSV and GeoJSON
files, all or nothing) and ``kafka`` (publish, tombstone, read the current entries; the
only module that needs a Kafka client, so importing the package stays cheap for the jobs).
"""

from __future__ import annotations

from citystream.registry.channels import KINDS, default_channels
from citystream.registry.model import (
    ACTIVE,
    MAINTENANCE,
    RETIRED,
    SCHEMA,
    STATUSES,
    InvalidSensor,
    Sensor,
    SensorChannel,
    reading_fields,
)

__all__ = [
    "ACTIVE",
    "KINDS",
    "MAINTENANCE",
    "RETIRED",
    "SCHEMA",
    "STATUSES",
    "InvalidSensor",
    "Sensor",
    "SensorChannel",
    "default_channels",
    "reading_fields",
]
