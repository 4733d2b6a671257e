"""The machinery every domain job shares: raw Kafka in, windows with lateness, four outputs.

A domain job (``jobs/grid.py`` ...) is a :class:`Domain` (which record, which
checks, which aggregates) handed to :func:`process`, the pure function
``raw readings Table -> Outputs(aggregates, late_events, dead_letters, sensor_health)``.
``jobs/kafka_io.py`` wires Kafka tables from settings around it.

Why this shape (numbers in benchmarks/jobs.py and the README):

* Records are read with the ``raw`` format and decoded by a Java scalar
  function (``AVRO_DECODE``, jobs/java): Flink's ``avro`` format fails the job
  on one undecodable record; a Python UDF would touch every event at ~1/4 of
  the JVM's speed. Bad bytes, NaN/Inf, impossible values and implausible event
  times become dead letters with a reason, in SQL.
* Event time with a bounded out-of-orderness watermark per domain; idle
  partitions stop holding the watermark back after ``table.exec.source.idle-timeout``.
* Late readings: ``CURRENT_WATERMARK`` is read in the first operator after the
  source. A reading whose earliest window is already past the allowed lateness
  goes to the late-events topic with its lateness; everything else is
  guaranteed to be accepted downstream (a downstream watermark is never ahead
  of the source's). Windows are Flink's (legacy) group windows because only
  they support allowed lateness with late firing: each reading that arrives
  after its window fired re-emits the window. The revision is the number of
  such readings, computed from the watermark each late reading saw, so it is
  the same number whichever order the firings happen in.
* Duplicates (same sensor and seq) are flagged by a proctime OVER count
  keyed by (sensor, seq) and left in the stream, so each window can count them
  while aggregating only first deliveries.
* Outputs: a late firing turns the window result into a changelog; the JVM
  function ``EMISSIONS`` keeps each emission as an appended WindowAggregate row
  (an upsert topic would turn every retraction into a tombstone). A correction
  has the same (domain, key_kind, key_id, metric, window_start, window_end) and
  a higher revision, which ClickHouse's ReplacingMergeTree keeps. Keys are
  deterministic, so a row replayed after a restart replaces, never adds.
* Sensor health: ``SENSOR_SILENCE`` (a JVM process table function with one
  event-time timer per sensor) reports a sensor that stops reporting.
* All sinks are transactional (exactly-once, committed on checkpoints) unless
  ``--at-least-once``; operator uids come from the plan (``table.exec.uid.generation``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyflink.table import Table, TableEnvironment

from citystream.jobs.sql import avsc, columns

# --------------------------------------------------------------------------- domain spec


@dataclass(frozen=True)
class Metric:
    """One ``WindowAggregate.metric`` a job emits per key and window.

    ``value`` (SQL over reading columns) gives samples/mean/min/max of that
    value; ``mean`` (SQL over the window's aggregate columns, see
    :attr:`Domain.aggregates`, and ``{window_s}``) overrides the mean, and when
    there is no ``value`` the metric is a single number (mean = min = max).
    A row is emitted only where the metric has a value.
    """

    name: str
    value: str | None = None
    mean: str | None = None
    samples: str | None = None


@dataclass(frozen=True)
class Domain:
    """What distinguishes traffic, water and grid; everything else is shared."""

    name: str
    record: str
    topic: str
    zone_kind: str
    zone: str
    checks: tuple[tuple[str, str], ...]
    metrics: tuple[Metric, ...]
    #: alias -> aggregate SQL; ``{nd}`` is the "first delivery" condition for FILTER clauses.
    aggregates: tuple[tuple[str, str], ...] = ()
    out_of_order_s: int = 5


@dataclass(frozen=True)
class Windows:
    """Window sizes, allowed lateness and plausibility limits (all configurable per run)."""

    tumble_s: int = 60
    hop_size_s: int = 300
    hop_slide_s: int = 60
    zone_s: int = 60
    allowed_lateness_s: int = 120
    #: Event times before this (UTC) are dead letters: clocks reset to 1970, corrupt fields.
    min_event_time: str = "2000-01-01 00:00:00"
    #: Event times more than this ahead of processing time are dead letters.
    max_future_s: int = 86_400
    #: How long duplicate detection remembers a (sensor, seq), processing time. A duplicate
    #: arriving later than lateness + window would be a late event anyway; state grows with
    #: events per TTL, so keep it near allowed lateness + hop size.
    dedup_ttl_s: int = 600
    #: Event-time gap after which a sensor is reported silent (sensor-health topic).
    silence_s: int = 300


@dataclass
class Outputs:
    """The result tables of a domain job."""

    aggregates: Table
    late_events: Table
    dead_letters: Table
    sensor_health: Table


# --------------------------------------------------------------------------- environment


def window_options(windows: Windows) -> dict[str, str]:
    """Job options the group windows read: allowed lateness with a re-emission per late reading.

    Why options and not a call inside :func:`process`: they are job-wide
    configuration, decided once where the environment is built
    (``runtime.table_environment(..., overrides=window_options(w))``); a pure
    function that set them would change every other query of the job.
    """
    return {
        "table.exec.emit.late-fire.enabled": "true",
        "table.exec.emit.late-fire.delay": "0 s",
        "table.exec.emit.allow-lateness": f"{int(windows.allowed_lateness_s)} s",
        "table.exec.state.ttl": f"{int(windows.dedup_ttl_s)} s",
    }


def _check_window_options(t_env: TableEnvironment, windows: Windows) -> None:
    """Refuse to plan windows whose lateness the environment was not configured for."""
    conf = t_env.get_config()
    wrong = {k: v for k, v in window_options(windows).items() if conf.get(k, None) != v}
    if wrong:
        raise ValueError(
            f"the table environment lacks the window options {wrong}: build it with "
            "runtime.table_environment(..., overrides=window_options(windows))"
        )


# --------------------------------------------------------------------------- source DDL


def interval(seconds: int) -> str:
    """A SQL interval literal of whole seconds (``INTERVAL '300' SECOND`` overflows SECOND(2))."""
    s = int(seconds)
    return f"INTERVAL '{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}' HOUR TO SECOND"


def record_type(domain: Domain) -> str:
    """The Flink SQL ROW type of the domain's Avro record (what AVRO_DECODE returns)."""
    return f"ROW<{columns(domain.record)}>"


def raw_columns(domain: Domain, windows: Windows) -> str:
    """Column list of a raw readings table: bytes, Kafka coordinates, decoded record, rowtime.

    ``ts`` is NULL for anything that is not a plausible reading, so a corrupt or
    far-future record can never move the watermark.
    """
    floor = dt.datetime.fromisoformat(windows.min_event_time).replace(tzinfo=dt.UTC)
    min_ms = int(floor.timestamp() * 1000)
    return f"""`d` AS AVRO_DECODE(`raw_value`, '{record_type(domain)}'),
  `pt` AS PROCTIME(),
  `ts` AS ENVELOPE_TIME(`raw_value`, {min_ms}, {int(windows.max_future_s) * 1000}),
  WATERMARK FOR `ts` AS `ts` - {interval(domain.out_of_order_s)}"""


# --------------------------------------------------------------------------- the pure function


def _reading_fields(domain: Domain) -> list[str]:
    return [f["name"] for f in avsc(domain.record)["fields"] if f["name"] != "envelope"]


_ENVELOPE = ("sensor_id", "site_id", "zone_id", "domain", "seq", "quality")


def process(t_env: TableEnvironment, domain: Domain, raw: Table, windows: Windows | None = None) -> Outputs:
    """Raw readings (columns of :func:`raw_kafka_table`) -> aggregates, late events, dead letters, health.

    Pure: no sources, sinks or job options are touched (the environment must
    carry :func:`window_options`); tests feed a bounded raw table and read the
    outputs back. The views it registers are named after the domain and, for
    windows, the key and window kind (:func:`window_name`), never after how
    often it ran, so the plan - and the operator uids and the state uids of
    the JVM functions - is the same in every process that builds this job.
    """
    w = windows or Windows()
    _check_window_options(t_env, w)
    p = f"_cs_{domain.name}"
    t_env.create_temporary_view(f"{p}_raw", raw)
    _classify(t_env, domain, w, p)
    dead_letters, late_events = _rejected(t_env, w, p)
    _accepted(t_env, domain, w, p)
    sensor_health = t_env.sql_query(f"""
  SELECT sensor_id, site_id, zone_id, `domain`, status, since, details
  FROM SENSOR_SILENCE(
    input => TABLE {p}_accepted PARTITION BY sensor_id, on_time => DESCRIPTOR(ts),
    silence_ms => CAST({int(w.silence_s) * 1000} AS BIGINT), uid => '{p}_silence')""")
    parts = [
        _windowed(t_env, domain, f"{p}_marked", "sensor", "sensor_id", "TUMBLE", (w.tumble_s,)),
        _windowed(t_env, domain, f"{p}_marked", "sensor", "sensor_id", "HOP", (w.hop_slide_s, w.hop_size_s)),
        _windowed(t_env, domain, f"{p}_marked", domain.zone_kind, "zone_key", "TUMBLE", (w.zone_s,)),
    ]
    aggregates = parts[0]
    for part in parts[1:]:
        aggregates = aggregates.union_all(part)
    return Outputs(aggregates, late_events, dead_letters, sensor_health)


def _classify(t_env: TableEnvironment, domain: Domain, w: Windows, p: str) -> None:
    """``{p}_raw`` -> ``{p}_classified``: flat columns, the first failed check as ``reason``.

    Flattened first, so the domain's checks are plain SQL over the reading's columns; every
    reading also learns the earliest window end it contributes to (accepted there means
    accepted in every window), which decides lateness once for all window kinds.
    """
    fields = _reading_fields(domain)
    flat = ",\n    ".join(
        [f"d.record.envelope.`{c}` AS `{c}`" for c in _ENVELOPE]
        + [f"d.record.`{c}` AS `{c}`" for c in fields]
    )
    t_env.create_temporary_view(
        f"{p}_decoded",
        t_env.sql_query(f"""
  SELECT src_topic, src_partition, src_offset, raw_key, raw_value, pt, ts,
         d.reason AS decode_reason, d.error AS decode_error,
         CURRENT_WATERMARK(ts) AS wm, {flat}
  FROM {p}_raw"""),
    )
    checks = [("ts IS NOT NULL", "event time outside the plausible range"), *domain.checks]
    reason = "\n      ".join(f"WHEN ({cond}) IS NOT TRUE THEN 'invalid_value'" for cond, _ in checks)
    error = "\n      ".join(
        f"WHEN ({cond}) IS NOT TRUE THEN '{msg.replace(chr(39), chr(39) * 2)}'" for cond, msg in checks
    )
    ts_ms = "EPOCH_MS(ts)"
    ends = [
        f"({ts_ms} - MOD({ts_ms}, {s * 1000}) + {s * 1000})"
        for s in sorted({w.tumble_s, w.hop_slide_s, w.zone_s})
    ]
    first_end = ends[0] if len(ends) == 1 else f"LEAST({', '.join(ends)})"
    t_env.create_temporary_view(
        f"{p}_classified",
        t_env.sql_query(f"""
  SELECT src_topic, src_partition, src_offset, raw_key, raw_value, pt, ts, wm,
    CASE WHEN decode_reason IS NOT NULL THEN decode_reason
      {reason}
    END AS reason,
    CASE WHEN decode_reason IS NOT NULL THEN decode_error
      {error}
    END AS error,
    EPOCH_MS(wm) AS wm_ms, {ts_ms} AS ts_ms, {first_end} AS first_end_ms,
    {_columns(domain)}
  FROM {p}_decoded"""),
    )


def _columns(domain: Domain) -> str:
    return ", ".join([*(f"`{c}`" for c in _ENVELOPE), *(f"`{c}`" for c in _reading_fields(domain))])


def _too_late(w: Windows) -> str:
    """Behind the watermark by more than the allowed lateness at its earliest window end."""
    return f"wm_ms IS NOT NULL AND wm_ms >= first_end_ms - 1 + {int(w.allowed_lateness_s) * 1000}"


def _rejected(t_env: TableEnvironment, w: Windows, p: str) -> tuple[Table, Table]:
    """(dead letters, late events) of ``{p}_classified``: every reading not aggregated, with why."""
    dead_letters = t_env.sql_query(f"""
  SELECT src_topic AS source_topic, src_partition AS source_partition, src_offset AS source_offset,
         raw_key AS original_key, raw_value AS original_value, reason, COALESCE(error, '') AS error,
         CAST(LOCALTIMESTAMP AS TIMESTAMP(3)) AS received_at
  FROM {p}_classified WHERE reason IS NOT NULL""")
    late_events = t_env.sql_query(f"""
  SELECT src_topic AS source_topic, src_partition AS source_partition, src_offset AS source_offset,
         sensor_id, CAST(ts AS TIMESTAMP(3)) AS event_time, wm AS `watermark`,
         wm_ms - ts_ms AS lateness_ms, raw_value AS original
  FROM {p}_classified WHERE reason IS NULL AND {_too_late(w)}""")
    return dead_letters, late_events


def _accepted(t_env: TableEnvironment, domain: Domain, w: Windows, p: str) -> None:
    """``{p}_accepted`` (what sensor silence watches) and ``{p}_marked`` (what the windows read).

    ``occurrence`` numbers deliveries of one (sensor, seq), so a duplicate is counted in
    ``duplicates`` and aggregated once.
    """
    t_env.create_temporary_view(
        f"{p}_accepted",
        t_env.sql_query(f"""
  SELECT sensor_id, site_id, zone_id, `domain`, ts
  FROM {p}_classified WHERE reason IS NULL AND NOT ({_too_late(w)})"""),
    )
    t_env.create_temporary_view(
        f"{p}_marked",
        t_env.sql_query(f"""
  SELECT ts, ts_ms, wm_ms, wm_ms IS NOT NULL AND ts_ms < wm_ms AS is_late, {_columns(domain)},
         {domain.zone} AS zone_key,
         COUNT(*) OVER (PARTITION BY sensor_id, seq ORDER BY pt
                        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS occurrence
  FROM {p}_classified WHERE reason IS NULL AND NOT ({_too_late(w)})"""),
    )


def window_name(domain: Domain, key_kind: str, kind: str) -> str:
    """View name and EMISSIONS state uid of one window: (domain, key kind, window kind), nothing else.

    Why no sizes: a savepoint must restore into the job after a window length
    changed its configuration; why no counter: the uid would then depend on
    how many windows the process had planned before.
    """
    return f"_cs_{domain.name}_{key_kind}_{kind.lower()}"


def _windowed(
    t_env: TableEnvironment,
    domain: Domain,
    view: str,
    key_kind: str,
    key_col: str,
    kind: str,
    sizes: tuple[int, ...],
) -> Table:
    """One group window over the marked stream, unpivoted into WindowAggregate rows."""
    name = window_name(domain, key_kind, kind)
    spec = "ts, " + ", ".join(interval(s) for s in sizes)
    window_s = sizes[-1]
    nd = "occurrence = 1"
    aggs = [
        f"COUNT(*) FILTER (WHERE {nd}) AS samples",
        "COUNT(*) FILTER (WHERE occurrence > 1) AS duplicates",
        f"COUNT(*) FILTER (WHERE {nd} AND is_late) AS late",
        "ARRAY_AGG(wm_ms) FILTER (WHERE is_late) AS late_wms",
    ]
    for i, m in enumerate(domain.metrics):
        if m.value:
            aggs += [
                f"COUNT({m.value}) FILTER (WHERE {nd}) AS n_{i}",
                f"AVG({m.value}) FILTER (WHERE {nd}) AS mean_{i}",
                f"MIN({m.value}) FILTER (WHERE {nd}) AS min_{i}",
                f"MAX({m.value}) FILTER (WHERE {nd}) AS max_{i}",
            ]
    aggs += [f"{sql.format(nd=nd)} AS {alias}" for alias, sql in domain.aggregates]
    # Every branch reads the same columns (sensor_id and zone_key), so the planner shares one
    # de-duplication operator between them instead of pruning each branch's input differently.
    # A sensor's zone is fixed, so grouping sensors by (sensor, zone) changes nothing.
    if key_col == "sensor_id":
        group = "sensor_id, zone_key"
    else:
        group = key_col
        aggs.append(f"COUNT(DISTINCT sensor_id) FILTER (WHERE {nd}) AS sensors")
    t_env.create_temporary_view(
        name,
        t_env.sql_query(f"""
  SELECT {key_col} AS key_id, {kind}_START({spec}) AS window_start, {kind}_END({spec}) AS window_end,
         {", ".join(aggs)}
  FROM {view}
  GROUP BY {group}, {kind}({spec})"""),
    )
    # Unpivot in one operator (UNNEST): a UNION ALL of per-metric projections would make the
    # planner prune each branch's aggregate differently and run one window operator per metric.
    rows = []
    for i, m in enumerate(domain.metrics):
        mean = f"({m.mean.format(window_s=float(window_s))})" if m.mean else f"mean_{i}"
        samples = m.samples or (f"n_{i}" if m.value else "samples")
        lo, hi = (f"min_{i}", f"max_{i}") if m.value else (mean, mean)
        rows.append(
            f"ROW(CAST('{m.name}' AS STRING), CAST({samples} AS BIGINT), CAST({mean} AS DOUBLE), "
            f"CAST({lo} AS DOUBLE), CAST({hi} AS DOUBLE))"
        )
    t_env.create_temporary_view(
        f"{name}_packed",
        t_env.sql_query(f"""
  SELECT key_id, window_start, window_end, late, duplicates,
         COUNT_AT_LEAST(late_wms, EPOCH_MS(window_end) - 1) AS revision,
         ARRAY[
    {("," + chr(10) + "    ").join(rows)}
  ] AS metrics
  FROM {name}"""),
    )
    # Late firings make the window result a changelog; EMISSIONS (jobs/java) keeps every
    # emission as an appended row, and the revision tells ClickHouse which one is current.
    return t_env.sql_query(f"""
  SELECT '{domain.name}' AS domain, '{key_kind}' AS key_kind, e.key_id, m.metric,
         e.window_start, e.window_end, m.samples, m.`mean`, m.`min`, m.`max`, e.late, e.duplicates, e.revision
  FROM EMISSIONS(input => TABLE {name}_packed PARTITION BY key_id, uid => '{name}') AS e
  CROSS JOIN UNNEST(e.metrics) AS m(metric, samples, `mean`, `min`, `max`)
  WHERE m.samples > 0 AND m.`mean` IS NOT NULL""")
