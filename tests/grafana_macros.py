"""Test-only stand-in for what Grafana and the ClickHouse plugin do to a panel's rawSql before running it.

No Grafana server can be installed on these machines, so the tests reproduce
the three rewriting steps and then run the result on the real ClickHouse
engine:

1. ``$__conditionalAll(cond, $var)`` (the plugin's frontend, first): ``cond``,
   or ``1=1`` when the variable is "All"; arguments are split on the top-level
   comma, as the plugin does.
2. Template variables (Grafana): ``$var``, ``${var}``, ``${var:singlequote}``,
   ``${var:sqlstring}``.
3. The backend macros, exactly as the table in ../shared/grafana/README.md
   expands them.

Anything else that looks like a macro or a variable is an error here, because
in Grafana it would reach ClickHouse unexpanded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: Value of a variable: a list of selected values, or ALL.
ALL = None


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_s: int = 60

    @property
    def from_s(self) -> int:
        return int(self.start.timestamp())

    @property
    def to_s(self) -> int:
        return int(self.end.timestamp())

    @property
    def from_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def to_ms(self) -> int:
        return int(self.end.timestamp() * 1000)


class ExpansionError(ValueError):
    pass


def expand(sql: str, rng: TimeRange, variables: Mapping[str, Sequence[str] | None]) -> str:
    """``sql`` as ClickHouse would receive it from Grafana for this time range and these selections."""
    sql = _conditional_all(sql, variables)
    sql = _variables(sql, variables)
    return _macros(sql, rng)


# --------------------------------------------------------------------------- step 1


_CONDITIONAL_ALL = "$__conditionalAll("
_VAR_NAME = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def _conditional_all(sql: str, variables: Mapping[str, Sequence[str] | None]) -> str:
    while (start := sql.rfind(_CONDITIONAL_ALL)) != -1:
        args, end = _args(sql, start + len(_CONDITIONAL_ALL) - 1)
        if len(args) != 2:
            raise ExpansionError(f"$__conditionalAll takes 2 arguments, got {len(args)}: {sql[start:end]}")
        match = _VAR_NAME.search(args[1].strip())
        if not match:
            raise ExpansionError(f"$__conditionalAll's second argument is not a variable: {args[1]!r}")
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise ExpansionError(f"unknown variable ${name}")
        phrase = "1=1" if variables[name] is ALL else args[0]
        sql = sql[:start] + phrase + sql[end:]
    return sql


def _args(text: str, open_paren: int) -> tuple[list[str], int]:
    """Top-level comma-separated arguments of the call whose '(' is at ``open_paren``; and the end index."""
    depth = 0
    args = []
    last = open_paren + 1
    quote = None
    for i in range(open_paren, len(text)):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[last:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(text[last:i])
            last = i + 1
    raise ExpansionError(f"unbalanced parentheses after {text[open_paren - 20 : open_paren + 20]!r}")


# --------------------------------------------------------------------------- step 2


_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<bare>(?!__)\w+)")


def _variables(sql: str, variables: Mapping[str, Sequence[str] | None]) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        fmt = match.group("fmt")
        if name not in variables:
            raise ExpansionError(f"unknown variable ${name}")
        values = variables[name]
        if values is ALL:
            raise ExpansionError(f"${name} used outside $__conditionalAll would expand to every value")
        if fmt in ("singlequote", "sqlstring"):
            escape = (lambda v: v.replace("'", "''")) if fmt == "sqlstring" else (lambda v: v.replace("'", "\\'"))
            return ",".join(f"'{escape(v)}'" for v in values)
        if fmt is None:
            # The plugin's own format: a multi-value list is quoted, a single value is not.
            return ",".join(f"'{v}'" for v in values) if len(values) != 1 else values[0]
        raise ExpansionError(f"variable format {fmt!r} is not one the dashboards use")

    return _VARIABLE.sub(sub, sql)


# --------------------------------------------------------------------------- step 3


#: Macros without arguments, longest name first so that ``$__fromTime_ms`` wins over ``$__fromTime``.
def _bare(rng: TimeRange) -> dict[str, str]:
    return {
        "$__fromTime_ms": f"fromUnixTimestamp64Milli({rng.from_ms})",
        "$__toTime_ms": f"fromUnixTimestamp64Milli({rng.to_ms})",
        "$__fromTime": f"toDateTime({rng.from_s})",
        "$__toTime": f"toDateTime({rng.to_s})",
        "$__interval_s": str(max(1, rng.interval_s)),
    }


def _with_args(name: str, args: list[str], rng: TimeRange) -> str:
    a = [x.strip() for x in args]
    n = max(1, rng.interval_s)
    date_from = rng.start.astimezone(UTC).strftime("%Y-%m-%d")
    date_to = rng.end.astimezone(UTC).strftime("%Y-%m-%d")
    f, t = rng.from_s, rng.to_s
    table = {
        "timeFilter": (1, lambda: f"{a[0]} >= toDateTime({f}) AND {a[0]} <= toDateTime({t})"),
        "timeFilter_ms": (
            1,
            lambda: f"{a[0]} >= fromUnixTimestamp64Milli({rng.from_ms}) "
            f"AND {a[0]} <= fromUnixTimestamp64Milli({rng.to_ms})",
        ),
        "timeFrom": (1, lambda: f"{a[0]} >= toDateTime({f})"),
        "timeTo": (1, lambda: f"{a[0]} <= toDateTime({t})"),
        "dateFilter": (1, lambda: f"{a[0]} >= toDate('{date_from}') AND {a[0]} <= toDate('{date_to}')"),
        "dateTimeFilter": (
            2,
            lambda: f"({a[0]} >= toDate('{date_from}') AND {a[0]} <= toDate('{date_to}')) "
            f"AND ({a[1]} >= toDateTime({f}) AND {a[1]} <= toDateTime({t}))",
        ),
        "timeInterval": (1, lambda: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {n} second)"),
        "timeInterval_ms": (
            1,
            lambda: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {n * 1000} millisecond)",
        ),
        "timeGroup": (2, lambda: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {_seconds(a[1])} second)"),
    }
    if name not in table:
        raise ExpansionError(f"macro $__{name}(...) is not in the plugin's table")
    arity, render = table[name]
    if len(a) != arity:
        raise ExpansionError(f"$__{name} takes {arity} argument(s), got {len(a)}")
    return render()


def _seconds(text: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", text)
    if not match:
        raise ExpansionError(f"interval {text!r} not understood")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


_MACRO_CALL = re.compile(r"\$__(\w+)\(")


def _macros(sql: str, rng: TimeRange) -> str:
    while match := _MACRO_CALL.search(sql):
        args, end = _args(sql, match.end() - 1)
        sql = sql[: match.start()] + _with_args(match.group(1), args, rng) + sql[end:]
    for name, value in _bare(rng).items():
        sql = re.sub(re.escape(name) + r"(?!\w)", value, sql)
    if leftover := re.search(r"\$\w+", sql):
        raise ExpansionError(f"{leftover.group(0)} would reach ClickHouse unexpanded")
    return sql
