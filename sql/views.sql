-- Views over the store; created on open, recreated when they change.
--
-- stream_lag is the one place a stream's lag is computed: the agent's status (and so
-- `log-sensor status` and /metrics), the extension's log_sensor_streams table and the packs all
-- read it from here. Lag is what the sink has not acknowledged yet: of the file's size for a plain
-- file, of what was framed for gzip (its size on disk is compressed, its offsets are not).
DROP VIEW IF EXISTS stream_lag;
CREATE VIEW stream_lag AS
  SELECT stream, source, path, fingerprint, state, compressed, size, read_offset,
         committed_offset,
         MAX(CASE WHEN compressed = 1 THEN read_offset ELSE size END - committed_offset, 0)
           AS lag_bytes,
         records, overlong_records, first_seen, last_read, last_commit, device, inode
  FROM streams;
