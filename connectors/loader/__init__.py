"""Kafka result topics -> ClickHouse, in batches, committing offsets only after the store acknowledged.

Contract:
* every result topic lands in its table (:data:`ROUTES`, the one mapping;
  columns are the Avro field names, as the migrations define them);
* at-least-once delivery into idempotent tables, so the visible result is
  exactly-once. Each table insert carries an ``insert_deduplication_token``
  built from the offsets and bytes it covers, and before inserting a batch
  the loader commits its *plan* (the end offset of every partition in it) as
  offset metadata, without moving the offsets. A loader restarted after a
  crash between insert and commit re-reads exactly the planned range, so the
  re-sent insert has the same token and ClickHouse drops it: the tables do
  not even hold duplicates awaiting a merge. (A range re-read by another
  consumer group, or a planned range that compaction thinned meanwhile, is
  cut into other batches: its copies are rows with the same key, which
  ReplacingMergeTree merges away and FINAL / the *_latest views never show);
* batches are bounded by rows, bytes (``settings.loader_batch_bytes``; a
  record larger than that is a batch of its own) and time; a store that is
  slow or down is retried with exponential backoff, nothing is committed (so
  nothing is lost) until it answers, and records of one partition are written
  in offset order, one batch after the other;
* nothing is lost quietly: a table that refuses a batch - a column a
  migration renamed, dropped or retyped (checked against the Avro contract
  before a table's first insert, every 30 s, and on every refusal: see
  :mod:`.tablecheck`), the table gone, the store read-only or refusing the
  loader's user - *stalls* the loader: nothing committed, nothing
  dead-lettered, retried with backoff, an ERROR log line naming table, topic,
  error code and message, and a citystream Alert (domain ``pipeline``, kind
  ``loader_stalled``, one ``alert_id`` per loader group and table) on the
  alerts topic, resolved when the batch goes in (:mod:`.stall`). A batch
  refused as bad data is bisected; only records refused *alone*, while the
  table is shown not at fault, are dead-lettered (``rejected``, with the
  store's error); every record refused alone with one error is the table's
  fault (:mod:`.judge`). An error without a code that is no lost connection
  is tried 3 times, then judged as data, never retried silently forever;
* reads only committed Kafka transactions (the jobs write transactionally);
* a record that is not one well-formed Avro record of its topic's schema is
  counted and produced to the dead-letter topic with the reason (from the
  dead-letter topic itself it goes straight into ``dead_letters``, never in
  a loop), before the batch's offsets are committed: never silently dropped.
  Tombstones (null values on the compacted topics) are counted; on a topic
  whose route deletes (``routes.TOMBSTONES``) each becomes its deletion row,
  in offset order, elsewhere it is skipped;
* records are not decoded in Python: bare Avro records are wrapped in an
  Avro container and ClickHouse decodes them (see connectors/avroframe.py),
  after a vectorised framing check;
* Kafka and the store work at the same time: a writer thread inserts batch
  k while the consuming thread collects batch k+1; every consumer call stays
  on the consuming thread, which commits k's end together with k+1's plan
  once k is acknowledged;
* progress is recorded in ``pipeline_metrics`` (component ``loader``,
  instance = consumer group) after the first batch, when the loader catches
  up, at most every ``metrics_every_s`` seconds otherwise, and at the end:
  rows_per_s, lag_records (records behind the end of the topics after the
  last commit), batch_ms, rows_total, undecodable_total, rejected_total,
  retries_total;
* the rollups of window_aggregates are sealed here (citystream/store/rollups.py,
  migration 0005): at most every ``seal_every_s`` seconds, between two
  inserts of this loader (the sealer will not run beside an insert), a pass
  seals at most ``seal_max_hours`` hours whose last window arrived over
  ``seal_grace_s`` ago. Sealing only makes dashboards cheaper - they are
  exact without it - so a failing pass is logged and loading goes on.

Modules: :mod:`.routes` (topic -> table), :mod:`.offsets` (the offset planner:
what is read and committed when, pure bookkeeping), :mod:`.kafka` (the
consumer), :mod:`.writer` (inserts with deduplication tokens, retries),
:mod:`.deadletters`, :mod:`.storelink` (the store connection),
:mod:`.upkeep` (metrics, sealing), :mod:`.tablecheck` / :mod:`.judge` /
:mod:`.stall` (whose fault a refusal is, and saying so), :mod:`.loop`
(:class:`Loader`, which wires them) and :mod:`.background` (the loader beside
the store server).
"""

from __future__ import annotations

from citystream.connectors.loader.common import Abandoned, LoadStats
from citystream.connectors.loader.loop import BATCH_ROWS, Loader, container_for, load
from citystream.connectors.loader.offsets import PLAN
from citystream.connectors.loader.routes import DEAD_LETTER, ROUTES, Route, routes
from citystream.connectors.loader.writer import DATA_ERRORS

__all__ = [
    "BATCH_ROWS",
    "DATA_ERRORS",
    "DEAD_LETTER",
    "PLAN",
    "ROUTES",
    "Abandoned",
    "LoadStats",
    "Loader",
    "Route",
    "container_for",
    "load",
    "routes",
]
