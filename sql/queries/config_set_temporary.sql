-- A temporary override in the running agent, gone at its next reload or restart.
UPDATE log_sensor_config SET value = '131072' WHERE key = 'defaults.max_record_bytes';
