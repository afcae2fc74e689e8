-- log-sensor osquery outbox, version 1 (kept in PRAGMA user_version).
-- Written by the osquery extension's logger plugin `log_sensor` at <state_dir>/osquery-outbox.db
-- (WAL). The extension answers osqueryd only after a row is here, so nothing osquery logs is
-- lost when the agent is down. The agent ships the outbox through its sink and deletes what
-- was acknowledged:
--   SELECT id, time, kind, name, category, record FROM outbox WHERE id > :last ORDER BY id LIMIT :n;
--   ... sink acknowledges ...
--   DELETE FROM outbox WHERE id <= :acked;
-- Each row becomes one record with source "osquery", stream = name, msg = record.
-- The extension commits with synchronous=FULL (WAL): osqueryd hands a result to its logger once
-- and never again, so a row survives a crash of the extension, of osqueryd and a power loss
-- (the price is an fsync per logger call; measured in the README's outbox row).
-- Ids only grow (AUTOINCREMENT), but have gaps: the extension drops the oldest rows when the
-- outbox is full (counted in counters.dropped_full, raised in alerts).
-- outbox_size (below) is kept by triggers, so every writer -- the extension's inserts and drops,
-- the agent's DELETE, an operator's sqlite3 -- keeps it exact without code of its own. Writers
-- must not use REPLACE on outbox: its implicit deletes fire no trigger.

-- Records waiting to be shipped.
CREATE TABLE IF NOT EXISTS outbox (
  id        INTEGER PRIMARY KEY AUTOINCREMENT, -- monotonically increasing, never reused
  time      INTEGER NOT NULL,   -- unix seconds when the extension queued the record
  kind      TEXT NOT NULL,      -- result | snapshot | status | event | heartbeat
  name      TEXT NOT NULL,      -- the stream: the query name; osquery_status for status logs,
                                -- osquery_events for event rows
  category  TEXT,               -- the `category` osquery sent with a string call (e.g. event)
  record    TEXT NOT NULL       -- one JSON document: byte-exact as osquery sent it for
                                -- result/snapshot/event; built by the extension for status
                                -- lines and heartbeats
);

-- The last snapshot of each snapshot query, so an unchanged one is only counted (kept across
-- restarts of the extension and of osqueryd).
CREATE TABLE IF NOT EXISTS snapshot_digests (
  name        TEXT PRIMARY KEY,  -- the query name
  digest      TEXT NOT NULL,     -- hex xxh3-128 of the snapshot's rows, order-independent
  rows        INTEGER NOT NULL,  -- row count of that snapshot
  changed_at  INTEGER NOT NULL,  -- unix time the digest last changed (the snapshot was queued)
  seen_at     INTEGER NOT NULL,  -- unix time of the last snapshot of this query
  unchanged   INTEGER NOT NULL DEFAULT 0 -- unchanged snapshots not queued since changed_at
);

-- Running totals: dropped_full, unchanged_snapshots, heartbeats, queued.
CREATE TABLE IF NOT EXISTS counters (
  name   TEXT PRIMARY KEY,
  value  INTEGER NOT NULL
);

-- The extension's own alerts (shown in log_sensor_alerts with source "osquery"). One row per
-- episode: repeated drops within a minute update `count` and `last_time`.
CREATE TABLE IF NOT EXISTS alerts (
  id         INTEGER PRIMARY KEY,
  time       INTEGER NOT NULL,
  last_time  INTEGER NOT NULL,
  kind       TEXT NOT NULL,      -- outbox_full
  count      INTEGER NOT NULL,   -- records dropped in this episode
  detail     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts(time);

-- How many rows outbox holds, so the extension's cap check on every logger call reads one row
-- instead of counting the table (a count or a MIN+MAX aggregate is a full scan in SQLite: its
-- min/max shortcut applies only to a lone MIN() or MAX()). Added to version 1 without a version
-- bump: it is additive, and an extension that predates it still opens the file and keeps the
-- count right through the triggers.
CREATE TABLE IF NOT EXISTS outbox_size (
  id    INTEGER PRIMARY KEY CHECK (id = 1), -- a single row
  rows  INTEGER NOT NULL                    -- = SELECT COUNT(*) FROM outbox
);
CREATE TRIGGER IF NOT EXISTS outbox_size_insert AFTER INSERT ON outbox
BEGIN
  UPDATE outbox_size SET rows = rows + 1 WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS outbox_size_delete AFTER DELETE ON outbox
BEGIN
  UPDATE outbox_size SET rows = rows - 1 WHERE id = 1;
END;
-- Counted once each time the extension opens the outbox, in the same write transaction as the
-- statements above, so no delete of the agent's falls between the count and the triggers; this
-- also fills it in for an outbox made before outbox_size existed, and repairs any drift.
INSERT OR REPLACE INTO outbox_size (id, rows) SELECT 1, COUNT(*) FROM outbox;
