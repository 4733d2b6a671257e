-- The sensor registry (avro/citystream.Sensor.avsc): what each sensor is and where it stands;
-- and each sensor's newest window, for the registry's dashboards (at the end).
--
-- Source of truth is the compacted Kafka topic `sensors` (key sensor_id); the loader
-- (connectors/loader/routes.py) lands every message here, so this table holds each
-- registry version loaded, and its current entry per sensor is what compaction keeps:
--
-- * Latest message wins. The version is loaded_at, the time the loader inserted the
--   message: the topic has one partition and the loader inserts in offset order, one
--   batch after the other, so a later message always has a later or equal loaded_at;
--   within one insert (equal loaded_at) ClickHouse keeps rows of a key in insert order
--   and ReplacingMergeTree keeps the last of equal versions. valid_from is NOT the
--   version: a correction may be valid from an earlier time than the entry it replaces.
-- * A tombstone (null value) is a row with is_deleted = 1: the loader turns it into a
--   record holding the key and status 'deleted' (connectors/loader/tombstones.py),
--   a status no producer may send. ReplacingMergeTree(version, is_deleted) drops the
--   key from FINAL; registering the sensor again later brings it back.
-- * Readers use `sensors FINAL` or sensors_current, never the bare table.
--
-- Columns are the Avro fields (the loader inserts with their names), plus is_deleted
-- and loaded_at. Channels are one Array(Tuple(...)) column: Avro arrays of records
-- decode into it directly, and `arrayJoin(channels)` gives one row per channel.
CREATE TABLE IF NOT EXISTS sensors
(
    sensor_id    String,
    domain       LowCardinality(String),
    kind         LowCardinality(String),
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
    status       LowCardinality(String),
    owner        String,
    tags         Array(String),
    valid_from   DateTime64(3, 'UTC'),
    is_deleted   UInt8 DEFAULT status = 'deleted',
    loaded_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(loaded_at, is_deleted)
ORDER BY sensor_id
SETTINGS non_replicated_deduplication_window = 1000;

-- Every registered sensor's current entry, as the compacted topic holds it (deleted
-- entries excluded). Dashboards join it for site and zone names: the store's read-only
-- user may not call dictGet (citystream/chserver/policy.py), and the embedded store
-- refuses CREATE DICTIONARY; infra/clickhouse/server/sensor_dict.sql defines the
-- dictionary sensor_dict over this view for ClickHouse servers.
CREATE VIEW IF NOT EXISTS sensors_current AS
SELECT
    sensor_id, domain, kind, channels, site_id, site_name, zone_id, zone_name, areas,
    lat, lon, installed_at, retired_at, status, owner, tags, valid_from, loaded_at
FROM sensors FINAL
WHERE is_deleted = 0;

-- The end of each sensor's newest 1-minute (tumbling) window, for "last reading" and
-- "silent" on the map and the Sensors dashboard: a lookup per sensor instead of a scan
-- of window_aggregates (whose key cannot prune by time across sensors). Hopping windows
-- are left out (one ends up to 4 minutes after the reading it holds); re-deliveries and
-- revisions change nothing (max). The newest ever, not as of a past time range.
CREATE TABLE IF NOT EXISTS window_aggregates_last_seen
(
    domain          LowCardinality(String),
    sensor_id       String,
    last_window_end DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(last_window_end)
ORDER BY sensor_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS window_aggregates_last_seen_mv TO window_aggregates_last_seen AS
SELECT domain, key_id AS sensor_id, max(window_end) AS last_window_end
FROM window_aggregates
WHERE key_kind = 'sensor' AND dateDiff('second', window_start, window_end) = 60
GROUP BY domain, sensor_id;

-- Backfill from the windows already stored (repeatable: the newest end wins).
INSERT INTO window_aggregates_last_seen (domain, sensor_id, last_window_end)
SELECT domain, key_id, max(window_end)
FROM window_aggregates
WHERE key_kind = 'sensor' AND dateDiff('second', window_start, window_end) = 60
GROUP BY domain, key_id;
