"""A domain job's Kafka wiring: the raw readings source, the four result sinks, ``main``.

:mod:`citystream.jobs.common` holds the pure ``Table -> Outputs`` function; this
module puts Kafka tables from settings around it (and a replay's exact offsets and
per-run topics), so the function stays testable on bounded input without a broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from pyflink.table import StatementSet, TableEnvironment, TableResult

from citystream import kafkaconf
from citystream.jobs.cli import parse_domain_args
from citystream.jobs.common import Domain, Outputs, Windows, process, raw_columns, window_options
from citystream.jobs.runtime import detached, table_environment
from citystream.jobs.sql import kafka_table, offset_options
from citystream.settings import Settings
from citystream.settings import load as load_settings

# --------------------------------------------------------------------------- the source


def raw_kafka_table(
    table: str,
    domain: Domain,
    windows: Windows,
    *,
    topic: str,
    bootstrap: str,
    bounded: bool = False,
    group_id: str | None = None,
    watermark_on_event: bool = False,
    security: Mapping[str, str] | None = None,
    offsets: Mapping[int, tuple[int, int]] | None = None,
) -> str:
    """``CREATE TEMPORARY TABLE`` reading a readings topic as raw bytes (key and value).

    ``watermark_on_event`` emits a watermark after every record instead of
    every 200 ms: tests use it so that which reading is late does not depend on
    timing; production keeps periodic watermarks (cheaper). ``offsets``
    (partition -> [start, end)) reads exactly that range (a replay). ``security``
    (:func:`citystream.kafkaconf.flink`) holds a password: never log the DDL.
    """
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": bootstrap,
        "properties.group.id": group_id or f"citystream-{domain.name}",
        "properties.isolation.level": "read_committed",
        "scan.startup.mode": "earliest-offset",
        "key.format": "raw",
        "key.fields": "raw_key",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        **(security or {}),
    }
    if bounded:
        options["scan.bounded.mode"] = "latest-offset"
    if offsets is not None:
        options.update(offset_options(offsets))
    if watermark_on_event:
        options["scan.watermark.emit.strategy"] = "on-event"
    opts = ",\n  ".join(f"'{k}' = '{v}'" for k, v in options.items())
    return f"""CREATE TEMPORARY TABLE `{table}` (
  `raw_key` BYTES,
  `raw_value` BYTES,
  `src_topic` STRING METADATA FROM 'topic' VIRTUAL,
  `src_partition` INT METADATA FROM 'partition' VIRTUAL,
  `src_offset` BIGINT METADATA FROM 'offset' VIRTUAL,
  {raw_columns(domain, windows)}
) WITH (
  {opts}
)"""


# --------------------------------------------------------------------------- sinks and main


def append_sink(
    table: str,
    record: str,
    *,
    topic: str,
    bootstrap: str,
    transactional_id_prefix: str | None,
    key_field: str | None = None,
    security: Mapping[str, str] | None = None,
) -> str:
    """Kafka table (Avro value, ``key_field`` as the raw key) for append-only results."""
    return kafka_table(
        table, record, topic=topic, bootstrap=bootstrap, sink=True,
        transactional_id_prefix=transactional_id_prefix, key_field=key_field, security=security,
    )  # fmt: skip


def build(
    t_env: TableEnvironment,
    settings: Settings,
    domain: Domain,
    windows: Windows,
    *,
    bounded: bool,
    exactly_once: bool = True,
    watermark_on_event: bool = False,
    offsets: Mapping[int, tuple[int, int]] | None = None,
    output_suffix: str = "",
    input_suffix: str = "",
) -> dict[str, str]:
    """Register the raw source and the four sinks for ``domain``; returns output name -> sink table.

    A replay (``citystream replay``) passes the exact ``offsets`` to read and an
    ``output_suffix`` (``.replay.<run id>``) that goes on every result topic,
    the consumer group and the transactional ids, so nothing live is touched;
    ``input_suffix`` reads a copy of the readings topic instead (paced replays).
    """
    job = f"citystream-{domain.name}{output_suffix}"
    security = kafkaconf.flink(settings, "jobs")
    t_env.execute_sql(
        raw_kafka_table(
            f"{domain.name}_raw", domain, windows,
            topic=settings.topic(domain.topic) + input_suffix, bootstrap=settings.kafka_bootstrap,
            bounded=bounded, group_id=job, watermark_on_event=watermark_on_event, security=security,
            offsets=offsets,
        )
    )  # fmt: skip
    sinks = {
        "aggregates": f"{domain.name}_aggregates",
        "late_events": f"{domain.name}_late_events",
        "dead_letters": f"{domain.name}_dead_letters",
        "sensor_health": f"{domain.name}_sensor_health",
    }
    # Transactional ids must be unique per job and deployment (topic prefix), stable across restarts.
    tx = f"{settings.topic_prefix}{job}"
    prefix = (lambda what: f"{tx}-{what}") if exactly_once else (lambda what: None)
    for what, record, topic, key in (
        ("aggregates", "citystream.WindowAggregate", "aggregates", "key_id"),
        ("late_events", "citystream.LateEvent", "late-events", "sensor_id"),
        ("dead_letters", "citystream.DeadLetter", "dead-letter", "original_key"),
        ("sensor_health", "citystream.SensorHealth", "sensor-health", "sensor_id"),
    ):
        t_env.execute_sql(
            append_sink(
                sinks[what], record, topic=settings.topic(topic) + output_suffix,
                bootstrap=settings.kafka_bootstrap,
                transactional_id_prefix=prefix(what.replace("_", "-")), key_field=key, security=security,
            )
        )  # fmt: skip
    return sinks


def add_inserts(stmt: StatementSet, outputs: Outputs, sinks: dict[str, str]) -> StatementSet:
    """Every output into its sink, in one statement set: one Flink job, one source read."""
    for what, sink in sinks.items():
        stmt.add_insert(sink, getattr(outputs, what))
    return stmt


def insert_all(t_env: TableEnvironment, outputs: Outputs, sinks: dict[str, str]) -> TableResult:
    """Run the job: all outputs of :func:`process` into the sinks of :func:`build`."""
    return add_inserts(t_env.create_statement_set(), outputs, sinks).execute()


def run_domain_job(
    settings: Settings,
    domain: Domain,
    windows: Windows,
    *,
    bounded: bool = False,
    parallelism: int | None = None,
    exactly_once: bool = True,
    watermark_on_event: bool = False,
    savepoint: str | None = None,
    offsets: Mapping[int, tuple[int, int]] | None = None,
    output_suffix: str = "",
    input_suffix: str = "",
) -> None:
    """Kafka tables from ``settings`` -> :func:`process` -> sinks; waits unless ``flink run --detached``.

    ``offsets``, ``output_suffix``, ``input_suffix``: a replay's input range and topics (see :func:`build`).
    """
    t_env = table_environment(
        settings, job=f"citystream-{domain.name}{output_suffix}", parallelism=parallelism,
        bounded=bounded or offsets is not None, savepoint=savepoint, overrides=window_options(windows),
    )  # fmt: skip
    sinks = build(
        t_env, settings, domain, windows, bounded=bounded, exactly_once=exactly_once,
        watermark_on_event=watermark_on_event, offsets=offsets, output_suffix=output_suffix,
        input_suffix=input_suffix,
    )  # fmt: skip
    outputs = process(t_env, domain, t_env.from_path(f"{domain.name}_raw"), windows)
    result = insert_all(t_env, outputs, sinks)
    if not detached():
        result.wait()


def main_for(domain: Domain, argv: Sequence[str] | None = None) -> int:
    """The thin ``main()`` of every domain job: its arguments (jobs/cli.py) -> :func:`run_domain_job`."""
    args = parse_domain_args(domain.name, domain.topic, Windows(), domain.out_of_order_s, argv)
    settings = load_settings()
    run_domain_job(
        settings, replace(domain, out_of_order_s=args.out_of_order_s), args.windows,
        bounded=args.bounded, parallelism=args.parallelism, exactly_once=args.exactly_once,
        watermark_on_event=args.watermark_on_event, savepoint=args.savepoint,
        offsets=args.input_offsets(settings.topic(domain.topic) + args.input_suffix),
        output_suffix=args.output_suffix, input_suffix=args.input_suffix,
    )  # fmt: skip
    return 0
