//! The syslog input's test bench: an agent listening on UDP, TCP and TLS on loopback with a file
//! sink, and the real senders that talk to it — Debian's rsyslog forwarding with `omfwd`,
//! util-linux `logger`, and raw sockets (std::net, rustls) for what no well-behaved sender does.
//! Also a capturing listener, so what the senders put on the wire can be checked on its own.
#![allow(dead_code)]

use super::pki::Pki;
use super::support::{bin, read_ndjson, tail, wait_for, Proc, PATIENCE};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The client certificate's name, which rsyslog and the raw TLS client present.
pub const CLIENT: &str = "relay-01";

/// A port free for both TCP and UDP (the agent listens on both with one number). Found by
/// binding and letting go; a clash with another test is retried by `NetAgent::start`.
pub fn free_port() -> u16 {
    loop {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An agent with one `[sources.net]` of `type = "syslog"` on `udp://` and `tcp://` (one port)
/// and `tls://` (another), writing NDJSON to `out.ndjson` outside its state dir.
pub struct NetAgent {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: u16,
    pub pki: Pki,
    /// Where the file sink writes; outside the state dir, so a scan of the spool never sees it.
    pub out: PathBuf,
    /// Lines added to `[sources.net]`.
    source_extra: String,
    /// Tables added after `[sink]` (e.g. `[monitor]`), or a whole `[sink]` replacing the file one.
    tail: String,
}

impl NetAgent {
    pub fn new(source_extra: &str) -> NetAgent {
        Self::with(source_extra, None, "")
    }

    /// `sink`: the `[sink]` body to use instead of a file sink on `out.ndjson`; `tail`: more
    /// top-level tables.
    pub fn with(source_extra: &str, sink_path: Option<&Path>, tail: &str) -> NetAgent {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(&dir.path().join("pki"), CLIENT);
        let out = sink_path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("out.ndjson"));
        NetAgent {
            dir,
            port: 0,
            tls_port: 0,
            pki,
            out,
            source_extra: source_extra.to_string(),
            tail: tail.to_string(),
        }
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write_config(&self) {
        let text = format!(
            r#"
host_id = "test-host"
state_dir = "state"
[sources.net]
type = "syslog"
listen = ["udp://127.0.0.1:{port}", "tcp://127.0.0.1:{port}", "tls://127.0.0.1:{tls}"]
tls_cert = "{cert}"
tls_key = "{key}"
tls_client_ca = "{ca}"
max_message_bytes = 65536
{extra}
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "{out}"
{tail}
"#,
            port = self.port,
            tls = self.tls_port,
            cert = self.pki.p("server.pem"),
            key = self.pki.p("server.key"),
            ca = self.pki.p("ca.pem"),
            extra = self.source_extra,
            out = self.out.display(),
            tail = self.tail,
        );
        std::fs::write(self.p("agent.toml"), text).unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("log-sensor"));
        c.arg("-c")
            .arg(self.p("agent.toml"))
            .env("LOG_SENSOR_LOG", "debug");
        c
    }

    /// Starts the agent and waits until status shows its listeners (bound, so connections
    /// queue). Not by connecting: a probe would hold a connection slot, and a TLS probe would
    /// use up the alert its peer gets once. The first start picks the ports; a restart keeps
    /// them (senders such as rsyslog know where the agent is).
    pub fn start(&mut self) -> Proc {
        for attempt in 0..5 {
            if self.port == 0 || attempt > 0 {
                self.port = free_port();
                self.tls_port = free_port();
            }
            match self.spawn("agent.err") {
                Ok(p) => return p,
                // Only a port taken between choosing it and binding it is worth another try.
                Err(err) if err.contains("in use") => continue,
                Err(err) => panic!("the agent exited at start; stderr:\n{}", tail(&err)),
            }
        }
        panic!("no free ports after five tries");
    }

    /// The same ports again (after a kill -9).
    pub fn restart(&mut self) -> Proc {
        assert!(self.port != 0);
        self.spawn("agent2.err")
            .unwrap_or_else(|err| panic!("the restarted agent exited:\n{}", tail(&err)))
    }

    fn spawn(&self, stderr: &str) -> Result<Proc, String> {
        self.write_config();
        let mut c = self.cmd();
        c.arg("run");
        let mut p = Proc::spawn("log-sensor", &mut c, &self.p(stderr));
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if !p.is_running() {
                return Err(p.stderr_text());
            }
            if self.try_status().is_some_and(|st| {
                self.urls()
                    .iter()
                    .all(|u| listener_stat(&st, u, "connections").is_some())
            }) {
                return Ok(p);
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "the agent did not listen within {PATIENCE:?}; stderr:\n{}",
                    tail(&p.stderr_text())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The three listeners as status names them.
    pub fn urls(&self) -> [String; 3] {
        [
            format!("udp://127.0.0.1:{}", self.port),
            format!("tcp://127.0.0.1:{}", self.port),
            format!("tls://127.0.0.1:{}", self.tls_port),
        ]
    }

    /// Records of the `net` source.
    pub fn records(&self) -> Vec<Value> {
        read_ndjson(&self.out)
            .into_iter()
            .filter(|r| r["source"] == "net")
            .collect()
    }

    pub fn msgs(&self) -> Vec<String> {
        self.records()
            .iter()
            .filter_map(|r| r["msg"].as_str().map(str::to_string))
            .collect()
    }

    /// Waits until every `want` message is in the sink; returns the records in sink order.
    pub fn wait_msgs(&self, agent: &Proc, want: &[String]) -> Vec<Value> {
        let want: HashSet<&String> = want.iter().collect();
        let mut missing = 0;
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let recs = self.records();
            let got: HashSet<&str> = recs.iter().filter_map(|r| r["msg"].as_str()).collect();
            let m = want.iter().filter(|w| !got.contains(w.as_str())).count();
            if m == 0 {
                return recs;
            }
            if m != missing {
                missing = m;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{missing} of {} messages still missing after {PATIENCE:?}, e.g. {:?}; agent stderr:\n{}",
                    want.len(),
                    want.iter().find(|w| !got.contains(w.as_str())),
                    tail(&agent.stderr_text())
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The one record whose `msg` is `msg`.
    pub fn record(&self, agent: &Proc, msg: &str) -> Value {
        let recs = self.wait_msgs(agent, &[msg.to_string()]);
        let found: Vec<&Value> = recs.iter().filter(|r| r["msg"] == msg).collect();
        assert_eq!(found.len(), 1, "exactly one record {msg:?}: {found:?}");
        found[0].clone()
    }

    pub fn try_query(&self, sql: &str) -> Result<Vec<Value>, String> {
        let out = self
            .cmd()
            .args(["query", "--json", sql])
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect())
    }

    /// `detail` of every alert of `kind`.
    pub fn alerts(&self, kind: &str) -> Vec<String> {
        self.try_query(&format!(
            "SELECT detail FROM alerts WHERE kind = '{kind}' ORDER BY id"
        ))
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["detail"].as_str().map(str::to_string))
        .collect()
    }

    /// Every alert as `kind path: detail` (a listener's alerts name it in `path`).
    pub fn all_alerts(&self) -> Vec<String> {
        self.try_query("SELECT kind, path, detail FROM alerts ORDER BY id")
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                format!("{} {}: {}", s("kind"), s("path"), s("detail"))
            })
            .collect()
    }

    /// `log-sensor status --json`.
    pub fn status(&self) -> Value {
        self.try_status().expect("status --json answers")
    }

    /// None while the agent cannot answer yet.
    pub fn try_status(&self) -> Option<Value> {
        let out = self
            .cmd()
            .args(["status", "--json"])
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Every file under the state dir, concatenated: the spool, whatever its layout, holds the
    /// messages' bytes, so a numbered message found here has reached it.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for e in walkdir(&self.p("state")) {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("store.db") {
                continue;
            }
            if let Ok(b) = std::fs::read(&e) {
                all.extend_from_slice(&b);
            }
        }
        all
    }
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

// ------------------------------------------------------------------ util-linux logger

/// Runs `logger` with `args`; it must succeed.
pub fn logger(args: &[&str]) {
    let out = Command::new("logger").args(args).output().expect("logger");
    assert!(
        out.status.success(),
        "logger {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a buffer of the length given.
    unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

// ------------------------------------------------------------------ rsyslog forwarding

/// How the forwarding rsyslog reaches the agent.
pub enum Forward<'a> {
    /// Plain TCP, RFC 6587 octet counting.
    OctetCounted,
    /// Plain TCP, each message ended by LF ("traditional" framing).
    Lf,
    /// RFC 5425 over TLS with the gtls driver, presenting `cert` (`client` or `wrong` of `pki`)
    /// and checking the agent's certificate is for `localhost` from `ca.pem`.
    Tls { pki: &'a Pki, cert: &'a str },
}

/// rsyslogd in the foreground with its own config, work dir and pid file (not the system
/// service): it takes LF-terminated messages on an `imtcp` port of its own, which the test feeds,
/// and forwards them with `omfwd` to the agent, resending from its queue while the agent is away.
pub struct Forwarder {
    pub proc: Proc,
    /// Its `imtcp` input.
    pub port: u16,
}

impl Forwarder {
    pub fn start(dir: &Path, to: u16, how: Forward) -> Forwarder {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = dir.join(format!("rsyslog-{port}"));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let (global_tls, action) = match how {
            Forward::OctetCounted => (String::new(), r#"TCP_Framing="octet-counted""#.to_string()),
            Forward::Lf => (String::new(), r#"TCP_Framing="traditional""#.to_string()),
            // The driver's files are global; the default driver stays plain TCP, so the imtcp
            // input the test feeds needs no TLS.
            Forward::Tls { pki, cert } => (
                format!(
                    "DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" DefaultNetstreamDriverKeyFile=\"{}\"",
                    pki.p("ca.pem"),
                    pki.p(&format!("{cert}.pem")),
                    pki.p(&format!("{cert}.key")),
                ),
                r#"TCP_Framing="octet-counted" StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name" StreamDriverPermittedPeers="localhost""#.to_string(),
            ),
        };
        let conf = dir.join("rsyslog.conf");
        // The message is sent as received: RFC 5424 without the trailing LF the stock
        // RSYSLOG_SyslogProtocol23Format has, which octet counting would make part of MSG.
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{work}" maxMessageSize="128k" {global_tls})
module(load="imtcp")
template(name="fwd" type="string"
         string="<%PRI%>1 %TIMESTAMP:::date-rfc3339% %HOSTNAME% %APP-NAME% %PROCID% %MSGID% %STRUCTURED-DATA% %msg%")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{to}" protocol="tcp" template="fwd" {action}
         action.resumeRetryCount="-1" action.resumeInterval="1"
         queue.type="LinkedList" queue.size="200000")
}}
input(type="imtcp" port="{port}" ruleset="fwd")
"#,
                work = work.display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslog.pid"))
            .stdout(std::process::Stdio::null());
        let mut proc = Proc::spawn("rsyslogd", &mut cmd, &dir.join("rsyslog.err"));
        wait_for("rsyslog to listen", PATIENCE, || {
            assert!(proc.is_running(), "rsyslogd exited: {}", proc.stderr_text());
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Forwarder { proc, port }
    }

    /// Feeds rsyslog `lines` (each an RFC 5424 message) over one connection.
    pub fn send(&self, lines: &[String]) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut buf = String::new();
        for l in lines {
            buf.push_str(l);
            buf.push('\n');
        }
        s.write_all(buf.as_bytes()).unwrap();
    }
}

/// RFC 5424 messages numbered `{prefix}-{i:06}`, from host `fwd-host`, app `fwdapp`.
pub fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:06}")).collect()
}

pub fn rfc5424(msg: &str) -> String {
    format!("<134>1 2026-12-02T01:02:03.004Z fwd-host fwdapp 77 ID9 - {msg}")
}

// ------------------------------------------------------------------ raw clients

/// A TCP connection to the agent.
pub fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// An octet-counted frame (RFC 6587 3.4.1).
pub fn octet(msg: &str) -> Vec<u8> {
    format!("{} {msg}", msg.len()).into_bytes()
}

/// Waits until the peer closes `s` (EOF or reset); returns false if it is still open when
/// `within` ends. Reads and discards whatever the peer sends.
pub fn closed_by_peer(s: &mut impl Read, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if std::time::Instant::now() > deadline {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

/// A rustls client to the agent's TLS listener, trusting `ca.pem` for `localhost`, presenting
/// `cert` of `pki` (`client`, `wrong`) or no certificate.
pub fn tls_client(
    port: u16,
    pki: &Pki,
    cert: Option<&str>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.p("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match cert {
        Some(name) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(pki.p(&format!("{name}.pem")))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_file(pki.p(&format!("{name}.key"))).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("localhost").unwrap().to_owned(),
    )
    .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Bytes the kernel holds unread on the agent's side of the connection from local port
/// `client_port` to `agent_port` (the rx_queue of /proc/net/tcp): non-zero while the agent
/// does not read.
pub fn unread_by_agent(agent_port: u16, client_port: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        if port(f[1]) == Some(agent_port) && port(f[2]) == Some(client_port) {
            let rx = f[4].rsplit(':').next()?;
            return u64::from_str_radix(rx, 16).ok();
        }
    }
    None
}

// ------------------------------------------------------------------ what senders emit

/// A TCP listener that keeps each connection's bytes, to check what a sender puts on the wire.
pub struct Capture {
    pub port: u16,
    conns: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>,
}

impl Capture {
    pub fn start() -> Capture {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>> = Arc::default();
        let c = conns.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
                c.lock().unwrap().push(buf.clone());
                std::thread::spawn(move || {
                    let mut b = [0u8; 65536];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 {
                            break;
                        }
                        buf.lock().unwrap().extend_from_slice(&b[..n]);
                    }
                });
            }
        });
        Capture { port, conns }
    }

    /// All bytes received so far, connections in order of arrival.
    pub fn bytes(&self) -> Vec<u8> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .flat_map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

// ------------------------------------------------------------------ what status says

/// The number `key` of the object in `status` that names listener `url` (searched anywhere in
/// the document, so the test pins what is shown, not where the status layout puts it).
pub fn listener_stat(status: &Value, url: &str, key: &str) -> Option<u64> {
    match status {
        Value::Object(map) => {
            if map.values().any(|v| v == url) {
                if let Some(n) = map.get(key).and_then(Value::as_u64) {
                    return Some(n);
                }
            }
            map.values().find_map(|v| listener_stat(v, url, key))
        }
        Value::Array(items) => items.iter().find_map(|v| listener_stat(v, url, key)),
        _ => None,
    }
}

/// `wait_for` whose failure message is made at the deadline, so it shows the state then (the
/// agent's status and log at the moment of giving up, not at the start of the wait).
pub fn wait_until(what: impl Fn() -> String, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        if std::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Like [`listener_stat`], for a flag (`spool_full`).
pub fn listener_stat_bool(status: &Value, url: &str, key: &str) -> bool {
    match status {
        Value::Object(map) => {
            (map.values().any(|v| v == url) && map.get(key) == Some(&Value::Bool(true)))
                || map.values().any(|v| listener_stat_bool(v, url, key))
        }
        Value::Array(items) => items.iter().any(|v| listener_stat_bool(v, url, key)),
        _ => false,
    }
}
