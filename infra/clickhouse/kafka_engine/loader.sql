-- ClickHouse Kafka table engine + materialized views: the alternative to the
-- citystream loader (connectors/loader/) for server deployments.
--
-- NOT EXECUTED BY THE TESTS, and not applicable to the embedded store: it needs a
-- ClickHouse server whose background Kafka consumers run all the time.
--
-- Prerequisites:
--   * `citystream store migrate` has created the target tables.
--   * The topics carry Avro in Confluent wire format (0x00, 4-byte schema id,
--     datum) with the schemas in a schema registry. ClickHouse cannot decode the
--     raw Avro datums (no header, no id) that citystream's own producers and jobs
--     write by default (see infra/topics.toml); ClickHouse's `Avro` format wants
--     container files and `AvroConfluent` wants the registry framing. So either
--     configure the producers/jobs to write Confluent framing, or keep using the
--     citystream loader, which decodes raw Avro itself.
--
-- Apply with the placeholders filled in, in the citystream database:
--   export CITYSTREAM_KAFKA_BOOTSTRAP=broker:9092 CITYSTREAM_TOPIC_PREFIX=citystream. \
--          SCHEMA_REGISTRY_URL=http://registry:8081
--   envsubst < loader.sql | clickhouse-client --multiquery --database citystream
--
-- Semantics, per topic: a Kafka engine table (a consumer, not storage), one
-- materialized view moving decoded rows into the store table and one moving
-- undecodable messages into dead_letters (kafka_handle_error_mode = 'stream'
-- exposes them as _error/_raw_message instead of stopping the consumer).
-- Offsets are committed after the views' inserts, so a crash re-delivers: the
-- ReplacingMergeTree tables make that invisible to queries that use FINAL or
-- the *_latest views, exactly as with the citystream loader.
-- Drop order to stop: DROP VIEW ..._mv first, then DROP TABLE kafka_...

-- ---------------------------------------------------------------- aggregates -> window_aggregates
CREATE TABLE IF NOT EXISTS kafka_aggregates
(
    domain       String,
    key_kind     String,
    key_id       String,
    metric       String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    samples      Int64,
    mean         Float64,
    min          Float64,
    max          Float64,
    late         Int64,
    duplicates   Int64,
    revision     Int32
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}aggregates',
    kafka_group_name = 'citystream-clickhouse-aggregates',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_num_consumers = 1,
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_aggregates_mv TO window_aggregates AS
SELECT
    domain, key_kind, key_id, metric, window_start, window_end,
    toUInt64(samples) AS samples, mean, min, max,
    toUInt64(late) AS late, toUInt64(duplicates) AS duplicates, toUInt32(revision) AS revision
FROM kafka_aggregates
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_aggregates_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_aggregates
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- anomalies -> anomalies
CREATE TABLE IF NOT EXISTS kafka_anomalies
(
    domain       String,
    key_kind     String,
    key_id       String,
    metric       String,
    detector     String,
    event_time   DateTime64(3, 'UTC'),
    window_start Nullable(DateTime64(3, 'UTC')),
    window_end   Nullable(DateTime64(3, 'UTC')),
    score        Float64,
    severity     String,
    observed     Nullable(Float64),
    expected     Nullable(Float64),
    explanation  String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}anomalies',
    kafka_group_name = 'citystream-clickhouse-anomalies',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_anomalies_mv TO anomalies AS
SELECT
    domain, key_kind, key_id, metric, detector, event_time, window_start, window_end,
    score, severity, observed, expected, explanation
FROM kafka_anomalies
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_anomalies_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_anomalies
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- alerts -> alerts
CREATE TABLE IF NOT EXISTS kafka_alerts
(
    alert_id      String,
    state         String,
    domain        String,
    kind          String,
    key_kind      String,
    affected_keys Array(String),
    first_seen    DateTime64(3, 'UTC'),
    last_seen     DateTime64(3, 'UTC'),
    severity      String,
    anomaly_count Int64,
    explanation   String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}alerts',
    kafka_group_name = 'citystream-clickhouse-alerts',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_alerts_mv TO alerts AS
SELECT
    alert_id, state, domain, kind, key_kind, affected_keys, first_seen, last_seen,
    severity, toUInt64(anomaly_count) AS anomaly_count, explanation
FROM kafka_alerts
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_alerts_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_alerts
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- sensor-health -> sensor_health
CREATE TABLE IF NOT EXISTS kafka_sensor_health
(
    sensor_id String,
    site_id   String,
    zone_id   String,
    domain    String,
    status    String,
    since     DateTime64(3, 'UTC'),
    details   String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}sensor-health',
    kafka_group_name = 'citystream-clickhouse-sensor-health',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_sensor_health_mv TO sensor_health AS
SELECT sensor_id, site_id, zone_id, domain, status, since, details
FROM kafka_sensor_health
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_sensor_health_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_sensor_health
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- late-events -> late_events
CREATE TABLE IF NOT EXISTS kafka_late_events
(
    source_topic     String,
    source_partition Int32,
    source_offset    Int64,
    sensor_id        String,
    event_time       DateTime64(3, 'UTC'),
    watermark        DateTime64(3, 'UTC'),
    lateness_ms      Int64,
    original         String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}late-events',
    kafka_group_name = 'citystream-clickhouse-late-events',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_late_events_mv TO late_events AS
SELECT source_topic, source_partition, source_offset, sensor_id, event_time, watermark, lateness_ms, original
FROM kafka_late_events
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_late_events_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_late_events
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- labels -> labels
CREATE TABLE IF NOT EXISTS kafka_labels
(
    label_id   String,
    domain     String,
    kind       String,
    sensor_ids Array(String),
    start_time DateTime64(3, 'UTC'),
    end_time   DateTime64(3, 'UTC'),
    source     String,
    details    String
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}labels',
    kafka_group_name = 'citystream-clickhouse-labels',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_labels_mv TO labels AS
SELECT label_id, domain, kind, sensor_ids, start_time, end_time, source, details
FROM kafka_labels
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_labels_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_labels
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- dead-letter -> dead_letters
-- The jobs' own dead-letter topic (citystream.DeadLetter records).
CREATE TABLE IF NOT EXISTS kafka_dead_letter
(
    source_topic     String,
    source_partition Int32,
    source_offset    Int64,
    original_key     Nullable(String),
    original_value   Nullable(String),
    reason           String,
    error            String,
    received_at      DateTime64(3, 'UTC')
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}dead-letter',
    kafka_group_name = 'citystream-clickhouse-dead-letter',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_dead_letter_mv TO dead_letters AS
SELECT source_topic, source_partition, source_offset, original_key, original_value, reason, error, received_at
FROM kafka_dead_letter
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_dead_letter_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_dead_letter
WHERE length(_error) > 0;

-- ---------------------------------------------------------------- sensors -> sensors (the registry)
-- Upserts only: the Kafka engine skips messages with an empty payload, so a tombstone
-- deletes nothing on this path. Remove an entry registered by mistake on the server with
--   INSERT INTO sensors (sensor_id, status) VALUES ('<id>', 'deleted')
-- (is_deleted then defaults to 1; the citystream loader writes the same row for a tombstone).
CREATE TABLE IF NOT EXISTS kafka_sensors
(
    sensor_id    String,
    domain       String,
    kind         String,
    channels     Array(Tuple(name String, unit String, type String, min Nullable(Float64), max Nullable(Float64))),
    site_id      String,
    site_name    String,
    zone_id      String,
    zone_name    String,
    areas        Array(String),
    lat          Nullable(Float64),
    lon          Nullable(Float64),
    installed_at DateTime64(3, 'UTC'),
    retired_at   Nullable(DateTime64(3, 'UTC')),
    status       String,
    owner        String,
    tags         Array(String),
    valid_from   DateTime64(3, 'UTC')
)
ENGINE = Kafka
SETTINGS
    kafka_broker_list = '${CITYSTREAM_KAFKA_BOOTSTRAP}',
    kafka_topic_list = '${CITYSTREAM_TOPIC_PREFIX}sensors',
    kafka_group_name = 'citystream-clickhouse-sensors',
    kafka_format = 'AvroConfluent',
    format_avro_schema_registry_url = '${SCHEMA_REGISTRY_URL}',
    kafka_handle_error_mode = 'stream';

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_sensors_mv TO sensors AS
SELECT
    sensor_id, domain, kind, channels, site_id, site_name, zone_id, zone_name, areas, lat, lon,
    installed_at, retired_at, status, owner, tags, valid_from
FROM kafka_sensors
WHERE length(_error) = 0;

CREATE MATERIALIZED VIEW IF NOT EXISTS kafka_sensors_errors_mv TO dead_letters AS
SELECT
    _topic AS source_topic, toInt32(_partition) AS source_partition, toInt64(_offset) AS source_offset,
    _key AS original_key, _raw_message AS original_value,
    'undecodable' AS reason, _error AS error, now64(3) AS received_at
FROM kafka_sensors
WHERE length(_error) > 0;
