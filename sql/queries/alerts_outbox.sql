-- The extension's own alerts: osquery results dropped because the outbox was full.
SELECT time, kind, detail
FROM log_sensor_alerts
WHERE source = 'osquery';
