"""Small factories that every citystream dashboard is assembled from.

Why factories on top of grafana-foundation-sdk: the SDK knows Grafana's panel
model but nothing about the ClickHouse plugin (it ships no query type for it)
nor about our conventions — one datasource uid, SQL targets in the exact shape
the plugin reads, template variables whose "All" goes through
``$__conditionalAll`` so that choosing everything removes the filter instead of
sending a thousand-value IN list. Keeping those rules here means a dashboard
module only says *what* to show.
"""

from __future__ import annotations

import enum
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import geomap, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models
from grafana_foundation_sdk.models import geomap as geomap_models

from citystream.catalog import DOMAIN_NAMES

with warnings.catch_warnings():
    # The SDK nudges towards the v2 schema at import; Grafana's HTTP API and our
    # committed JSON schema are the classic (v1) model, which is what we build.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import dashboard as dashboard_builders

#: Plugin id of the official ClickHouse datasource (grafana/clickhouse-datasource).
DATASOURCE_TYPE = "grafana-clickhouse-datasource"
#: Fixed uid, so dashboards and provisioning agree without looking anything up.
DATASOURCE_UID = "citystream-clickhouse"
DATASOURCE_NAME = "citystream ClickHouse"


def datasource_ref() -> dashboard_models.DataSourceRef:
    """The one datasource every panel, variable and annotation points at (by uid, never by name)."""
    return dashboard_models.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


class Format(enum.IntEnum):
    """Target ``format`` values of the ClickHouse plugin (README: 0 time series, 1 table)."""

    TIME_SERIES = 0
    TABLE = 1
    LOGS = 2
    TRACES = 3


_QUERY_TYPE = {
    Format.TIME_SERIES: "timeseries",
    Format.TABLE: "table",
    Format.LOGS: "logs",
    Format.TRACES: "traces",
}


class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL target of the ClickHouse plugin; the SDK has no model for it, so we supply one."""

    def __init__(self, sql: str, fmt: Format, ref_id: str = "A") -> None:
        self.sql = sql
        self.fmt = fmt
        self.ref_id = ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": datasource_ref().to_json(),
            "editorType": "sql",
            "format": int(self.fmt),
            "queryType": _QUERY_TYPE[self.fmt],
            "rawSql": self.sql,
            "refId": self.ref_id,
        }


class _QueryBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: cogvariants.Dataquery) -> None:
        self._query = query

    def build(self) -> cogvariants.Dataquery:
        return self._query


class _Fixed(cogbuilder.Builder[Any]):
    """A model the SDK wants through a builder but has no builder for (geomap options)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def build(self) -> Any:
        return self._model


class _AnnotationTarget(cogvariants.Dataquery):
    """Annotation targets carry no refId/queryType in the plugin's own annotation editor output."""

    def __init__(self, sql: str) -> None:
        self.sql = sql

    def to_json(self) -> dict[str, object]:
        return {"editorType": "sql", "format": int(Format.TABLE), "rawSql": self.sql}


def sql_target(sql: str, fmt: Format = Format.TIME_SERIES, ref_id: str = "A") -> _QueryBuilder:
    """A panel target running ``sql`` through the ClickHouse plugin."""
    return _QueryBuilder(ClickHouseQuery(sql.strip(), fmt, ref_id))


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Band:
    """Colour steps for thresholds: ``base`` below the first step, then (value, colour) pairs.

    Why a value object: the same band (e.g. the 50 Hz nominal frequency band) is
    used both for a panel's colours and for its threshold lines, and keeping it as
    plain data lets tests read the band back.
    """

    base: str
    steps: Sequence[tuple[float, str]] = field(default_factory=tuple)

    def builder(self) -> dashboard_builders.ThresholdsConfig:
        items = [dashboard_models.Threshold(value=None, color=self.base)]
        items += [dashboard_models.Threshold(value=v, color=c) for v, c in self.steps]
        return (
            dashboard_builders.ThresholdsConfig().mode(dashboard_models.ThresholdsMode.ABSOLUTE).steps(items)
        )


# --------------------------------------------------------------------------- panels


def timeseries_panel(
    title: str,
    sql: str,
    *,
    unit: str,
    description: str,
    width: int = 12,
    height: int = 8,
    band: Band | None = None,
    soft_min: float | None = None,
    soft_max: float | None = None,
    bars: bool = False,
) -> timeseries.Panel:
    """A time series of one or more series (long format: time, series name, value).

    ``band`` draws thresholds as shaded areas with lines, which is how an
    operator sees "inside the nominal band" without reading numbers.
    """
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .with_target(sql_target(sql, Format.TIME_SERIES))
        .unit(unit)
        .span(width)
        .height(height)
        .line_width(1)
        .fill_opacity(10 if not bars else 80)
        .span_nulls(False)
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .calcs([])
        )
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common_models.TooltipDisplayMode.MULTI)
            .sort(common_models.SortOrder.DESCENDING)
        )
    )
    if bars:
        panel = panel.draw_style(common_models.GraphDrawStyle.BARS)
    if band is not None:
        panel = panel.thresholds(band.builder()).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common_models.GraphThresholdsStyleMode.LINE_AND_AREA
            )
        )
    if soft_min is not None:
        panel = panel.axis_soft_min(soft_min)
    if soft_max is not None:
        panel = panel.axis_soft_max(soft_max)
    return panel


def stat_panel(
    title: str,
    sql: str,
    *,
    unit: str,
    description: str,
    width: int = 6,
    height: int = 4,
    band: Band | None = None,
    fmt: Format = Format.TABLE,
) -> stat.Panel:
    """One big number per returned row (or per series), coloured by ``band``.

    Table format by default: stat queries return one row of named columns, and
    Grafana shows one value per numeric column.
    """
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .with_target(sql_target(sql, fmt))
        .unit(unit)
        .span(width)
        .height(height)
        .thresholds((band or Band("green")).builder())
        .color_mode(common_models.BigValueColorMode.VALUE)
        .graph_mode(common_models.BigValueGraphMode.NONE)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields(""))
    )


def table_panel(
    title: str,
    sql: str,
    *,
    description: str,
    width: int = 12,
    height: int = 8,
) -> table.Panel:
    """A plain table: for lists an operator reads row by row (alerts, dead letters, unhealthy sensors)."""
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .with_target(sql_target(sql, Format.TABLE))
        .span(width)
        .height(height)
    )


def geomap_panel(
    title: str,
    sql: str,
    *,
    description: str,
    colour_field: str,
    colours: Sequence[tuple[str, str]],
    link: tuple[str, str] | None = None,
    width: int = 24,
    height: int = 12,
) -> geomap.Panel:
    """Points at the rows' ``latitude`` and ``longitude``, coloured by the text in ``colour_field``.

    Why value mappings: a marker's colour follows its field's display colour,
    so mapping each state text to a colour colours the points and labels the
    legend with the state's own words. ``link`` (title, url) is a data link on
    every point: the url may use ``${__data.fields.<column>}``.
    """
    mapping = dashboard_models.ValueMap(
        options={
            text: dashboard_models.ValueMappingResult(text=text, color=colour, index=i)
            for i, (text, colour) in enumerate(colours)
        },
    )
    markers = common_models.MapLayerOptions(
        type_val="markers",
        name="Sensors",
        config={
            "showLegend": True,
            "style": {
                "color": {"field": colour_field, "fixed": "dark-green"},
                "size": {"fixed": 6},
                "opacity": 0.9,
                "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
            },
        },
        location=common_models.FrameGeometrySource(
            mode=common_models.FrameGeometrySourceMode.COORDS, latitude="latitude", longitude="longitude"
        ),
        tooltip=True,
    )
    panel = (
        geomap.Panel()
        .title(title)
        .description(description)
        .datasource(datasource_ref())
        .with_target(sql_target(sql, Format.TABLE))
        .span(width)
        .height(height)
        .mappings([mapping])
        .view(_Fixed(geomap_models.MapViewConfig(id_val="fit", lat=0, lon=0, zoom=12, all_layers=True)))
        .basemap(_Fixed(common_models.MapLayerOptions(type_val="default", name="Basemap")))
        .layers([_Fixed(markers)])
        .tooltip(_Fixed(geomap_models.TooltipOptions(mode=geomap_models.TooltipMode.DETAILS)))
    )
    if link is not None:
        panel = panel.data_links(
            [
                dashboard_builders.DashboardLink(link[0])
                .type(dashboard_models.DashboardLinkType.LINK)
                .url(link[1])
                .target_blank(False)
            ]
        )
    return panel


# --------------------------------------------------------------------------- variables


def domain_variable() -> dashboard_builders.CustomVariable:
    """Department picker for cross-department dashboards; multi-select with All."""
    return (
        dashboard_builders.CustomVariable("domain")
        .label("Department")
        .values(",".join(DOMAIN_NAMES))
        .multi(True)
        .include_all(True)
        .allow_custom_value(False)  # only listed values (and `selected` keeps any value from being SQL)
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def query_variable(name: str, label: str, sql: str) -> dashboard_builders.QueryVariable:
    """A ClickHouse-backed picker, multi-select with All, refreshed when the time range changes.

    Refreshing on time range keeps the list to keys that have data in view,
    which is what an operator can actually plot.
    """
    sql = " ".join(sql.split())
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(datasource_ref())
        .query(sql)
        .definition(sql)
        .multi(True)
        .include_all(True)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .allow_custom_value(False)  # only listed values (and `selected` keeps any value from being SQL)
        .current(dashboard_models.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )


def selected(variable: str) -> str:
    """The values of ``$variable`` as a ClickHouse array, whatever characters they hold.

    Why not ``${v:singlequote}``: Grafana escapes ``'`` as ``\\'`` but leaves
    ``\\`` alone, so a value (from a URL, a custom entry or a sensor id in the
    data) ending in a backslash closes the literal and the rest runs as SQL.
    ``percentencode`` leaves only ``[A-Za-z0-9._~%-]``, which cannot end a
    ClickHouse string; the values arrive as ``{a,b}`` (a multi-value glob) or
    ``a``, decoded and split here. A value holding a comma is split in two:
    a wrong filter, never a different statement.
    """
    text = f"decodeURLComponent('${{{variable}:percentencode}}')"
    return f"splitByChar(',', replaceRegexpOne({text}, '(?s)^[{{](.*)[}}]$', '\\\\1'))"


def in_filter(column: str, variable: str) -> str:
    """``$__conditionalAll(column IN <selected values>, $v)``: no filter at all when "All" is chosen."""
    return f"$__conditionalAll({column} IN {selected(variable)}, ${variable})"


# --------------------------------------------------------------------------- annotations


def sql_annotation(
    name: str, sql: str, *, color: str, enable: bool = True
) -> dashboard_builders.AnnotationQuery:
    """An annotation from SQL returning ``time``, ``timeEnd``, ``text`` and ``tags`` columns."""
    return (
        dashboard_builders.AnnotationQuery()
        .name(name)
        .datasource(datasource_ref())
        .enable(enable)
        .hide(False)
        .icon_color(color)
        .target(_QueryBuilder(_AnnotationTarget(sql.strip())))
    )


# --------------------------------------------------------------------------- dashboards


@dataclass
class Section:
    """A titled row of panels; rows make a long dashboard scannable."""

    title: str
    panels: list[cogbuilder.Builder[dashboard_models.Panel]]


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    tags: Sequence[str],
    sections: Sequence[Section],
    variables: Sequence[cogbuilder.Builder[dashboard_models.VariableModel]] = (),
    annotations: Sequence[cogbuilder.Builder[dashboard_models.AnnotationQuery]] = (),
    time_from: str = "now-6h",
    refresh: str = "1m",
) -> dict[str, Any]:
    """The dashboard model as JSON-ready dicts, with a fixed uid and stable panel ids.

    Panel ids are numbered in layout order here because Grafana only keeps
    links, alerts and library references stable when ids do not change between
    two pushes of the same code.
    """
    board = (
        dashboard_builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(list(tags))
        .timezone("utc")
        .editable()
        .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
        .time(time_from, "now")
        .refresh(refresh)
        .timepicker(dashboard_builders.TimePicker().refresh_intervals(["30s", "1m", "5m", "15m", "1h"]))
        .annotations([_builtin_annotation(), *annotations])
        .variables(list(variables))
    )
    for section in sections:
        board = board.with_row(dashboard_builders.Row(section.title))
        for panel in section.panels:
            board = board.with_panel(panel)
    model = board.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    for annotation in model.annotations.list_val or []:
        # The SDK files every annotation toggle under the controls menu; alert
        # toggles belong in plain sight above the panels (Grafana's default).
        annotation.placement = None
    return _to_plain(model)


def _builtin_annotation() -> dashboard_builders.AnnotationQuery:
    """Grafana's own annotations (manual notes), which Grafana would otherwise add on first save."""
    return (
        dashboard_builders.AnnotationQuery()
        .name("Annotations & Alerts")
        .built_in(1)
        .datasource(dashboard_models.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        .enable(True)
        .hide(True)
        .icon_color("rgba(0, 211, 255, 1)")
        .type("dashboard")
    )


def _to_plain(model: object) -> dict[str, Any]:
    """SDK objects -> plain dicts (lists, strings, numbers) via the SDK's own encoder."""
    plain: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return plain
