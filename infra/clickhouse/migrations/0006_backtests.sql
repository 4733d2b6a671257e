-- Backtests (`citystream backtest`, citystream/backtest/). backtest_runs (migration
-- 0003: one row per run, dataset and detector) gets what a backtest of a time range
-- reports besides: the batch of configurations it was compared in, the range, the
-- labels, repeats (second detections of a labelled event), p90 time to detect and
-- false alerts per day. A backtest writes dataset = its data source, detector = the
-- configuration's name, batadal = the S score (NaN where it does not apply).
ALTER TABLE backtest_runs
    ADD COLUMN IF NOT EXISTS batch_id String AFTER run_id,
    ADD COLUMN IF NOT EXISTS range_from DateTime64(3, 'UTC') AFTER finished_at,
    ADD COLUMN IF NOT EXISTS range_to DateTime64(3, 'UTC') AFTER range_from,
    ADD COLUMN IF NOT EXISTS labels UInt64 AFTER s_cm,
    ADD COLUMN IF NOT EXISTS repeats UInt64 AFTER false_positives,
    ADD COLUMN IF NOT EXISTS ttd_p90_s Float64 AFTER median_ttd_s,
    ADD COLUMN IF NOT EXISTS false_alerts_per_day Float64 AFTER ttd_p90_s;

-- Every detection of a backtest run and every label it missed, so the Backtests
-- dashboard shows what each configuration caught against the labels. outcome: hit
-- (first detection of a label), repeat (a label already detected), false (no label),
-- missed (a label no detection matched: detection_id is empty, detected_at is the
-- label's start). A run is written once under a fresh run_id; ReplacingMergeTree only
-- makes a retried insert one row after a merge, and readers use FINAL.
CREATE TABLE IF NOT EXISTS backtest_detections
(
    run_id       String,
    outcome      LowCardinality(String),
    detection_id String,
    domain       LowCardinality(String),
    kind         LowCardinality(String),
    keys         Array(String),
    detected_at  DateTime64(3, 'UTC'),
    label_id     String,
    label_kind   LowCardinality(String),
    label_start  Nullable(DateTime64(3, 'UTC')),
    label_end    Nullable(DateTime64(3, 'UTC')),
    ttd_s        Nullable(Float64),
    stored_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(stored_at)
ORDER BY (run_id, outcome, detection_id, label_id);
