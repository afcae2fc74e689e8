-- log-sensor store schema, version 1 (kept in PRAGMA user_version).
-- The agent is the only writer; other processes (the osquery extension, `log-sensor query`)
-- read it concurrently thanks to WAL. Times are unix seconds, like osquery's own tables.

-- One row per stream: a logical log stream, followed through promotion, rotation and compression.
CREATE TABLE IF NOT EXISTS streams (
  stream            TEXT PRIMARY KEY,          -- stable id carried by every record
  source            TEXT NOT NULL,             -- the [sources.NAME] that matched it
  fingerprint       TEXT,                      -- hex xxh3-64 of the first fp_bytes bytes (decompressed); NULL while shorter
  fp_bytes          INTEGER NOT NULL,          -- the N the fingerprint was taken over (a config change is seen, not silently re-read)
  path              TEXT NOT NULL,             -- where the stream's current file was last seen
  device            INTEGER NOT NULL,
  inode             INTEGER NOT NULL,
  compressed        INTEGER NOT NULL DEFAULT 0, -- 1 when the current file is gzip
  size              INTEGER NOT NULL DEFAULT 0, -- file size last seen (compressed size for gzip)
  read_offset       INTEGER NOT NULL DEFAULT 0, -- bytes framed so far (logical, decompressed offset)
  committed_offset  INTEGER NOT NULL DEFAULT 0, -- bytes acknowledged by the sink: a restart resumes here
  committed_hash    TEXT,                      -- hex xxh3-64 of up to 64 bytes before committed_offset (copytruncate / inode reuse guard)
  first_seen        INTEGER NOT NULL,
  last_read         INTEGER,
  last_commit       INTEGER,
  state             TEXT NOT NULL,             -- active | released | truncated | done | unreadable | stopped
  records           INTEGER NOT NULL DEFAULT 0, -- records acknowledged by the sink
  bytes             INTEGER NOT NULL DEFAULT 0, -- record bytes acknowledged by the sink
  overlong_records  INTEGER NOT NULL DEFAULT 0, -- records cut into head and tail
  alerted_too_large INTEGER NOT NULL DEFAULT 0  -- max_file_bytes alert raised (once per stream)
);
CREATE INDEX IF NOT EXISTS streams_by_fingerprint ON streams(source, fingerprint);
CREATE INDEX IF NOT EXISTS streams_by_inode ON streams(device, inode);

-- Things an operator must hear about. Append-only; the oldest rows are pruned past a cap.
CREATE TABLE IF NOT EXISTS alerts (
  id      INTEGER PRIMARY KEY,
  time    INTEGER NOT NULL,
  kind    TEXT NOT NULL,      -- file_too_large | permission_denied | read_error | fingerprint_collision | config_error | sink_error | ...
  source  TEXT,
  stream  TEXT,
  path    TEXT,
  detail  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts(time);

-- Facts about the store itself (host_id, created_at).
CREATE TABLE IF NOT EXISTS meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
