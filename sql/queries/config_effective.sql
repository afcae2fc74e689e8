-- The agent's effective config, and where each value comes from.
SELECT key, value, origin, writable, read_from
FROM log_sensor_config
ORDER BY key;
