-- Views over the store; created on open, recreated when they change.
DROP VIEW IF EXISTS stream_lag;
CREATE VIEW stream_lag AS
  SELECT stream, source, path, state, size, read_offset, committed_offset,
         CASE WHEN compressed = 1 THEN read_offset - committed_offset
              ELSE MAX(size - committed_offset, 0) END AS lag_bytes,
         last_read, last_commit
  FROM streams;
