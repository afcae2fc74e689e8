//! `[sink]`: which sink the batches go to, and each kind's options as plain data.
//!
//! The option types live here, below the sinks that use them, so that reading a config never
//! needs the code that ships (and `sink` imports `config`, never the reverse). One file per kind
//! that has options, as in `sink/`.

mod collector;
mod syslog;

pub use collector::{CollectorOptions, Compression, TlsFiles, Url, DEFAULT_COLLECTOR_TIMEOUT};
pub use syslog::{StructuredData, SyslogOptions, SyslogTls};

use super::reader::TableReader;
use super::ConfigIssue;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum SinkConfig {
    File { path: PathBuf, sync: bool },
    Stdout,
    Collector(CollectorOptions),
    Syslog(SyslogOptions),
}

pub(super) fn read_sink(
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
            collector::read(&mut r, renew_at, base, state_dir, issues).map(SinkConfig::Collector)
        }
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
