//! `[sink] type = "collector"`: the collector's URL, the identity files and how requests go.

use super::super::reader::TableReader;
use super::super::ConfigIssue;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a request may go unanswered by default (`sink.timeout`): the collector answers after
/// its fsync, and a slow disk under a 4 MiB batch stays well inside this. A silent network cut is
/// noticed after this long, and a stopping agent (which cannot interrupt a request) waits at most
/// this long.
pub const DEFAULT_COLLECTOR_TIMEOUT: Duration = Duration::from_secs(60);

/// `https://host[:port]`, as the config and `enroll --server` give it.
#[derive(Debug, Clone)]
pub struct Url {
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| format!("{s:?} must start with https://"))?;
        let authority = rest.split('/').next().unwrap_or("");
        if rest.len() > authority.len() + 1 {
            return Err(format!(
                "{s:?}: give only https://host:port, without a path"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))?,
            ),
            _ => (authority, 443),
        };
        if host.is_empty() {
            return Err(format!("{s:?} has no host"));
        }
        super::check_server_name(host)?;
        Ok(Url {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "https://{}:{}", self.host, self.port)
    }
}

/// Where the sink's certificate, key and CA live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Where `log-sensor enroll` stores the identity, and where the collector sink looks by
    /// default: a fact of the state dir's layout, like `store.db`.
    pub fn enrolled(state_dir: &Path) -> TlsFiles {
        let (ca, cert, key) = log_sensor_common::state_dir::tls_files(state_dir);
        TlsFiles { ca, cert, key }
    }
}

/// `sink.compression`: how request bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// The default: lz4 once the collector's replies announce that it accepts it, gzip until
    /// then and with a collector that does not (older ones), so no collector is sent what it
    /// cannot read.
    Auto,
    /// Always lz4 (a collector that does not accept it refuses every batch with 415).
    Lz4,
    Gzip,
    None,
}

/// Options of a collector sink, from `[sink]`.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    pub url: Url,
    pub files: TlsFiles,
    pub compression: Compression,
    pub renew_at: f64,
    /// For each read and write of a request (`sink.timeout`).
    pub timeout: Duration,
}

/// The collector sink's keys; `renew_at` was taken out of the table by the caller (the reader
/// has no float accessor).
pub(super) fn read(
    r: &mut TableReader,
    renew_at: Option<f64>,
    base: &Path,
    state_dir: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<CollectorOptions> {
    let before = issues.len();
    let url = r.string("url", issues);
    let enrolled = TlsFiles::enrolled(state_dir);
    let files = TlsFiles {
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
    let compression = match r.string("compression", issues).as_deref() {
        None | Some("auto") => Compression::Auto,
        Some("lz4") => Compression::Lz4,
        Some("gzip") => Compression::Gzip,
        Some("none") => Compression::None,
        Some(other) => {
            issues.push(ConfigIssue {
                key: "sink.compression".into(),
                message: format!("{other:?}: expected \"auto\", \"lz4\", \"gzip\" or \"none\""),
            });
            Compression::Auto
        }
    };
    let timeout = r
        .duration("timeout", issues)
        .unwrap_or(DEFAULT_COLLECTOR_TIMEOUT);
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
    let url = match url.map(|u| Url::parse(&u)) {
        Some(Ok(u)) => Some(u),
        Some(Err(message)) => {
            issues.push(ConfigIssue {
                key: "sink.url".into(),
                message,
            });
            None
        }
        None => {
            super::required("url", "collector", issues);
            None
        }
    };
    match url {
        Some(url) if issues.len() == before => Some(CollectorOptions {
            url,
            files,
            compression,
            renew_at,
            timeout,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://collector.example:8443").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("collector.example", 8443));
        let u = Url::parse("https://10.0.0.1/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("10.0.0.1", 443));
        let u = Url::parse("https://[::1]:9").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 9));
        assert!(Url::parse("http://x").is_err());
        assert!(Url::parse("https://x:99999").is_err());
        assert!(Url::parse("https://x/v1/ingest").is_err());
    }

    fn parse(sink: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(
            Path::new("/etc/ls/agent.toml"),
            &format!("state_dir = \"/var/lib/ls\"\n[sink]\n{sink}"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn config_defaults_to_the_enrolled_files_and_auto_compression() {
        let c = parse("type = \"collector\"\nurl = \"https://c.example:8443\"").unwrap();
        let crate::config::SinkConfig::Collector(o) = c.sinks[0].sink.clone() else {
            panic!("not a collector sink")
        };
        assert_eq!(o.files.cert, Path::new("/var/lib/ls/tls/cert.pem"));
        assert_eq!(o.files.key, Path::new("/var/lib/ls/tls/key.pem"));
        assert_eq!(o.files.ca, Path::new("/var/lib/ls/tls/ca.pem"));
        assert_eq!(o.compression, Compression::Auto);
        assert!((o.renew_at - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(o.timeout, Duration::from_secs(60));
        let c = parse("type = \"collector\"\nurl = \"https://c:1\"\ncompression = \"none\"\nca = \"ca.pem\"\nrenew_at = 0.5").unwrap();
        let crate::config::SinkConfig::Collector(o) = c.sinks[0].sink.clone() else {
            panic!("not a collector sink")
        };
        assert_eq!(o.compression, Compression::None);
        assert_eq!(o.files.ca, Path::new("/etc/ls/ca.pem"));
        assert_eq!(o.renew_at, 0.5);
    }

    #[test]
    fn config_errors_name_their_keys() {
        let e = parse("type = \"collector\"\nurl = \"http://x\"\ncompression = \"zstd\"\nrenew_at = 1.5\nbogus = 1\ntimeout = \"0s\"").unwrap_err();
        for key in [
            "sink.url",
            "sink.compression",
            "sink.renew_at",
            "sink.bogus",
            "sink.timeout",
        ] {
            assert!(e.contains(key), "{key} missing in {e}");
        }
        let e = parse("type = \"collector\"").unwrap_err();
        assert!(e.contains("sink.url: required"), "{e}");
        let e = parse("type = \"file\"\npath = \"x\"\nrenew_at = 0.5").unwrap_err();
        assert!(e.contains("sink.renew_at"), "{e}");
    }
}
