//! `[sources.NAME] type = "syslog"`: the syslog server input's options, read and checked here
//! so a bad listener or an unreadable key is reported with the rest of the file's errors.

use super::reader::{ConfigIssue, TableReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 65536;
pub const DEFAULT_MAX_CONNECTIONS: u64 = 1024;
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// One `listen` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl Listener {
    /// `udp://127.0.0.1:5514`: the listener's name in status, metrics and its stream id.
    pub fn url(&self) -> String {
        format!("{}://{}", self.transport.as_str(), self.addr)
    }

    /// The listener its [`Listener::url`] names, as the `listen` key is read.
    pub fn from_url(url: &str) -> Result<Listener, String> {
        parse_listener(url)
    }

    /// A folder name for its spool (no `:` or `/`): `udp-127.0.0.1-5514`.
    pub fn slug(&self) -> String {
        let ip = self.addr.ip().to_string().replace(':', "_");
        format!("{}-{}-{}", self.transport.as_str(), ip, self.addr.port())
    }
}

/// The server certificate and key for `tls://` listeners, and the CA that client certificates
/// must chain to when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct SyslogSource {
    pub name: String,
    pub listen: Vec<Listener>,
    pub tls: Option<SyslogTls>,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub spool_max_bytes: u64,
    /// The sinks its records go to (`sinks = [...]`, checked by `sinks::routes`); None: every
    /// sink.
    pub sinks: Option<Vec<String>>,
}

impl SyslogSource {
    /// Everything that decides how the source runs: a reload restarts it only when this changes.
    pub fn signature(&self) -> String {
        format!(
            "{:?} {:?} {} {} {}",
            self.listen,
            self.tls,
            self.max_message_bytes,
            self.max_connections,
            self.spool_max_bytes
        )
    }
}

/// `type` of a syslog source.
pub const TYPE: &str = "syslog";

/// Is this source table a syslog source? (`type` absent or `"file"`: a file source.)
pub fn is_syslog(table: &toml::Table) -> bool {
    table.get("type").and_then(|v| v.as_str()) == Some(TYPE)
}

/// The keys of a syslog source that have defaults, with them as a config file would write them
/// (`get` and `list` show them with origin `default`).
pub fn defaults() -> Vec<(&'static str, toml::Value)> {
    use super::units::size_value;
    vec![
        ("max_message_bytes", size_value(DEFAULT_MAX_MESSAGE_BYTES)),
        ("max_connections", size_value(DEFAULT_MAX_CONNECTIONS)),
        ("spool_max_bytes", size_value(DEFAULT_SPOOL_MAX_BYTES)),
    ]
}

/// Reads `[sources.NAME]` with `type = "syslog"`; every problem goes to `issues` with its key.
pub fn read(
    name: &str,
    key: &str,
    table: &toml::Table,
    base: &Path,
    issues: &mut Vec<ConfigIssue>,
) -> Option<SyslogSource> {
    let before = issues.len();
    super::sources::check_name(name, key, issues);
    let mut r = TableReader::new(key, table);
    let _ = r.string("type", issues);
    let urls = r.strings("listen", issues).unwrap_or_default();
    let sinks = r.strings("sinks", issues);
    let cert = r.string("tls_cert", issues).map(|p| base.join(p));
    let key_path = r.string("tls_key", issues).map(|p| base.join(p));
    let client_ca = r.string("tls_client_ca", issues).map(|p| base.join(p));
    let max_message_bytes = r
        .size("max_message_bytes", issues)
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let max_connections = r
        .size("max_connections", issues)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    let spool_max_bytes = r
        .size("spool_max_bytes", issues)
        .unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
    r.finish(issues);
    let fail = |issues: &mut Vec<ConfigIssue>, k: &str, message: String| {
        issues.push(ConfigIssue {
            key: format!("{key}.{k}"),
            message,
        })
    };

    if urls.is_empty() {
        fail(
            issues,
            "listen",
            "at least one listener is required, e.g. \"udp://127.0.0.1:5514\"".into(),
        );
    }
    let mut listen: Vec<Listener> = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        match parse_listener(url) {
            Ok(l) if listen.contains(&l) => fail(
                issues,
                &format!("listen[{i}]"),
                format!("{url} is listed twice"),
            ),
            Ok(l) => listen.push(l),
            Err(e) => fail(issues, &format!("listen[{i}]"), e),
        }
    }
    let wants_tls = listen.iter().any(|l| l.transport == Transport::Tls);
    let tls = match (cert, key_path) {
        (Some(cert), Some(key_path)) => {
            check_tls_files(&cert, &key_path, client_ca.as_deref(), &fail, issues);
            Some(SyslogTls {
                cert,
                key: key_path,
                client_ca,
            })
        }
        (None, None) => {
            if wants_tls {
                fail(
                    issues,
                    "tls_cert",
                    "a tls:// listener needs tls_cert and tls_key".into(),
                );
            }
            if client_ca.is_some() {
                fail(
                    issues,
                    "tls_client_ca",
                    "needs tls_cert and tls_key (it is only used by tls:// listeners)".into(),
                );
            }
            None
        }
        (Some(_), None) => {
            fail(
                issues,
                "tls_key",
                "tls_cert is set but tls_key is not".into(),
            );
            None
        }
        (None, Some(_)) => {
            fail(
                issues,
                "tls_cert",
                "tls_key is set but tls_cert is not".into(),
            );
            None
        }
    };
    if tls.is_some() && !wants_tls && !listen.is_empty() {
        fail(
            issues,
            "tls_cert",
            "is set but no listener is tls:// (it would be silently unused)".into(),
        );
    }
    if !(64..=64 << 20).contains(&max_message_bytes) {
        fail(
            issues,
            "max_message_bytes",
            format!("{max_message_bytes} is out of range (64 to 64MiB)"),
        );
    }
    if !(1..=1 << 20).contains(&max_connections) {
        fail(
            issues,
            "max_connections",
            format!("{max_connections} is out of range (1 to 1048576)"),
        );
    }
    // Below that the spool would be full all the time.
    if spool_max_bytes < 64 << 10 {
        fail(
            issues,
            "spool_max_bytes",
            format!("{spool_max_bytes} is too small (at least 64KiB)"),
        );
    }
    if issues.len() != before {
        return None;
    }
    Some(SyslogSource {
        name: name.to_string(),
        listen,
        tls,
        max_message_bytes: max_message_bytes as usize,
        max_connections: max_connections as usize,
        spool_max_bytes,
        sinks,
    })
}

/// Listeners that cannot all bind, across every syslog source and within one: the same kind
/// of socket (UDP; TCP for both tcp:// and tls://) on the same port, at one address or where
/// one is a wildcard covering the other (0.0.0.0 covers IPv4, [::] both families, as Linux
/// binds IPv6 dual-stack by default). Found here, `check` and a reload refuse it by name;
/// before, the second listener only failed as it started.
pub fn check_ports(sources: &[SyslogSource], issues: &mut Vec<ConfigIssue>) {
    let mut seen: Vec<(&str, &Listener)> = Vec::new();
    for s in sources {
        for l in &s.listen {
            let taken = seen.iter().find(|(_, o)| l.addr.port() != 0 && clash(o, l));
            if let Some((other, o)) = taken {
                issues.push(ConfigIssue {
                    key: format!("sources.{}.listen", s.name),
                    message: format!(
                        "{} cannot bind beside {} of sources.{other}: the same port at overlapping addresses",
                        l.url(),
                        o.url()
                    ),
                });
            }
            seen.push((&s.name, l));
        }
    }
}

/// The monitor's port taken by a tcp:// or tls:// listener too: one of the two would fail to
/// bind as the agent starts.
pub fn check_monitor_port(
    monitor: SocketAddr,
    sources: &[SyslogSource],
    issues: &mut Vec<ConfigIssue>,
) {
    let m = Listener {
        transport: Transport::Tcp,
        addr: monitor,
    };
    for s in sources {
        if let Some(l) = s
            .listen
            .iter()
            .find(|l| monitor.port() != 0 && clash(&m, l))
        {
            issues.push(ConfigIssue {
                key: "monitor.listen".into(),
                message: format!(
                    "{monitor} cannot bind beside {} of sources.{}: the same port at overlapping addresses",
                    l.url(),
                    s.name
                ),
            });
        }
    }
}

/// Whether an IPv6 wildcard listener takes IPv4 too: Linux's default, unless the host set
/// `net.ipv6.bindv6only` (then `[::]:514` and `0.0.0.0:514` bind side by side).
fn dual_stack() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/bindv6only").map_or(true, |v| v.trim() != "1")
}

/// Whether binding both `a` and `b` fails with "address in use".
fn clash(a: &Listener, b: &Listener) -> bool {
    let udp = |l: &Listener| l.transport == Transport::Udp;
    if udp(a) != udp(b) || a.addr.port() != b.addr.port() {
        return false;
    }
    let covers = |w: IpAddr, o: IpAddr| {
        w.is_unspecified() && (w.is_ipv4() == o.is_ipv4() || (w.is_ipv6() && dual_stack()))
    };
    let (x, y) = (a.addr.ip(), b.addr.ip());
    x == y || covers(x, y) || covers(y, x)
}

fn parse_listener(url: &str) -> Result<Listener, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a listener URL (udp://, tcp:// or tls:// and an IP:port)"
        ));
    };
    let transport = match scheme {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        other => {
            return Err(format!(
                "unknown scheme {other:?} in {url:?} (use udp://, tcp:// or tls://)"
            ))
        }
    };
    let addr: SocketAddr = rest.parse().map_err(|_| {
        format!("{rest:?} in {url:?} is not an IP address and port (e.g. 0.0.0.0:514 or [::]:514)")
    })?;
    Ok(Listener { transport, addr })
}

/// Loads the TLS files as the listeners will, so an unreadable key or a bad PEM is reported now
/// with its key rather than when the first client connects.
fn check_tls_files(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    fail: &dyn Fn(&mut Vec<ConfigIssue>, &str, String),
    issues: &mut Vec<ConfigIssue>,
) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = log_sensor_common::pem::load_certs(cert) {
        fail(issues, "tls_cert", e.to_string());
    }
    match std::fs::metadata(key) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => fail(
            issues,
            "tls_key",
            format!(
                "{} is readable or writable by others (mode {:04o}); a private key must be 0600",
                key.display(),
                m.permissions().mode() & 0o7777
            ),
        ),
        _ => {
            if let Err(e) = log_sensor_common::pem::load_key(key) {
                fail(issues, "tls_key", e.to_string());
            }
        }
    }
    if let Some(ca) = client_ca {
        if let Err(e) = log_sensor_common::pem::load_certs(ca) {
            fail(issues, "tls_client_ca", e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_str(text: &str) -> (Option<SyslogSource>, Vec<ConfigIssue>) {
        let t: toml::Table = text.parse().unwrap();
        let mut issues = Vec::new();
        let s = read(
            "net",
            "sources.net",
            &t,
            Path::new("/nonexistent"),
            &mut issues,
        );
        (s, issues)
    }

    #[test]
    fn listeners_that_cannot_both_bind_are_refused_by_name() {
        let source = |name: &str, urls: &[&str]| SyslogSource {
            name: name.into(),
            listen: urls.iter().map(|u| parse_listener(u).unwrap()).collect(),
            tls: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES as usize,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            sinks: None,
        };
        let issues = |sources: &[SyslogSource]| {
            let mut issues = Vec::new();
            check_ports(sources, &mut issues);
            issues
        };
        // Each of these binds beside the others.
        let fine = [
            source(
                "a",
                &[
                    "udp://0.0.0.0:514",
                    "tcp://127.0.0.1:514",
                    "tcp://127.0.0.2:514",
                ],
            ),
            source(
                "b",
                &["tcp://[::1]:6514", "udp://[::1]:6514", "udp://0.0.0.0:0"],
            ),
            source(
                "c",
                &["tcp://0.0.0.0:7514", "tcp://[::1]:7514", "udp://0.0.0.0:0"],
            ),
        ];
        assert_eq!(issues(&fine), vec![]);
        let clashing = [
            (
                ["tcp://127.0.0.1:514", "tls://127.0.0.1:514"],
                "tls://127.0.0.1:514",
            ),
            (
                ["tcp://0.0.0.0:514", "tls://127.0.0.1:514"],
                "tls://127.0.0.1:514",
            ),
            (["udp://127.0.0.1:514", "udp://[::]:514"], "udp://[::]:514"),
            (["tcp://[::]:514", "tcp://0.0.0.0:514"], "tcp://0.0.0.0:514"),
        ];
        for ([first, second], named) in clashing {
            let got = issues(&[source("a", &[first]), source("b", &[second])]);
            assert_eq!(got.len(), 1, "{first} {second}: {got:?}");
            assert_eq!(got[0].key, "sources.b.listen");
            assert!(
                got[0].message.starts_with(named) && got[0].message.contains("sources.a"),
                "{got:?}"
            );
            // Within one source too.
            assert_eq!(issues(&[source("a", &[first, second])]).len(), 1);
        }
        // And the monitor's port.
        let monitor = |addr: &str, sources: &[SyslogSource]| {
            let mut issues = Vec::new();
            check_monitor_port(addr.parse().unwrap(), sources, &mut issues);
            issues
        };
        let got = monitor("127.0.0.1:514", &[source("a", &["tls://0.0.0.0:514"])]);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].key, "monitor.listen");
        assert!(
            got[0].message.contains("tls://0.0.0.0:514 of sources.a"),
            "{got:?}"
        );
        assert_eq!(
            monitor("127.0.0.1:514", &[source("a", &["udp://127.0.0.1:514"])]),
            vec![]
        );
    }

    #[test]
    fn defaults_and_listeners() {
        let (s, issues) = read_str(
            r#"type = "syslog"
            listen = ["udp://127.0.0.1:5514", "tcp://[::1]:5514"]"#,
        );
        assert_eq!(issues, vec![]);
        let s = s.unwrap();
        assert_eq!(s.listen[0].url(), "udp://127.0.0.1:5514");
        assert_eq!(s.listen[1].slug(), "tcp-__1-5514");
        assert_eq!(s.max_message_bytes, 65536);
        assert_eq!(s.max_connections, 1024);
        assert_eq!(s.spool_max_bytes, 1 << 30);
    }

    #[test]
    fn every_error_names_its_key() {
        let (s, issues) = read_str(
            r#"type = "syslog"
            listen = ["http://1.2.3.4:5", "tcp://localhost:514", "tls://127.0.0.1:6514", "udp://127.0.0.1:1", "udp://127.0.0.1:1"]
            max_message_bytes = 10
            max_connections = 0
            spool_max_bytes = "1KiB"
            paths = ["/x"]"#,
        );
        assert!(s.is_none());
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        for k in [
            "sources.net.paths",
            "sources.net.listen[0]",
            "sources.net.listen[1]",
            "sources.net.listen[4]",
            "sources.net.tls_cert",
            "sources.net.max_message_bytes",
            "sources.net.max_connections",
            "sources.net.spool_max_bytes",
        ] {
            assert!(keys.contains(&k), "{k} missing from {issues:?}");
        }
        assert!(issues[..]
            .iter()
            .any(|i| i.message.contains("unknown scheme \"http\"")));
    }

    #[test]
    fn unreadable_and_world_readable_keys_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("c.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), ck.signing_key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            dir.path().join("k.pem"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let t: toml::Table = r#"type = "syslog"
            listen = "tls://127.0.0.1:6514"
            tls_cert = "c.pem"
            tls_key = "k.pem"
            tls_client_ca = "missing.pem""#
            .parse()
            .unwrap();
        let mut issues = Vec::new();
        assert!(read("net", "sources.net", &t, dir.path(), &mut issues).is_none());
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys, ["sources.net.tls_key", "sources.net.tls_client_ca"]);
        std::fs::set_permissions(
            dir.path().join("k.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.path().join("missing.pem"), ck.cert.pem()).unwrap();
        let mut issues = Vec::new();
        let s = read("net", "sources.net", &t, dir.path(), &mut issues).unwrap();
        assert_eq!(issues, vec![]);
        assert!(s.tls.unwrap().client_ca.is_some());
    }
}
