//! `[sink]` or `[sinks.NAME]`: where the batches go, and each kind's options as plain data.
//!
//! `[sink]` is the simple form: one sink, named `default`. `[sinks.NAME]` tables name several,
//! each exactly like `[sink]`; sources choose among them by name (`routes`). Both at once is an
//! error: a source without `sinks = [...]` goes to every sink, and a `[sink]` quietly joining
//! the named ones would double where such sources ship.
//!
//! The option types live here, below the sinks that use them, so that reading a config never
//! needs the code that ships (and `sink` imports `config`, never the reverse). One file per kind
//! that has options, as in `sink/`.

mod collector;
pub(super) mod file_paths;
pub mod routes;
mod syslog;

pub use collector::{
    home_index, CollectorOptions, Compression, TlsFiles, Url, DEFAULT_COLLECTOR_TIMEOUT,
};
pub use syslog::{StructuredData, SyslogOptions, SyslogTls};

use super::reader::TableReader;
use super::ConfigIssue;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum SinkConfig {
    File {
        path: PathBuf,
        sync: bool,
        /// The permission bits a file the sink creates gets; an existing file keeps its own.
        mode: u32,
    },
    Stdout,
    Collector(CollectorOptions),
    Syslog(SyslogOptions),
}

/// `sync` of a file sink: fdatasync before acknowledging.
pub const DEFAULT_FILE_SYNC: bool = true;
/// `mode` of a file sink: the permission bits of a file it creates. Filebeat's file output
/// defaults to 0600 too: the sink copies logs such as auth.log (0640 root:adm) and must not
/// leave them readable by every user.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// The keys a sink of type `kind` has defaults for, with them as a config file would write them
/// (`get` and `list` show them with origin `default`); `state_dir` is where a collector sink's
/// enrolled files are.
pub(super) fn defaults(kind: &str, state_dir: &Path) -> Vec<(&'static str, toml::Value)> {
    use toml::Value;
    match kind {
        "file" => vec![
            ("sync", Value::Boolean(DEFAULT_FILE_SYNC)),
            ("mode", Value::String(format!("{DEFAULT_FILE_MODE:04o}"))),
        ],
        "collector" => collector::defaults(state_dir),
        "syslog" => syslog::defaults(),
        _ => Vec::new(),
    }
}

/// The name `[sink]` (or no sink table at all: stdout) goes by.
pub const DEFAULT_SINK: &str = "default";

/// A sink and the name sources route to it by.
#[derive(Debug, Clone)]
pub struct NamedSink {
    pub name: String,
    pub sink: SinkConfig,
}

/// The sinks of a config: the valid ones, and the names of those left out for an error (their
/// issues say why, and the config is refused).
#[derive(Debug, Default)]
pub(super) struct Sinks {
    pub valid: Vec<NamedSink>,
    pub invalid: BTreeSet<String>,
}

/// `[sink]`, or every `[sinks.NAME]` in name order; none at all is stdout, named `default`.
/// A sink with an error is left out of `valid` (its issues say why) and named in `invalid`, so
/// a route naming it is not told it is unknown. `host_id` picks a collector sink's home URL.
pub(super) fn read_sinks(
    top: &mut TableReader,
    base: &Path,
    state_dir: &Path,
    host_id: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Sinks {
    let one = top.table("sink", issues);
    let named = top.table("sinks", issues);
    let mut invalid = BTreeSet::new();
    let valid = match (one, named) {
        (Some(_), Some(t)) => {
            issues.push(ConfigIssue {
                key: "sink".into(),
                message: "[sink] and [sinks.*] are both set: name every sink under [sinks.NAME] (a [sink] alone is the sink named \"default\")".into(),
            });
            invalid.insert(DEFAULT_SINK.to_string());
            invalid.extend(t.keys().cloned());
            Vec::new()
        }
        (Some(t), None) => match read_sink("sink", t, base, state_dir, host_id, issues) {
            Some(sink) => vec![NamedSink {
                name: DEFAULT_SINK.into(),
                sink,
            }],
            None => {
                invalid.insert(DEFAULT_SINK.to_string());
                Vec::new()
            }
        },
        (None, Some(t)) => {
            if t.is_empty() {
                issues.push(ConfigIssue {
                    key: "sinks".into(),
                    message: "names no sink: add a [sinks.NAME] table, or remove [sinks]".into(),
                });
            }
            let mut out = Vec::new();
            let mut names: Vec<&String> = t.keys().collect();
            names.sort();
            for name in names {
                let key = format!("sinks.{name}");
                if !is_plain_name(name) {
                    issues.push(ConfigIssue {
                        key,
                        message: "sink names use letters, digits, '_' and '-' (a '.' would make dotted keys ambiguous)".into(),
                    });
                    invalid.insert(name.clone());
                    continue;
                }
                let Some(st) = t[name].as_table() else {
                    issues.push(ConfigIssue {
                        key,
                        message: "expected a table like [sink]".into(),
                    });
                    invalid.insert(name.clone());
                    continue;
                };
                match read_sink(&key, st, base, state_dir, host_id, issues) {
                    Some(sink) => out.push(NamedSink {
                        name: name.clone(),
                        sink,
                    }),
                    None => {
                        invalid.insert(name.clone());
                    }
                }
            }
            out
        }
        (None, None) => vec![NamedSink {
            name: DEFAULT_SINK.into(),
            sink: SinkConfig::Stdout,
        }],
    };
    Sinks { valid, invalid }
}

/// One sink table, its keys named under `prefix` (`sink` or `sinks.NAME`).
fn read_sink(
    prefix: &str,
    t: &toml::Table,
    base: &Path,
    state_dir: &Path,
    host_id: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<SinkConfig> {
    // The kinds' readers name their keys `sink.…`; a named sink's are renamed to its table.
    let first = issues.len();
    let sink = read_sink_table(t, base, state_dir, host_id, issues);
    if prefix != "sink" {
        for i in &mut issues[first..] {
            if let Some(rest) = i.key.strip_prefix("sink") {
                i.key = format!("{prefix}{rest}");
            }
        }
    }
    sink
}

fn read_sink_table(
    t: &toml::Table,
    base: &Path,
    state_dir: &Path,
    host_id: &str,
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
    let sink = match kind.as_deref() {
        Some("file") => {
            let path = r.string("path", issues);
            let sync = r.boolean("sync", issues).unwrap_or(DEFAULT_FILE_SYNC);
            let mode = r.mode("mode", issues).unwrap_or(DEFAULT_FILE_MODE);
            match path {
                Some(p) => Some(SinkConfig::File {
                    path: base.join(p),
                    sync,
                    mode,
                }),
                None => {
                    required("path", "file", issues);
                    None
                }
            }
        }
        Some("stdout") => Some(SinkConfig::Stdout),
        Some("collector") => collector::read(&mut r, renew_at, base, state_dir, host_id, issues)
            .map(SinkConfig::Collector),
        Some("syslog") => syslog::read(&mut r, base, issues).map(SinkConfig::Syslog),
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

/// As source names: a '.' would make dotted keys ambiguous.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A required key that is missing.
fn required(key: &str, kind: &str, issues: &mut Vec<ConfigIssue>) {
    issues.push(ConfigIssue {
        key: format!("sink.{key}"),
        message: format!("required for a {kind} sink"),
    })
}

/// Whether `host` (`[v6]` too) can name a TLS server: a DNS name or an IP address. The same test
/// rustls makes when it connects, so a bad name is a config error rather than a retry loop.
fn check_server_name(host: &str) -> Result<(), String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(bare.to_string())
        .map(|_| ())
        .map_err(|_| {
            format!("{host:?} is not a valid TLS server name (a DNS name or an IP address)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_checked_as_rustls_does() {
        assert!(check_server_name("collector.example").is_ok());
        assert!(check_server_name("[::1]").is_ok());
        assert!(check_server_name("10.0.0.1").is_ok());
        let e = check_server_name("bad name").unwrap_err();
        assert!(
            e.contains("\"bad name\" is not a valid TLS server name"),
            "{e}"
        );
    }
}
