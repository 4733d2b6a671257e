"""``citystream sensors``: the city-wide sensor registry (add, retire, remove, list, show, import).

Why: departments that each keep their own device lists are the silos a city platform
exists to end. The registry says what every sensor is - where it stands, what it
measures, in which units and physical ranges, since when, and whether it is in service -
and the domain jobs dead-letter readings of sensors it does not know, of retired ones,
and values outside a channel's range. The source of truth is the compacted
PREFIX.sensors topic; the store and the dashboards are loaded from it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citystream import settings
from citystream.catalog import DOMAIN_NAMES
from citystream.errors import UserError

if TYPE_CHECKING:
    from citystream.registry import Sensor
    from citystream.settings import Settings

_STATUSES = ("active", "maintenance", "retired")

_ADD = """\
Register one sensor (or, with --replace, a new version of a registered one).
Its channels - the reading fields it reports, with units and physical ranges - come
from its kind (see `citystream sensors kinds`); --range overrides one channel's range.
Readings measured before --installed-at are not the sensor's: for historic or
simulated data, pass the time its first reading was measured."""

_IMPORT = """\
Register every sensor of a CSV or GeoJSON file, all or nothing: every row is
validated first, and a file with one bad row is refused with each bad row's line
(or feature) number and reason, and nothing is imported (exit code 2).

CSV header: sensor_id,domain,kind,site_id,site_name,zone_id,zone_name,areas,lat,lon,
installed_at,status,owner,tags (areas and tags ';'-separated; optional retired_at).
GeoJSON: a FeatureCollection of Points ([lon, lat]) with the same property names."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _time(text: str | None, flag: str) -> int | None:
    from citystream.registry.imports import parse_time

    if text is None:
        return None
    if text.strip().lower() == "now":
        return _now_ms()
    try:
        return parse_time(text, flag)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _settings(args: argparse.Namespace) -> Settings:
    try:
        current = settings.load()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return current.replace(kafka_bootstrap=args.bootstrap) if args.bootstrap else current


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``citystream sensors add|retire|remove|list|show|import|kinds``."""
    p = sub.add_parser(
        "sensors",
        help="the sensor registry: what each sensor is, where, what it measures, since when",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = p.add_subparsers(dest="sensors_command", metavar="ACTION", required=True)

    def command(name: str, help_: str, description: str | None = None) -> argparse.ArgumentParser:
        q = cmds.add_parser(
            name,
            help=help_,
            description=description or help_,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        q.add_argument(
            "--bootstrap", default=None, help="Kafka HOST:PORT (default: CITYSTREAM_KAFKA_BOOTSTRAP)"
        )
        return q

    _add_parser(command("add", "register a sensor (channels from its kind)", _ADD))
    r = command("retire", "take a sensor out of service (its later readings are dead-lettered)")
    r.add_argument("sensor_id")
    r.add_argument("--at", default="now", help="when it left service, ISO 8601 or 'now' (default now)")
    r.set_defaults(handler=_cmd_retire)
    rm = command(
        "remove",
        "delete an entry registered by mistake (a tombstone; retire a sensor that really served)",
    )
    rm.add_argument("sensor_id")
    rm.set_defaults(handler=_cmd_remove)
    ls = command("list", "list the registered sensors as a table")
    ls.add_argument("--domain", choices=DOMAIN_NAMES, help="only this department")
    ls.add_argument("--status", choices=_STATUSES, help="only sensors in this state")
    ls.add_argument("--json", action="store_true", help="print the entries as a JSON array")
    ls.set_defaults(handler=_cmd_list)
    sh = command("show", "everything registered about one sensor, its channels included")
    sh.add_argument("sensor_id")
    sh.add_argument("--json", action="store_true", help="print the entry as JSON")
    sh.set_defaults(handler=_cmd_show)
    im = command("import", "register the sensors of a CSV or GeoJSON file (all or nothing)", _IMPORT)
    im.add_argument("file", type=Path)
    im.add_argument("--dry-run", action="store_true", help="validate every row, register nothing")
    im.set_defaults(handler=_cmd_import)
    k = cmds.add_parser("kinds", help="the kinds of sensor per department and the channels each reports")
    k.set_defaults(handler=_cmd_kinds)


def _add_parser(q: argparse.ArgumentParser) -> None:
    q.add_argument("sensor_id", help="city-wide id, as in the readings' envelope (no whitespace)")
    q.add_argument("--domain", required=True, choices=DOMAIN_NAMES)
    q.add_argument("--kind", required=True, help="e.g. loop_detector, pressure, pump, feeder_meter")
    q.add_argument("--site", required=True, help="site id (intersection, pumping station, substation)")
    q.add_argument("--site-name", default="", help="human name of the site, for dashboards")
    q.add_argument("--zone", required=True, help="zone id (road corridor, DMA, feeder area)")
    q.add_argument("--zone-name", default="", help="human name of the zone")
    q.add_argument("--area", action="append", default=[], help="parent area of the zone, innermost first")
    q.add_argument("--lat", type=float, default=None, help="latitude, WGS84 degrees")
    q.add_argument("--lon", type=float, default=None, help="longitude, WGS84 degrees")
    q.add_argument("--installed-at", default="now", help="when it entered service, ISO 8601 (default now)")
    q.add_argument("--status", choices=("active", "maintenance"), default="active")
    q.add_argument("--owner", default="", help="department or team responsible for the device")
    q.add_argument("--tag", action="append", default=[], help="free tag, e.g. vendor=acme (repeatable)")
    q.add_argument(
        "--range",
        action="append",
        default=[],
        metavar="CHANNEL=MIN:MAX",
        help="override a channel's physical range; an empty side is unbounded, e.g. pressure_bar=0:16",
    )
    q.add_argument("--replace", action="store_true", help="write a new version of a registered sensor")
    q.add_argument(
        "--valid-from", default=None, help="with --replace: when the new version holds (default now)"
    )
    q.set_defaults(handler=_cmd_add)


def _ranges(domain: str, kind: str, items: list[str]) -> tuple[Any, ...]:
    """The kind's default channels with ``--range`` overrides applied."""
    from dataclasses import replace

    from citystream.registry import default_channels

    try:
        channels = {c.name: c for c in default_channels(domain, kind)}
    except ValueError as exc:
        raise UserError(f"--kind: {exc}") from None
    for item in items:
        name, sep, bounds = item.partition("=")
        lo, colon, hi = bounds.partition(":")
        if not sep or not colon or name not in channels:
            raise UserError(
                f"--range {item!r}: use CHANNEL=MIN:MAX with a channel of this kind ({', '.join(channels)})"
            )
        try:
            values = [None if not v.strip() else float(v) for v in (lo, hi)]
        except ValueError:
            raise UserError(f"--range {item!r}: MIN and MAX must be numbers (or empty)") from None
        channels[name] = replace(channels[name], min=values[0], max=values[1])
    return tuple(channels.values())


def _cmd_add(args: argparse.Namespace) -> int:
    from citystream.registry import Sensor
    from citystream.registry import kafka as registry

    current = _settings(args)
    installed = _time(args.installed_at, "--installed-at")
    have = registry.current(current).get(args.sensor_id)
    if have is not None and not args.replace:
        raise UserError(
            f"sensor {args.sensor_id} is already registered ({have.status}, since "
            f"{_iso(have.installed_at)}); pass --replace to write a new version"
        )
    if args.valid_from and not args.replace:
        raise UserError("--valid-from goes with --replace (a new sensor holds from --installed-at)")
    valid_from = _time(args.valid_from or "now", "--valid-from") if have else installed
    sensor = Sensor(
        sensor_id=args.sensor_id,
        domain=args.domain,
        kind=args.kind,
        channels=_ranges(args.domain, args.kind, args.range),
        site_id=args.site,
        site_name=args.site_name,
        zone_id=args.zone,
        zone_name=args.zone_name,
        areas=tuple(args.area),
        lat=args.lat,
        lon=args.lon,
        installed_at=installed,  # type: ignore[arg-type]
        status=args.status,
        owner=args.owner,
        tags=tuple(args.tag),
        valid_from=valid_from,  # type: ignore[arg-type]
    )
    registry.publish(current, [sensor])
    verb = "replaced" if have else "registered"
    print(f"{verb} {sensor.sensor_id} ({sensor.domain} {sensor.kind}, {len(sensor.channels)} channels)")
    return 0


def _existing(current: Settings, sensor_id: str) -> Sensor:
    from citystream.registry import kafka as registry

    have = registry.current(current).get(sensor_id)
    if have is None:
        raise UserError(f"sensor {sensor_id} is not registered (see `citystream sensors list`)")
    return have


def _cmd_retire(args: argparse.Namespace) -> int:
    from citystream.registry import kafka as registry

    current = _settings(args)
    have = _existing(current, args.sensor_id)
    if have.status == "retired":
        raise UserError(f"sensor {args.sensor_id} was already retired at {_iso(have.retired_at)}")
    at = _time(args.at, "--at")
    if at is not None and at < have.installed_at:
        raise UserError(
            f"--at {_iso(at)} is before sensor {args.sensor_id} was installed ({_iso(have.installed_at)})"
        )
    registry.publish(current, [have.retire(at)])  # type: ignore[arg-type]
    print(f"retired {args.sensor_id} at {_iso(at)}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from citystream.registry import kafka as registry

    current = _settings(args)
    _existing(current, args.sensor_id)
    registry.remove(current, args.sensor_id)
    print(f"removed {args.sensor_id} from the registry")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from citystream.registry import kafka as registry

    entries = sorted(registry.current(_settings(args)).values(), key=lambda s: s.sensor_id)
    entries = [
        s
        for s in entries
        if (args.domain is None or s.domain == args.domain)
        and (args.status is None or s.status == args.status)
    ]
    if args.json:
        print(json.dumps([s.to_record() for s in entries], indent=1))
        return 0
    print(format_table(entries))
    return 0


def format_table(entries: list[Sensor]) -> str:
    """The ``list`` table: one line per sensor, columns sized to their contents."""
    head = ("sensor_id", "domain", "kind", "site", "zone", "status", "lat", "lon")
    rows = [
        (
            s.sensor_id,
            s.domain,
            s.kind,
            s.site_id,
            s.zone_id,
            s.status,
            "-" if s.lat is None else f"{s.lat:.6f}",
            "-" if s.lon is None else f"{s.lon:.6f}",
        )
        for s in entries
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    noun = "sensor" if len(rows) == 1 else "sensors"
    return "\n".join([*lines, f"({len(rows)} {noun})"])


def _cmd_show(args: argparse.Namespace) -> int:
    s = _existing(_settings(args), args.sensor_id)
    if args.json:
        print(json.dumps(s.to_record(), indent=1))
        return 0
    record = s.to_record()
    for name in ("installed_at", "retired_at", "valid_from"):
        record[name] = _iso(record[name]) if record[name] is not None else "-"
    for name in ("areas", "tags"):
        record[name] = ", ".join(record[name]) or "-"
    channels = record.pop("channels")
    for name, value in record.items():
        print(f"{name:12} {'-' if value in (None, '') else value}")
    print("channels:")
    for c in channels:
        lo = "-inf" if c["min"] is None else f"{c['min']:g}"
        hi = "inf" if c["max"] is None else f"{c['max']:g}"
        print(f"  {c['name']:24} {c['type']:10} [{lo}, {hi}] {c['unit']}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from citystream.registry import kafka as registry
    from citystream.registry.imports import read_file

    entries = read_file(args.file)
    if args.dry_run:
        print(f"{args.file}: {len(entries)} sensors valid (dry run: nothing registered)")
        return 0
    n = registry.publish(_settings(args), entries)
    print(f"{args.file}: {n} sensors registered")
    return 0


def _cmd_kinds(args: argparse.Namespace) -> int:
    from citystream.registry import KINDS, default_channels

    for domain, kinds in KINDS.items():
        for kind in kinds:
            channels = ", ".join(
                f"{c.name} [{c.min:g}, {c.max:g}] {c.unit}" for c in default_channels(domain, kind)
            )
            print(f"{domain:8} {kind:14} {channels}")
    return 0


def _iso(ms: int | None) -> str:
    from datetime import UTC, datetime

    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
