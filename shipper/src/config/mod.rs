//! The agent's configuration: TOML read key by key into a validated [`Config`].
//!
//! Every problem in a file is reported in one pass (see [`ConfigError`]), each naming its dotted
//! key, so an operator fixes a file once rather than once per error.

mod expand;
pub mod layers;
pub mod packs;
mod persist;
mod reader;
pub mod syslog;
pub mod template;
pub mod units;

pub use expand::hostname;
pub use reader::ConfigIssue;

use globset::{GlobSet, GlobSetBuilder};
use reader::TableReader;
use regex::bytes::Regex;
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
    pub sink: SinkConfig,
    pub batch: BatchConfig,
    pub discovery: DiscoveryConfig,
    pub monitor: MonitorConfig,
    /// Packs enabled (names looked up in `pack_dirs`, or paths).
    pub packs: Vec<String>,
    pub pack_dirs: Vec<PathBuf>,
}

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
            unhealthy_after: Duration::from_secs(crate::status::SINK_DOWN_UNHEALTHY_SECS),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// Absolute glob patterns, as written (after making them absolute).
    pub paths: Vec<String>,
    pub exclude: Vec<String>,
    pub include_set: GlobSet,
    /// Matched against the whole path.
    pub exclude_paths: GlobSet,
    /// Patterns without a `/`, matched against the file name alone (`*.tmp`).
    pub exclude_names: GlobSet,
    pub framing: Framing,
    pub fingerprint_bytes: usize,
    pub max_file_bytes: u64,
    pub detect_compression: bool,
    /// Everything that decides how the source is read, rendered once: a reload restarts the
    /// source's streams only when this changes.
    pub signature: String,
}

/// How bytes become records.
#[derive(Debug, Clone)]
pub struct Framing {
    pub delimiter: Vec<u8>,
    pub max_record_bytes: usize,
    pub multiline: Option<Multiline>,
}

#[derive(Debug, Clone)]
pub struct Multiline {
    pub mode: MultilineMode,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum MultilineMode {
    /// A line matching starts a new record (Java stack traces: a timestamp starts each event).
    BreakBefore(Regex),
    /// A line matching ends the current record.
    BreakAfter(Regex),
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    File { path: PathBuf, sync: bool },
    Stdout,
    Collector(crate::sink::collector::CollectorOptions),
    Syslog(crate::sink::syslog::SyslogOptions),
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

pub const DEFAULT_FINGERPRINT_BYTES: u64 = 1024;
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 65536;
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;

/// Per-source settings that `[defaults]` supplies and a source may override.
#[derive(Debug, Clone, Default)]
struct Overridable {
    fingerprint_bytes: Option<u64>,
    max_record_bytes: Option<u64>,
    max_file_bytes: Option<u64>,
    delimiter: Option<String>,
    detect_compression: Option<bool>,
    break_before: Option<String>,
    break_after: Option<String>,
    multiline_timeout: Option<Duration>,
}

impl Overridable {
    fn read(r: &mut TableReader, issues: &mut Vec<ConfigIssue>) -> Self {
        Overridable {
            fingerprint_bytes: r.size("fingerprint_bytes", issues),
            max_record_bytes: r.size("max_record_bytes", issues),
            max_file_bytes: r.size("max_file_bytes", issues),
            delimiter: r.string("delimiter", issues),
            detect_compression: r.boolean("detect_compression", issues),
            break_before: r.string("break_before", issues),
            break_after: r.string("break_after", issues),
            multiline_timeout: r.duration("multiline_timeout", issues),
        }
    }

    fn or(self, d: &Overridable) -> Overridable {
        Overridable {
            fingerprint_bytes: self.fingerprint_bytes.or(d.fingerprint_bytes),
            max_record_bytes: self.max_record_bytes.or(d.max_record_bytes),
            max_file_bytes: self.max_file_bytes.or(d.max_file_bytes),
            delimiter: self.delimiter.or_else(|| d.delimiter.clone()),
            detect_compression: self.detect_compression.or(d.detect_compression),
            break_before: self.break_before.or_else(|| d.break_before.clone()),
            break_after: self.break_after.or_else(|| d.break_after.clone()),
            multiline_timeout: self.multiline_timeout.or(d.multiline_timeout),
        }
    }
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
            reader::TopLevel::Absent => "state".into(),
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
        let abs = absolute(path);
        let base = abs
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
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
                .unwrap_or_else(|| "state".into()),
        );

        let defaults = match top.table("defaults", &mut issues) {
            Some(t) => {
                let mut r = TableReader::new("defaults", t);
                let d = Overridable::read(&mut r, &mut issues);
                r.finish(&mut issues);
                d
            }
            None => Overridable::default(),
        };

        let mut sources = Vec::new();
        let mut syslog_sources = Vec::new();
        if let Some(t) = top.table("sources", &mut issues) {
            let named: BTreeMap<&String, &toml::Value> = t.iter().collect();
            for (name, value) in named {
                let key = format!("sources.{name}");
                let Some(st) = value.as_table() else {
                    issues.push(ConfigIssue {
                        key,
                        message: "expected a table".into(),
                    });
                    continue;
                };
                if syslog::is_syslog(st) {
                    syslog_sources.extend(syslog::read(name, &key, st, &base, &mut issues));
                    continue;
                }
                if let Some(s) = read_source(name, &key, st, &defaults, &base, &mut issues) {
                    sources.push(s);
                }
            }
        }

        let sink = match top.table("sink", &mut issues) {
            Some(t) => read_sink(t, &base, &state_dir, &mut issues),
            None => Some(SinkConfig::Stdout),
        };

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
                .unwrap_or(Duration::from_secs(crate::status::SINK_DOWN_UNHEALTHY_SECS));
            // Health is judged in whole seconds of the sink's failure.
            if unhealthy_after < Duration::from_secs(1) {
                issues.push(ConfigIssue {
                    key: "monitor.unhealthy_after".into(),
                    message: "must be at least 1s".into(),
                });
            }
            r.finish(&mut issues);
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
            path: abs,
            host_id,
            state_dir,
            sources,
            syslog_sources,
            sink: sink.expect("no issues means the sink resolved"),
            batch,
            discovery,
            monitor,
            packs,
            pack_dirs,
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.state_dir.join("store.db")
    }
}

fn read_source(
    name: &str,
    key: &str,
    table: &toml::Table,
    defaults: &Overridable,
    base: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<Source> {
    let before = issues.len();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        issues.push(ConfigIssue {
            key: key.into(),
            message: "source names use letters, digits, '_' and '-' (a '.' would make dotted keys ambiguous)".into(),
        });
    }
    let mut r = TableReader::new(key, table);
    let paths = r.strings("paths", issues).unwrap_or_default();
    let exclude = r.strings("exclude", issues).unwrap_or_default();
    let o = Overridable::read(&mut r, issues).or(defaults);
    r.finish(issues);
    if paths.is_empty() {
        issues.push(ConfigIssue {
            key: format!("{key}.paths"),
            message: "at least one path glob is required".into(),
        });
    }

    let paths: Vec<String> = paths.iter().map(|p| absolute_pattern(base, p)).collect();
    let mut include = GlobSetBuilder::new();
    for (i, p) in paths.iter().enumerate() {
        match globset::GlobBuilder::new(p).literal_separator(true).build() {
            Ok(g) => {
                include.add(g);
            }
            Err(e) => issues.push(ConfigIssue {
                key: format!("{key}.paths[{i}]"),
                message: format!("bad glob: {e}"),
            }),
        }
    }
    let mut ex_paths = GlobSetBuilder::new();
    let mut ex_names = GlobSetBuilder::new();
    for (i, p) in exclude.iter().enumerate() {
        let (pattern, set) = if p.contains('/') {
            (absolute_pattern(base, p), &mut ex_paths)
        } else {
            (p.clone(), &mut ex_names)
        };
        match globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
        {
            Ok(g) => {
                set.add(g);
            }
            Err(e) => issues.push(ConfigIssue {
                key: format!("{key}.exclude[{i}]"),
                message: format!("bad glob: {e}"),
            }),
        }
    }

    let fingerprint_bytes = o.fingerprint_bytes.unwrap_or(DEFAULT_FINGERPRINT_BYTES);
    if !(16..=1 << 20).contains(&fingerprint_bytes) {
        issues.push(ConfigIssue {
            key: format!("{key}.fingerprint_bytes"),
            message: format!("{fingerprint_bytes} is out of range (16 to 1MiB)"),
        });
    }
    let max_record_bytes = o.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
    if !(16..=64 << 20).contains(&max_record_bytes) {
        issues.push(ConfigIssue {
            key: format!("{key}.max_record_bytes"),
            message: format!("{max_record_bytes} is out of range (16 to 64MiB)"),
        });
    }
    let max_file_bytes = o.max_file_bytes.unwrap_or(DEFAULT_MAX_FILE_BYTES);
    if max_file_bytes == 0 {
        issues.push(ConfigIssue {
            key: format!("{key}.max_file_bytes"),
            message: "must be above 0".into(),
        });
    }
    let delimiter = o.delimiter.unwrap_or_else(|| "\n".into()).into_bytes();
    if delimiter.is_empty() || delimiter.len() > 16 {
        issues.push(ConfigIssue {
            key: format!("{key}.delimiter"),
            message: "must be 1 to 16 bytes".into(),
        });
    }
    let timeout = o.multiline_timeout.unwrap_or(Duration::from_secs(5));
    let compile = |pat: &str, which: &str, issues: &mut Vec<ConfigIssue>| match Regex::new(pat) {
        Ok(r) => Some(r),
        Err(e) => {
            issues.push(ConfigIssue {
                key: format!("{key}.{which}"),
                message: format!("bad regex: {e}"),
            });
            None
        }
    };
    let multiline = match (&o.break_before, &o.break_after) {
        (Some(_), Some(_)) => {
            issues.push(ConfigIssue {
                key: format!("{key}.break_after"),
                message: "break_before and break_after cannot both be set".into(),
            });
            None
        }
        (Some(p), None) => compile(p, "break_before", issues).map(|r| Multiline {
            mode: MultilineMode::BreakBefore(r),
            timeout,
        }),
        (None, Some(p)) => compile(p, "break_after", issues).map(|r| Multiline {
            mode: MultilineMode::BreakAfter(r),
            timeout,
        }),
        (None, None) => None,
    };
    if issues.len() != before {
        return None;
    }
    let signature = format!(
        "{paths:?} {exclude:?} {delimiter:?} {max_record_bytes} {fingerprint_bytes} {max_file_bytes} {:?} {:?}",
        o.detect_compression,
        multiline.as_ref().map(|m| (format!("{:?}", m.mode), m.timeout)),
    );
    Some(Source {
        signature,
        name: name.to_string(),
        paths,
        exclude,
        include_set: include.build().ok()?,
        exclude_paths: ex_paths.build().ok()?,
        exclude_names: ex_names.build().ok()?,
        framing: Framing {
            delimiter,
            max_record_bytes: max_record_bytes as usize,
            multiline,
        },
        fingerprint_bytes: fingerprint_bytes as usize,
        max_file_bytes,
        detect_compression: o.detect_compression.unwrap_or(true),
    })
}

fn read_sink(
    t: &toml::Table,
    base: &Path,
    state_dir: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<SinkConfig> {
    // The reader has no float accessor; the one float key is taken out here, before the reader
    // would call it unknown.
    let mut t = t.clone();
    let renew_at = match t.remove("renew_at") {
        None => None,
        Some(toml::Value::Float(f)) => Some(f),
        Some(other) => {
            issues.push(ConfigIssue {
                key: "sink.renew_at".into(),
                message: format!("expected a number such as 0.67, found {}", other.type_str()),
            });
            None
        }
    };
    let mut r = TableReader::new("sink", &t);
    let kind = r.string("type", issues);
    if renew_at.is_some() && kind.as_deref() != Some("collector") {
        issues.push(ConfigIssue {
            key: "sink.renew_at".into(),
            message: "only a collector sink renews a certificate".into(),
        });
    }
    let required = |key: &str, kind: &str, issues: &mut Vec<ConfigIssue>| {
        issues.push(ConfigIssue {
            key: format!("sink.{key}"),
            message: format!("required for a {kind} sink"),
        })
    };
    let sink = match kind.as_deref() {
        Some("file") => {
            let path = r.string("path", issues);
            let sync = r.boolean("sync", issues).unwrap_or(true);
            match path {
                Some(p) => Some(SinkConfig::File {
                    path: base.join(p),
                    sync,
                }),
                None => {
                    required("path", "file", issues);
                    None
                }
            }
        }
        Some("stdout") => Some(SinkConfig::Stdout),
        Some("collector") => {
            let before = issues.len();
            let url = r.string("url", issues);
            let enrolled = crate::enroll::default_files(state_dir);
            let files = crate::sink::collector::TlsFiles {
                ca: r
                    .string("ca", issues)
                    .map(|p| base.join(p))
                    .unwrap_or(enrolled.ca),
                cert: r
                    .string("cert", issues)
                    .map(|p| base.join(p))
                    .unwrap_or(enrolled.cert),
                key: r
                    .string("key", issues)
                    .map(|p| base.join(p))
                    .unwrap_or(enrolled.key),
            };
            let gzip = match r.string("compression", issues).as_deref() {
                None | Some("gzip") => true,
                Some("none") => false,
                Some(other) => {
                    issues.push(ConfigIssue {
                        key: "sink.compression".into(),
                        message: format!("{other:?}: expected \"gzip\" or \"none\""),
                    });
                    true
                }
            };
            let timeout = r
                .duration("timeout", issues)
                .unwrap_or(crate::sink::collector::IO_TIMEOUT);
            if timeout.is_zero() {
                issues.push(ConfigIssue {
                    key: "sink.timeout".into(),
                    message: "must be above zero".into(),
                });
            }
            let renew_at = renew_at.unwrap_or(2.0 / 3.0);
            if !(renew_at > 0.0 && renew_at < 1.0) {
                issues.push(ConfigIssue {
                    key: "sink.renew_at".into(),
                    message: "a fraction of the certificate's lifetime, above 0 and below 1".into(),
                });
            }
            let url = match url.map(|u| crate::sink::collector::Url::parse(&u)) {
                Some(Ok(u)) => Some(u),
                Some(Err(message)) => {
                    issues.push(ConfigIssue {
                        key: "sink.url".into(),
                        message,
                    });
                    None
                }
                None => {
                    required("url", "collector", issues);
                    None
                }
            };
            match url {
                Some(url) if issues.len() == before => Some(SinkConfig::Collector(
                    crate::sink::collector::CollectorOptions {
                        url,
                        files,
                        gzip,
                        renew_at,
                        timeout,
                    },
                )),
                _ => None,
            }
        }
        Some("syslog") => {
            let before = issues.len();
            let address = r.string("address", issues);
            let tls = r.boolean("tls", issues).unwrap_or(true);
            let ca = r.string("ca", issues).map(|p| base.join(p));
            let cert = r.string("cert", issues).map(|p| base.join(p));
            let key = r.string("key", issues).map(|p| base.join(p));
            let server_name = r.string("server_name", issues);
            let app_name = r
                .string("app_name", issues)
                .unwrap_or_else(|| "log-sensor".into());
            if app_name.is_empty()
                || app_name.len() > 48
                || !app_name.bytes().all(|b| (33..=126).contains(&b))
            {
                issues.push(ConfigIssue {
                    key: "sink.app_name".into(),
                    message: "1 to 48 printable ASCII characters without spaces (RFC 5424)".into(),
                });
            }
            let facility = match r.string("facility", issues) {
                None => Some(1),
                Some(f) => {
                    let code = crate::sink::syslog::facility_code(&f);
                    if code.is_none() {
                        issues.push(ConfigIssue {
                            key: "sink.facility".into(),
                            message: format!("{f:?}: expected a name such as \"user\", \"daemon\" or \"local0\"…\"local7\""),
                        });
                    }
                    code
                }
            };
            let structured_data = match r.string("structured_data", issues) {
                None => crate::sink::syslog::StructuredData::Full,
                Some(s) => crate::sink::syslog::StructuredData::parse(&s).unwrap_or_else(|| {
                    issues.push(ConfigIssue {
                        key: "sink.structured_data".into(),
                        message: format!("{s:?}: expected \"full\", \"minimal\" or \"none\""),
                    });
                    crate::sink::syslog::StructuredData::Full
                }),
            };
            if tls && ca.is_none() {
                required("ca", "syslog (tls = true)", issues);
            }
            if cert.is_some() != key.is_some() {
                issues.push(ConfigIssue {
                    key: if cert.is_some() {
                        "sink.key"
                    } else {
                        "sink.cert"
                    }
                    .into(),
                    message: "cert and key go together".into(),
                });
            }
            if !tls && (ca.is_some() || cert.is_some() || server_name.is_some()) {
                issues.push(ConfigIssue {
                    key: "sink.tls".into(),
                    message: "ca, cert, key and server_name need tls = true".into(),
                });
            }
            let host = match address.as_deref().map(crate::sink::syslog::split_address) {
                Some(Ok(h)) => Some(h),
                Some(Err(message)) => {
                    issues.push(ConfigIssue {
                        key: "sink.address".into(),
                        message,
                    });
                    None
                }
                None => {
                    required("address", "syslog", issues);
                    None
                }
            };
            if let (true, Some(name)) = (tls, server_name.as_deref().or(host.as_deref())) {
                if let Err(e) = crate::tls::server_name(name) {
                    issues.push(ConfigIssue {
                        key: if server_name.is_some() {
                            "sink.server_name"
                        } else {
                            "sink.address"
                        }
                        .into(),
                        message: e.to_string(),
                    });
                }
            }
            match (address, host, facility) {
                (Some(address), Some(host), Some(facility)) if issues.len() == before => {
                    Some(SinkConfig::Syslog(crate::sink::syslog::SyslogOptions {
                        address,
                        tls: tls.then(|| crate::sink::syslog::SyslogTls {
                            ca: ca.expect("checked above"),
                            identity: cert.zip(key),
                            server_name: server_name.unwrap_or(host),
                        }),
                        app_name,
                        facility,
                        structured_data,
                    }))
                }
                _ => None,
            }
        }
        Some(other) => {
            issues.push(ConfigIssue {
                key: "sink.type".into(),
                message: format!(
                    "unknown sink type {other:?} (expected \"file\", \"stdout\", \"collector\" or \"syslog\")"
                ),
            });
            None
        }
        None => {
            issues.push(ConfigIssue {
                key: "sink.type".into(),
                message: "required".into(),
            });
            None
        }
    };
    r.finish(issues);
    sink
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

fn absolute_pattern(base: &Path, pattern: &str) -> String {
    let p = if pattern.starts_with('/') {
        PathBuf::from(pattern)
    } else {
        base.join(pattern)
    };
    normalize(&p).to_string_lossy().into_owned()
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
            matches!(&c.sink, SinkConfig::File { path, .. } if path == Path::new("/etc/ls/state/out.ndjson"))
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
