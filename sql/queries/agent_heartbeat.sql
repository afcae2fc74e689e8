-- A heartbeat of the agent: one row, even with no streams, with the age of the last read.
SELECT COUNT(*) AS streams,
       SUM(state = 'active') AS active_streams,
       SUM(lag_bytes) AS lag_bytes,
       MAX(last_read) AS last_read,
       CAST(strftime('%s', 'now') AS INTEGER) - MAX(last_read) AS seconds_since_read
FROM log_sensor_streams;
