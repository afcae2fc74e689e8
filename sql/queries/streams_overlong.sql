-- Streams whose records are often cut into head and tail (max_record_bytes too small?).
SELECT source, path, stream, overlong_records, records,
       ROUND(100.0 * overlong_records / MAX(records, 1), 1) AS overlong_pct
FROM log_sensor_streams
WHERE overlong_records > 0
ORDER BY overlong_records DESC;
