"""A request's URL parameters, read so that any bytes in a ``param_<name>`` value reach the engine.

Why: ClickHouse reads query parameter values as escaped text of *bytes*; a
client may send bytes that are not UTF-8 (a ``String`` holding binary data,
percent-encoded in the URL). Decoding them as UTF-8 with replacement would
silently change the value. Here such bytes become ``\\xHH`` escapes, which
the engine reads back as the same bytes; other parameters (settings, names)
are decoded with replacement, as they are never data.

A byte that is not UTF-8 right after an escaping backslash is read by the
engine as part of that escape on a server; here it becomes ``\\xHH`` after
the backslash. No client sends that (clickhouse-connect escapes bytes itself).

Also here, the same rule for statement text: :func:`engine_bytes` (a query
whose literals hold bytes that are not UTF-8 goes to the engine as bytes) and
:func:`escape_param` (any text as a ``{q:String}`` parameter value).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

#: Surrogate escapes (bytes that were not UTF-8) as ``\xHH`` escapes.
_HEX_ESCAPES = {0xDC80 + b: f"\\x{0x80 + b:02x}" for b in range(128)}


def query_params(query: str) -> dict[str, str]:
    """The URL query string as a dict (last value wins, like ``dict(parse_qsl(...))``)."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
        key = _replaced(name)
        out[key] = value.translate(_HEX_ESCAPES) if key.startswith("param_") else _replaced(value)
    return out


def _replaced(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def engine_bytes(text: str) -> str | bytes:
    """``text`` as the engine takes it: invalid UTF-8 travels as surrogate escapes, and bytes.

    Why: a literal may hold any bytes (``$x$...$x$`` binary parameters, as
    clickhouse-connect sends them); the request text is decoded with
    ``surrogateescape`` so those bytes reach the engine unchanged.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape")
    return text


def escape_param(text: str) -> str:
    """Escape text for a ``{q:String}`` parameter (parameters are read with TSV escaping)."""
    return (
        text.replace("\\", "\\\\")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
        .replace("\r", "\\r")
        .replace("\0", "\\0")
        .replace("\b", "\\b")
        .replace("\f", "\\f")
        .translate(_HEX_ESCAPES)
    )
