//! Where the agent's config file is, and the defaults of the keys an operator sees. The agent
//! applies them; the osquery extension shows them (origin `default` in `log_sensor_config`) when
//! it reads the file without a running agent, so both must say the same.

/// The config file when neither `--config` nor [`CONFIG_ENV`] names one.
pub const CONFIG_PATH: &str = "/etc/log-sensor/log-sensor.toml";
/// The environment variable naming the config (autoloaded osquery extensions get no flags).
pub const CONFIG_ENV: &str = "LOG_SENSOR_CONFIG";
/// `state_dir`, relative to the config file's folder.
pub const STATE_DIR: &str = "state";
/// `defaults.fingerprint_bytes`: how much of a file's head names its stream.
pub const FINGERPRINT_BYTES: u64 = 1024;
/// `defaults.max_record_bytes`: longer records are cut into a head and a tail part.
pub const MAX_RECORD_BYTES: u64 = 65536;
/// `defaults.max_file_bytes`: larger files are alerted on and not read.
pub const MAX_FILE_BYTES: u64 = 4 << 30;
/// `defaults.delimiter`.
pub const DELIMITER: &str = "\n";
/// `defaults.detect_compression`: gzip files are read decompressed.
pub const DETECT_COMPRESSION: bool = true;

/// The defaults above as dotted config keys and the text a config file would hold (`host_id`,
/// whose default is the host name, is not among them).
pub fn documented() -> Vec<(&'static str, String)> {
    vec![
        ("state_dir", STATE_DIR.to_string()),
        ("defaults.fingerprint_bytes", FINGERPRINT_BYTES.to_string()),
        ("defaults.max_record_bytes", MAX_RECORD_BYTES.to_string()),
        ("defaults.max_file_bytes", MAX_FILE_BYTES.to_string()),
        ("defaults.delimiter", DELIMITER.to_string()),
        (
            "defaults.detect_compression",
            DETECT_COMPRESSION.to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn documented_values_read_as_a_config_file_would_write_them() {
        let d = super::documented();
        let get = |k: &str| d.iter().find(|(key, _)| *key == k).unwrap().1.clone();
        assert_eq!(get("defaults.max_file_bytes"), "4294967296");
        assert_eq!(get("defaults.detect_compression"), "true");
        assert_eq!(get("defaults.delimiter"), "\n");
    }
}
