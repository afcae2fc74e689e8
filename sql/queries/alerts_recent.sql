-- Alerts of the last hour, newest first.
SELECT time, kind, source, stream, path, detail
FROM log_sensor_alerts
WHERE time > CAST(strftime('%s', 'now') AS INTEGER) - 3600
ORDER BY time DESC;
