-- Streams more than 1 MiB behind: read but not yet acknowledged by the sink.
SELECT host_id, source, path, stream, state, lag_bytes, last_read
FROM log_sensor_streams
WHERE lag_bytes > 1048576
ORDER BY lag_bytes DESC;
