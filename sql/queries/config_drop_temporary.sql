-- Drops a temporary override; the file's or the default value applies again.
DELETE FROM log_sensor_config WHERE key = 'defaults.max_record_bytes' AND origin = 'temporary';
