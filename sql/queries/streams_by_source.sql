-- One line per source: how many streams, how far behind, how much shipped.
SELECT source,
       COUNT(*) AS streams,
       SUM(state = 'active') AS active,
       SUM(lag_bytes) AS lag_bytes,
       SUM(records) AS records,
       SUM(overlong_records) AS overlong_records,
       MAX(last_read) AS last_read
FROM log_sensor_streams
GROUP BY source
ORDER BY source;
