//! The agent's configuration: TOML read key by key into a validated [`Config`].
//!
//! Every problem in a file is reported in one pass (see [`ConfigError`]), each naming its dotted
//! key, so an operator fixes a file once rather than once per error.

mod dotted;
mod expand;
pub mod layers;
pub mod lua;
pub mod packs;
mod persist;
mod reader;
mod sinks;
mod sources;
pub mod syslog;
pub use log_sensor_common::template;
pub mod transforms;
pub mod units;

pub use expand::hostname;
pub use reader::ConfigIssue;
pub use sinks::routes;
pub use sinks::{
    home_index, CollectorOptions, Compression, NamedSink, SinkConfig, StructuredData,
    SyslogOptions, SyslogTls, TlsFiles, Url, DEFAULT_COLLECTOR_TIMEOUT, DEFAULT_SINK,
};
pub use sources::{
    Framing, Multiline, MultilineMode, Source, DEFAULT_FINGERPRINT_BYTES, DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_RECORD_BYTES,
};

use reader::TableReader;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A `.j2` config that did not render: nothing of it is used.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error("config file {path} has {} error(s):\n{}", issues.len(), issues.iter().map(|i| format!("  {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        issues: Vec<ConfigIssue>,
    },
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; relative paths in it are relative to its folder.
    pub path: PathBuf,
    pub host_id: String,
    pub state_dir: PathBuf,
    pub sources: Vec<Source>,
    /// `type = "syslog"` sources (the network input), kept apart from the file sources.
    pub syslog_sources: Vec<syslog::SyslogSource>,
    /// `[transforms.NAME]`, in name order.
    pub transforms: Vec<transforms::TransformConfig>,
    /// Source name → the transforms its records pass through, in order (file and syslog
    /// sources alike; a source without any is absent).
    pub source_transforms: BTreeMap<String, Vec<String>>,
    /// `[sink]` (named `default`) or every `[sinks.NAME]` in name order; never empty in a valid
    /// config (no sink table at all: stdout).
    pub sinks: Vec<NamedSink>,
    /// `[osquery] sinks`: where the osquery outbox's records go; None: every sink.
    pub osquery_sinks: Option<Vec<String>>,
    pub batch: BatchConfig,
    pub discovery: DiscoveryConfig,
    pub monitor: MonitorConfig,
    /// Packs enabled (names looked up in `pack_dirs`, or paths).
    pub packs: Vec<String>,
    pub pack_dirs: Vec<PathBuf>,
}

/// Past this long with a failing sink, the agent reports itself unhealthy (the default of
/// `[monitor] unhealthy_after`).
pub const DEFAULT_UNHEALTHY_AFTER_SECS: u64 = 60;

/// The HTTP monitoring endpoint: off unless `[monitor] listen` is set.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    pub listen: Option<std::net::SocketAddr>,
    /// A sink failing this long makes the agent unhealthy (`/healthz` 503, `status` health):
    /// short outages are retried and are not worth waking anyone for.
    pub unhealthy_after: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            listen: None,
            unhealthy_after: Duration::from_secs(DEFAULT_UNHEALTHY_AFTER_SECS),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// Full rescans, the safety net under inotify (missed events, NFS).
    pub rescan_interval: Duration,
    /// How long a renamed or deleted file stays open to be drained before it is closed.
    pub rotate_wait: Duration,
    /// Files held open at most (unset: derived from the open files limit).
    pub max_open_files: Option<u64>,
    /// A caught-up file with no new bytes this long has its descriptor closed until it
    /// changes (`None`: never).
    pub close_inactive: Option<Duration>,
    /// Memory for records not yet complete (partial lines), all open files together.
    pub max_partial_bytes: u64,
}

impl Config {
    /// Reads and validates a config file, with the sources of the packs it enables.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        layers::Layers::load(path)?.resolve()
    }

    /// Where the store and the control socket are, even when the rest of the file is invalid,
    /// even when it is not TOML at all past its top-level keys (an operator looking into the
    /// store's alerts, or at and stopping the agent that still runs, is exactly who has a broken
    /// file).
    pub fn state_dir_lenient(path: &Path) -> Option<PathBuf> {
        // A template is rendered first; one that does not render may still hold a literal
        // `state_dir` line, so its raw text is read as the last resort.
        let text = layers::read_text(path)
            .ok()
            .or_else(|| std::fs::read_to_string(path).ok())?;
        let base = absolute(path).parent()?.to_path_buf();
        let dir = match reader::top_level(&text, "state_dir") {
            reader::TopLevel::Found(toml::Value::String(s)) => expand::expand(&s).ok()?,
            reader::TopLevel::Absent => log_sensor_common::agent_defaults::STATE_DIR.into(),
            _ => return None,
        };
        Some(base.join(dir))
    }

    /// Validates config text as if it were the file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        Config::from_table(path, &table)
    }

    pub fn from_table(path: &Path, table: &toml::Table) -> Result<Config, ConfigError> {
        let base = config_dir(path);
        let mut issues = Vec::new();
        let mut top = TableReader::new("", table);

        let host_id = top.string("host_id", &mut issues).unwrap_or_else(hostname);
        if host_id.is_empty() {
            issues.push(ConfigIssue {
                key: "host_id".into(),
                message: "must not be empty".into(),
            });
        }
        let packs = top.strings("packs", &mut issues).unwrap_or_default();
        let pack_dirs = top
            .strings("pack_dirs", &mut issues)
            .map(|v| v.iter().map(|d| base.join(d)).collect())
            .unwrap_or_else(|| vec![base.join("packs")]);
        let state_dir = base.join(
            top.string("state_dir", &mut issues)
                .unwrap_or_else(|| log_sensor_common::agent_defaults::STATE_DIR.into()),
        );

        let defaults = sources::read_defaults(&mut top, &mut issues);
        let mut source_transforms = BTreeMap::new();
        let (mut sources, syslog_sources) = sources::read_sources(
            &mut top,
            &defaults,
            &base,
            &mut source_transforms,
            &mut issues,
        );
        syslog::check_ports(&syslog_sources, &mut issues);
        let transforms = transforms::read_transforms(&mut top, &base, &mut issues);
        transforms::resolve_chains(&source_transforms, &transforms, &mut sources, &mut issues);
        let transforms = transforms.valid;

        let sinks::Sinks {
            valid: sinks,
            invalid: invalid_sinks,
        } = sinks::read_sinks(&mut top, &base, &state_dir, &host_id, &mut issues);
        sinks::file_paths::check(&sources, &sinks, table.contains_key("sink"), &mut issues);
        let osquery_sinks = match top.table("osquery", &mut issues) {
            Some(t) => {
                let mut r = TableReader::new("osquery", t);
                let s = r.strings("sinks", &mut issues);
                r.finish(&mut issues);
                s
            }
            None => None,
        };
        routes::check(
            &sources,
            &syslog_sources,
            osquery_sinks.as_deref(),
            &sinks,
            &invalid_sinks,
            &mut issues,
        );

        let batch = {
            let empty = toml::Table::new();
            let t = top.table("batch", &mut issues).unwrap_or(&empty);
            let mut r = TableReader::new("batch", t);
            let b = BatchConfig {
                max_records: r.size("max_records", &mut issues).unwrap_or(16384) as usize,
                max_bytes: r.size("max_bytes", &mut issues).unwrap_or(1 << 20) as usize,
                max_wait: r
                    .duration("max_wait", &mut issues)
                    .unwrap_or(Duration::from_secs(1)),
            };
            if b.max_records == 0 {
                issues.push(ConfigIssue {
                    key: "batch.max_records".into(),
                    message: "must be at least 1".into(),
                });
            }
            if b.max_bytes < 1024 || b.max_bytes > 256 << 20 {
                issues.push(ConfigIssue {
                    key: "batch.max_bytes".into(),
                    message: "must be between 1KiB and 256MiB".into(),
                });
            }
            r.finish(&mut issues);
            b
        };

        let discovery = {
            let empty = toml::Table::new();
            let t = top.table("discovery", &mut issues).unwrap_or(&empty);
            let mut r = TableReader::new("discovery", t);
            let d = DiscoveryConfig {
                rescan_interval: r
                    .duration("rescan_interval", &mut issues)
                    .unwrap_or(Duration::from_secs(10)),
                rotate_wait: r
                    .duration("rotate_wait", &mut issues)
                    .unwrap_or(Duration::from_secs(5)),
                max_open_files: r.size("max_open_files", &mut issues),
                close_inactive: match r.duration("close_inactive", &mut issues) {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => Some(Duration::from_secs(300)),
                },
                max_partial_bytes: r.size("max_partial_bytes", &mut issues).unwrap_or(64 << 20),
            };
            if d.max_open_files == Some(0) {
                issues.push(ConfigIssue {
                    key: "discovery.max_open_files".into(),
                    message: "must be at least 1".into(),
                });
            }
            if d.rescan_interval < Duration::from_millis(100) {
                issues.push(ConfigIssue {
                    key: "discovery.rescan_interval".into(),
                    message: "must be at least 100ms".into(),
                });
            }
            r.finish(&mut issues);
            d
        };

        let monitor = {
            let empty = toml::Table::new();
            let t = top.table("monitor", &mut issues).unwrap_or(&empty);
            let mut r = TableReader::new("monitor", t);
            let listen = r.string("listen", &mut issues).and_then(|l| {
                match l.parse::<std::net::SocketAddr>() {
                    Ok(a) => Some(a),
                    Err(e) => {
                        issues.push(ConfigIssue {
                            key: "monitor.listen".into(),
                            message: format!(
                                "{l:?} is not an address such as \"127.0.0.1:5066\": {e}"
                            ),
                        });
                        None
                    }
                }
            });
            // Anything but loopback exposes the agent's paths and alerts: it must be asked for.
            let public = r
                .boolean("allow_non_loopback", &mut issues)
                .unwrap_or(false);
            if let Some(a) = listen {
                if !a.ip().is_loopback() && !public {
                    issues.push(ConfigIssue {
                        key: "monitor.listen".into(),
                        message: format!("{a} is not a loopback address; set monitor.allow_non_loopback = true to serve it"),
                    });
                }
            }
            let unhealthy_after = r
                .duration("unhealthy_after", &mut issues)
                .unwrap_or(Duration::from_secs(DEFAULT_UNHEALTHY_AFTER_SECS));
            // Health is judged in whole seconds of the sink's failure.
            if unhealthy_after < Duration::from_secs(1) {
                issues.push(ConfigIssue {
                    key: "monitor.unhealthy_after".into(),
                    message: "must be at least 1s".into(),
                });
            }
            r.finish(&mut issues);
            if let Some(a) = listen {
                syslog::check_monitor_port(a, &syslog_sources, &mut issues);
            }
            MonitorConfig {
                listen,
                unhealthy_after,
            }
        };

        top.finish(&mut issues);
        if !issues.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                issues,
            });
        }
        Ok(Config {
            path: absolute(path),
            host_id,
            state_dir,
            sources,
            syslog_sources,
            transforms,
            source_transforms,
            sinks,
            osquery_sinks,
            batch,
            discovery,
            monitor,
            packs,
            pack_dirs,
        })
    }

    pub fn store_path(&self) -> PathBuf {
        log_sensor_common::state_dir::store(&self.state_dir)
    }
}
/// The folder the config's relative paths are taken from: the config file's own.
fn config_dir(path: &Path) -> PathBuf {
    absolute(path)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn absolute(path: &Path) -> PathBuf {
    let p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    normalize(&p)
}

/// Removes `.` and resolves `..` lexically, so globs and scanned paths compare equal.
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example config of the data-path issue, as written (the end-to-end test runs it too).
    const EXAMPLE: &str = include_str!("../../../examples/issue-example.toml");

    #[test]
    fn the_issue_example_loads_as_written() {
        let c = Config::parse(Path::new("/etc/ls/agent.toml"), EXAMPLE).unwrap();
        assert_eq!(c.host_id, hostname());
        assert_eq!(c.state_dir, PathBuf::from("/etc/ls/state"));
        let s = &c.sources[0];
        assert_eq!(s.name, "app");
        assert_eq!(
            s.paths,
            vec!["/etc/ls/logs/app/*.log", "/etc/ls/logs/app/*.log.*.gz"]
        );
        assert!(s.include_set.is_match("/etc/ls/logs/app/x.log"));
        assert!(s.include_set.is_match("/etc/ls/logs/app/x.log.1.gz"));
        assert!(!s.include_set.is_match("/etc/ls/logs/app/sub/x.log"));
        assert!(s.exclude_names.is_match("a.tmp"));
        assert!(matches!(
            s.framing.multiline,
            Some(Multiline {
                mode: MultilineMode::BreakBefore(_),
                ..
            })
        ));
        assert!(
            matches!(&c.sinks[0].sink, SinkConfig::File { path, .. } if path == Path::new("/etc/ls/state/out.ndjson"))
        );
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
state_dir = 5
bogus = 1
[defaults]
max_record_bytes = "12 parsecs"
[sources.app]
paths = ["a/*.log"]
break_before = "(unclosed"
colour = "blue"
[sources.other]
exclude = ["x"]
[sink]
type = "carrier-pigeon"
"#;
        let err = Config::parse(Path::new("/c.toml"), text).unwrap_err();
        let ConfigError::Invalid { issues, .. } = err else {
            panic!("expected Invalid, got {err}")
        };
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        for k in [
            "state_dir",
            "bogus",
            "defaults.max_record_bytes",
            "sources.app.break_before",
            "sources.app.colour",
            "sources.other.paths",
            "sink.type",
        ] {
            assert!(keys.contains(&k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn a_file_sink_mode_is_octal_text_and_0600_unless_given() {
        let parse = |mode: &str| {
            let text = format!("[sources.a]\npaths=['x']\n[sink]\ntype='file'\npath='o'\n{mode}");
            Config::parse(Path::new("/c.toml"), &text).map(|c| match &c.sinks[0].sink {
                SinkConfig::File { mode, .. } => *mode,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(parse("").unwrap(), 0o600);
        assert_eq!(parse("mode = '0640'").unwrap(), 0o640);
        assert_eq!(parse("mode = '644'").unwrap(), 0o644);
        for bad in ["mode = 640", "mode = '0999'", "mode = '01777'", "mode = ''"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("sink.mode"), "{bad}: {err}");
        }
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = Config::parse(Path::new("/x/agent.toml"), "sources = [").unwrap_err();
        assert!(err.to_string().contains("/x/agent.toml"), "{err}");
    }

    #[test]
    fn the_monitor_stays_on_loopback_unless_asked() {
        let base = "[sources.a]\npaths=['x']\n[sink]\ntype='stdout'\n";
        let c = Config::parse(
            Path::new("/c.toml"),
            &format!("{base}[monitor]\nlisten='127.0.0.1:5066'\n"),
        )
        .unwrap();
        assert_eq!(c.monitor.listen.unwrap().port(), 5066);
        let err = Config::parse(
            Path::new("/c.toml"),
            &format!("{base}[monitor]\nlisten='0.0.0.0:5066'\n"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("monitor.listen"), "{err}");
        assert!(Config::parse(
            Path::new("/c.toml"),
            &format!("{base}[monitor]\nlisten='0.0.0.0:5066'\nallow_non_loopback=true\n")
        )
        .is_ok());
        assert!(Config::parse(Path::new("/c.toml"), base)
            .unwrap()
            .monitor
            .listen
            .is_none());
    }

    #[test]
    fn unhealthy_after_defaults_to_a_minute_and_is_checked() {
        let base = "[sources.a]\npaths=['x']\n[sink]\ntype='stdout'\n";
        let c = Config::parse(Path::new("/c.toml"), base).unwrap();
        assert_eq!(c.monitor.unhealthy_after, Duration::from_secs(60));
        let c = Config::parse(
            Path::new("/c.toml"),
            &format!("{base}[monitor]\nunhealthy_after='5s'\n"),
        )
        .unwrap();
        assert_eq!(c.monitor.unhealthy_after, Duration::from_secs(5));
        for bad in ["'100ms'", "'soon'"] {
            let err = Config::parse(
                Path::new("/c.toml"),
                &format!("{base}[monitor]\nunhealthy_after={bad}\n"),
            )
            .unwrap_err();
            assert!(err.to_string().contains("monitor.unhealthy_after"), "{err}");
        }
    }

    #[test]
    fn break_before_and_after_are_exclusive() {
        let text =
            "[sources.a]\npaths=['x']\nbreak_before='a'\nbreak_after='b'\n[sink]\ntype='stdout'\n";
        let err = Config::parse(Path::new("/c.toml"), text).unwrap_err();
        assert!(err.to_string().contains("sources.a.break_after"), "{err}");
    }
}
