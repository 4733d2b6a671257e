"""Detect job: WindowAggregate rows in; Anomaly, Alert and SensorHealth records out.

``detect`` is the whole job as a pure ``DataStream -> DataStream`` function
(tests feed it bounded collections at parallelism 1 and 2); ``main`` only
wires the Kafka topics from settings. The logic is citystream.detection, the
same code the quality report scores, so the report's numbers are the job's.

Why this shape:

* Python sees aggregates only (one row per sensor, metric and minute), never
  raw readings - a Python operator handles ~10^4 records/s, the raw feed is
  far more.
* Stage 1 is keyed by (domain, sensor, metric): each key's detector state is
  one JSON string in ``ValueState``, so checkpoints and savepoints carry it
  and a restore continues with identical scores. Warm-up is per key.
* Stage 2 is keyed by alert group (a zone/DMA, or the whole grid): verdicts
  wait in ``MapState`` until the watermark passes their window, then the
  group's windows are processed in order - health, muting, cross-sensor
  coherence, the alert lifecycle. Event-time timers make the order
  independent of parallelism and arrival order.
* Both stateful operators have fixed uids, so a savepoint restores into a
  rebuilt job.

Measured (MiniCluster, parallelism 1, 2 shared cores, bounded collection of
simulator aggregates, marginal rate after start-up): ~950 rows/s with a timer
and MapState per row in stage 1; ~1.7k rows/s without them and with one timer
per group and window in stage 2; ~2.0k rows/s with a bundle of 20,000
(bundle 1,000: ~0.9k). A trivial keyed ValueState function measures ~4k rows/s
in the same harness, so the two Python hops are the cost, not the detectors
(the pure code does ~100k rows/s). A 300-sensor city makes ~25 rows/s.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pyflink.common import Duration, Row, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import DataStream, KeyedProcessFunction, RuntimeContext, StreamExecutionEnvironment
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor
from pyflink.table import StreamTableEnvironment

from citystream import kafkaconf
from citystream.detection import (
    DetectionConfig,
    GroupEngine,
    GroupState,
    MetricDetector,
    MetricState,
    load_config,
)
from citystream.jobs.cli import parse_detect_args
from citystream.jobs.runtime import detached, stream_environment
from citystream.jobs.sql import kafka_table
from citystream.settings import Settings
from citystream.settings import load as load_settings

#: Column order of the rows ``detect`` consumes (WindowAggregate, times as epoch ms).
INPUT_FIELDS = (
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
)
INPUT_TYPE = Types.ROW_NAMED(
    list(INPUT_FIELDS),
    [
        Types.STRING(),
        Types.STRING(),
        Types.STRING(),
        Types.STRING(),
        Types.LONG(),
        Types.LONG(),
        Types.LONG(),
        Types.DOUBLE(),
        Types.DOUBLE(),
        Types.DOUBLE(),
    ],
)
#: What ``detect`` emits: (record kind: anomaly | alert | health, the record as JSON).
OUTPUT_TYPE = Types.TUPLE([Types.STRING(), Types.STRING()])
METRIC_UID = "detect-metric-v1"
GROUP_UID = "detect-group-v1"


#: How far behind the newest window an aggregate may arrive and still be judged. The domain
#: jobs emit a window when their watermark passes it; their parallel writers can be up to a
#: window apart within one partition.
OUT_OF_ORDER_MS = 60_000


class _WindowEnd(TimestampAssigner):
    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return int(value[5])


class MetricStage(KeyedProcessFunction):
    """Stage 1: one (domain, sensor, metric) key; its detector state is JSON in ValueState.

    Rows are judged on arrival: one state read and one write per row, no
    timer (a timer per row cost 3-4x the throughput). A row for a window at
    or before the key's last judged window is a late revision or a reordered
    delivery and is skipped - the domain jobs emit each key's windows a
    minute apart, so reordering needs a delivery delayed by a whole window.
    """

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self.state = None
        self.detectors: dict[tuple[str, str], MetricDetector | None] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(ValueStateDescriptor("detector", Types.STRING()))

    def _detector(self, domain: str, metric: str) -> MetricDetector | None:
        det = self.detectors.get((domain, metric), False)
        if det is False:
            rule = self.config.rule(domain, metric)
            det = MetricDetector(rule) if rule is not None else None
            self.detectors[(domain, metric)] = det
        return det  # type: ignore[return-value]

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context):  # type: ignore[override]
        if value[1] != "sensor":
            return
        det = self._detector(value[0], value[3])
        if det is None:
            return
        raw = self.state.value()
        st = MetricState.from_json(raw) if raw else det.init()
        st2, verdict = det.step(st, dict(zip(INPUT_FIELDS, value, strict=True)))
        if st2 == st:
            return  # late or reordered: nothing learned, nothing to say
        self.state.update(st2.to_json())
        verdict["domain"] = value[0]
        yield self.config.group_of(value[0], value[2]), json.dumps(verdict, separators=(",", ":")), value[5]


class GroupStage(KeyedProcessFunction):
    """Stage 2: one alert group; verdicts wait for the watermark, then windows run in order.

    Verdicts are appended to ListState (an append never reads the list back,
    which keeps the per-record cost flat for a group of hundreds of sensors);
    the timer of a window reads the list once and keeps what is not yet due.
    """

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self.engine = GroupEngine(config)
        self.pending = None
        self.state = None
        self.timers: dict[str, int] = {}

    def open(self, runtime_context: RuntimeContext) -> None:
        self.pending = runtime_context.get_list_state(ListStateDescriptor("pending", Types.STRING()))
        self.state = runtime_context.get_state(ValueStateDescriptor("group", Types.STRING()))

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context):  # type: ignore[override]
        self.pending.add(value[1])
        # One timer per group and window, not per verdict: each registration is a message to the
        # JVM. The memo is only an optimisation - after a restore it is empty and timers are
        # registered again, which Flink de-duplicates.
        w = int(value[2])
        if self.timers.get(value[0]) != w:
            self.timers[value[0]] = w
            ctx.timer_service().register_event_time_timer(w)
        return
        yield  # pragma: no cover - a generator like the other callbacks

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext):  # type: ignore[override]
        due: dict[int, list[dict[str, Any]]] = {}
        later: list[str] = []
        for text in self.pending.get() or ():
            v = json.loads(text)
            if int(v["window_end"]) <= timestamp:
                due.setdefault(int(v["window_end"]), []).append(v)
            else:
                later.append(text)
        if not due:
            return
        self.pending.update(later)
        raw = self.state.value()
        st = GroupState.from_json(json.loads(raw)) if raw else self.engine.init()
        for w in sorted(due):
            if st.window_end is not None and w <= st.window_end:
                continue  # its window was already judged: a straggler cannot change history
            items = sorted(due[w], key=lambda v: (v["key_id"], v["metric"]))
            st, out = self.engine.step(st, items[0]["domain"], w, items)
            for kind, key in (("health", "health"), ("anomaly", "anomalies"), ("alert", "alerts")):
                for rec in out[key]:
                    yield kind, json.dumps(rec, separators=(",", ":"), sort_keys=True)
        self.state.update(json.dumps(st.to_json(), separators=(",", ":")))


def with_window_watermarks(aggregates: DataStream, out_of_order_ms: int = OUT_OF_ORDER_MS) -> DataStream:
    """Event time from ``window_end`` for a stream that has none of its own (a collection).

    Only right for a source whose subtasks each read rows in window order; a
    Kafka topic must declare its watermark in the source instead (see
    ``run``), because one source subtask reads several partitions and
    interleaves them arbitrarily - a watermark assigned downstream of that
    would call a lagging partition's rows late.
    """
    return aggregates.assign_timestamps_and_watermarks(
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(out_of_order_ms))
        .with_timestamp_assigner(_WindowEnd())
        .with_idleness(Duration.of_seconds(60))
    )


def detect(aggregates: DataStream, config: DetectionConfig | None = None) -> DataStream:
    """WindowAggregate rows (``INPUT_TYPE``) with watermarks -> (kind, JSON record) out.

    The input must carry event-time watermarks (from the Kafka source, or
    ``with_window_watermarks``): stage 2 judges a group's window when the
    watermark passes its end, so every sensor's verdict for it is in.
    """
    cfg = config or load_config()
    verdicts = (
        aggregates.key_by(lambda r: f"{r[0]}|{r[2]}|{r[3]}", key_type=Types.STRING())
        .process(MetricStage(cfg), output_type=Types.TUPLE([Types.STRING(), Types.STRING(), Types.LONG()]))
        .uid(METRIC_UID)
        .name("detect per sensor and metric")
    )
    return (
        verdicts.key_by(lambda v: v[0], key_type=Types.STRING())
        .process(GroupStage(cfg), output_type=OUTPUT_TYPE)
        .uid(GROUP_UID)
        .name("health, grouping and alert lifecycle")
    )


# --------------------------------------------------------------------------- Kafka wiring

_ANOMALY_COLS = (
    "domain", "key_kind", "key_id", "metric", "detector", "event_time", "window_start", "window_end",
    "score", "severity", "observed", "expected", "explanation",
)  # fmt: skip
_ALERT_COLS = (
    "alert_id", "state", "domain", "kind", "key_kind", "affected_keys", "first_seen", "last_seen",
    "severity", "anomaly_count", "explanation",
)  # fmt: skip
_HEALTH_COLS = ("sensor_id", "site_id", "zone_id", "domain", "status", "since", "details")
_TIME_COLS = {"event_time", "window_start", "window_end", "first_seen", "last_seen", "since"}


def _as_sql(cols: Sequence[str]) -> str:
    """JSON text column -> the Avro record's columns (times from epoch ms to TIMESTAMP(3) UTC)."""
    parts = []
    for c in cols:
        if c == "affected_keys":
            parts.append(
                f"CAST(JSON_QUERY(j, '$.{c}' RETURNING ARRAY<STRING>) AS ARRAY<STRING NOT NULL>) AS `{c}`"
            )
        elif c in _TIME_COLS:
            parts.append(
                f"CAST(TO_TIMESTAMP_LTZ(CAST(JSON_VALUE(j, '$.{c}') AS BIGINT), 3) AS TIMESTAMP(3)) AS `{c}`"
            )
        elif c in ("score", "observed", "expected"):
            parts.append(f"CAST(JSON_VALUE(j, '$.{c}') AS DOUBLE) AS `{c}`")
        elif c == "anomaly_count":
            parts.append(f"CAST(JSON_VALUE(j, '$.{c}') AS BIGINT) AS `{c}`")
        else:
            parts.append(f"COALESCE(JSON_VALUE(j, '$.{c}'), '') AS `{c}`")
    return ", ".join(parts)


#: The Python worker settings measured in benchmarks (see the module docstring).
WORKER_OPTIONS = {
    "python.fn-execution.bundle.size": "20000",
    "python.fn-execution.bundle.time": "1000",
    "python.state.cache-size": "10000",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run against Kafka from settings; ``--bounded`` stops at the offsets current at start."""
    args = parse_detect_args(__doc__ or "", argv)
    # The config is read at every (re)start: edit infra/detection.toml, restart from a savepoint.
    settings = load_settings()
    source = settings.topic("aggregates") + args.input_suffix
    run(
        settings, load_config(args.config), bounded=args.bounded, parallelism=args.parallelism,
        savepoint=args.savepoint, offsets=args.input_offsets(source),
        input_suffix=args.input_suffix, output_suffix=args.output_suffix,
    )  # fmt: skip
    return 0


def environment(
    settings: Settings,
    *,
    parallelism: int | None = None,
    savepoint: str | None = None,
    bounded: bool = False,
    job: str = "citystream-detect",
) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    """``runtime.stream_environment`` with the detect job's name, worker settings and idle timeout.

    A partition with no traffic must not hold every group's watermark (and
    alerts) back for long, but aggregates arrive a minute apart: 60 s.
    """
    return stream_environment(
        settings, job=job, parallelism=parallelism, bounded=bounded, savepoint=savepoint,
        idle_timeout="60 s", overrides=WORKER_OPTIONS,
    )  # fmt: skip


def run(
    settings: Settings,
    config: DetectionConfig,
    *,
    bounded: bool,
    parallelism: int | None = None,
    savepoint: str | None = None,
    wait: bool = True,
    offsets: Mapping[int, tuple[int, int]] | None = None,
    input_suffix: str = "",
    output_suffix: str = "",
) -> Any:
    """aggregates topic -> ``detect`` -> anomalies, alerts and sensor-health topics (Avro, exactly-once).

    ``savepoint`` restores every operator's state (detector baselines,
    pending verdicts, Kafka offsets): the uids are fixed, so a rebuilt job
    restores too. With ``wait=False`` the job is left running and its
    ``TableResult`` returned (``get_job_client()`` stops it with a savepoint).
    A replay reads exactly ``offsets`` of the aggregates topic (with
    ``input_suffix``: a domain replay's output) and writes to topics, a group
    and transactional ids carrying ``output_suffix``.
    """
    _, t_env = environment(
        settings, parallelism=parallelism, savepoint=savepoint, bounded=bounded or offsets is not None,
        job=f"citystream-detect{output_suffix}",
    )  # fmt: skip
    lag_s = OUT_OF_ORDER_MS // 1000
    security = kafkaconf.flink(settings, "jobs")
    t_env.execute_sql(
        kafka_table(
            "aggregates",
            "citystream.WindowAggregate",
            topic=settings.topic("aggregates") + input_suffix,
            bootstrap=settings.kafka_bootstrap,
            bounded=bounded,
            group_id=f"citystream-detect{output_suffix}",
            security=security,
            offsets=offsets,
            # Per-partition watermarks, made inside the source (see with_window_watermarks).
            extra_columns=f"WATERMARK FOR window_end AS window_end - INTERVAL '{lag_s}' SECOND",
        )
    )
    ms = "CAST(TIMESTAMPDIFF(SECOND, TIMESTAMP '1970-01-01 00:00:00', {c}) AS BIGINT) * 1000"
    # Only the detectors' windows (config.window_ms, the per-sensor tumbling minute): the topic also
    # carries 5-minute hopping rows for the same sensors, and letting them in made each key's
    # verdicts depend on how the two window kinds happened to interleave in the topic (a replay of
    # the same offsets then disagreed with the live run).
    length = f"{ms.format(c='window_end')} - {ms.format(c='window_start')}"
    source = t_env.sql_query(
        "SELECT domain, key_kind, key_id, metric, "
        f"{ms.format(c='window_start')} AS window_start, {ms.format(c='window_end')} AS window_end, "
        "samples, `mean`, `min`, `max` FROM aggregates "
        f"WHERE revision = 0 AND key_kind = 'sensor' AND {length} = {int(config.window_ms)}"
    )
    rows = t_env.to_data_stream(source).map(lambda r: Row(*r), output_type=INPUT_TYPE)
    out = detect(rows, config)
    statements = t_env.create_statement_set()
    for kind, record, topic, cols, key in (
        ("anomaly", "citystream.Anomaly", "anomalies", _ANOMALY_COLS, "key_id"),
        ("alert", "citystream.Alert", "alerts", _ALERT_COLS, "alert_id"),
        ("health", "citystream.SensorHealth", "sensor-health", _HEALTH_COLS, "sensor_id"),
    ):
        t_env.execute_sql(
            kafka_table(
                f"{kind}_sink",
                record,
                topic=settings.topic(topic) + output_suffix,
                bootstrap=settings.kafka_bootstrap,
                sink=True,
                transactional_id_prefix=f"{settings.topic_prefix}detect-{kind}{output_suffix}",
                key_field=key,
                security=security,
            )
        )
        texts = out.filter(lambda v, k=kind: v[0] == k).map(
            lambda v: Row(v[1]), output_type=Types.ROW_NAMED(["j"], [Types.STRING()])
        )
        t_env.create_temporary_view(f"{kind}_json", t_env.from_data_stream(texts))
        statements.add_insert_sql(f"INSERT INTO {kind}_sink SELECT {_as_sql(cols)} FROM {kind}_json")
    result = statements.execute()
    if not wait or detached():
        return result
    result.wait()
    return None


if __name__ == "__main__":
    sys.exit(main())
