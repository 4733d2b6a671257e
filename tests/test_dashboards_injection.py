"""A hostile variable value cannot turn a dashboard query into other SQL.

Grafana substitutes ``$zone``, ``$sensor`` and ``$domain`` into the SQL text
before the ClickHouse plugin sends it, and a value can come from a crafted
dashboard URL or from the data itself (a sensor id on Kafka). Each value below
goes through the same formatting Grafana applies (``grafana_format``, from its
format registry) into every query of every dashboard, and ClickHouse's own
parser (``formatQuerySingleLine``, which refuses multi-statements) must find
the same single SELECT as with a harmless value, whose decoded literal is the
hostile value itself.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping, Sequence

import chdb
import pytest

from tests.test_dashboards import ALL_QUERIES, MODELS, RANGES, Query, expand, grafana_format, variables_of

pytestmark = pytest.mark.security

HOSTILE = [
    "\\'",
    "\\\\'",
    "\\",
    "' OR 1=1 --",
    "'; DROP TABLE x",
    "$x$",
    "$$) OR 1=1 --",
    "line\nbreak' --",
    "\u2019 OR \u20181\u2019=\u20181",
    "}, {",
    "%27%5C",
]
#: What the dashboards put where a variable's values go (dashboards/factories.py `selected`).
_SELECTED = re.compile(
    r"splitByChar\(',', replaceRegexpOne\(decodeURLComponent\('([A-Za-z0-9._~%-]*)'\), "
    r"'\(\?s\)\^\[\{\]\(\.\*\)\[\}\]\$', '\\\\1'\)\)"
)
USES_VARIABLES = [q for q in ALL_QUERIES if re.search(r"\$\{?(zone|sensor|domain)\b", q.sql)]


#: The real engine in this process: its parser and functions, no data.
ENGINE = chdb.connect(":memory:")


@functools.cache
def parsed(sql: str) -> str:
    """The statement as ClickHouse's parser reads it: one line, or an error for anything but one statement."""
    # Parameter values arrive TSV-escaped: a backslash, newline or tab must reach the parser as itself.
    escaped = sql.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    result = ENGINE.query("SELECT formatQuerySingleLine({q:String})", "RawBLOB", params={"q": escaped})
    return result.bytes().decode()


@functools.cache
def evaluate(expr: str) -> object:
    return json.loads(ENGINE.query(f"SELECT {expr} AS v", "JSONEachRow").bytes())["v"]


def _expanded(query: Query, values: Sequence[str]) -> str:
    chosen: Mapping[str, Sequence[str]] = {
        name: list(values) for name in variables_of(MODELS[query.dashboard])
    }
    return expand(query.sql, RANGES["6h minutes"], chosen)


def test_grafana_singlequote_lets_a_backslash_end_the_literal() -> None:
    """Why the dashboards stopped using it: what Grafana makes of two values is a different query."""
    backslash = "\\"
    escaped = grafana_format("singlequote", [backslash, ") OR 1=1 --"])
    assert "OR (1 = 1)" in parsed(f"SELECT 1 FROM t WHERE zone_id IN ({escaped})")  # the value became SQL
    escaped = grafana_format("singlequote", [backslash, "); DROP TABLE x --"])
    with pytest.raises(RuntimeError, match=r"(?i)multi-statements"):
        parsed(f"SELECT 1 FROM t WHERE zone_id IN ({escaped})")


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_stay_one_literal_in_every_query(value: str) -> None:
    assert USES_VARIABLES, "no query uses the zone, sensor or domain variable"
    for query in USES_VARIABLES:
        benign = _expanded(query, ["plain", "other"])
        hostile = _expanded(query, [value, "other"])
        try:
            statement = parsed(hostile)
        except RuntimeError as exc:
            pytest.fail(f"{query}: {value!r} made it more than one statement or none: {exc}\n{hostile}")
        assert statement.startswith(("SELECT", "WITH")), f"{query}: {statement[:80]}"
        # The same statement as with harmless values, but for the encoded literal.
        normalized = {_SELECTED.sub("SEL", parsed(sql).replace("\\'", "'")) for sql in (benign, hostile)}
        assert len(normalized) == 1, f"{query}: {value!r} changed the statement"
        found = list(_SELECTED.finditer(hostile))
        assert found, f"{query}: the variable's values are not in the expected form"
        # Grafana joins a selection with commas before encoding: a comma in a value splits it
        # (a wrong filter, never other SQL); every other value arrives exactly as it is.
        expected = ",".join([value, "other"]).split(",")
        for expr in found:
            assert evaluate(expr.group(0)) == expected, f"{query}: {expr.group(1)}"
