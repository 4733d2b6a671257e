"""Registry files (CSV, GeoJSON) into validated entries: every row checked, all or nothing.

Why all or nothing: a registry file is usually a department's whole inventory. Importing
the good rows of a file with one typo would leave the registry half old, half new, and the
operator with no way to tell which; so every row is validated first and one bad row
rejects the file, naming each bad row (line number, or feature number) and why.

CSV columns (header row; ``areas`` and ``tags`` are ``;``-separated; empty lat/lon =
not surveyed; ``status`` defaults to active; ``retired_at`` is optional)::

    sensor_id,domain,kind,site_id,site_name,zone_id,zone_name,areas,lat,lon,installed_at,status,owner,tags

GeoJSON: a FeatureCollection of Point features (coordinates ``[lon, lat]``) whose
properties carry the same names (``areas``/``tags`` as arrays or ``;``-text).
Channels come from the kind's defaults (:mod:`citystream.registry.channels`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citystream.errors import UserError
from citystream.registry.channels import default_channels
from citystream.registry.model import ACTIVE, Sensor

COLUMNS: tuple[str, ...] = (
    "sensor_id",
    "domain",
    "kind",
    "site_id",
    "site_name",
    "zone_id",
    "zone_name",
    "areas",
    "lat",
    "lon",
    "installed_at",
    "status",
    "owner",
    "tags",
)
REQUIRED: tuple[str, ...] = ("sensor_id", "domain", "kind", "site_id", "zone_id", "installed_at")
OPTIONAL: tuple[str, ...] = ("retired_at",)
#: Most bad rows quoted in the error (the count is always exact).
_QUOTE_ROWS = 50


class RejectedFile(UserError):
    """A registry file with bad rows: nothing of it was imported; ``rows`` has every (where, why)."""

    def __init__(self, path: Path | str, rows: list[tuple[str, str]]) -> None:
        self.rows = rows
        quoted = "\n".join(f"  {where}: {why}" for where, why in rows[:_QUOTE_ROWS])
        more = f"\n  ... and {len(rows) - _QUOTE_ROWS} more" if len(rows) > _QUOTE_ROWS else ""
        noun = "row" if len(rows) == 1 else "rows"
        super().__init__(f"{path}: {len(rows)} bad {noun}, nothing imported:\n{quoted}{more}")


def parse_time(text: str | int, what: str = "time") -> int:
    """UTC epoch milliseconds of ISO 8601 text (no zone = UTC) or of an integer of milliseconds."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    t = str(text).strip()
    if t.lstrip("-").isdigit():
        return int(t)
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 time like 2026-01-05T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value)
    return tuple(p.strip() for p in str(value).split(";") if p.strip())


def _coordinate(value: Any, what: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None


def sensor_from_fields(fields: Mapping[str, Any]) -> Sensor:
    """One entry from a row's named values (CSV text or JSON values); ValueError or UserError why not."""
    missing = [c for c in REQUIRED if fields.get(c) in (None, "")]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    domain, kind = str(fields["domain"]).strip(), str(fields["kind"]).strip()
    retired = fields.get("retired_at")
    installed = parse_time(fields["installed_at"], "installed_at")
    return Sensor(
        sensor_id=str(fields["sensor_id"]).strip(),
        domain=domain,
        kind=kind,
        channels=default_channels(domain, kind),
        site_id=str(fields["site_id"]).strip(),
        site_name=str(fields.get("site_name") or "").strip(),
        zone_id=str(fields["zone_id"]).strip(),
        zone_name=str(fields.get("zone_name") or "").strip(),
        areas=_list(fields.get("areas")),
        lat=_coordinate(fields.get("lat"), "lat"),
        lon=_coordinate(fields.get("lon"), "lon"),
        installed_at=installed,
        retired_at=None if retired in (None, "") else parse_time(retired, "retired_at"),
        status=str(fields.get("status") or ACTIVE).strip().lower(),
        owner=str(fields.get("owner") or "").strip(),
        tags=_list(fields.get("tags")),
    )


def _collect(rows: list[tuple[str, Mapping[str, Any]]], path: Path | str) -> list[Sensor]:
    """Validate every row; the entries if all are good, else RejectedFile naming each bad one."""
    bad: list[tuple[str, str]] = []
    out: list[Sensor] = []
    seen: dict[str, str] = {}
    for where, fields in rows:
        try:
            sensor = sensor_from_fields(fields)
        except UserError as exc:  # InvalidSensor: "sensor X: a; b"
            bad.append((where, str(exc)))
            continue
        except ValueError as exc:
            sid = str(fields.get("sensor_id") or "").strip() or "(no id)"
            bad.append((where, f"sensor {sid}: {exc}"))
            continue
        if sensor.sensor_id in seen:
            bad.append((where, f"sensor {sensor.sensor_id}: given again (first at {seen[sensor.sensor_id]})"))
            continue
        seen[sensor.sensor_id] = where
        out.append(sensor)
    if bad:
        raise RejectedFile(path, bad)
    return out


def parse_csv(text: str, path: Path | str = "<csv>") -> list[Sensor]:
    """The entries of a registry CSV (see the module doc); :class:`RejectedFile` if any row is bad."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise UserError(f"{path}: empty file; expected a header row: {','.join(COLUMNS)}")
    unknown = [h for h in header if h not in COLUMNS + OPTIONAL]
    missing = [c for c in REQUIRED if c not in header]
    if unknown or missing:
        raise UserError(
            f"{path}: header "
            + (f"has unknown columns {', '.join(unknown)}" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"lacks {', '.join(missing)}" if missing else "")
            + f" (columns: {','.join(COLUMNS)}; optional: {','.join(OPTIONAL)})"
        )
    reader.fieldnames = header
    rows: list[tuple[str, Mapping[str, Any]]] = []
    for row in reader:
        where = f"line {reader.line_num}"
        if None in row:
            rows.append((where, {"__bad__": f"{len(row[None])} more values than columns"}))
            continue
        if not any((v or "").strip() for v in row.values()):
            continue  # blank line
        rows.append((where, row))
    extra = [(w, r["__bad__"]) for w, r in rows if "__bad__" in r]
    if extra:
        raise RejectedFile(path, extra)
    return _collect(rows, path)


def parse_geojson(text: str, path: Path | str = "<geojson>") -> list[Sensor]:
    """The entries of a GeoJSON FeatureCollection of Points; :class:`RejectedFile` if any feature is bad."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if (
        not isinstance(doc, dict)
        or doc.get("type") != "FeatureCollection"
        or not isinstance(doc.get("features"), list)
    ):
        raise UserError(f"{path}: expected a GeoJSON FeatureCollection with a 'features' list")
    rows: list[tuple[str, Mapping[str, Any]]] = []
    shape: list[tuple[str, str]] = []
    for i, feature in enumerate(doc["features"]):
        where = f"feature {i + 1} (features[{i}])"
        try:
            rows.append((where, _feature_fields(feature)))
        except ValueError as exc:
            sid = feature.get("properties", {}).get("sensor_id") if isinstance(feature, dict) else None
            shape.append((where, f"sensor {sid or '(no id)'}: {exc}"))
    if shape:
        try:
            _collect(rows, path)
        except RejectedFile as exc:
            shape += exc.rows
        raise RejectedFile(path, sorted(shape, key=lambda r: _feature_no(r[0])))
    return _collect(rows, path)


def _feature_no(where: str) -> int:
    return int(where.split()[1])


def _feature_fields(feature: Any) -> dict[str, Any]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        raise ValueError("not a GeoJSON Feature")
    props = feature.get("properties")
    if not isinstance(props, dict):
        raise ValueError("no properties object")
    fields = dict(props)
    geometry = feature.get("geometry")
    if geometry is None:
        return fields
    coords = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if not isinstance(geometry, dict) or geometry.get("type") != "Point":
        raise ValueError("geometry is not a Point")
    if not isinstance(coords, list) or len(coords) < 2:
        raise ValueError("Point coordinates must be [lon, lat]")
    fields["lon"], fields["lat"] = coords[0], coords[1]
    return fields


def read_file(path: Path) -> list[Sensor]:
    """Entries of a ``.csv`` or ``.geojson``/``.json`` file, validated all or nothing."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return parse_csv(text, path)
    if suffix in (".geojson", ".json"):
        return parse_geojson(text, path)
    raise UserError(f"{path}: unknown file type {suffix or '(none)'}; use .csv or .geojson")
