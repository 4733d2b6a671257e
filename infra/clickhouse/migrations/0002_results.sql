-- The other result topics of the jobs, one table each, columns exactly as their
-- Avro records (avro/citystream.<Record>.avsc) plus loaded_at.
--
-- Every table is a ReplacingMergeTree keyed by the record's natural key and
-- versioned by loaded_at, so a record the loader delivers twice is one row
-- after a merge, and `FINAL` (or the *_latest views) hides the copy before.
-- insert_deduplication_token (set by the loader) plus
-- non_replicated_deduplication_window make an identical re-sent batch a no-op.
-- Avro bytes become String (ClickHouse strings are byte strings).

-- citystream.Anomaly: one detector verdict.
CREATE TABLE IF NOT EXISTS anomalies
(
    domain       LowCardinality(String),
    key_kind     LowCardinality(String),
    key_id       LowCardinality(String),
    metric       LowCardinality(String),
    detector     LowCardinality(String),
    event_time   DateTime64(3, 'UTC'),
    window_start Nullable(DateTime64(3, 'UTC')),
    window_end   Nullable(DateTime64(3, 'UTC')),
    score        Float64,
    severity     LowCardinality(String),
    observed     Nullable(Float64),
    expected     Nullable(Float64),
    explanation  String,
    loaded_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (domain, key_kind, key_id, metric, detector, event_time)
SETTINGS non_replicated_deduplication_window = 1000;

-- citystream.Alert: every lifecycle message of an incident (open, update..., resolve).
CREATE TABLE IF NOT EXISTS alerts
(
    alert_id      String,
    state         LowCardinality(String),
    domain        LowCardinality(String),
    kind          LowCardinality(String),
    key_kind      LowCardinality(String),
    affected_keys Array(String),
    first_seen    DateTime64(3, 'UTC'),
    last_seen     DateTime64(3, 'UTC'),
    severity      LowCardinality(String),
    anomaly_count UInt64,
    explanation   String,
    loaded_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
-- first_seen never changes within an incident: all its messages share a partition.
PARTITION BY toYYYYMM(first_seen)
ORDER BY (alert_id, last_seen, anomaly_count, state)
SETTINGS non_replicated_deduplication_window = 1000;

-- The current state of each incident, as the compacted alerts topic would hold it:
-- the latest lifecycle step (later last_seen, then open < update < resolve, then
-- more anomalies, then the later load).
CREATE VIEW IF NOT EXISTS alerts_latest AS
SELECT
    alert_id,
    argMax(state, version) AS state,
    argMax(domain, version) AS domain,
    argMax(kind, version) AS kind,
    argMax(key_kind, version) AS key_kind,
    argMax(affected_keys, version) AS affected_keys,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    argMax(severity, version) AS severity,
    max(anomaly_count) AS anomaly_count,
    argMax(explanation, version) AS explanation,
    max(loaded_at) AS loaded_at
FROM
(
    SELECT
        *,
        (last_seen, multiIf(state = 'resolve', 2, state = 'update', 1, 0), anomaly_count, loaded_at) AS version
    FROM alerts
)
GROUP BY alert_id;

-- citystream.SensorHealth: each status change of a sensor.
CREATE TABLE IF NOT EXISTS sensor_health
(
    sensor_id LowCardinality(String),
    site_id   LowCardinality(String),
    zone_id   LowCardinality(String),
    domain    LowCardinality(String),
    status    LowCardinality(String),
    since     DateTime64(3, 'UTC'),
    details   String,
    loaded_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY (sensor_id, since, status)
SETTINGS non_replicated_deduplication_window = 1000;

-- Every sensor's current status, as the compacted sensor-health topic holds it.
CREATE VIEW IF NOT EXISTS sensor_health_latest AS
SELECT
    sensor_id,
    argMax(site_id, version) AS site_id,
    argMax(zone_id, version) AS zone_id,
    argMax(domain, version) AS domain,
    argMax(status, version) AS status,
    max(since) AS since,
    argMax(details, version) AS details,
    max(loaded_at) AS loaded_at
FROM (SELECT *, (since, loaded_at) AS version FROM sensor_health)
GROUP BY sensor_id;

-- citystream.LateEvent: readings that missed their window; kept 14 days like the topic.
CREATE TABLE IF NOT EXISTS late_events
(
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    sensor_id        LowCardinality(String),
    event_time       DateTime64(3, 'UTC'),
    watermark        DateTime64(3, 'UTC'),
    lateness_ms      Int64,
    original         String,
    loaded_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (source_topic, source_partition, source_offset)
-- TTLs count from loaded_at, not event time: replays of old data (fixed epochs,
-- benchmarks) must not expire the moment they are loaded.
TTL toDateTime(loaded_at) + INTERVAL 14 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- citystream.DeadLetter: records that could not be processed, byte for byte.
CREATE TABLE IF NOT EXISTS dead_letters
(
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    original_key     Nullable(String),
    original_value   Nullable(String),
    reason           LowCardinality(String),
    error            String,
    received_at      DateTime64(3, 'UTC'),
    loaded_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset)
TTL toDateTime(loaded_at) + INTERVAL 30 DAY
SETTINGS non_replicated_deduplication_window = 1000;

-- citystream.Label: ground truth used to score detectors (small, kept forever).
CREATE TABLE IF NOT EXISTS labels
(
    label_id   String,
    domain     LowCardinality(String),
    kind       LowCardinality(String),
    sensor_ids Array(String),
    start_time DateTime64(3, 'UTC'),
    end_time   DateTime64(3, 'UTC'),
    source     LowCardinality(String),
    details    String,
    loaded_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at)
ORDER BY label_id
SETTINGS non_replicated_deduplication_window = 1000;
