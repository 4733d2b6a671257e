"""Which URL settings a request may apply, and the per-user caps no request can raise.

Why a filter and not the engine's ``readonly``: settings passed as URL
parameters are applied before ``readonly=1`` (clients such as Grafana send
``max_execution_time`` that way), so without this filter a read-only user
could raise its own memory and time limits, switch the SQL dialect (the
statement policy reads ClickHouse SQL) or point a format at a file.

Contract: :func:`request_settings` returns the settings to ``SET`` for one
request: the URL settings the user may change, with every
:data:`~citystream.chserver.config.LIMIT_SETTINGS` clamped to the user's cap
(a request asking for more, or for 0 = unlimited, gets the cap), plus the caps
the request did not mention.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from citystream.chserver.config import LIMIT_SETTINGS, User
from citystream.chserver.errors import BAD_ARGUMENTS, StoreError

log = logging.getLogger("citystream.chserver")

#: Settings a read-only user may pass in the URL (output shaping and lowering its own limits).
VIEWER_SETTINGS = frozenset(
    {
        *LIMIT_SETTINGS,
        "date_time_output_format",
        "session_timezone",
        "result_overflow_mode",
        "timeout_overflow_mode",
        "max_block_size",
        "max_rows_to_read",
        "max_bytes_to_read",
        "read_overflow_mode",
        "join_use_nulls",
        "extremes",
        "log_comment",
        "use_query_cache",
        "enable_analyzer",
        "allow_experimental_analyzer",
        "max_rows_to_group_by",
        "group_by_overflow_mode",
        "max_bytes_before_external_group_by",
        "max_bytes_before_external_sort",
        "do_not_merge_across_partitions_select_final",
        "optimize_aggregation_in_order",
        "date_time_input_format",
    }
)
#: Output-format settings are harmless, except the ones that name files.
_VIEWER_PREFIX = "output_format_"
#: Settings no request may pass in the URL: they change how SQL is read or name files.
DENIED_SETTINGS = frozenset(
    {
        "dialect",
        "readonly",
        "allow_ddl",
        "allow_introspection_functions",
        "output_format_schema",
        "format_schema",
        "format_template_resultset",
        "format_template_row",
        "format_template_rows_between_delimiter",
        "format_custom_result_before_delimiter",
        "max_query_size",
        "max_parser_depth",
        "max_ast_elements",
        "max_ast_depth",
        "implicit_select",
        "user_files_path",
    }
)


def _viewer_may_set(name: str) -> bool:
    return name in VIEWER_SETTINGS or (name.startswith(_VIEWER_PREFIX) and "schema" not in name)


def clamp(name: str, value: str, cap: int) -> str:
    """``value`` if it is within ``cap``; otherwise the cap (0 means unlimited to the engine)."""
    try:
        number = float(value)
    except ValueError:
        raise StoreError(BAD_ARGUMENTS, f"Invalid value for setting {name}") from None
    if number <= 0 or number > cap:
        return str(cap)
    return value


def request_settings(
    user: User, requested: Iterable[tuple[str, str]], known: frozenset[str]
) -> dict[str, str]:
    """The settings to apply for ``user``: allowed URL settings, clamped, then the remaining caps."""
    chosen: dict[str, str] = {}
    for name, value in requested:
        if name not in known:
            continue  # the caller reports settings the engine does not know
        if name in DENIED_SETTINGS or (user.readonly and not _viewer_may_set(name)):
            log.warning(
                "user %s: ignoring setting %r, which this server does not let requests change",
                user.name,
                name,
            )
            continue
        chosen[name] = value
    return with_caps(chosen, user.limits)


def with_caps(settings: Mapping[str, str], limits: Mapping[str, int]) -> dict[str, str]:
    out = dict(settings)
    for name, cap in limits.items():
        out[name] = clamp(name, out[name], cap) if name in out else str(cap)
    return out
