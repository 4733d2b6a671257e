"""Which result topic lands in which table: the one routing table of the loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from citystream import contracts
from citystream.connectors.loader.tombstones import Tombstone
from citystream.settings import Settings

#: Result topic (suffix in infra/topics.toml) -> (Avro record, table). The one routing table.
ROUTES: dict[str, tuple[str, str]] = {
    "aggregates": ("citystream.WindowAggregate", "window_aggregates"),
    "anomalies": ("citystream.Anomaly", "anomalies"),
    "alerts": ("citystream.Alert", "alerts"),
    "sensor-health": ("citystream.SensorHealth", "sensor_health"),
    "late-events": ("citystream.LateEvent", "late_events"),
    "dead-letter": ("citystream.DeadLetter", "dead_letters"),
    "labels": ("citystream.Label", "labels"),
    "sensors": ("citystream.Sensor", "sensors"),
}
DEAD_LETTER = "dead-letter"
#: Topics whose tombstones delete the key's row (migration 0007's is_deleted); others' are skipped.
TOMBSTONES: dict[str, Tombstone] = {
    "sensors": Tombstone("citystream.Sensor", "sensor_id", {"status": "deleted"}),
}


@dataclass(frozen=True)
class Route:
    """Which topic lands in which table, decoded with which Avro record."""

    topic: str
    record: str
    table: str
    columns: tuple[str, ...]
    timestamp_columns: tuple[str, ...] = ()
    #: How a null value becomes a deletion row; None: tombstones are counted and skipped.
    tombstone: Tombstone | None = None


def routes(settings: Settings, topic_suffix: str = "") -> list[Route]:
    """The result topics the loader moves, by settings' topic prefix; columns from the Avro schemas.

    ``topic_suffix`` (a replay's ``.replay.<run id>``) names a replay's result topics instead.
    """
    out = []
    for suffix, (record, table) in ROUTES.items():
        fields = contracts.schema(record)["fields"]
        out.append(
            Route(
                topic=settings.topic(suffix) + topic_suffix,
                record=record,
                table=table,
                columns=tuple(f["name"] for f in fields),
                timestamp_columns=tuple(f["name"] for f in fields if _is_timestamp(f["type"])),
                tombstone=TOMBSTONES.get(suffix),
            )
        )
    return out


def _is_timestamp(node: Any) -> bool:
    if isinstance(node, list):
        return any(_is_timestamp(b) for b in node)
    return isinstance(node, dict) and node.get("logicalType") == "timestamp-millis"
