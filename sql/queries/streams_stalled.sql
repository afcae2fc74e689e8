-- Active streams with unread bytes that have not been read for ten minutes.
SELECT source, path, stream, lag_bytes, last_read
FROM log_sensor_streams
WHERE state = 'active'
  AND lag_bytes > 0
  AND last_read < CAST(strftime('%s', 'now') AS INTEGER) - 600;
