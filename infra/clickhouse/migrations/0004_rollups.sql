-- Hourly and daily rollups of window_aggregates, kept up to date by
-- materialized views, and the views dashboards read them through.
--
-- The problem: a window is emitted again with revision + 1 each time late data
-- corrects it, and the loader may deliver a row twice. A materialized view sees
-- every inserted row - old revisions and re-deliveries included - and cannot
-- see what is already stored, so a rollup that simply summed samples would
-- count a corrected window twice.
--
-- The choice: per (domain, key_kind, key_id, metric, hour | day) the rollup
-- keeps a map window_start_ms -> (revision, samples, samples * mean, min, max,
-- late, duplicates), aggregated with maxMap. Tuples compare element by element,
-- so for every window the tuple of its highest revision wins whatever order the
-- revisions arrive in, and a re-delivered row (same revision, same values)
-- changes nothing. The state is therefore exact and idempotent; folding it
-- (sum of samples, sample-weighted mean, min of mins ...) happens in the
-- window_aggregates_hourly / _daily views at read time. The cost is one map
-- entry per window (60 per hour or 1440 per day for 1-minute windows).
-- A window belongs to the hour/day of its window_start. Only the 1-minute
-- tumbling windows are rolled up: the 5-minute hopping windows overlap them
-- (and each other) and would count every reading several times.
--
-- Rejected alternatives: rolling up revision 0 only (wrong after every
-- correction); summing with a sign column (the producer would have to emit the
-- retracted values); a ReplacingMergeTree of finished hours (the view cannot
-- see the rest of the hour to recompute it); refreshable materialized views
-- (periodic full recomputation, lag, and a scheduler inside the store).
--
-- Existing windows are backfilled after the views exist; a window inserted
-- meanwhile lands twice in the state, which maxMap makes harmless - and it is
-- why re-running this migration is safe.

CREATE TABLE IF NOT EXISTS window_aggregates_hourly_state
(
    domain   LowCardinality(String),
    key_kind LowCardinality(String),
    key_id   LowCardinality(String),
    metric   LowCardinality(String),
    hour     DateTime('UTC'),
    latest   AggregateFunction(maxMap, Map(Int64, Tuple(UInt32, UInt64, Float64, Float64, Float64, UInt64, UInt64)))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (domain, key_kind, key_id, metric, hour);

CREATE TABLE IF NOT EXISTS window_aggregates_daily_state
(
    domain   LowCardinality(String),
    key_kind LowCardinality(String),
    key_id   LowCardinality(String),
    metric   LowCardinality(String),
    day      Date,
    latest   AggregateFunction(maxMap, Map(Int64, Tuple(UInt32, UInt64, Float64, Float64, Float64, UInt64, UInt64)))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYear(day)
ORDER BY (domain, key_kind, key_id, metric, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS window_aggregates_hourly_mv TO window_aggregates_hourly_state AS
SELECT
    domain,
    key_kind,
    key_id,
    metric,
    toStartOfHour(toDateTime(window_start, 'UTC')) AS hour,
    maxMapState(map(
        toUnixTimestamp64Milli(window_start),
        (revision, samples, samples * mean, min, max, late, duplicates)
    )) AS latest
FROM window_aggregates
WHERE toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
GROUP BY domain, key_kind, key_id, metric, hour;

CREATE MATERIALIZED VIEW IF NOT EXISTS window_aggregates_daily_mv TO window_aggregates_daily_state AS
SELECT
    domain,
    key_kind,
    key_id,
    metric,
    toDate(window_start, 'UTC') AS day,
    maxMapState(map(
        toUnixTimestamp64Milli(window_start),
        (revision, samples, samples * mean, min, max, late, duplicates)
    )) AS latest
FROM window_aggregates
WHERE toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
GROUP BY domain, key_kind, key_id, metric, day;

-- Read side: one row per (key, metric, hour) with the latest revision of every window folded in.
CREATE VIEW IF NOT EXISTS window_aggregates_hourly AS
SELECT
    domain,
    key_kind,
    key_id,
    metric,
    hour,
    length(w) AS windows,
    arraySum(x -> x.2, w) AS samples,
    if(samples = 0, nan, arraySum(x -> x.3, w) / samples) AS mean,
    arrayMin(x -> x.4, w) AS min,
    arrayMax(x -> x.5, w) AS max,
    arraySum(x -> x.6, w) AS late,
    arraySum(x -> x.7, w) AS duplicates
FROM
(
    SELECT domain, key_kind, key_id, metric, hour, mapValues(maxMapMerge(latest)) AS w
    FROM window_aggregates_hourly_state
    GROUP BY domain, key_kind, key_id, metric, hour
);

CREATE VIEW IF NOT EXISTS window_aggregates_daily AS
SELECT
    domain,
    key_kind,
    key_id,
    metric,
    day,
    length(w) AS windows,
    arraySum(x -> x.2, w) AS samples,
    if(samples = 0, nan, arraySum(x -> x.3, w) / samples) AS mean,
    arrayMin(x -> x.4, w) AS min,
    arrayMax(x -> x.5, w) AS max,
    arraySum(x -> x.6, w) AS late,
    arraySum(x -> x.7, w) AS duplicates
FROM
(
    SELECT domain, key_kind, key_id, metric, day, mapValues(maxMapMerge(latest)) AS w
    FROM window_aggregates_daily_state
    GROUP BY domain, key_kind, key_id, metric, day
);

-- Backfill windows loaded before this migration (see above: safe to repeat).
INSERT INTO window_aggregates_hourly_state
SELECT
    domain,
    key_kind,
    key_id,
    metric,
    toStartOfHour(toDateTime(window_start, 'UTC')) AS hour,
    maxMapState(map(
        toUnixTimestamp64Milli(window_start),
        (revision, samples, samples * mean, min, max, late, duplicates)
    )) AS latest
FROM window_aggregates
WHERE toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
GROUP BY domain, key_kind, key_id, metric, hour;

INSERT INTO window_aggregates_daily_state
SELECT
    domain,
    key_kind,
    key_id,
    metric,
    toDate(window_start, 'UTC') AS day,
    maxMapState(map(
        toUnixTimestamp64Milli(window_start),
        (revision, samples, samples * mean, min, max, late, duplicates)
    )) AS latest
FROM window_aggregates
WHERE toUnixTimestamp64Milli(window_end) - toUnixTimestamp64Milli(window_start) = 60000
GROUP BY domain, key_kind, key_id, metric, day;
