"""Registering the sensors a test produces, so the domain jobs (which join the sensor registry) accept them.

Why a helper and not the registry package's CLI: tests that build their own readings
need the registry entries on their own topic prefix, at fixed epochs, with the default
ranges the jobs enforced before the registry (``citystream.registry.channels``); the
records are written exactly as on the live topic: key = sensor_id, raw Avro value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from citystream import contracts
from citystream.connectors.producer import ReadingProducer
from citystream.registry.channels import all_channels
from citystream.settings import Settings

SENSOR = "citystream.Sensor"


def sensor_record(
    sensor_id: str,
    domain: str,
    *,
    installed_at: int,
    retired_at: int | None = None,
    valid_from: int | None = None,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    site_id: str = "site",
    zone_id: str = "zone",
) -> dict[str, Any]:
    """A ``citystream.Sensor`` record with every channel of ``domain`` at its default range.

    ``ranges`` overrides (min, max) of named channels; ``retired_at`` makes it a retirement.
    """
    channels = []
    for c in all_channels(domain):
        lo, hi = (ranges or {}).get(c.name, (c.min, c.max))
        channels.append({"name": c.name, "unit": c.unit, "type": c.type, "min": lo, "max": hi})
    return {
        "sensor_id": sensor_id,
        "domain": domain,
        "kind": "test",
        "channels": channels,
        "site_id": site_id,
        "zone_id": zone_id,
        "installed_at": installed_at,
        "retired_at": retired_at,
        "status": "retired" if retired_at is not None else "active",
        "valid_from": valid_from if valid_from is not None else (retired_at or installed_at),
    }


def create_sensors_topic(settings: Settings, admin_config: Mapping[str, Any] | None = None) -> str:
    """The compacted one-partition sensors topic under ``settings``' prefix (as infra/topics.toml says)."""
    topic = settings.topic("sensors")
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, **(admin_config or {})})
    if topic not in admin.list_topics(timeout=10).topics:
        new = NewTopic(topic, 1, 1, config={"cleanup.policy": "compact", "retention.ms": "-1"})
        for f in admin.create_topics([new]).values():
            f.result()
    return topic


def publish(
    settings: Settings, records: Iterable[Mapping[str, Any]], security: Mapping[str, Any] | None = None
) -> int:
    """Write registry records (key sensor_id, raw Avro) to the sensors topic; returns how many.

    ``security``: librdkafka settings of a secured broker (admin and producer alike).
    """
    topic = create_sensors_topic(settings, security)
    n = 0
    with ReadingProducer(settings.kafka_bootstrap, security=security) as p:
        for r in records:
            p.send_encoded(topic, r["sensor_id"].encode(), contracts.encode(SENSOR, r))
            n += 1
    return n


def registry_messages(sensors: Mapping[str, str], installed_at: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of each ``sensor_id -> domain`` entry, for a test that produces with its own producer."""
    records = [sensor_record(s, d, installed_at=installed_at) for s, d in sorted(sensors.items())]
    return [(r["sensor_id"].encode(), contracts.encode(SENSOR, r)) for r in records]


def register(
    settings: Settings,
    sensors: Mapping[str, str],
    installed_at: int,
    security: Mapping[str, Any] | None = None,
) -> int:
    """Register every ``sensor_id -> domain`` with default channels, in service from ``installed_at``."""
    records = [sensor_record(s, d, installed_at=installed_at) for s, d in sorted(sensors.items())]
    return publish(settings, records, security)
