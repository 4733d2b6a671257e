-- The sensor registry as a ClickHouse dictionary, for ClickHouse SERVERS only.
--
-- Not a migration: the embedded store refuses CREATE DICTIONARY for every user and
-- dictGet for the read-only user (citystream/chserver/policy.py: a dictionary source
-- can read files and URLs), so `citystream store migrate` creates the view
-- sensors_current (migration 0007) and the dashboards join it. On a server, where
-- grants decide, this dictionary gives the same lookup as dictGet:
--
--   dictGet('citystream.sensor_dict', 'zone_name', sensor_id)
--
-- Apply after `citystream store migrate`, with the placeholders filled in:
--   export CITYSTREAM_CLICKHOUSE_DATABASE=citystream \
--          REGISTRY_DICT_USER=registry_reader REGISTRY_DICT_PASSWORD=...
--   envsubst < sensor_dict.sql | clickhouse-client --multiquery --database citystream
--
-- What the server needs:
-- * a user the dictionary reads its source as (without USER/PASSWORD it connects as
--   `default` with an empty password and fails once `default` has a password), with
--   SELECT on the database only, e.g.
--     CREATE USER registry_reader IDENTIFIED BY '...' HOST LOCAL;
--     GRANT SELECT ON citystream.* TO registry_reader;
--   (or a named collection holding these credentials, so rotating the password does
--   not mean re-creating the dictionary);
-- * GRANT dictGet ON citystream.sensor_dict TO viewer, for Grafana's read-only user.
-- The source is a local table (host defaults to localhost): no network is involved.
-- Entries refresh every 30-60 s; deleted sensors (tombstones) disappear with the view.
CREATE DICTIONARY IF NOT EXISTS sensor_dict
(
    sensor_id String,
    domain    String,
    kind      String,
    status    String,
    site_id   String,
    site_name String,
    zone_id   String,
    zone_name String,
    lat       Nullable(Float64),
    lon       Nullable(Float64)
)
PRIMARY KEY sensor_id
SOURCE(CLICKHOUSE(
    DB '${CITYSTREAM_CLICKHOUSE_DATABASE}' TABLE 'sensors_current'
    USER '${REGISTRY_DICT_USER}' PASSWORD '${REGISTRY_DICT_PASSWORD}'
))
LAYOUT(COMPLEX_KEY_HASHED())
LIFETIME(MIN 30 MAX 60);
