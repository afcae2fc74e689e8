-- A temporary override for a key the config file does not set.
INSERT INTO log_sensor_config (key, value) VALUES ('sources.app.exclude', '["*.tmp","*.swp"]');
