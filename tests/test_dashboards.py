"""Dashboards as code: schema-valid, committed as generated, and every query runs on the real engine.

No Grafana server can be installed on these machines, so nothing here talks to
a real Grafana. What can be checked offline is checked for real:

* the dashboard model against the JSON schema grafana-foundation-sdk publishes
  (../shared/grafana/dashboard.jsonschema.json);
* the committed dashboards/json/ against what the code generates;
* every panel, variable and annotation query: expanded the way Grafana and the
  ClickHouse plugin would (the expander below, written from the macro table in
  ../shared/grafana/README.md, exists only for these tests) and then executed
  on the real ClickHouse engine with the project's migrations applied;
* the provisioning YAML against the plugin's documented jsonData keys;
* what ``dashboards push`` sends, recorded by a small local HTTP endpoint that
  stands in for Grafana's HTTP API only to capture the requests (it says
  nothing about whether a real Grafana accepts them).
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import pytest

from citystream.dashboards import build, push
from citystream.dashboards.boards import UIDS
from citystream.dashboards.factories import DATASOURCE_TYPE, DATASOURCE_UID
from citystream.errors import UserError
from citystream.proc import free_port
from citystream.settings import ROOT, Settings
from tests.conftest import stack_settings

SHARED_GRAFANA = ROOT.parent / "shared" / "grafana"
PROVISIONING = ROOT / "infra" / "grafana" / "provisioning"

#: jsonData keys the plugin's backend reads (../shared/grafana/README.md, "Provisioning").
PLUGIN_JSONDATA_KEYS = frozenset(
    {
        "host",
        "port",
        "protocol",
        "path",
        "httpHeaders",
        "secure",
        "username",
        "defaultDatabase",
        "dialTimeout",
        "queryTimeout",
    }
)
#: Macros in the README's table; anything else would reach ClickHouse unexpanded.
KNOWN_MACROS = frozenset(
    {
        "timeFilter",
        "timeFilter_ms",
        "fromTime",
        "toTime",
        "fromTime_ms",
        "toTime_ms",
        "timeFrom",
        "timeTo",
        "dateFilter",
        "dateTimeFilter",
        "timeInterval",
        "timeInterval_ms",
        "timeGroup",
        "interval_s",
        "conditionalAll",
    }
)


# =========================================================================== the queries of a dashboard


@dataclass(frozen=True)
class Query:
    dashboard: str
    where: str  # "panel 7 'Voltage per meter'", "variable zone", "annotation Alerts"
    sql: str
    time_series: bool = False  # the plugin's format 0: Grafana needs the rows' times ascending

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.where}"


def queries(model: Mapping[str, Any]) -> Iterator[Query]:
    uid = model["uid"]
    for panel in model.get("panels", []):
        for target in panel.get("targets", []):
            where = f"panel {panel['id']} {panel.get('title', '')!r}"
            yield Query(uid, where, target["rawSql"], time_series=target.get("format") == 0)
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            yield Query(uid, f"variable {variable['name']}", variable["query"])
    for annotation in model["annotations"]["list"]:
        if "target" in annotation:
            yield Query(uid, f"annotation {annotation['name']}", annotation["target"]["rawSql"])


def variables_of(model: Mapping[str, Any]) -> list[str]:
    return [v["name"] for v in model["templating"]["list"]]


MODELS = build.generate()
ALL_QUERIES = [query for model in MODELS.values() for query in queries(model)]


# =========================================================================== Grafana + plugin, test-only

ALL = None  # a variable set to "All"


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_s: int

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


class ExpansionError(AssertionError):
    pass


def expand(sql: str, rng: TimeRange, variables: Mapping[str, Sequence[str] | None]) -> str:
    """``sql`` as ClickHouse receives it from Grafana, in the order they rewrite it.

    1. ``$__conditionalAll(cond, $var)`` (the plugin's frontend, before anything
       else): ``cond``, or ``1=1`` when ``$var`` is "All"; arguments split on the
       top-level comma by counting parentheses, as the plugin does.
    2. Template variables (Grafana): ``${v:singlequote}``, ``${v:sqlstring}``,
       ``$v`` / ``${v}`` (the plugin's format: a list quoted, one value bare).
    3. The backend macros, exactly as the README's table expands them.
    """
    sql = _conditional_all(sql, variables)
    sql = _variables(sql, variables)
    return _macros(sql, rng)


def _call_args(text: str, open_paren: int) -> tuple[list[str], int]:
    """Arguments of the call whose '(' is at ``open_paren`` and the index after its ')'."""
    depth, last, args = 0, open_paren + 1, []
    for i in range(open_paren, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(text[last:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(text[last:i])
            last = i + 1
    raise ExpansionError(f"unbalanced parentheses after {text[open_paren : open_paren + 40]!r}")


def _conditional_all(sql: str, variables: Mapping[str, Sequence[str] | None]) -> str:
    macro = "$__conditionalAll("
    while (start := sql.rfind(macro)) != -1:
        args, end = _call_args(sql, start + len(macro) - 1)
        if len(args) != 2:
            raise ExpansionError(f"$__conditionalAll needs 2 arguments, got {len(args)}: {sql[start:end]!r}")
        found = re.search(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+", args[1].strip())
        if not found or found.group(0) not in variables:
            raise ExpansionError(
                f"$__conditionalAll's variable {args[1].strip()!r} is not a dashboard variable"
            )
        phrase = "1=1" if variables[found.group(0)] is ALL else args[0]
        sql = sql[:start] + phrase + sql[end:]
    return sql


_VARIABLE = re.compile(r"\$\{(?P<braced>\w+)(?::(?P<fmt>\w+))?\}|\$(?P<bare>(?!__)\w+)")


def _variables(sql: str, variables: Mapping[str, Sequence[str] | None]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        fmt = match.group("fmt")
        if name not in variables:
            raise ExpansionError(f"${name} is not a variable of this dashboard")
        values = variables[name]
        if values is ALL:
            raise ExpansionError(f"${name} outside $__conditionalAll: 'All' would send every value")
        if fmt is None:
            return values[0] if len(values) == 1 else ",".join(f"'{v}'" for v in values)
        if fmt not in GRAFANA_FORMATS:
            raise ExpansionError(f"variable format {fmt!r} is not one the dashboards should use")
        return grafana_format(fmt, values)

    return _VARIABLE.sub(replace, sql)


#: Grafana's variable formats the expander knows, written from Grafana's format registry.
GRAFANA_FORMATS = ("singlequote", "sqlstring", "csv", "raw", "percentencode")


def grafana_format(fmt: str, values: Sequence[str]) -> str:
    """``${v:fmt}`` of a multi-value variable (Grafana passes the selection as an array).

    singlequote escapes ``'`` as ``\\'`` only; sqlstring doubles ``'``; csv and
    raw join with commas, escaping nothing; percentencode is
    ``encodeURIComponentStrict('{' + values.join(',') + '}')`` (everything but
    ``[A-Za-z0-9._~-]`` as UTF-8 ``%XX``).
    """
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt in ("csv", "raw"):
        return ",".join(values)
    if fmt == "percentencode":
        return quote("{" + ",".join(values) + "}", safe="")
    raise ValueError(f"not a Grafana format the tests know: {fmt}")


def _macros(sql: str, rng: TimeRange) -> str:
    n = max(1, rng.interval_s)
    f, t = rng.from_s, rng.to_s
    day_from, day_to = (
        rng.start.astimezone(UTC).date().isoformat(),
        rng.end.astimezone(UTC).date().isoformat(),
    )

    def with_args(name: str, a: list[str]) -> str:
        expansions = {
            "timeFilter": (1, lambda: f"{a[0]} >= toDateTime({f}) AND {a[0]} <= toDateTime({t})"),
            "timeFilter_ms": (
                1,
                lambda: (
                    f"{a[0]} >= fromUnixTimestamp64Milli({rng.from_ms}) "
                    f"AND {a[0]} <= fromUnixTimestamp64Milli({rng.to_ms})"
                ),
            ),
            "timeFrom": (1, lambda: f"{a[0]} >= toDateTime({f})"),
            "timeTo": (1, lambda: f"{a[0]} <= toDateTime({t})"),
            "dateFilter": (1, lambda: f"{a[0]} >= toDate('{day_from}') AND {a[0]} <= toDate('{day_to}')"),
            "dateTimeFilter": (
                2,
                lambda: (
                    f"({a[0]} >= toDate('{day_from}') AND {a[0]} <= toDate('{day_to}')) "
                    f"AND ({a[1]} >= toDateTime({f}) AND {a[1]} <= toDateTime({t}))"
                ),
            ),
            "timeInterval": (1, lambda: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {n} second)"),
            "timeInterval_ms": (
                1,
                lambda: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {n * 1000} millisecond)",
            ),
            "timeGroup": (
                2,
                lambda: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {_seconds(a[1])} second)",
            ),
        }
        if name not in expansions:
            raise ExpansionError(f"$__{name}(...) is not a macro of the plugin")
        arity, render = expansions[name]
        if len(a) != arity:
            raise ExpansionError(f"$__{name} takes {arity} argument(s), got {len(a)}")
        return render()

    while call := re.search(r"\$__(\w+)\(", sql):
        args, end = _call_args(sql, call.end() - 1)
        sql = sql[: call.start()] + with_args(call.group(1), [x.strip() for x in args]) + sql[end:]
    bare = {
        "$__fromTime_ms": f"fromUnixTimestamp64Milli({rng.from_ms})",
        "$__toTime_ms": f"fromUnixTimestamp64Milli({rng.to_ms})",
        "$__fromTime": f"toDateTime({f})",
        "$__toTime": f"toDateTime({t})",
        "$__interval_s": str(n),
    }
    for name, value in bare.items():
        sql = re.sub(re.escape(name) + r"(?!\w)", value, sql)
    if leftover := re.search(r"\$\{?\w+", sql):
        raise ExpansionError(f"{leftover.group(0)} would reach ClickHouse unexpanded")
    return sql


def _seconds(text: str) -> int:
    match = re.fullmatch(r"'?(\d+)([smhd])'?", text.strip())
    if not match:
        raise ExpansionError(f"interval {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def test_expander_follows_the_readme_table() -> None:
    rng = TimeRange(datetime(2001, 1, 2, tzinfo=UTC), datetime(2001, 1, 3, tzinfo=UTC), interval_s=60)
    f, t = rng.from_s, rng.to_s
    assert expand("$__timeFilter(c)", rng, {}) == f"c >= toDateTime({f}) AND c <= toDateTime({t})"
    assert expand("$__timeInterval(c)", rng, {}) == "toStartOfInterval(toDateTime(c), INTERVAL 60 second)"
    assert expand("$__dateFilter(d)", rng, {}) == "d >= toDate('2001-01-02') AND d <= toDate('2001-01-03')"
    assert expand("$__fromTime_ms $__toTime", rng, {}) == (
        f"fromUnixTimestamp64Milli({f * 1000}) toDateTime({t})"
    )
    assert expand("$__timeGroup(c, '5m')", rng, {}) == "toStartOfInterval(toDateTime(c), INTERVAL 300 second)"
    cond = "$__conditionalAll(k IN (${v:singlequote}), $v)"
    assert expand(cond, rng, {"v": ALL}) == "1=1"
    assert expand(cond, rng, {"v": ["a", "o'b"]}) == "k IN ('a','o\\'b')"
    with pytest.raises(ExpansionError):
        expand("$__timeFilterr(c)", rng, {})
    with pytest.raises(ExpansionError):
        expand("k IN (${v:singlequote})", rng, {"v": ALL})


# =========================================================================== offline checks


def test_every_dashboard_validates_against_the_sdk_schema() -> None:
    schema_path = SHARED_GRAFANA / "dashboard.jsonschema.json"
    if not schema_path.is_file():
        pytest.skip(f"{schema_path} not found (../shared is absent)")
    import jsonschema

    validator = jsonschema.Draft7Validator(json.loads(schema_path.read_text()))
    for uid, model in MODELS.items():
        errors = sorted(validator.iter_errors(model), key=lambda e: list(e.absolute_path))
        assert not errors, f"{uid}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in errors[:5]
        )


def test_committed_json_is_what_the_code_generates() -> None:
    assert build.check() == [], "run `citystream dashboards build` and commit dashboards/json/"
    for uid, model in MODELS.items():
        committed = json.loads((build.JSON_DIR / f"{uid}.json").read_text(encoding="utf-8"))
        assert committed == model
        assert (build.JSON_DIR / f"{uid}.json").read_text(encoding="utf-8") == json.dumps(
            committed, indent=2, sort_keys=True, ensure_ascii=False
        ) + "\n"


def test_uids_are_fixed_unique_and_well_formed() -> None:
    # Spelled out: bookmarks, links and provisioned copies break if a uid changes.
    assert set(MODELS) == {
        "citystream-overview",
        "citystream-alerts",
        "citystream-sensors",
        "citystream-grid",
        "citystream-traffic",
        "citystream-water",
        "citystream-pipeline",
        "citystream-backtests",
    }
    assert len(MODELS) == len(build.generate()) == len(UIDS)  # generate() refuses duplicates
    assert {uid: model["title"] for uid, model in MODELS.items()} == UIDS
    assert len({model["title"] for model in MODELS.values()}) == len(MODELS)
    assert sorted(p.stem for p in build.JSON_DIR.glob("*.json")) == sorted(UIDS)
    for uid in UIDS:
        assert re.fullmatch(r"[a-z0-9-]{8,40}", uid), uid
    for model in MODELS.values():
        ids = [p["id"] for p in model["panels"]]
        assert ids == list(range(1, len(ids) + 1)), model["uid"]


def test_build_check_reports_stale_missing_and_extra_files(tmp_path: Path) -> None:
    build.write(tmp_path)
    assert build.check(tmp_path) == []
    grid = tmp_path / "citystream-grid.json"
    grid.write_text(grid.read_text().replace("Voltage", "Volts"))
    (tmp_path / "citystream-water.json").unlink()
    (tmp_path / "hand-made.json").write_text("{}")
    problems = build.check(tmp_path)
    assert problems == [
        "citystream-grid.json: differs from what the code generates",
        "citystream-water.json: missing",
        "hand-made.json: no dashboard in the code has this uid",
    ]
    build.write(tmp_path)
    assert build.check(tmp_path) == [] and not (tmp_path / "hand-made.json").exists()


def test_cli_build_check_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main

    assert main(["dashboards", "build", "--check"]) == 0
    monkeypatch.setattr(build, "JSON_DIR", tmp_path)
    assert main(["dashboards", "build", "--check"]) == 1
    assert "missing" in capsys.readouterr().err
    assert main(["dashboards", "build"]) == 0
    assert main(["dashboards", "build", "--check"]) == 0


def test_every_target_has_the_plugin_shape() -> None:
    query_types = {0: "timeseries", 1: "table", 2: "logs", 3: "traces"}
    for uid, model in MODELS.items():
        for panel in model["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}, (
                uid,
                panel["title"],
            )
            assert panel["description"], (uid, panel["title"])
            (target,) = panel["targets"]
            assert target["refId"] == "A" and target["editorType"] == "sql"
            assert query_types[target["format"]] == target["queryType"]
            assert target["datasource"]["uid"] == DATASOURCE_UID
        for variable in model["templating"]["list"]:
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == DATASOURCE_UID
        for annotation in model["annotations"]["list"]:
            if "target" in annotation:
                assert annotation["datasource"]["uid"] == DATASOURCE_UID
                assert annotation["target"]["editorType"] == "sql" and annotation["target"]["format"] == 1
                assert re.search(r"\bAS time\b", annotation["target"]["rawSql"])
                assert re.search(r"\bAS text\b", annotation["target"]["rawSql"])
                assert "LIMIT" in annotation["target"]["rawSql"]


@pytest.mark.parametrize("query", ALL_QUERIES, ids=str)
def test_queries_use_only_known_macros_and_variables(query: Query) -> None:
    macros = set(re.findall(r"\$__(\w+)", query.sql))
    assert macros <= KNOWN_MACROS, macros - KNOWN_MACROS
    names = {a or b for a, b in re.findall(r"\$\{(\w+)[:}]|\$(?!__)(\w+)", query.sql)}
    assert names <= set(variables_of(MODELS[query.dashboard]))


def test_queries_never_count_rows_awaiting_merge() -> None:
    """Replacing tables are read through their *_latest views or FINAL, never bare where duplicates count."""
    for query in ALL_QUERIES:
        for match in re.finditer(r"FROM\s+(\w+)(\s+FINAL)?", query.sql):
            table, final = match.group(1), bool(match.group(2))
            if table == "window_aggregates" and not final:
                # Allowed: DISTINCT key lists, and first-load lag (min(loaded_at) grouped per window).
                assert "SELECT DISTINCT key_id" in query.sql or "min(loaded_at)" in query.sql, str(query)
            if table in ("anomalies", "late_events", "dead_letters", "sensors"):  # or sensors_current
                assert final, f"{query}: {table} without FINAL"
            assert table not in ("alerts", "sensor_health"), f"{query}: read {table}_latest instead"


# --------------------------------------------------------------------------- provisioning


def _yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_provisioned_datasource_uses_only_plugin_keys() -> None:
    doc = _yaml(PROVISIONING / "datasources" / "clickhouse.yaml")
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert ds["type"] == DATASOURCE_TYPE and ds["uid"] == DATASOURCE_UID
    keys = set(ds["jsonData"])
    assert keys <= PLUGIN_JSONDATA_KEYS, keys - PLUGIN_JSONDATA_KEYS
    assert "database" not in keys and "defaultDatabase" in keys
    assert ds["jsonData"]["protocol"] == "http"
    assert set(ds["secureJsonData"]) == {"password"}
    assert "password" not in ds["jsonData"]
    for key in ("host", "port", "username", "defaultDatabase"):
        assert re.fullmatch(r"\$\{CITYSTREAM_[A-Z_]+\}", str(ds["jsonData"][key])), key
    assert re.fullmatch(r"\$\{CITYSTREAM_[A-Z_]+\}", ds["secureJsonData"]["password"])
    readme = SHARED_GRAFANA / "README.md"
    if readme.is_file():
        text = readme.read_text()
        for key in keys | {"password"}:
            assert f"`{key}`" in text or f"secureJsonData.{key}" in text, key


def test_provisioned_dashboards_go_to_the_push_folder() -> None:
    doc = _yaml(PROVISIONING / "dashboards" / "citystream.yaml")
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["folderUid"] == push.FOLDER_UID
    assert provider["options"]["path"] == "${CITYSTREAM_DASHBOARDS_DIR}"


def test_pushed_datasource_matches_provisioning() -> None:
    settings = Settings(clickhouse_url="https://ch.example:8443", clickhouse_viewer_password="s3cret")
    payload = push.datasource_payload(settings)
    provisioned = _yaml(PROVISIONING / "datasources" / "clickhouse.yaml")["datasources"][0]
    assert set(payload["jsonData"]) == set(provisioned["jsonData"])
    assert payload["jsonData"] == {
        "host": "ch.example",
        "port": 8443,
        "protocol": "http",
        "secure": True,
        "username": "viewer",
        "defaultDatabase": "citystream",
    }
    assert payload["secureJsonData"] == {"password": "s3cret"}
    assert (payload["uid"], payload["type"]) == (DATASOURCE_UID, DATASOURCE_TYPE)


# --------------------------------------------------------------------------- push


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers like Grafana's HTTP API for a fresh instance and records every request."""

    status_override: ClassVar[int | None] = None
    log: ClassVar[list[tuple[str, str, Any, str]]] = []

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.log.append((method, self.path, body, self.headers.get("Authorization", "")))
        if self.status_override is not None:
            status, answer = self.status_override, {"message": "invalid API key"}
        elif method == "GET":
            status, answer = 404, {"message": "not found"}
        else:
            status, answer = 200, {"status": "success", "uid": (body or {}).get("uid", "")}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"log": [], "status_override": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_push_upserts_datasource_folder_then_dashboards(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    models = [MODELS[uid] for uid in sorted(MODELS)]
    lines: list[str] = []
    push.push(Settings(), url, push.Credentials(token="tok"), models, report=lines.append)
    calls = [(m, p) for m, p, _, _ in handler.log]
    assert calls[:4] == [
        ("GET", f"/api/datasources/uid/{DATASOURCE_UID}"),
        ("POST", "/api/datasources"),
        ("GET", f"/api/folders/{push.FOLDER_UID}"),
        ("POST", "/api/folders"),
    ]
    assert calls[4:] == [("POST", "/api/dashboards/db")] * len(models)
    assert all(auth == "Bearer tok" for *_, auth in handler.log)
    ds = handler.log[1][2]
    assert ds["uid"] == DATASOURCE_UID and set(ds["jsonData"]) <= PLUGIN_JSONDATA_KEYS
    assert handler.log[3][2] == {"title": push.FOLDER_TITLE, "uid": push.FOLDER_UID}
    for (_, _, body, _), model in zip(handler.log[4:], models, strict=True):
        assert body["overwrite"] is True and body["folderUid"] == push.FOLDER_UID
        assert body["dashboard"]["uid"] == model["uid"] and body["dashboard"]["id"] is None
    assert len(lines) == 2 + len(models)


def test_push_refused_credentials_is_one_line(recorder: tuple[str, type[_Recorder]]) -> None:
    url, handler = recorder
    handler.status_override = 401
    with pytest.raises(UserError) as caught:
        push.push(Settings(), url, push.Credentials(user="admin", password="wrong"), [])
    message = str(caught.value)
    assert "\n" not in message and "refused the credentials" in message and "wrong" not in message
    handler.status_override = 403
    with pytest.raises(UserError, match=r"refused to look up the ClickHouse datasource: 403 .*Admin role"):
        push.push(Settings(), url, push.Credentials(token="t"), [])


def test_push_to_unreachable_grafana_is_one_line() -> None:
    url = f"http://admin:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(UserError) as caught:
        push.push(Settings(), url, push.Credentials(), [MODELS["citystream-grid"]])
    message = str(caught.value)
    assert "unreachable" in message and "connection refused" in message
    assert "\n" not in message and "hunter2" not in message


def test_cli_push_reports_unreachable_grafana(capsys: pytest.CaptureFixture[str]) -> None:
    from citystream.cli import main

    assert main(["dashboards", "push", "--url", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("citystream: Grafana at http://127.0.0.1:") and "\n" not in err


# =========================================================================== on the real engine

#: Test rows live in 2001 under ids no other test uses.
T0 = datetime(2001, 1, 2, 12, 0, tzinfo=UTC)
SENSOR = "dash-test-grid-1"
OTHER = "dash-test-grid-2"
HOPPING = "dash-test-grid-3"  # has a 5-minute hopping window beside its 1-minute one
ZONE = "dash-z01"

RANGES = {
    "6h minutes": TimeRange(T0 - timedelta(hours=3), T0 + timedelta(hours=3), interval_s=20),
    "2d 10 minutes": TimeRange(T0 - timedelta(days=1), T0 + timedelta(days=1), interval_s=600),
    "7d hourly": TimeRange(T0 - timedelta(days=4), T0 + timedelta(days=3), interval_s=600),
    "120d daily": TimeRange(T0 - timedelta(days=60), T0 + timedelta(days=60), interval_s=3 * 3600),
}
SELECTED = {
    "zone": [ZONE, "dash-z'02"],
    "sensor": [SENSOR, "dash-o'brien"],
    "domain": ["grid", "water"],
    "config": ["default", "o'tuned"],
    "run": ["dash-run-1", "dash-run'2"],
}


@pytest.fixture(scope="module", params=["windows", "sealed"])
def store_data(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """A corrected window (revisions 0 and 1, the latter delivered twice) and a zone for two sensors.

    In a database of its own, migrated like the real one, so that no other
    test's counts see these rows. Separate inserts land in separate parts, so
    the superseded revision and the duplicate are still there unmerged when the
    panels read. Twice: as loaded (every hour dirty: panels read the windows
    themselves) and sealed (panels read the rollups, migration 0005). Each in a store
    of its own whose project database it is: the read-only user reads that one only.
    """
    from citystream.stack import Store

    settings = stack_settings(
        tmp_path_factory.mktemp(f"dash_{request.param}"),
        clickhouse_database=f"dashboards_test_{request.param}",
    )
    server = Store(settings, loader=False)
    server.start()
    try:
        _load_store_data(settings, request.param)
        yield settings
    finally:
        server.stop()


def _load_store_data(settings: Settings, param: str) -> None:
    from citystream.store.client import connect
    from citystream.store.migrate import migrate
    from citystream.store.rollups import seal

    migrate(settings)
    client = connect(settings)
    cols = [
        "domain",
        "key_kind",
        "key_id",
        "metric",
        "window_start",
        "window_end",
        "samples",
        "mean",
        "min",
        "max",
        "late",
        "duplicates",
        "revision",
    ]

    def window(key: str, start: datetime, mean: float, revision: int, minutes: int = 1) -> list[Any]:
        return [
            "grid",
            "sensor",
            key,
            "voltage_v",
            start,
            start + timedelta(minutes=minutes),
            60 * minutes,
            mean,
            mean - 1,
            mean + 1,
            revision,
            0,
            revision,
        ]

    try:
        client.insert("window_aggregates", [window(SENSOR, T0, 200.0, 0)], column_names=cols)
        client.insert("window_aggregates", [window(SENSOR, T0, 230.0, 1)], column_names=cols)
        client.insert(
            "window_aggregates",
            [
                window(SENSOR, T0, 230.0, 1),
                window(SENSOR, T0 + timedelta(minutes=1), 232.0, 0),
                window(OTHER, T0, 240.0, 0),
                window(HOPPING, T0, 220.0, 0),
                window(HOPPING, T0, 300.0, 0, minutes=5),
            ],
            column_names=cols,
        )
        client.insert(
            "sensor_health",
            [
                [SENSOR, "dash-site", ZONE, "grid", "stuck", T0, "test"],
                [OTHER, "dash-site", "dash-z99", "grid", "ok", T0, "test"],
            ],
            column_names=["sensor_id", "site_id", "zone_id", "domain", "status", "since", "details"],
        )
        client.insert(
            "anomalies",
            [
                [
                    "grid",
                    kind,
                    key,
                    "voltage_v",
                    "zscore-v1",
                    T0,
                    None,
                    None,
                    0.9,
                    "warning",
                    1.0,
                    2.0,
                    "test",
                ]
                for kind, key in (("sensor", SENSOR), ("sensor", OTHER), ("zone", ZONE))
            ],
            column_names=[
                "domain",
                "key_kind",
                "key_id",
                "metric",
                "detector",
                "event_time",
                "window_start",
                "window_end",
                "score",
                "severity",
                "observed",
                "expected",
                "explanation",
            ],
        )
        if param == "sealed":
            assert seal(client, grace_s=0).hours == 1
    finally:
        client.close()


@pytest.fixture(scope="module")
def viewer(store_data: Settings) -> Iterator[Any]:
    from citystream.store.client import connect

    client = connect(store_data, readonly=True)
    try:
        yield client
    finally:
        client.close()


def _run(
    client: Any, query: Query, rng: TimeRange, variables: Mapping[str, Sequence[str] | None]
) -> list[Any]:
    from citystream.store.client import error_message

    sql = expand(query.sql, rng, variables)
    try:
        return client.query(sql).result_rows
    except Exception as exc:  # the engine's own error, with the query that caused it
        pytest.fail(f"{query} failed on ClickHouse: {error_message(exc)}\n{sql}")


@pytest.mark.integration
@pytest.mark.parametrize("query", ALL_QUERIES, ids=str)
def test_every_query_executes_on_the_store(viewer: Any, query: Query) -> None:
    names = variables_of(MODELS[query.dashboard])
    for rng in RANGES.values():
        rows = _run(viewer, query, rng, dict.fromkeys(names, ALL))
        if query.time_series:  # long results become series only when sorted by time (LongToWide)
            assert [r[0] for r in rows] == sorted(r[0] for r in rows), (str(query), rng)
    _run(viewer, query, RANGES["6h minutes"], {name: SELECTED[name] for name in names})


def _panel(uid: str, title: str) -> Query:
    (query,) = [q for q in queries(MODELS[uid]) if q.where.endswith(f"{title!r}")]
    return query


@pytest.mark.integration
def test_panels_show_each_window_once_at_its_latest_revision(viewer: Any) -> None:
    per_meter = _panel("citystream-grid", "Voltage per meter")
    one = {"zone": ALL, "sensor": [SENSOR]}
    rows = _run(viewer, per_meter, TimeRange(T0, T0 + timedelta(minutes=2), interval_s=60), one)
    assert [(r[0].replace(tzinfo=UTC), r[1], r[2]) for r in rows] == [
        (T0, SENSOR, 230.0),
        (T0 + timedelta(minutes=1), SENSOR, 232.0),
    ]
    # Longer ranges read the rollups, which must fold in the same latest revisions.
    for name in ("7d hourly", "120d daily"):
        rows = _run(viewer, per_meter, RANGES[name], one)
        assert [(r[1], r[2]) for r in rows] == [(SENSOR, pytest.approx(231.0))], name
    revised = _panel("citystream-pipeline", "Windows revised")
    everything = {"domain": ["grid"]}
    (row,) = _run(viewer, revised, TimeRange(T0, T0 + timedelta(minutes=5), interval_s=60), everything)
    assert row[0] >= 1


def test_tumbling_window_length_matches_the_jobs() -> None:
    from citystream.dashboards.queries import TUMBLE_S
    from citystream.jobs.common import Windows

    assert Windows().tumble_s == Windows().zone_s == TUMBLE_S
    assert Windows().hop_size_s != TUMBLE_S


@pytest.mark.integration
def test_hopping_windows_are_not_counted(viewer: Any) -> None:
    per_meter = _panel("citystream-grid", "Voltage per meter")
    rows = _run(viewer, per_meter, RANGES["6h minutes"], {"zone": ALL, "sensor": [HOPPING]})
    assert [r[2] for r in rows] == [220.0]


@pytest.mark.integration
def test_rollups_ignore_hopping_windows(viewer: Any) -> None:
    per_meter = _panel("citystream-grid", "Voltage per meter")
    for name in ("7d hourly", "120d daily"):
        rows = _run(viewer, per_meter, RANGES[name], {"zone": ALL, "sensor": [HOPPING]})
        assert [r[2] for r in rows] == [220.0], name


@pytest.mark.integration
def test_zone_variable_narrows_sensors(viewer: Any) -> None:
    spread = _panel("citystream-grid", "Voltage: min / mean / max")
    rng = TimeRange(T0, T0 + timedelta(seconds=59), interval_s=60)
    (in_zone,) = _run(viewer, spread, rng, {"zone": [ZONE], "sensor": ALL})
    assert in_zone[1:] == (229.0, 230.0, 231.0)
    (everyone,) = _run(viewer, spread, rng, {"zone": ALL, "sensor": [SENSOR, OTHER]})
    assert everyone[1:] == (229.0, 235.0, 241.0)
    sensors = next(q for q in queries(MODELS["citystream-grid"]) if q.where == "variable sensor")
    listed = [r[0] for r in _run(viewer, sensors, rng, {"zone": [ZONE]})]
    assert listed == [SENSOR]
    not_ok = _panel("citystream-grid", "Sensors not ok")
    assert [r[0] for r in _run(viewer, not_ok, rng, {"zone": [ZONE], "sensor": ALL})] == [SENSOR]
    anomalies = _panel("citystream-grid", "Anomalies")
    keys = sorted(r[3] for r in _run(viewer, anomalies, rng, {"zone": [ZONE], "sensor": ALL}))
    assert keys == sorted([SENSOR, ZONE])
    keys = sorted(r[3] for r in _run(viewer, anomalies, rng, {"zone": ALL, "sensor": [OTHER]}))
    assert keys == [OTHER]


def _granules(client: Any, sql: str) -> dict[str, int]:
    """Granules each table's read selects in the engine's own plan (summed over its reads)."""
    plan = [row[0] for row in client.query("EXPLAIN indexes = 1 " + sql).result_rows]
    found: dict[str, int] = {}
    for i, line in enumerate(plan):
        if read := re.search(r"ReadFromMergeTree \(\w+\.(\w+)\)", line):
            selected = 0  # a read pruned to nothing shows no index analysis at all
            for later in plan[i + 1 :]:
                if "ReadFromMergeTree" in later:
                    break
                if granules := re.search(r"Granules: (\d+)", later):
                    selected = int(granules.group(1))
                    break
            found[read.group(1)] = found.get(read.group(1), 0) + selected
    return found


@pytest.mark.integration
@pytest.mark.parametrize("range_name", list(RANGES))
def test_sealed_hours_are_not_read_from_the_windows(
    viewer: Any, store_data: Settings, range_name: str
) -> None:
    """Panels read window_aggregates for dirty hours only: all of them before sealing, none after.

    The windows' branch is bounded by the first and last dirty hour, as
    constants the engine prunes granules with; without dirty hours that range
    is empty.
    """
    sealed = store_data.clickhouse_database.endswith("sealed")
    for uid, title in (
        ("citystream-grid", "Voltage per meter"),
        ("citystream-grid", "Voltage: min / mean / max"),
        ("citystream-overview", "Readings per department"),
        ("citystream-pipeline", "Load lag p95"),
    ):
        variables = {"zone": ALL, "sensor": ALL, "domain": ["grid"]}
        granules = _granules(viewer, expand(_panel(uid, title).sql, RANGES[range_name], variables))
        if sealed:
            assert granules.get("window_aggregates", 0) == 0, (title, granules)
        elif RANGES[range_name].start <= T0 <= RANGES[range_name].end:
            assert granules.get("window_aggregates", 0) > 0, (title, granules)


@pytest.mark.integration
def test_each_range_reads_its_grain(store: Any) -> None:
    """6 h -> 1-minute rows, 2 days -> 10-minute, 62 days -> hourly, longer -> daily (sealed rows marked)."""
    from citystream.store.client import connect
    from citystream.store.migrate import migrate
    from citystream.store.rollups import seal

    settings: Settings = store.settings.replace(clickhouse_database="dashboards_grains")
    migrate(settings)
    client = connect(settings)
    try:
        start = T0.replace(hour=0)
        client.insert(
            "window_aggregates",
            [
                [
                    "grid",
                    "sensor",
                    SENSOR,
                    "voltage_v",
                    start,
                    start + timedelta(minutes=1),
                    10,
                    1.0,
                    1.0,
                    1.0,
                    0,
                    0,
                    0,
                ]
            ],
            column_names=WINDOW_COLUMNS,
        )
        assert seal(client, grace_s=0).hours == 1
        # Every sealed row now says which grain it is: its mean is the grain in seconds.
        client.command(
            "ALTER TABLE window_aggregates_sealed UPDATE samples = 1, total = grain WHERE 1",
            settings={"mutations_sync": 2},
        )
        per_meter = _panel("citystream-grid", "Voltage per meter")
        for name, grain in (
            ("6h minutes", 60),
            ("2d 10 minutes", 600),
            ("7d hourly", 3600),
            ("120d daily", 86400),
        ):
            rng = RANGES[name]
            rng = TimeRange(start, start + (rng.end - rng.start), rng.interval_s)
            rows = _run(client, per_meter, rng, {"zone": ALL, "sensor": [SENSOR]})
            assert [r[2] for r in rows] == [grain], name
            rows = _run(client, per_meter, rng, {"zone": ALL, "sensor": ALL})
            assert [r[2] for r in rows] == [grain], name
    finally:
        client.close()


WINDOW_COLUMNS = [
    "domain", "key_kind", "key_id", "metric", "window_start", "window_end",
    "samples", "mean", "min", "max", "late", "duplicates", "revision",
]  # fmt: skip


# --------------------------------------------------------------------------- rollups = windows

#: A fuller history for comparing the sealed rollups with the windows: 5 sensors, 3 departments,
#: a zone window, hopping windows, corrections delivered out of order, duplicate deliveries.
CMP_SERIES = [
    ("grid", "sensor", "cmp-g1", ("voltage_v", "frequency_hz", "active_power_kw")),
    ("grid", "sensor", "cmp-g2", ("voltage_v",)),
    ("grid", "zone", "cmp-z1", ("voltage_v",)),
    ("traffic", "sensor", "cmp-t1", ("vehicle_count", "mean_speed_kmh", "occupancy_pct")),
    ("water", "sensor", "cmp-w1", ("pressure_bar", "flow_lps", "tank_level_m")),
]
CMP_ZONE = "cmp-z1"


def _cmp_row(
    series: tuple, m: int, n: int, start: datetime, rev: int, rng: Any, length: int = 1
) -> list[Any]:
    """One window (WINDOW_COLUMNS + loaded_at) of metric ``m`` of ``series`` in the ``n``-th slot."""
    domain, kind, key, metrics = series
    samples = 6 + (n + m * 3 + rev) % 7
    mean = round(100 + 20 * rng.random() + rev, 3)
    loaded = start + timedelta(minutes=length, seconds=5 + (n * 7 + m) % 50 + rev * 60)
    end = start + timedelta(minutes=length)
    return [
        domain,
        kind,
        key,
        metrics[m],
        start,
        end,
        samples,
        mean,
        mean - 1 - m,
        mean + 2 + rev,
        rev,
        n % 3,
        rev,
        loaded,
    ]


def _cmp_rounds() -> list[list[list[Any]]]:
    """Insert rounds of WINDOW_COLUMNS + loaded_at rows: first loads, then corrections and re-deliveries.

    Revision, late and duplicates belong to a key's window (the jobs compute
    them once for all its metrics); samples differ between metrics.
    """
    import random

    rng = random.Random(2001)
    first, later, last = [], [], []
    for n, minute in enumerate(range(-30 * 60, 30 * 60, 13)):
        start = T0 + timedelta(minutes=minute)
        for series in CMP_SERIES:
            revision = 2 if n % 10 == 0 else 1 if n % 5 == 0 else 0
            for m in range(len(series[3])):
                first.append(_cmp_row(series, m, n, start, 0, rng))
                if series[1] == "sensor" and m == 0 and n % 2:
                    first.append(_cmp_row(series, m, n, start, 0, rng, length=5))  # hopping: never counted
                if revision == 2:
                    later.append(_cmp_row(series, m, n, start, 2, rng))  # the newest correction first ...
                    last.append(_cmp_row(series, m, n, start, 1, rng))  # ... the older one after: must lose
                elif revision == 1:
                    later.append(_cmp_row(series, m, n, start, 1, rng))
                if n % 7 == 0:
                    last.append(first[-1])  # a re-delivery, byte for byte
    return [first, later, last]


@pytest.fixture(scope="module")
def compared(store: Any) -> Iterator[dict[str, Any]]:
    """Two databases with the same windows: never sealed, and sealed after the first two rounds.

    The last round (corrections and re-deliveries) then leaves the sealed one
    with dirty hours among clean ones; tests seal it fully later.
    """
    from citystream.store.client import connect
    from citystream.store.migrate import migrate
    from citystream.store.rollups import seal

    clients = {}
    for name in ("windows", "sealed"):
        settings = store.settings.replace(clickhouse_database=f"dashboards_cmp_{name}")
        migrate(settings)
        clients[name] = connect(settings)
    columns = [*WINDOW_COLUMNS, "loaded_at"]
    try:
        health = [
            ["cmp-g1", "cmp-site", CMP_ZONE, "grid", "ok", T0, ""],
            ["cmp-g2", "cmp-site", "cmp-z2", "grid", "ok", T0, ""],
            ["cmp-t1", "cmp-site", CMP_ZONE, "traffic", "ok", T0, ""],
        ]
        for client in clients.values():
            client.insert(
                "sensor_health",
                health,
                column_names=["sensor_id", "site_id", "zone_id", "domain", "status", "since", "details"],
            )
        rounds = _cmp_rounds()
        for i, rows in enumerate(rounds):
            for name, client in clients.items():
                client.insert("window_aggregates", rows, column_names=columns)
                if name == "sealed" and i == len(rounds) - 2:
                    assert seal(client, grace_s=0).hours > 0
        yield clients
    finally:
        for client in clients.values():
            client.close()


CMP_T0 = T0.replace(hour=0)
CMP_RANGES = [
    TimeRange(T0 - timedelta(hours=3), T0 + timedelta(hours=3), interval_s=20),
    TimeRange(T0 - timedelta(hours=5, minutes=17), T0 + timedelta(minutes=43), interval_s=60),
    TimeRange(T0 - timedelta(hours=20, minutes=7), T0 + timedelta(hours=9), interval_s=600),
    TimeRange(T0 - timedelta(days=1, minutes=11), T0 + timedelta(days=1), interval_s=1200),
    TimeRange(CMP_T0 - timedelta(days=3), CMP_T0 + timedelta(days=4), interval_s=3 * 3600),
    TimeRange(T0 - timedelta(days=60), T0 + timedelta(days=60), interval_s=86400),
    TimeRange(T0 - timedelta(days=70), T0 + timedelta(days=1, hours=3), interval_s=2 * 86400),
]
CMP_SELECTIONS = [
    {"zone": ALL, "sensor": ALL, "domain": ["grid", "traffic", "water"]},
    {"zone": [CMP_ZONE], "sensor": ALL, "domain": ["grid"]},
    {"zone": ALL, "sensor": ["cmp-g1", "cmp-t1", "cmp-w1"], "domain": ["water", "traffic"]},
]
CMP_QUERIES = [q for q in ALL_QUERIES if "window_aggregates" in q.sql and not q.where.startswith("variable")]


def _normalized(rows: list[Any]) -> list[tuple[Any, ...]]:
    import math

    def one(v: Any) -> Any:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else float(f"{v:.9g}")
        if isinstance(v, datetime):
            return v.replace(tzinfo=UTC).isoformat()
        return v

    # Sorted: rows of one bucket may come in any order (per-sensor panels order by time only).
    return sorted((tuple(one(v) for v in row) for row in rows), key=repr)


def _answers(client: Any) -> dict[tuple[str, int, int], list[tuple[Any, ...]]]:
    out = {}
    for query in CMP_QUERIES:
        names = variables_of(MODELS[query.dashboard])
        for r, rng in enumerate(CMP_RANGES):
            for s, selection in enumerate(CMP_SELECTIONS):
                variables = {name: selection[name] for name in names}
                out[(str(query), r, s)] = _normalized(_run(client, query, rng, variables))
    return out


@pytest.mark.integration
def test_sealed_rollups_answer_as_the_windows_do(compared: dict[str, Any]) -> None:
    """Every panel over the windows, at every resolution, partly and fully sealed: the same answers."""
    from citystream.store.rollups import dirty_hours, seal

    windows = _answers(compared["windows"])
    assert sum(1 for rows in windows.values() if rows) > len(windows) // 2  # the ranges do cover data
    assert dirty_hours(compared["sealed"])  # the last round dirtied some hours again ...
    partly = _answers(compared["sealed"])
    assert seal(compared["sealed"], grace_s=0).hours > 0
    assert not dirty_hours(compared["sealed"])  # ... now every hour is sealed
    fully = _answers(compared["sealed"])
    for key, expected in windows.items():
        assert partly[key] == expected, key
        assert fully[key] == expected, key


@pytest.mark.integration
def test_rollup_panels_keep_the_windows_meaning(compared: dict[str, Any]) -> None:
    """The rewritten panels against the SQL they replaced (on ranges aligned to their resolution).

    Load lag p95 (a histogram now) against ClickHouse's own quantile over the
    windows, exact below 8,192 values; revised windows and late readings
    against their per-window definitions; readings per department counted per
    1-minute window (the largest samples among a sensor's metrics).
    """
    client = compared["windows"]
    lag = _panel("citystream-pipeline", "Load lag p95")
    revised = _panel("citystream-pipeline", "Windows revised")
    late = _panel("citystream-pipeline", "Late readings absorbed")
    readings = _panel("citystream-overview", "Readings per department")
    every = {"domain": ["grid", "traffic", "water"]}
    for rng, grain in (
        (TimeRange(T0 - timedelta(hours=3), T0 + timedelta(hours=3), 60), 60),
        (TimeRange(T0 - timedelta(days=1), T0 + timedelta(hours=23, minutes=50), 600), 600),
        (TimeRange(CMP_T0 - timedelta(days=3), CMP_T0 + timedelta(days=4) - timedelta(hours=1), 3600), 3600),
    ):
        # The units of the resolution that start within the range, all of each.
        end = rng.to_s - rng.to_s % grain + grain
        span = f"window_start >= toDateTime({rng.from_s}) AND window_start < toDateTime({end})"
        (want,) = client.query(
            "SELECT quantile(0.95)(lag_s) FROM (SELECT"
            " dateDiff('millisecond', window_end, min(loaded_at)) / 1000"
            f" AS lag_s FROM window_aggregates WHERE {span} GROUP BY domain, key_kind, key_id, metric,"
            " window_start, window_end)"
        ).result_rows[0]
        assert _run(client, lag, rng, every)[0][0] == pytest.approx(want, rel=1e-12)
        (want,) = client.query(
            f"SELECT countIf(revision > 0) FROM window_aggregates_latest WHERE {span} AND {TUMBLING}"
        ).result_rows[0]
        assert _run(client, revised, rng, every)[0][0] == want > 0
        (want,) = client.query(
            "SELECT sum(late) FROM (SELECT key_id, max(late) AS late FROM window_aggregates_latest"
            f" WHERE {span} AND {TUMBLING} AND key_kind = 'sensor' GROUP BY key_id, window_start)"
        ).result_rows[0]
        assert _run(client, late, rng, every)[0][0] == want > 0
        want = client.query(
            f"SELECT domain, sum(r) FROM (SELECT domain, key_id, window_start, max(samples) AS r"
            f" FROM window_aggregates_latest WHERE {span} AND {TUMBLING} AND key_kind = 'sensor'"
            " GROUP BY domain, key_id, window_start) GROUP BY domain ORDER BY domain"
        ).result_rows
        got: dict[str, float] = {}
        for _, domain, per_s in _run(client, readings, rng, every):
            got[domain] = got.get(domain, 0.0) + per_s
        # Each range's interval is its grain here, so a bucket stands for interval_s seconds.
        assert {d: n * rng.interval_s for d, n in got.items()} == pytest.approx(dict(want)), rng


TUMBLING = "dateDiff('second', window_start, window_end) = 60"
