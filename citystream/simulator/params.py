"""Values people type for a run: durations, times, speeds and domain lists.

Why a module of its own: ``citystream simulate`` and ``citystream import`` accept
the same ``--duration``/``--start``/``--speed`` spellings and must refuse bad
ones with the same one-line message; both command modules (and any script)
call these instead of keeping two parsers that drift apart.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from citystream.catalog import DOMAIN_NAMES
from citystream.errors import UserError

#: Default simulated start (a Monday, so the week's profile starts at its beginning).
DEFAULT_START = "2026-01-05T00:00:00Z"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int:
    """Milliseconds in ``10m``, ``1h30m``, ``90s``, ``2d`` or a plain number of seconds."""
    s = text.strip().lower()
    try:
        seconds = float(s)
    except ValueError:
        pass
    else:
        if seconds <= 0:
            raise UserError(f"--duration must be positive, got {text!r}")
        return int(seconds * 1000)
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos and s[pos : m.start()].strip():
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise UserError(f"--duration {text!r} is not a duration like 10m, 1h30m, 90s or 2d")
    if total <= 0:
        raise UserError(f"--duration must be positive, got {text!r}")
    return int(total)


def parse_time(text: str, flag: str = "--start") -> int:
    """UTC epoch milliseconds of an ISO 8601 time (no zone means UTC)."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UserError(f"{flag} {text!r} is not an ISO 8601 time like 2026-01-05T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def parse_speed(text: str) -> float | None:
    """None for ``max``, 1.0 for ``realtime``, else a positive factor."""
    t = text.strip().lower()
    if t == "max":
        return None
    if t in ("realtime", "real-time", "1x"):
        return 1.0
    try:
        factor = float(t.removesuffix("x"))
    except ValueError:
        raise UserError(f"--speed {text!r}: use realtime, max or a factor like 10") from None
    if factor <= 0:
        raise UserError(f"--speed must be positive, got {text!r}")
    return factor


def parse_domains(text: str) -> tuple[str, ...]:
    """The catalog's domains named in a comma-separated list, in the catalog's order."""
    names = [d.strip().lower() for d in text.split(",") if d.strip()]
    unknown = [d for d in names if d not in DOMAIN_NAMES]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r}: choose from {', '.join(DOMAIN_NAMES)}")
    if not names:
        raise UserError(f"--domains is empty: choose from {', '.join(DOMAIN_NAMES)}")
    return tuple(d for d in DOMAIN_NAMES if d in names)


def iso(ms: int) -> str:
    """Epoch milliseconds as the UTC second they fall in, for summaries."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
