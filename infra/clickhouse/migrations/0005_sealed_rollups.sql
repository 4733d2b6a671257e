-- Rollups of window_aggregates that cost (almost) nothing to insert and little to read,
-- replacing the maxMap rollups of 0004.
--
-- Why: 0004's state (a map window -> (revision, statistics) per key and hour)
-- is exact and idempotent, but every insert builds those maps (the engine's
-- insert rate fell ~5x) and every read folds one map entry per window (43 M
-- for a fleet-wide panel over 30 days x 1,000 sensors: seconds). Any rollup a
-- materialized view keeps exact must remember every window - a view sees
-- each inserted row, corrected revisions and re-deliveries included, but not
-- what is stored - so the cost is inherent to doing it in a view.
--
-- The design: rollups are *sealed*, not streamed.
--   * window_aggregates_hours_mv only records which hours (of window_start)
--     received windows and when (marked_at, taken per inserted block: a GROUP
--     BY over one column, cheap). An hour is *clean* when it was sealed after
--     its last mark (sealed_at > marked_at), *dirty* otherwise.
--   * The sealer (citystream/store/rollups.py; run by the loader between its
--     inserts, or `citystream store seal`) recomputes dirty hours from
--     window_aggregates FINAL into plain rows at 1 minute, 10 minutes and 1
--     hour - per key and metric, over all keys of a metric (key_id ''), per
--     department, and load-lag histograms - all stamped with the seal's time
--     as `version`, then records sealed_at = that time. Days whose hours are
--     all clean get daily rows, recorded in window_aggregates_days. Only
--     1-minute tumbling windows are rolled up (the 5-minute hopping windows
--     overlap them and each other); the lag covers every window.
--   * Readers take sealed rows of clean hours whose version is the hour's
--     latest sealed_at (no FINAL: older and crashed seals are simply other
--     versions, which ReplacingMergeTree drops eventually), and dirty hours
--     straight from window_aggregates FINAL. So every answer is exact at all
--     times; sealing only makes it cheaper. In steady state the only dirty
--     hour is the newest one.
--
-- Why a seal cannot miss a row: the sealer takes its time T, then checks
-- that no INSERT is running (system.processes), then reads. An insert that
-- had finished is in what it reads; one that starts later marks its hours
-- with a time after T (marks are taken when the view runs), so those hours
-- stay dirty. With an INSERT running it does not seal. This assumes one
-- server (the embedded store, or a single-node ClickHouse).
--
-- Rejected: cheaper states in a view (sum/min/max/count: wrong after a
-- correction or a re-delivery - see 0004); refreshable materialized views
-- (periodic full recomputation, no notion of dirty hours); reading sealed
-- rows with FINAL (measured 3-4x a plain read); marks per (domain, hour)
-- (the domain in every reader's hour lookup cost more than resealing an hour
-- of all departments).

-- 0004's views made every insert ~5x slower; their state tables go at the end.
DROP VIEW IF EXISTS window_aggregates_hourly_mv;

DROP VIEW IF EXISTS window_aggregates_daily_mv;

-- Bookkeeping per hour (of window_start, all domains): the latest insert and the latest seal.
CREATE TABLE IF NOT EXISTS window_aggregates_hours
(
    hour      DateTime('UTC'),
    marked_at SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    sealed_at SimpleAggregateFunction(max, DateTime64(6, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY hour;

-- Days whose daily rows were written, and for which state of their hours (max sealed_at).
CREATE TABLE IF NOT EXISTS window_aggregates_days
(
    day     Date,
    version SimpleAggregateFunction(max, DateTime64(6, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY day;

-- Sealed rows at four grains (seconds: 60, 600, 3600, 86400); t is the start of the
-- minute, 10 minutes, hour or day. total = sum of samples x mean (0 for a window
-- without samples); revised = windows whose revision > 0. version: the seal that
-- wrote the row - readers take, per hour, its latest seal's rows (per day: the
-- version recorded in window_aggregates_days); ReplacingMergeTree drops older
-- seals' rows eventually. Daily rows of one state of a day may be written twice
-- (two sealers): their insert token makes the second insert a no-op.

-- Per key and metric; rows whose key_id is '' sum every key of their (domain, key_kind,
-- metric): what a panel over "All" sensors reads (no key is called '').
CREATE TABLE IF NOT EXISTS window_aggregates_sealed
(
    grain      UInt32,
    domain     LowCardinality(String),
    key_kind   LowCardinality(String),
    key_id     LowCardinality(String),
    metric     LowCardinality(String),
    t          DateTime('UTC'),
    windows    UInt32,
    samples    UInt64,
    total      Float64,
    min        Float64,
    max        Float64,
    late       UInt64,
    duplicates UInt64,
    revised    UInt32,
    version    DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(t)
ORDER BY (grain, domain, key_kind, key_id, metric, t)
SETTINGS non_replicated_deduplication_window = 1000;

-- Per department and key kind, counting readings rather than windows: readings, late
-- and duplicates are the sum over keys of the largest value among a key's metrics in
-- the grain (every metric of a reading has its own window); revised counts windows.
CREATE TABLE IF NOT EXISTS window_aggregates_sealed_domains
(
    grain      UInt32,
    domain     LowCardinality(String),
    key_kind   LowCardinality(String),
    t          DateTime('UTC'),
    readings   UInt64,
    late       UInt64,
    duplicates UInt64,
    revised    UInt64,
    version    DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(t)
ORDER BY (grain, domain, key_kind, t)
SETTINGS non_replicated_deduplication_window = 1000;

-- Load lag (window end -> its first row in the store; every window: tumbling and
-- hopping, sensors and zones) as a histogram per department: lag in ms -> windows.
-- Exact, so a quantile over any set of buckets equals the quantile over the windows.
CREATE TABLE IF NOT EXISTS window_aggregates_sealed_lag
(
    grain   UInt32,
    domain  LowCardinality(String),
    t       DateTime('UTC'),
    lags    Map(Int64, UInt64),
    version DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(t)
ORDER BY (grain, domain, t)
SETTINGS non_replicated_deduplication_window = 1000;

-- The marks. now64 in a view is taken per inserted block, when the view runs.
CREATE MATERIALIZED VIEW IF NOT EXISTS window_aggregates_hours_mv TO window_aggregates_hours AS
SELECT
    toStartOfHour(toDateTime(window_start, 'UTC')) AS hour,
    max(now64(6, 'UTC')) AS marked_at,
    toDateTime64(0, 6, 'UTC') AS sealed_at
FROM window_aggregates
GROUP BY hour;

-- Windows loaded before this migration: every hour is dirty until sealed (repeatable).
INSERT INTO window_aggregates_hours (hour, marked_at, sealed_at)
SELECT toStartOfHour(toDateTime(window_start, 'UTC')) AS hour, now64(6, 'UTC'), toDateTime64(0, 6, 'UTC')
FROM window_aggregates
GROUP BY hour;

-- Read side, same names and columns as 0004's: one row per (key, metric, hour | day)
-- with the latest revision of every 1-minute tumbling window folded in: sealed rows of
-- clean hours plus the dirty hours computed from the windows themselves.
CREATE OR REPLACE VIEW window_aggregates_hourly AS
SELECT
    domain, key_kind, key_id, metric, t AS hour, windows, samples,
    if(samples = 0, nan, total / samples) AS mean, min, max, late, duplicates
FROM window_aggregates_sealed
WHERE grain = 3600 AND key_id != ''
    AND (t, version) IN (
        SELECT hour, max(sealed_at) FROM window_aggregates_hours GROUP BY hour HAVING max(sealed_at) > max(marked_at)
    )
UNION ALL
SELECT
    domain, key_kind, key_id, metric, hour, windows, samples,
    if(samples = 0, nan, total / samples) AS mean, min, max, late, duplicates
FROM
(
    SELECT
        domain, key_kind, key_id, metric, toStartOfHour(toDateTime(window_start, 'UTC')) AS hour,
        count() AS windows, sum(w.samples) AS samples, sum(if(w.samples = 0, 0, w.samples * w.mean)) AS total,
        min(w.min) AS min, max(w.max) AS max, sum(w.late) AS late, sum(w.duplicates) AS duplicates
    FROM window_aggregates AS w FINAL
    WHERE dateDiff('second', window_start, window_end) = 60
        AND toStartOfHour(toDateTime(window_start, 'UTC')) IN (
            SELECT hour FROM window_aggregates_hours GROUP BY hour HAVING max(sealed_at) <= max(marked_at)
        )
    GROUP BY domain, key_kind, key_id, metric, hour
);

CREATE OR REPLACE VIEW window_aggregates_daily AS
SELECT
    domain, key_kind, key_id, metric, day, windows, samples,
    if(samples = 0, nan, total / samples) AS mean, min, max, late, duplicates
FROM
(
    SELECT
        domain, key_kind, key_id, metric, toDate(h.hour) AS day, sum(h.windows) AS windows,
        sum(h.samples) AS samples, sum(if(h.samples = 0, 0, h.samples * h.mean)) AS total,
        min(h.min) AS min, max(h.max) AS max, sum(h.late) AS late, sum(h.duplicates) AS duplicates
    FROM window_aggregates_hourly AS h
    GROUP BY domain, key_kind, key_id, metric, day
);

DROP TABLE IF EXISTS window_aggregates_hourly_state;

DROP TABLE IF EXISTS window_aggregates_daily_state
