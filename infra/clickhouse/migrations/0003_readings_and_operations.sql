-- Raw readings for drill-down, pipeline self-metrics and backtest results.

-- Raw readings in long form: one row per (reading, measured quantity), so one
-- table serves traffic, water and grid (their Avro records differ; the value
-- fields become metric names with the unit in the name, as in WindowAggregate).
-- Kept 3 days: windows and rollups are the long-term history.
CREATE TABLE IF NOT EXISTS readings
(
    domain     LowCardinality(String),
    sensor_id  LowCardinality(String),
    site_id    LowCardinality(String),
    zone_id    LowCardinality(String),
    event_time DateTime64(3, 'UTC'),
    seq        Int64,
    metric     LowCardinality(String),
    value      Float64,
    quality    UInt16,
    loaded_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
PARTITION BY toYYYYMMDD(loaded_at)
-- seq in the key: a duplicate delivery (same seq) collapses into one row.
ORDER BY (domain, sensor_id, metric, event_time, seq)
TTL toDateTime(loaded_at) + INTERVAL 3 DAY
SETTINGS non_replicated_deduplication_window = 1000, ttl_only_drop_parts = 1;

-- Counters and gauges the components report about themselves (loader lag,
-- records per second, checkpoint durations ...). labels: free-form dimensions.
CREATE TABLE IF NOT EXISTS pipeline_metrics
(
    ts        DateTime64(3, 'UTC'),
    component LowCardinality(String),
    instance  LowCardinality(String),
    metric    LowCardinality(String),
    value     Float64,
    labels    Map(LowCardinality(String), String),
    loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(loaded_at)
ORDER BY (component, metric, instance, ts)
TTL toDateTime(loaded_at) + INTERVAL 30 DAY
SETTINGS ttl_only_drop_parts = 1;

-- One row per (backtest run, dataset, detector), mirroring
-- citystream.detect.evaluate.Result. Rows are re-written as a run progresses
-- (status running -> done/failed); the highest updated_at wins. NaN = not
-- applicable (e.g. the NAB score of a BATADAL run).
CREATE TABLE IF NOT EXISTS backtest_runs
(
    run_id          String,
    dataset         LowCardinality(String),
    detector        LowCardinality(String),
    status          LowCardinality(String),
    started_at      DateTime64(3, 'UTC'),
    finished_at     Nullable(DateTime64(3, 'UTC')),
    code_version    String,
    params          String,
    nab             Float64,
    nab_low_fp      Float64,
    nab_low_fn      Float64,
    batadal         Float64,
    s_ttd           Float64,
    s_cm            Float64,
    true_positives  UInt64,
    false_negatives UInt64,
    false_positives UInt64,
    precision       Float64,
    recall          Float64,
    f1              Float64,
    median_ttd_s    Float64,
    alarms          UInt64,
    seconds         Float64,
    note            String,
    updated_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (run_id, dataset, detector);
