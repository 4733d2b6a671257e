"""One statement against the store, printed: what ``citystream query`` does.

Output formats: ``table`` (aligned columns, the default), ``csv`` (with a
header) and ``json`` (one JSON object per line). A statement with its own
``FORMAT`` clause is printed exactly as the server returns it. A statement
without a result (DDL, INSERT ... VALUES) prints ``Ok.``. Errors are one line:
``citystream: query failed: Code: 62. DB::Exception: Syntax error ...``.
"""

from __future__ import annotations

import json
import re
import sys
from typing import TextIO

from clickhouse_connect.driver.exceptions import ClickHouseError

from citystream.chserver.sqltext import RESULT_KINDS, analyze
from citystream.errors import UserError
from citystream.settings import Settings
from citystream.store.client import connect, error_message

_NULL = "NULL"
_NUMERIC = re.compile(r"^(Nullable\()?(U?Int\d+|Float\d+|Decimal|BFloat16)")


def render_table(
    columns: list[str], rows: list[tuple], numeric: list[bool] | None = None, max_width: int = 60
) -> str:
    """Aligned text columns (``numeric`` ones right-aligned), values cut at ``max_width`` characters."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    numeric = numeric or [False] * len(columns)
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: object, max_width: int) -> str:
    if value is None:
        text = _NULL
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


def run_query(
    settings: Settings, sql: str, fmt: str = "table", readonly: bool = False, out: TextIO | None = None
) -> int:
    """Run ``sql`` against the configured store and write the result to ``out`` (stdout)."""
    out = out or sys.stdout
    sql = sql.strip().rstrip(";").strip()
    if not sql:
        raise UserError("query: empty SQL")
    stmt = analyze(sql)
    client = connect(settings, readonly=readonly)
    try:
        if stmt.format is None and stmt.kind not in RESULT_KINDS:
            client.command(sql)
            out.write("Ok.\n")
            return 0
        # The output format goes in the X-ClickHouse-Format header (the server's default
        # format), not appended to the SQL, so error positions refer to what the user typed.
        wire_format = {"csv": "CSVWithNames", "json": "JSONEachRow"}.get(fmt, "JSONCompact")
        body = client.raw_query(sql, transport_settings={"X-ClickHouse-Format": wire_format})
    except ClickHouseError as exc:
        raise UserError(f"query failed: {error_message(exc)}") from None
    finally:
        client.close()
    if stmt.format is not None or fmt != "table":
        out.write(body.decode("utf-8", errors="replace"))
        return 0
    result = json.loads(body) if body.strip() else {"meta": [], "data": []}
    columns = [m["name"] for m in result["meta"]]
    numeric = [_NUMERIC.match(m["type"]) is not None for m in result["meta"]]
    out.write(render_table(columns, [tuple(r) for r in result["data"]], numeric) + "\n")
    return 0
