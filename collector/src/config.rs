//! The collector's directory layout and its `collector.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where each piece of state lives under `--dir`; the one place that knows
/// file names, so the CLI, the server and the tests agree.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The `--dir` given on the command line.
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Layout { dir: dir.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("collector.toml")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn db(&self) -> PathBuf {
        self.dir.join("collector.db")
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn alerts_log(&self) -> PathBuf {
        self.dir.join("alerts.log")
    }
    /// Written by `serve` once it listens, so scripts and tests that asked
    /// for port 0 can find the real port.
    pub fn serve_addr(&self) -> PathBuf {
        self.dir.join("serve.addr")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: `{field}` {problem}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: &'static str,
    },
}

/// Failed-login limits for `/v1/enroll`, and how often a host may renew.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    /// Failures allowed per source address, and separately per user name,
    /// within `window_secs`; the next try is answered 429.
    pub max_failures: u32,
    /// Length of the sliding window.
    pub window_secs: u64,
    /// Renewals (`/v1/renew`) allowed per host within `renewal_window_secs`;
    /// the next one is answered 429. An agent renews once per two thirds of
    /// its certificate's lifetime, and a minute after a failed try.
    pub max_renewals: u32,
    /// Length of the renewals' sliding window.
    pub renewal_window_secs: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            max_failures: 5,
            window_secs: 300,
            max_renewals: 10,
            renewal_window_secs: 3600,
        }
    }
}

/// The contents of `collector.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address `serve` binds unless `--listen` overrides it.
    pub listen: SocketAddr,
    /// Lifetime of the client certificates issued by enrol and renew.
    pub cert_days: u32,
    /// This many consecutive `head`/`tail` records from one stream raise an
    /// over-length alert (once per streak).
    pub overlong_alert_after: u32,
    /// Largest ingest body accepted, after gzip decoding.
    pub max_batch_bytes: u64,
    /// Batches read and stored at the same time; further ones wait (their
    /// senders feel TCP back-pressure). Bounds memory to about this many
    /// times three `max_batch_bytes`.
    pub max_concurrent_batches: u32,
    /// Batches one host may have being read or stored at once; its further
    /// ones wait. One host (stuck, or hostile) can then never hold every
    /// slot and stall the fleet.
    pub max_batches_per_host: u32,
    /// A body that stops arriving for this long is cut (408) and its slot
    /// freed: a silent network or a client trickling nothing holds no slot
    /// for longer.
    pub body_timeout_secs: u64,
    /// Connections open at once; further ones are closed as they arrive.
    pub max_connections: u32,
    /// Of those, from one source address (generous: hosts behind one NAT
    /// share it). A stranger opening connections cannot take them all.
    pub max_connections_per_address: u32,
    /// A request on a connection without a client certificate (and every
    /// enrolment) must arrive whole within this: its headers within this
    /// of the connection being ready, its body within this of its headers.
    /// `body_timeout_secs` alone only cuts a body that stops, not one
    /// trickling a byte a second.
    pub unauthenticated_timeout_secs: u64,
    /// Password checks (argon2id, 19 MiB each) running at once; further
    /// enrolments wait a few seconds for one, then get 429 `busy`.
    pub max_password_checks: u32,
    /// Stream files kept open at once; past this the least recently used
    /// is closed, and reopened when its stream is next written.
    pub max_open_stream_files: u32,
    /// Streams one batch may create (streams of its host without a file
    /// yet); a batch creating more is refused (400 `too_many_new_streams`)
    /// and leaves no file behind.
    pub max_new_streams_per_batch: u32,
    pub rate_limit: RateLimit,
    /// Where accounts, certificates, marks and records live. Left out of
    /// `init`'s file while it is the default, so the operator adds one
    /// `[storage]` section to choose the cluster.
    #[serde(skip_serializing_if = "StorageConfig::is_embedded")]
    pub storage: StorageConfig,
}

/// `[storage]`: the embedded store under `--dir` (the default), or a
/// JetStream cluster shared by several collectors.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum StorageConfig {
    /// `collector.db` and `data/` under `--dir`.
    #[default]
    Embedded,
    Jetstream(JetStreamConfig),
}

/// `[storage] type = "jetstream"`. Secrets are named by file (0600), never
/// written here: `collector.toml` is world-readable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// `nats://host:port` or `tls://host:port`, one per cluster node the
    /// collector may connect to.
    pub servers: Vec<String>,
    /// CA that signed the servers' certificates (TLS to NATS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, when the servers require one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A NATS `.creds` file (JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// Replicas of every stream and bucket the collector creates.
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    /// First token of every subject, and of stream and bucket names, so
    /// several collector fleets can share one cluster.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long one read or publish waits for the cluster before the
    /// request (an ingest, a handshake's check) fails: longer than a leader
    /// election (4–6 s), short enough that an agent fails over.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

fn default_request_timeout_secs() -> u64 {
    10
}

fn default_replicas() -> u8 {
    3
}

fn default_prefix() -> String {
    "logsensor".to_owned()
}

impl StorageConfig {
    fn is_embedded(&self) -> bool {
        *self == StorageConfig::Embedded
    }
}

impl JetStreamConfig {
    /// The settings' own rules, whether or not this build can use them.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.servers.is_empty() {
            return Err(("storage.servers", "must name at least one server"));
        }
        let scheme_ok = |s: &str| {
            ["nats://", "tls://"]
                .iter()
                .any(|p| s.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
        };
        if !self.servers.iter().all(|s| scheme_ok(s)) {
            return Err((
                "storage.servers",
                "must be nats://host:port or tls://host:port",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err((
                "storage.tls_cert",
                "and storage.tls_key must be given together",
            ));
        }
        if self.request_timeout_secs == 0 || self.request_timeout_secs > 60 {
            return Err(("storage.request_timeout_secs", "must be between 1 and 60"));
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(("storage.replicas", "must be 1, 3 or 5"));
        }
        let token_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if self.prefix.is_empty() || self.prefix.len() > 32 || !self.prefix.chars().all(token_ok) {
            return Err((
                "storage.prefix",
                "must be 1 to 32 of A-Z, a-z, 0-9, - and _ (it names subjects and streams)",
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8443".parse().expect("literal address"),
            cert_days: 30,
            overlong_alert_after: 10,
            max_batch_bytes: 64 * 1024 * 1024,
            max_concurrent_batches: 4,
            max_batches_per_host: 2,
            body_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_address: 256,
            unauthenticated_timeout_secs: 10,
            max_password_checks: 2,
            max_open_stream_files: 1024,
            max_new_streams_per_batch: 1024,
            rate_limit: RateLimit::default(),
            storage: StorageConfig::default(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, problem| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        if self.cert_days == 0 || self.cert_days > 3650 {
            return Err(invalid("cert_days", "must be between 1 and 3650"));
        }
        if self.overlong_alert_after == 0 {
            return Err(invalid("overlong_alert_after", "must be at least 1"));
        }
        if self.max_batch_bytes < 1024 {
            return Err(invalid("max_batch_bytes", "must be at least 1024"));
        }
        if self.max_concurrent_batches == 0 {
            return Err(invalid("max_concurrent_batches", "must be at least 1"));
        }
        if self.max_batches_per_host == 0 {
            return Err(invalid("max_batches_per_host", "must be at least 1"));
        }
        if self.body_timeout_secs == 0 {
            return Err(invalid("body_timeout_secs", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid("max_connections_per_address", "must be at least 1"));
        }
        if self.unauthenticated_timeout_secs == 0 {
            return Err(invalid(
                "unauthenticated_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.max_password_checks == 0 || self.max_password_checks > 64 {
            return Err(invalid(
                "max_password_checks",
                "must be between 1 and 64 (each check holds 19 MiB)",
            ));
        }
        if self.max_open_stream_files < 16 {
            return Err(invalid("max_open_stream_files", "must be at least 16"));
        }
        if self.max_new_streams_per_batch == 0 {
            return Err(invalid("max_new_streams_per_batch", "must be at least 1"));
        }
        if self.rate_limit.max_failures == 0 {
            return Err(invalid("rate_limit.max_failures", "must be at least 1"));
        }
        if self.rate_limit.window_secs == 0 {
            return Err(invalid("rate_limit.window_secs", "must be at least 1"));
        }
        if self.rate_limit.max_renewals == 0 {
            return Err(invalid("rate_limit.max_renewals", "must be at least 1"));
        }
        if self.rate_limit.renewal_window_secs == 0 {
            return Err(invalid(
                "rate_limit.renewal_window_secs",
                "must be at least 1",
            ));
        }
        if let StorageConfig::Jetstream(js) = &self.storage {
            js.check()
                .map_err(|(field, problem)| invalid(field, problem))?;
        }
        Ok(())
    }

    /// Writes a new config file; refuses to replace an existing one.
    pub fn create(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).expect("config serialises");
        let text = format!(
            "# log-sensor-collector configuration, written by `init`.\n\
             # `serve --listen` overrides `listen`.\n{text}"
        );
        log_sensor_common::fsutil::write_new(path, text.as_bytes(), 0o644).map_err(|source| {
            ConfigError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        Config::default().create(&path).unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::default());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("cert_days = 30"), "{text}");
        assert!(text.contains("overlong_alert_after = 10"), "{text}");
        assert!(text.contains("listen = \"0.0.0.0:8443\""), "{text}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "cert_days = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("cert_days"), "{err}");
        std::fs::write(&path, "unauthenticated_timeout_secs = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("unauthenticated_timeout_secs"), "{err}");
        std::fs::write(&path, "max_open_stream_files = 2\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_open_stream_files"), "{err}");
        std::fs::write(&path, "max_password_checks = 0\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_password_checks"), "{err}");
    }

    #[test]
    fn jetstream_settings_are_checked_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[storage]\ntype = \"jetstream\"\nservers = [\"nats://127.0.0.1:4222\"]\n",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        let StorageConfig::Jetstream(js) = c.storage else {
            panic!("{c:?}")
        };
        assert_eq!((js.replicas, js.prefix.as_str()), (3, "logsensor"));
        // Its own settings are checked first, each named.
        for (text, key) in [
            ("servers = []", "storage.servers"),
            ("servers = [\"127.0.0.1:4222\"]", "storage.servers"),
            (
                "servers = [\"nats://a:1\"]\nreplicas = 2",
                "storage.replicas",
            ),
            (
                "servers = [\"nats://a:1\"]\nprefix = \"a.b\"",
                "storage.prefix",
            ),
            (
                "servers = [\"nats://a:1\"]\ntls_cert = \"/c.pem\"",
                "storage.tls_cert",
            ),
        ] {
            std::fs::write(&path, format!("[storage]\ntype = \"jetstream\"\n{text}\n")).unwrap();
            let err = Config::load(&path).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        std::fs::write(&path, "[storage]\ntype = \"kafka\"\n").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("kafka"), "{err}");
        // The embedded store, named or not, is the default.
        std::fs::write(&path, "[storage]\ntype = \"embedded\"\n").unwrap();
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }
}
