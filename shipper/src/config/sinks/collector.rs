//! `[sink] type = "collector"`: the collectors' URLs, the identity files and how requests go.
//!
//! `url` names one collector, `urls` several (a collector tier: embedded collectors side by side,
//! or stateless ones on one JetStream cluster). A host's own order of them, [`CollectorOptions::
//! in_order`], starts at the URL a stable hash of its `host_id` picks, so a fleet spreads evenly
//! and each host sticks to one collector; the sink, its certificate renewal and `enroll` all try
//! the URLs in that order.

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

/// How long the collectors may fail before the outage raises its one `sink_error` alert
/// (`sink.alert_after`): past a JetStream leader election (4–6 s measured, about 10 s at worst),
/// during which every collector of the cluster stalls at once, so "every URL failed" alone
/// would alert on each election.
pub const DEFAULT_ALERT_AFTER: Duration = Duration::from_secs(30);
/// How long after leaving its home URL a host first tries to go back (`sink.failback_after`):
/// long enough that a collector which keeps restarting is not hammered, short enough that a
/// fleet spreads evenly again soon after a collector returns.
pub const DEFAULT_FAILBACK_AFTER: Duration = Duration::from_secs(300);

/// `sink.compression` unless set (see [`Compression::Auto`]).
pub const DEFAULT_COMPRESSION: &str = "auto";
/// `sink.renew_at`: the share of the certificate's lifetime after which it is renewed.
pub const DEFAULT_RENEW_AT: f64 = 2.0 / 3.0;

/// The keys of a collector sink that have defaults, with them as a config file would write them
/// (`get` and `list` show them with origin `default`): the enrolled files of `state_dir` among
/// them.
pub(super) fn defaults(state_dir: &Path) -> Vec<(&'static str, toml::Value)> {
    use super::super::units::duration_value;
    use toml::Value;
    let path = |p: PathBuf| Value::String(p.display().to_string());
    let enrolled = TlsFiles::enrolled(state_dir);
    vec![
        ("ca", path(enrolled.ca)),
        ("cert", path(enrolled.cert)),
        ("key", path(enrolled.key)),
        ("compression", Value::String(DEFAULT_COMPRESSION.into())),
        ("renew_at", Value::Float(DEFAULT_RENEW_AT)),
        ("timeout", duration_value(DEFAULT_COLLECTOR_TIMEOUT)),
        ("alert_after", duration_value(DEFAULT_ALERT_AFTER)),
        ("failback_after", duration_value(DEFAULT_FAILBACK_AFTER)),
    ]
}

/// Options of a collector sink, from `[sink]`.
#[derive(Debug, Clone)]
pub struct CollectorOptions {
    /// `url`, or `urls` as configured (never empty); [`CollectorOptions::in_order`] is the order
    /// they are tried in.
    pub urls: Vec<Url>,
    /// This host's home: the index in `urls` its `host_id` hashes to.
    pub home: usize,
    pub files: TlsFiles,
    pub compression: Compression,
    pub renew_at: f64,
    /// For each read and write of a request (`sink.timeout`).
    pub timeout: Duration,
    /// `sink.alert_after`: see [`DEFAULT_ALERT_AFTER`].
    pub alert_after: Duration,
    /// `sink.failback_after`: see [`DEFAULT_FAILBACK_AFTER`].
    pub failback_after: Duration,
}

impl CollectorOptions {
    /// The URLs in the order this host tries them: its home first, then the ones after it in
    /// the configured list, wrapping around.
    pub fn in_order(&self) -> Vec<Url> {
        let n = self.urls.len();
        (0..n)
            .map(|i| self.urls[(self.home + i) % n].clone())
            .collect()
    }

    /// The sink as status pages and logs name it.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self.urls.iter().map(Url::to_string).collect();
        format!("collector {}", all.join(", "))
    }
}

/// The index of `host_id`'s home among `n` URLs: FNV-1a over its bytes, then the SplitMix64
/// finaliser so that ids differing only in their last characters (`web-0001`, `web-0002`) still
/// spread evenly. Fixed here rather than `std`'s hasher, whose output may change between Rust
/// releases: an upgrade must not move every host of a fleet to another collector.
pub fn home_index(host_id: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % n as u64) as usize
}

/// The collector sink's keys; `renew_at` was taken out of the table by the caller (the reader
/// has no float accessor).
pub(super) fn read(
    r: &mut TableReader,
    renew_at: Option<f64>,
    base: &Path,
    state_dir: &Path,
    host_id: &str,
    issues: &mut Vec<ConfigIssue>,
) -> Option<CollectorOptions> {
    let before = issues.len();
    let urls = read_urls(r, issues);
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
    let compression = r
        .string("compression", issues)
        .unwrap_or_else(|| DEFAULT_COMPRESSION.into());
    let compression = match compression.as_str() {
        "auto" => Compression::Auto,
        "lz4" => Compression::Lz4,
        "gzip" => Compression::Gzip,
        "none" => Compression::None,
        other => {
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
    let renew_at = renew_at.unwrap_or(DEFAULT_RENEW_AT);
    if !(renew_at > 0.0 && renew_at < 1.0) {
        issues.push(ConfigIssue {
            key: "sink.renew_at".into(),
            message: "a fraction of the certificate's lifetime, above 0 and below 1".into(),
        });
    }
    let mut positive = |key: &str, default: Duration| {
        let d = r.duration(key, issues).unwrap_or(default);
        if d.is_zero() {
            issues.push(ConfigIssue {
                key: format!("sink.{key}"),
                message: "must be above zero".into(),
            });
        }
        d
    };
    let alert_after = positive("alert_after", DEFAULT_ALERT_AFTER);
    let failback_after = positive("failback_after", DEFAULT_FAILBACK_AFTER);
    match urls {
        Some(urls) if issues.len() == before => Some(CollectorOptions {
            home: home_index(host_id, urls.len()),
            urls,
            files,
            compression,
            renew_at,
            timeout,
            alert_after,
            failback_after,
        }),
        _ => None,
    }
}

/// `url = "..."` or `urls = [...]`, one of them, each URL checked; None after an issue.
fn read_urls(r: &mut TableReader, issues: &mut Vec<ConfigIssue>) -> Option<Vec<Url>> {
    let one = r.string("url", issues);
    let many = r.strings("urls", issues);
    let named: Vec<(String, String)> = match (one, many) {
        (Some(_), Some(_)) => {
            issues.push(ConfigIssue {
                key: "sink.urls".into(),
                message: "sink.url and sink.urls are both set: give one collector as url, or every collector in urls".into(),
            });
            return None;
        }
        (Some(u), None) => vec![("sink.url".into(), u)],
        (None, Some(list)) if list.is_empty() => {
            issues.push(ConfigIssue {
                key: "sink.urls".into(),
                message: "names no collector: give at least one https://host:port".into(),
            });
            return None;
        }
        (None, Some(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, u)| (format!("sink.urls[{i}]"), u))
            .collect(),
        (None, None) => {
            super::required("url", "collector", issues);
            return None;
        }
    };
    // Aligned with the keys, so a duplicate names the index it repeats.
    let mut parsed: Vec<Option<Url>> = Vec::new();
    for (key, text) in named {
        let url = match Url::parse(&text) {
            Ok(u) => {
                // The same collector twice would count as two in the spreading and the failover.
                let same = parsed
                    .iter()
                    .position(|o| o.as_ref().is_some_and(|o| o.to_string() == u.to_string()));
                match same {
                    Some(j) => {
                        issues.push(ConfigIssue {
                            key,
                            message: format!("{u} is already sink.urls[{j}]"),
                        });
                        None
                    }
                    None => Some(u),
                }
            }
            Err(message) => {
                issues.push(ConfigIssue { key, message });
                None
            }
        };
        parsed.push(url);
    }
    parsed.into_iter().collect()
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

    fn collector(sink: &str) -> CollectorOptions {
        let c = crate::config::Config::parse(
            Path::new("/etc/ls/agent.toml"),
            &format!("host_id = \"h1\"\n[sink]\ntype = \"collector\"\n{sink}"),
        )
        .unwrap();
        let crate::config::SinkConfig::Collector(o) = c.sinks[0].sink.clone() else {
            panic!("not a collector sink")
        };
        o
    }

    #[test]
    fn urls_list_several_collectors_and_url_stays_valid() {
        let o = collector("url = \"https://a:8443\"");
        assert_eq!(o.urls.len(), 1);
        assert_eq!(
            (o.home, o.describe()),
            (0, "collector https://a:8443".into())
        );
        let o = collector("urls = [\"https://a:8443\", \"https://b:8443\", \"https://c\"]");
        let names: Vec<String> = o.urls.iter().map(Url::to_string).collect();
        assert_eq!(names, ["https://a:8443", "https://b:8443", "https://c:443"]);
        assert_eq!(o.home, home_index("h1", 3));
        assert_eq!(
            o.describe(),
            "collector https://a:8443, https://b:8443, https://c:443"
        );
        // Home first, then the ones after it, wrapping round.
        let order: Vec<String> = o.in_order().iter().map(Url::to_string).collect();
        let want: Vec<String> = (0..3).map(|i| names[(o.home + i) % 3].clone()).collect();
        assert_eq!(order, want);
        assert_eq!(o.alert_after, DEFAULT_ALERT_AFTER);
        assert_eq!(o.failback_after, DEFAULT_FAILBACK_AFTER);
        let o =
            collector("urls = [\"https://a:1\"]\nalert_after = \"5s\"\nfailback_after = \"1m\"");
        assert_eq!(o.alert_after, Duration::from_secs(5));
        assert_eq!(o.failback_after, Duration::from_secs(60));
    }

    #[test]
    fn url_key_errors_name_the_key_and_the_entry_at_fault() {
        let e = parse("type = \"collector\"\nurl = \"https://a:1\"\nurls = [\"https://b:1\"]")
            .unwrap_err();
        assert!(
            e.contains("sink.urls") && e.contains("sink.url and sink.urls are both set"),
            "{e}"
        );
        let e = parse(
            "type = \"collector\"\nurls = [\"https://a:1\", \"http://b:1\", \"https://c:99999\"]",
        )
        .unwrap_err();
        assert!(e.contains("sink.urls[1]") && e.contains("https://"), "{e}");
        assert!(e.contains("sink.urls[2]") && e.contains("bad port"), "{e}");
        assert!(!e.contains("sink.urls[0]"), "{e}");
        let e = parse("type = \"collector\"\nurls = []").unwrap_err();
        assert!(e.contains("sink.urls: names no collector"), "{e}");
        let e = parse(
            "type = \"collector\"\nurls = [\"https://a:1\", \"https://b:1\", \"https://a:1/\"]",
        )
        .unwrap_err();
        assert!(
            e.contains("sink.urls[2]: https://a:1 is already sink.urls[0]"),
            "{e}"
        );
        let e = parse("type = \"collector\"\nurls = [\"https://a:1\", 7]").unwrap_err();
        assert!(e.contains("sink.urls[1]: expected a string"), "{e}");
        let e = parse(
            "type = \"collector\"\nurl = \"https://a:1\"\nalert_after = \"0s\"\nfailback_after = 0",
        )
        .unwrap_err();
        assert!(e.contains("sink.alert_after: must be above zero"), "{e}");
        assert!(e.contains("sink.failback_after: must be above zero"), "{e}");
        // A named sink's keys are named under its table.
        let e = crate::config::Config::parse(
            Path::new("/etc/ls/agent.toml"),
            "[sinks.central]\ntype = \"collector\"\nurls = [\"https://a:1\", \"ftp://x\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sinks.central.urls[1]"), "{e}");
    }

    /// The home a host id hashes to is fixed (an upgrade must not move a fleet to other
    /// collectors), and a fleet of numbered hosts spreads evenly over the URLs.
    #[test]
    fn hosts_spread_evenly_and_keep_their_home() {
        assert_eq!(home_index("anything", 1), 0);
        assert_eq!(home_index("anything", 0), 0);
        let pinned: Vec<usize> = ["web-01", "web-02", "db-7", ""]
            .iter()
            .map(|h| home_index(h, 5))
            .collect();
        // As first computed: a change here moves hosts of every fleet on upgrade.
        assert_eq!(
            pinned,
            [3, 3, 0, 3],
            "the host hash changed: hosts would move"
        );
        for n in [2usize, 3, 5] {
            let mut counts = vec![0usize; n];
            let hosts = 10_000;
            for i in 0..hosts {
                counts[home_index(&format!("web-{i:05}"), n)] += 1;
            }
            let even = hosts / n;
            for c in &counts {
                assert!(c.abs_diff(even) * 20 < even, "{n} URLs: {counts:?}");
            }
        }
    }
}
