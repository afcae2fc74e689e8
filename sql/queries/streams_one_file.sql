-- Everything the agent knows about one file (the path constraint is applied by the extension).
SELECT stream, fingerprint, state, compressed, size, read_offset, committed_offset, lag_bytes,
       records, overlong_records, first_seen, last_read, device, inode
FROM log_sensor_streams
WHERE path = '/var/log/syslog';
