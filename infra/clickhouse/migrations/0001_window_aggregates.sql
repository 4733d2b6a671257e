-- Window statistics written by the Flink jobs (avro/citystream.WindowAggregate.avsc),
-- one row per (key, metric, window) and revision.
--
-- Rules for every migration file (see citystream/store/migrate.py):
--   * statements are separated by ';' and run one by one over HTTP, in order;
--   * each statement must be idempotent (IF NOT EXISTS ...): ClickHouse DDL is
--     not transactional, so a migration that failed half-way is simply re-run;
--   * table names are unqualified: the migrator runs them in the configured
--     database (settings.clickhouse_database), which it creates first;
--   * an applied file must not change (its checksum ignores comments and
--     layout, so improving those is fine): add a new migration instead.
--
-- Column names are exactly the Avro field names. Types: Avro long counts are
-- UInt64, revision is UInt32 because ReplacingMergeTree only accepts an
-- unsigned (or date/time) version column; timestamp-millis is DateTime64(3, 'UTC').
-- Ids and names repeat a lot, so they are LowCardinality.
CREATE TABLE IF NOT EXISTS window_aggregates
(
    domain       LowCardinality(String),
    key_kind     LowCardinality(String),
    key_id       LowCardinality(String),
    metric       LowCardinality(String),
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    samples      UInt64,
    mean         Float64,
    min          Float64,
    max          Float64,
    late         UInt64,
    duplicates   UInt64,
    revision     UInt32,
    loaded_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMM(window_start)
ORDER BY (domain, key_kind, key_id, metric, window_start, window_end)
-- The loader tags each insert with insert_deduplication_token; this window makes
-- a re-sent batch (crash between insert and offset commit) a no-op.
SETTINGS non_replicated_deduplication_window = 1000;

-- What every reader should query: one row per window, its highest revision, even
-- before ReplacingMergeTree has merged the older revisions away. FINAL does the
-- per-key merge at read time (partition by partition); the equivalent explicit
-- pattern is argMax(col, revision) ... GROUP BY domain, key_kind, key_id, metric, window_start, window_end.
-- window_end is part of the key: a 1-minute tumbling and a 5-minute hopping
-- window of one sensor start on the same minute and are different rows.
-- A later migration that adds a column to window_aggregates must also
-- CREATE OR REPLACE this view: a view's columns are fixed when it is created.
CREATE VIEW IF NOT EXISTS window_aggregates_latest AS
SELECT *
FROM window_aggregates FINAL;
