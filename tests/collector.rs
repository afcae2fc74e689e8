//! End-to-end tests of `log-sensor-collector`: the real binary as a
//! process, real TLS on loopback, a small blocking rustls client here.
//!
//! Every test makes its own PKI and state under a temp dir, and every
//! collector process is killed when its fixture drops.
//!
//! With TLS 1.3 a client learns that its certificate was refused only on
//! its first read, so nothing here counts a write as delivered: every
//! check reads the response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};

/// Collectors sharing a JetStream cluster (`tests/collector/cluster.rs`).
#[path = "collector/cluster.rs"]
mod cluster;
/// The cluster misbehaving (`tests/collector/cluster_faults.rs`).
#[path = "collector/cluster_faults.rs"]
mod cluster_faults;

const BIN: &str = env!("CARGO_BIN_EXE_log-sensor-collector");
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";
/// Generous deadline for anything that happens "within seconds".
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- fixture

/// A collector directory and, while started, its `serve` process.
struct Collector {
    /// Keeps the temp tree alive; `dir` is inside it.
    root: tempfile::TempDir,
    dir: PathBuf,
    child: Option<Child>,
    addr: Option<SocketAddr>,
}

fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run collector");
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Collector {
    /// A client certificate for `host` signed directly by the collector's own CA (the test owns
    /// this temporary PKI), with the validity and serial a test needs, bypassing enrolment.
    fn sign_client_cert(
        &self,
        host: &str,
        serial: Option<&[u8]>,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (rcgen::Certificate, KeyPair) {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(self.dir.join("ca.key")).unwrap()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(self.dir.join("ca.pem")).unwrap(),
            ca_key,
        )
        .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![SanType::DnsName(host.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = serial.map(rcgen::SerialNumber::from_slice);
        params.not_before = not_before;
        params.not_after = not_after;
        (params.signed_by(&key, &issuer).unwrap(), key)
    }

    /// `init` plus one user; the collector lives at `ROOT/srv/collector`
    /// so a path escape would be visible as something else under ROOT.
    fn new() -> Collector {
        Self::with_config(|_| {})
    }

    fn with_config(edit: impl FnOnce(&mut String)) -> Collector {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("srv").join("collector");
        let d = dir.to_str().unwrap();
        run(&[
            "init",
            "--dir",
            d,
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
        ]);
        let mut config = std::fs::read_to_string(dir.join("collector.toml")).unwrap();
        edit(&mut config);
        std::fs::write(dir.join("collector.toml"), config).unwrap();
        let pw = root.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        run(&[
            "user",
            "add",
            "--dir",
            d,
            USER,
            "--password-file",
            pw.to_str().unwrap(),
        ]);
        Collector {
            root,
            dir,
            child: None,
            addr: None,
        }
    }

    fn d(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// Starts `serve` on a free loopback port and waits for `serve.addr`.
    fn start(&mut self) {
        let addr_file = self.dir.join("serve.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("serve.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["serve", "--dir", self.d(), "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr = poll(|| {
            std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok())
        });
        self.addr = Some(addr);
    }

    /// SIGKILL, no chance to clean up.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn addr(&self) -> SocketAddr {
        self.addr.expect("started")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("serve.log")).unwrap_or_default()
    }

    fn connect(&self, identity: Option<&Identity>) -> Conn {
        Conn::open(self.addr(), &self.dir.join("ca.pem"), identity)
    }

    /// Connects from another loopback address, so the collector sees a
    /// different source (all of 127.0.0.0/8 is local on Linux).
    fn connect_from(&self, local: &str, identity: Option<&Identity>) -> Conn {
        let local: std::net::IpAddr = local.parse().unwrap();
        let tcp = bind_and_connect(local, self.addr());
        Conn::over(tcp, &self.dir.join("ca.pem"), identity).expect("connect")
    }

    /// Makes a key and CSR here and asks to enrol `host`; the key stays here.
    fn try_enroll(&self, host: &str) -> (Response, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let resp = self.connect(None).post_json(
            "/v1/enroll",
            &json!({"username": USER, "password": PASSWORD, "host_id": host, "csr": csr}),
        );
        (resp, key)
    }

    fn enroll(&self, host: &str) -> Identity {
        let (resp, key) = self.try_enroll(host);
        assert_eq!(resp.status, 200, "enrol {host}: {}", resp.text());
        let reply = resp.json();
        assert_eq!(
            reply["ca"],
            std::fs::read_to_string(self.dir.join("ca.pem")).unwrap()
        );
        Identity::new(
            reply["cert"].as_str().unwrap(),
            &key,
            reply["serial"].as_str().unwrap(),
        )
    }

    fn metrics(&self) -> String {
        let resp = self.connect(None).request("GET", "/metrics", &[], b"");
        assert_eq!(resp.status, 200);
        resp.text()
    }

    fn data_file(&self, host_enc: &str, stream_enc: &str) -> PathBuf {
        self.dir
            .join("data")
            .join(host_enc)
            .join(format!("{stream_enc}.ndjson"))
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A TCP connection from a chosen local address (std cannot bind before
/// connecting; tokio's socket can, on a throwaway runtime).
fn bind_and_connect(local: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        socket.connect(to).await.unwrap()
    });
    let std = stream.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std
}

fn client_config(ca: &Path, identity: Option<&Identity>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &std::fs::read(ca).unwrap()[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    Arc::new(match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), PrivateKeyDer::Pkcs8(id.key.clone_key()))
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

fn poll<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "condition not met within {DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client certificate and its key.
struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    serial: String,
}

impl Identity {
    fn new(cert_pem: &str, key: &KeyPair, serial: &str) -> Identity {
        let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        Identity {
            certs,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            serial: serial.to_owned(),
        }
    }
}

// ---------------------------------------------------------------- client

struct Response {
    status: u16,
    /// The status line and headers, as sent.
    head: String,
    body: Vec<u8>,
}

impl Response {
    /// A header's value (the first, by case-insensitive name).
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One keep-alive HTTPS connection, HTTP/1.1 by hand.
struct Conn {
    tls: StreamOwned<ClientConnection, TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr, ca: &Path, identity: Option<&Identity>) -> Conn {
        Self::try_open(addr, ca, identity).expect("connect")
    }

    fn try_open(addr: SocketAddr, ca: &Path, identity: Option<&Identity>) -> std::io::Result<Conn> {
        Self::over(TcpStream::connect(addr)?, ca, identity)
    }

    fn over(tcp: TcpStream, ca: &Path, identity: Option<&Identity>) -> std::io::Result<Conn> {
        Self::with_config(tcp, client_config(ca, identity))
    }

    /// Over a given config: connections sharing one config share its
    /// session cache, so later ones try to resume, as a real agent's do.
    fn with_config(tcp: TcpStream, config: Arc<ClientConfig>) -> std::io::Result<Conn> {
        let conn =
            ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Conn { tls })
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        self.write_request(method, path, headers, body)?;
        self.read_response()
    }

    /// Writes a request without reading its reply (requests may be pipelined).
    fn write_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.tls.write_all(head.as_bytes())?;
        self.tls.write_all(body)?;
        self.tls.flush()
    }

    fn read_response(&mut self) -> std::io::Result<Response> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if self.tls.read(&mut byte)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.tls.read_exact(&mut body)?;
        Ok(Response { status, head, body })
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.try_request(method, path, headers, body)
            .expect("request")
    }

    /// Waits up to `DEADLINE` for the server to close this connection
    /// (EOF or an error), without our sending anything; `when` names the
    /// event in the failure.
    fn assert_closed_by_server(&mut self, when: &str) {
        self.tls.sock.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut buf = [0u8; 64];
        match self.tls.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("unexpected {n} bytes on a connection the server should close"),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "connection not closed within {DEADLINE:?} {when}"
            ),
        }
    }

    fn post_json(&mut self, path: &str, body: &Value) -> Response {
        self.request(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    fn ingest(&mut self, body: &[u8]) -> Response {
        self.request(
            "POST",
            "/v1/ingest",
            &[("Content-Type", "application/x-ndjson")],
            body,
        )
    }
}

/// The rustls alert a refused client got, as text ("CertificateRevoked").
fn refusal(err: &std::io::Error) -> String {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::AlertReceived(alert)) => format!("{alert:?}"),
        _ => format!("{err}"),
    }
}

/// Connecting and asking fails, and the alert is `expected`.
fn assert_refused(c: &Collector, identity: &Identity, expected: &str) {
    let result = Conn::try_open(c.addr(), &c.dir.join("ca.pem"), Some(identity))
        .and_then(|mut conn| conn.try_request("POST", "/v1/ingest", &[], b""));
    match result {
        Ok(resp) => panic!(
            "expected a refused handshake, got {} {}",
            resp.status,
            resp.text()
        ),
        Err(e) => assert_eq!(refusal(&e), expected, "{e}"),
    }
}

// ---------------------------------------------------------------- records

fn record(host: &str, stream: &str, offset: u64, part: &str) -> String {
    json!({
        "host": host, "source": "app", "stream": stream, "fingerprint": "00ff",
        "path": "/var/log/app.log", "offset": offset, "len": 100, "part": part,
        "ts": "2026-11-26T12:00:00Z", "msg": format!("message at {offset} {}", "x".repeat(120)),
        "extra_field": {"kept": true},
    })
    .to_string()
}

fn batch(lines: &[String]) -> Vec<u8> {
    let mut body = lines.join("\n").into_bytes();
    body.push(b'\n');
    body
}

fn stored_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn offsets(path: &Path) -> Vec<u64> {
    stored_lines(path)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------- tests

#[test]
fn enrolment_then_wrong_password_then_too_many_tries() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let der = &id.certs[0];
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "web-01");
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 30, "cert_days default");

    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let mut conn = c.connect(None);
    let wrong_password = conn.post_json(
        "/v1/enroll",
        &json!({"username": USER, "password": "nope", "host_id": "web-02", "csr": csr}),
    );
    assert_eq!(wrong_password.status, 401, "{}", wrong_password.text());
    let wrong_user = conn.post_json(
        "/v1/enroll",
        &json!({"username": "mallory", "password": PASSWORD, "host_id": "web-02", "csr": csr}),
    );
    assert_eq!(wrong_user.status, 401);
    assert_eq!(
        wrong_password.body, wrong_user.body,
        "401 must not say which part was wrong"
    );
    assert!(!wrong_password.text().contains("nope"));
    // Each refused try is one line naming the user and the address (as sshd does for a failed
    // password); no password, right or wrong, is ever written.
    let log = c.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("enrolment refused: invalid credentials"))
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(
        refused[0].contains(&format!("username=\"{USER}\"")),
        "{log}"
    );
    assert!(refused[1].contains("username=\"mallory\""), "{log}");
    assert!(refused.iter().all(|l| l.contains("127.0.0.1")), "{log}");
    assert!(!log.contains(PASSWORD) && !log.contains("nope"), "{log}");
    // Its stderr is a file here, the journal under systemd: no colour codes in it.
    assert!(!log.contains('\x1b'), "{log:?}");

    // Default: 5 failures per address within the window. Three more from
    // this address (for another name, so the user limit stays clear) reach
    // it; then even the right password is 429 from here.
    let try_as = |conn: &mut Conn, user: &str, password: &str| {
        conn.post_json(
            "/v1/enroll",
            &json!({"username": user, "password": password, "host_id": "web-02", "csr": csr}),
        )
        .status
    };
    let statuses: Vec<u16> = (0..4)
        .map(|_| try_as(&mut conn, "mallory", "nope"))
        .collect();
    assert_eq!(statuses, vec![401, 401, 401, 429]);
    assert_eq!(try_as(&mut conn, USER, PASSWORD), 429, "address limit");

    // Per user: one failure each from four more addresses brings alice to
    // five, so a sixth address with her right password is refused too...
    for i in 2..=5 {
        let mut other = c.connect_from(&format!("127.0.0.{i}"), None);
        assert_eq!(try_as(&mut other, USER, "nope"), 401, "from 127.0.0.{i}");
    }
    let mut fresh = c.connect_from("127.0.0.6", None);
    assert_eq!(try_as(&mut fresh, USER, PASSWORD), 429, "user limit");
    // ...while another user from a clean address is not affected.
    let pw = c.root.path().join("pw");
    run(&[
        "user",
        "add",
        "--dir",
        c.d(),
        "bob",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let mut clean = c.connect_from("127.0.0.7", None);
    assert_eq!(try_as(&mut clean, "bob", PASSWORD), 200);

    let list = String::from_utf8(run(&["certs", "list", "--dir", c.d()]).stdout).unwrap();
    assert!(
        list.contains(&id.serial) && list.contains("web-01") && list.contains("valid"),
        "{list}"
    );
    // Every enrolment is recorded: who, which host, serial, when, from where.
    let db = rusqlite::Connection::open(c.dir.join("collector.db")).unwrap();
    let rows: Vec<(String, String, String, i64, String)> = db
        .prepare("SELECT username, host_id, serial, at, source_addr FROM enrolments ORDER BY id")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), (USER, "web-01"));
    assert_eq!(rows[0].2, id.serial);
    assert!(rows[0].3 > 1_700_000_000);
    assert_eq!(rows[0].4, "127.0.0.1");
    assert_eq!(
        (rows[1].0.as_str(), rows[1].4.as_str()),
        ("bob", "127.0.0.7")
    );
    let m = c.metrics();
    assert_eq!(metric(&m, "log_sensor_collector_enrolments_total"), 2.0);
    assert_eq!(metric(&m, "log_sensor_collector_enrol_failures_total"), 9.0);
    assert_eq!(
        metric(&m, "log_sensor_collector_enrol_rate_limited_total"),
        3.0
    );
    let log = c.log();
    assert!(
        !log.contains(PASSWORD) && !log.contains("PRIVATE KEY"),
        "{log}"
    );
}

#[test]
fn ingest_stores_records_verbatim_and_resent_batches_once() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    let first: Vec<String> = (0..5)
        .flat_map(|i| {
            [
                record("web-01", "aaaa", i * 200, "whole"),
                record("web-01", "bbbb", i * 200, "whole"),
            ]
        })
        .collect();
    let resp = conn.ingest(&batch(&first));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["stored"], 10);
    let a = c.data_file("web-01", "aaaa");
    let expected_a: Vec<String> = first.iter().step_by(2).cloned().collect();
    assert_eq!(
        stored_lines(&a),
        expected_a,
        "stored as received, unknown fields kept"
    );

    // The agent re-sends (it never saw the ack) plus two new records,
    // gzipped this time.
    let mut second = first.clone();
    second.push(record("web-01", "aaaa", 1000, "whole"));
    second.push(record("web-01", "bbbb", 1000, "whole"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&batch(&second)).unwrap();
    let resp = conn.request(
        "POST",
        "/v1/ingest",
        &[("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reply = resp.json();
    assert_eq!(
        (reply["stored"].as_u64(), reply["duplicates"].as_u64()),
        (Some(2), Some(10))
    );
    assert_eq!(offsets(&a), vec![0, 200, 400, 600, 800, 1000]);
    assert_eq!(
        offsets(&c.data_file("web-01", "bbbb")),
        vec![0, 200, 400, 600, 800, 1000]
    );

    let m = c.metrics();
    assert_eq!(metric(&m, "log_sensor_collector_batches_total"), 2.0);
    assert_eq!(
        metric(&m, "log_sensor_collector_records_stored_total"),
        12.0
    );
    assert_eq!(
        metric(&m, "log_sensor_collector_duplicates_dropped_total"),
        10.0
    );

    // Without a client certificate there is no ingest.
    let resp = c.connect(None).ingest(&batch(&first));
    assert_eq!(resp.status, 401, "{}", resp.text());
}

/// A record's `fields` (what the syslog input and the scripts' parsers fill) is part of the
/// record format: the collector takes the object, nested values and all, and stores the line
/// as the agent wrote it.
#[test]
fn a_record_with_fields_is_stored_with_them_as_sent() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    // As the agent writes it: `fields` after `msg`, absent from a record without any.
    let with = r#"{"host":"web-01","source":"net","stream":"cccc","path":"udp://127.0.0.1:5514","offset":0,"len":5,"part":"whole","ts":"2026-11-26T12:00:00.000Z","msg":"hello","fields":{"facility":"user","severity":"info","hostname":"db-1","structured_data":{"ex@32473":{"k":"v \"q\""}},"peer":"127.0.0.1:40000"}}"#;
    let without = r#"{"host":"web-01","source":"net","stream":"cccc","path":"udp://127.0.0.1:5514","offset":5,"len":3,"part":"whole","ts":"2026-11-26T12:00:00.000Z","msg":"bye"}"#;
    let lines = vec![with.to_string(), without.to_string()];
    let resp = conn.ingest(&batch(&lines));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["stored"], 2);
    let stored = stored_lines(&c.data_file("web-01", "cccc"));
    assert_eq!(stored, lines, "stored as sent");
    let v: Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(v["fields"]["structured_data"]["ex@32473"]["k"], "v \"q\"");
}

#[test]
fn revoked_certificate_refused_on_new_connections_and_cut_on_open_ones() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let other = c.enroll("web-02");
    let mut open = c.connect(Some(&id));
    let resp = open.ingest(&batch(&[record("web-01", "s1", 0, "whole")]));
    assert_eq!(resp.status, 200);
    let mut bystander = c.connect(Some(&other));

    let out = run(&["revoke", "--dir", c.d(), "web-01"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id.serial));
    let revoked_at = Instant::now();

    // New handshakes: refused from the revoke's commit on.
    assert_refused(&c, &id, "CertificateRevoked");

    // The open connection is closed by the server, without us sending
    // anything.
    open.assert_closed_by_server("after the revoke");
    // Half a second is the design (the poll interval); only the generous
    // read timeout above is asserted, so a loaded machine does not flake.
    eprintln!(
        "open connection cut {:?} after revoke",
        revoked_at.elapsed()
    );

    // Another host's open connection is untouched.
    let resp = bystander.ingest(&batch(&[record("web-02", "s1", 0, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());

    let list = String::from_utf8(run(&["certs", "list", "--dir", c.d()]).stdout).unwrap();
    let line = list.lines().find(|l| l.contains(&id.serial)).unwrap();
    assert!(line.contains("revoked"), "{list}");
    let m = c.metrics();
    assert!(
        metric(
            &m,
            "log_sensor_collector_refused_handshakes_total{reason=\"revoked\"}"
        ) >= 1.0
    );
    assert!(metric(&m, "log_sensor_collector_connections_cut_total") >= 1.0);
    assert_eq!(offsets(&c.data_file("web-01", "s1")), vec![0]);
}

#[test]
fn a_live_host_is_enrolled_once_and_revoke_by_serial_survives_a_restart() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    // A second enrolment of a host with a live certificate would let any
    // password holder take over its identity.
    let (again, _) = c.try_enroll("web-01");
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["code"], "already_enrolled");
    c.kill9();
    run(&["revoke", "--dir", c.d(), &id.serial.to_uppercase()]);
    c.start();
    assert_refused(&c, &id, "CertificateRevoked");
    // Once revoked, the host can enrol again and ship with the new one.
    let fresh = c.enroll("web-01");
    let resp = c
        .connect(Some(&fresh))
        .ingest(&batch(&[record("web-01", "s", 0, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn certificate_from_another_ca_is_refused_at_the_handshake() {
    let mut c = Collector::new();
    c.start();
    // A CA of our own making, with a client cert for a host that is
    // enrolled at the collector.
    let _real = c.enroll("web-01");
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "log-sensor collector CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["web-01".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "web-01");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let forged = Identity::new(&cert.pem(), &key, "");
    assert_refused(&c, &forged, "UnknownCA");
    let m = c.metrics();
    assert_eq!(
        metric(
            &m,
            "log_sensor_collector_refused_handshakes_total{reason=\"unknown_ca\"}"
        ),
        1.0
    );
}

#[test]
fn expired_certificate_is_refused_at_the_handshake() {
    let mut c = Collector::new();
    c.start();
    // Signed by the collector's own CA, but already expired.
    let (cert, key) = c.sign_client_cert(
        "web-01",
        None,
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2020, 2, 1),
    );
    assert_refused(
        &c,
        &Identity::new(&cert.pem(), &key, ""),
        "CertificateExpired",
    );
    let m = c.metrics();
    assert_eq!(
        metric(
            &m,
            "log_sensor_collector_refused_handshakes_total{reason=\"expired\"}"
        ),
        1.0
    );
}

#[test]
fn a_host_cannot_write_as_another() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    let body = batch(&[
        record("web-01", "s1", 0, "whole"),
        record("db-01", "s1", 0, "whole"),
    ]);
    let resp = conn.ingest(&body);
    assert_eq!(resp.status, 403, "{}", resp.text());
    let msg = resp.json()["error"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("db-01") && msg.contains("web-01") && msg.contains("line 2"),
        "{msg}"
    );
    assert!(
        files_under(&c.dir.join("data")).is_empty(),
        "whole batch refused"
    );
    // A body long enough that its first pieces are written before the
    // impostor line at its end is parsed: they are cut back off.
    let mut lines: Vec<String> = (0..4000)
        .map(|i| record("web-01", "s1", i * 200, "whole"))
        .collect();
    lines.push(record("db-01", "s1", 0, "whole"));
    let resp = c.connect(Some(&id)).ingest(&batch(&lines));
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert!(offsets(&c.data_file("web-01", "s1")).is_empty());
    // A refusal closes the connection (see the next test); a new one works for honest batches.
    let mut conn = c.connect(Some(&id));
    let resp = conn.ingest(&batch(&[record("web-01", "s1", 0, "whole")]));
    assert_eq!(resp.status, 200);
    assert_eq!(offsets(&c.data_file("web-01", "s1")), vec![0]);
}

/// The agent pipelines its next batch behind the one the collector is storing. If the first is
/// refused, storing the second would raise the stream's high-water mark over the first's
/// records, and the re-sent first batch would then be dropped as a duplicate: lost.
#[test]
fn a_refused_batch_closes_the_connection_so_the_pipelined_next_is_not_stored() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    let first = vec![record("web-01", "s1", 1, "whole")];
    let mut refused = first.clone();
    refused.push("{\"host\":\"web-01\", not json".to_string());
    let second = batch(&[record("web-01", "s1", 2, "whole")]);
    let ndjson = [("Content-Type", "application/x-ndjson")];
    conn.write_request("POST", "/v1/ingest", &ndjson, &batch(&refused))
        .unwrap();
    conn.write_request("POST", "/v1/ingest", &ndjson, &second)
        .unwrap();
    let resp = conn.read_response().unwrap();
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert!(
        conn.read_response().is_err(),
        "the batch pipelined behind a refused one was answered"
    );
    assert!(
        files_under(&c.dir.join("data")).is_empty(),
        "nothing stored"
    );
    // Sent again in order, on a new connection: both are stored, once.
    let mut conn = c.connect(Some(&id));
    assert_eq!(conn.ingest(&batch(&first)).status, 200);
    assert_eq!(conn.ingest(&second).status, 200);
    let files = files_under(&c.dir.join("data"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(offsets(&files[0]), vec![1, 2]);
}

#[test]
fn an_ingest_body_over_max_batch_bytes_is_413_on_the_wire_and_once_decoded() {
    let mut c = Collector::with_config(|cfg| {
        assert!(cfg.contains("max_batch_bytes = 67108864"), "{cfg}");
        *cfg = cfg.replace("max_batch_bytes = 67108864", "max_batch_bytes = 1024");
    });
    c.start();
    let id = c.enroll("web-01");
    // Blank lines pad a body to an exact size; parsing skips them.
    let sized = |len: usize| {
        let mut body = batch(&[record("web-01", "s1", 0, "whole")]);
        body.resize(len, b'\n');
        body
    };
    let resp = c.connect(Some(&id)).ingest(&sized(1024));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = c.connect(Some(&id)).ingest(&sized(1025));
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["code"], "too_large");
    assert_eq!(
        resp.json()["limit"],
        1024,
        "the agent cuts its requests to this"
    );
    assert_eq!(
        resp.json()["error"],
        "body larger than 1024 bytes (Content-Length 1025)"
    );
    // Announced far larger and never sent: refused at once, not after `body_timeout_secs`
    // (30 s here) as a stalled body would be.
    let mut conn = c.connect(Some(&id));
    conn.tls
        .write_all(
            b"POST /v1/ingest HTTP/1.1\r\nHost: localhost\r\nContent-Length: 99999999999\r\n\r\n",
        )
        .unwrap();
    conn.tls.flush().unwrap();
    let resp = conn.read_response().unwrap();
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["code"], "too_large");
    assert_eq!(
        resp.json()["limit"],
        1024,
        "the agent cuts its requests to this"
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&sized(1025)).unwrap();
    let resp = c.connect(Some(&id)).request(
        "POST",
        "/v1/ingest",
        &[("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["code"], "too_large");
    assert_eq!(
        resp.json()["limit"],
        1024,
        "the agent cuts its requests to this"
    );
    assert_eq!(
        resp.json()["error"],
        "body is larger than 1024 bytes once decoded"
    );
    // The same limit for lz4, whose frames can say nothing of their decoded size.
    let resp = c.connect(Some(&id)).request(
        "POST",
        "/v1/ingest",
        &[("Content-Encoding", "lz4")],
        &lz4(&sized(1025)),
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    assert_eq!(resp.json()["limit"], 1024);
    assert_eq!(
        resp.json()["error"],
        "body is larger than 1024 bytes once decoded"
    );
    assert_eq!(offsets(&c.data_file("web-01", "s1")), vec![0]);
}

/// An LZ4 frame, as the agent sends with `compression = "lz4"` (or `"auto"`, once told).
fn lz4(data: &[u8]) -> Vec<u8> {
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// The codec an agent negotiates: every ingest reply (refusals too) announces what the collector
/// reads; lz4 bodies are stored like any other, and a corrupt one is refused naming its
/// encoding, storing nothing. Older agents' bodies (gzip, plain) are read as before (the tests
/// above).
#[test]
fn lz4_bodies_are_stored_announced_and_refused_when_corrupt() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let first: Vec<String> = (0..200)
        .map(|i| record("web-01", "s1", i * 100, "whole"))
        .collect();
    let body = lz4(&batch(&first));
    let resp =
        c.connect(Some(&id))
            .request("POST", "/v1/ingest", &[("Content-Encoding", "lz4")], &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["stored"], 200);
    assert_eq!(resp.header("accept-encoding"), Some("lz4, gzip"));
    let file = c.data_file("web-01", "s1");
    assert_eq!(stored_lines(&file), first, "stored as sent, once decoded");

    // Cut short (inside a block, or where a block ends: only the end mark gone) and with its
    // first bytes gone: 400, naming the encoding; nothing of it is stored.
    let mut more = first.clone();
    more.push(record("web-01", "s1", 20_000, "whole"));
    let whole = lz4(&batch(&more));
    for bad in [
        &whole[..whole.len() - 7],
        &whole[..whole.len() - 4],
        &whole[4..],
    ] {
        let resp =
            c.connect(Some(&id))
                .request("POST", "/v1/ingest", &[("Content-Encoding", "lz4")], bad);
        assert_eq!(resp.status, 400, "{}", resp.text());
        assert_eq!(resp.json()["code"], "bad_batch");
        let error = resp.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains("Content-Encoding: lz4"), "{error}");
        assert_eq!(resp.header("accept-encoding"), Some("lz4, gzip"));
    }
    assert_eq!(stored_lines(&file), first);

    // An encoding it does not read: 415, and what it reads instead.
    let resp =
        c.connect(Some(&id))
            .request("POST", "/v1/ingest", &[("Content-Encoding", "br")], &body);
    assert_eq!(resp.status, 415, "{}", resp.text());
    assert_eq!(resp.json()["code"], "unsupported_encoding");
    assert_eq!(resp.header("accept-encoding"), Some("lz4, gzip"));

    // The whole batch sent again stores the one new record.
    let resp =
        c.connect(Some(&id))
            .request("POST", "/v1/ingest", &[("Content-Encoding", "lz4")], &whole);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        (
            resp.json()["stored"].as_u64(),
            resp.json()["duplicates"].as_u64()
        ),
        (Some(1), Some(200))
    );
    assert_eq!(stored_lines(&file), more);
}

/// The collector parses a body while it arrives; a body the client stops
/// sending halfway (its complete lines already parsed) must leave nothing
/// stored, and the whole batch sent again is stored once.
#[test]
fn a_body_cut_short_stores_nothing_and_the_batch_sent_again_is_stored_once() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let lines: Vec<String> = (0..4000)
        .map(|i| record("web-01", "s1", i * 200, "whole"))
        .collect();
    let body = batch(&lines);
    {
        let mut conn = c.connect(Some(&id));
        let head = format!(
            "POST /v1/ingest HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.tls.write_all(head.as_bytes()).unwrap();
        // Well past the first pieces the collector parses, cut at a line end.
        let half = body[..body.len() * 2 / 3]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap()
            + 1;
        conn.tls.write_all(&body[..half]).unwrap();
        conn.tls.flush().unwrap();
    } // dropped: the connection closes mid-body
    poll(|| {
        (metric(&c.metrics(), "log_sensor_collector_batches_refused_total") >= 1.0).then_some(())
    });
    let s1 = c.data_file("web-01", "s1");
    assert!(
        offsets(&s1).is_empty(),
        "nothing of a cut body may be stored"
    );
    let resp = c.connect(Some(&id)).ingest(&body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["stored"].as_u64(), Some(4000));
    let expected: Vec<u64> = (0..4000).map(|i| i * 200).collect();
    assert_eq!(offsets(&s1), expected);
}

/// Sends an ingest request's head and the first bytes of its body, then
/// nothing more: a stalled network, or a hostile host holding a slot.
fn stall_ingest(conn: &mut Conn, line: &str) {
    let head = format!(
        "POST /v1/ingest HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        line.len() + 1000
    );
    conn.tls.write_all(head.as_bytes()).unwrap();
    conn.tls.write_all(line.as_bytes()).unwrap();
    conn.tls.flush().unwrap();
}

fn set_config(cfg: &mut String, key: &str, from: &str, to: &str) {
    let (old, new) = (format!("{key} = {from}"), format!("{key} = {to}"));
    assert!(cfg.contains(&old), "{old} not in {cfg}");
    *cfg = cfg.replace(&old, &new);
}

/// One host stalling as many bodies as the collector reads at once must
/// not stop another host's batches: a host has its own share of the slots.
#[test]
fn a_host_stalling_its_bodies_cannot_take_every_slot() {
    let mut c = Collector::with_config(|cfg| {
        // Long enough that only the per-host share can let web-02 through.
        set_config(cfg, "body_timeout_secs", "30", "600");
    });
    c.start();
    let (a, b) = (c.enroll("web-01"), c.enroll("web-02"));
    let line = record("web-01", "s1", 0, "whole") + "\n";
    let mut stalled: Vec<Conn> = (0..4).map(|_| c.connect(Some(&a))).collect();
    for conn in &mut stalled {
        stall_ingest(conn, &line);
    }
    // web-01's bodies hold every slot they can get before web-02 asks.
    poll(|| {
        (metric(&c.metrics(), "log_sensor_collector_batches_in_progress") >= 2.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let resp = c
        .connect(Some(&b))
        .ingest(&batch(&[record("web-02", "s1", 0, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(offsets(&c.data_file("web-02", "s1")), vec![0]);
    assert!(offsets(&c.data_file("web-01", "s1")).is_empty());
}

/// A body that stops arriving is cut after `body_timeout_secs` with a 408
/// naming the setting, its slot is freed for the next batch, and nothing of
/// it is stored.
#[test]
fn a_stalled_body_is_cut_and_frees_its_slot() {
    let mut c = Collector::with_config(|cfg| {
        set_config(cfg, "body_timeout_secs", "30", "1");
        set_config(cfg, "max_concurrent_batches", "4", "1");
    });
    c.start();
    let id = c.enroll("web-01");
    let mut stalled = c.connect(Some(&id));
    stall_ingest(&mut stalled, &(record("web-01", "s1", 0, "whole") + "\n"));
    // Waits for the only slot, which the stalled body holds until it is cut.
    let resp = c
        .connect(Some(&id))
        .ingest(&batch(&[record("web-01", "s1", 200, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let cut = stalled
        .read_response()
        .expect("a reply to the stalled body");
    assert_eq!(cut.status, 408);
    assert!(cut.text().contains("body_timeout_secs"), "{}", cut.text());
    stalled.assert_closed_by_server("after a 408");
    assert_eq!(offsets(&c.data_file("web-01", "s1")), vec![200]);

    // The same for an enrolment, which needs no certificate: a stranger
    // trickling nothing is cut as soon.
    let mut stranger = c.connect(None);
    let head = "POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n{";
    stranger.tls.write_all(head.as_bytes()).unwrap();
    stranger.tls.flush().unwrap();
    let cut = stranger
        .read_response()
        .expect("a reply to the stalled enrolment");
    assert_eq!(cut.status, 408, "{}", cut.text());
    stranger.assert_closed_by_server("after a 408");
}

/// Connections from one address past `max_connections_per_address` are
/// closed as they arrive (before any TLS work); other addresses are not
/// affected, and a place freed is taken again.
#[test]
fn one_address_cannot_hold_more_than_its_share_of_connections() {
    let mut c = Collector::with_config(|cfg| {
        set_config(cfg, "max_connections_per_address", "256", "2");
    });
    c.start();
    let ca = c.dir.join("ca.pem");
    let first = c.connect(None);
    let second = c.connect(None);
    let third = Conn::try_open(c.addr(), &ca, None);
    assert!(
        third.is_err(),
        "a third connection from 127.0.0.1 must be refused"
    );
    // Another address still gets in (and reads the counters: the two held
    // connections and its own are open).
    let metrics = || {
        c.connect_from("127.0.0.2", None)
            .request("GET", "/metrics", &[], b"")
            .text()
    };
    assert!(metric(&metrics(), "log_sensor_collector_connections_refused_total") >= 1.0);
    poll(|| (metric(&metrics(), "log_sensor_collector_connections_open") == 3.0).then_some(()));
    drop(first);
    poll(|| Conn::try_open(c.addr(), &ca, None).ok());
    drop(second);
}

#[test]
fn traversal_host_and_stream_ids_stay_inside_data() {
    let mut c = Collector::new();
    c.start();
    let host = "../../etc";
    let id = c.enroll(host);
    let mut conn = c.connect(Some(&id));
    let streams = ["../../../../x", "a/b", "..", ".", "/abs", ".hidden"];
    let lines: Vec<String> = streams
        .iter()
        .map(|s| record(host, s, 0, "whole"))
        .collect();
    let resp = conn.ingest(&batch(&lines));
    assert_eq!(resp.status, 200, "{}", resp.text());

    let data = c.dir.join("data");
    let files = files_under(&data);
    assert_eq!(files.len(), streams.len(), "{files:?}");
    for f in &files {
        assert_eq!(f.parent().unwrap().parent().unwrap(), data, "{f:?}");
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(!name.starts_with('.'), "{name}");
    }
    assert!(c.data_file("%2E.%2F..%2Fetc", "a%2Fb").exists());
    // Nothing appeared beside the collector's own directory.
    let beside: Vec<_> = std::fs::read_dir(c.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut beside = beside;
    beside.sort();
    assert_eq!(beside, vec!["pw", "serve.log", "srv"]);
    let srv: Vec<_> = std::fs::read_dir(c.root.path().join("srv"))
        .unwrap()
        .collect();
    assert_eq!(srv.len(), 1);
    // An oversized stream id is refused, naming the field.
    let resp = conn.ingest(&batch(&[record(host, &"s".repeat(200), 0, "whole")]));
    assert_eq!(resp.status, 400);
    assert!(resp.text().contains("stream"), "{}", resp.text());
}

#[test]
fn kill9_mid_batch_then_resend_stores_every_record_exactly_once() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let streams = ["s1", "s2"];
    let per_stream = 60_000u64;
    let all: Vec<String> = (0..per_stream)
        .flat_map(|i| streams.map(|s| record("web-01", s, i * 200, "whole")))
        .collect();
    let (first, rest) = all.split_at(2_000);
    let resp = c.connect(Some(&id)).ingest(&batch(first));
    assert_eq!(resp.status, 200);
    let s1 = c.data_file("web-01", "s1");
    let acked_len = std::fs::metadata(&s1).unwrap().len();

    // Send the large rest, and kill the collector as soon as it starts
    // appending it.
    let big = batch(rest);
    let addr = c.addr();
    let ca = c.dir.join("ca.pem");
    let sender = {
        let certs = id.certs.clone();
        let key = id.key.clone_key();
        std::thread::spawn(move || {
            let id = Identity {
                certs,
                key,
                serial: String::new(),
            };
            Conn::try_open(addr, &ca, Some(&id))
                .and_then(|mut conn| conn.try_request("POST", "/v1/ingest", &[], &big))
        })
    };
    poll(|| (std::fs::metadata(&s1).map(|m| m.len()).unwrap_or(0) > acked_len).then_some(()));
    c.kill9();
    let reply = sender.join().unwrap();
    assert!(reply.is_err() || reply.as_ref().unwrap().status == 200);

    // Make sure the torn-line case is covered whatever the kill hit: if
    // the file ended cleanly, append half of the next record as a write
    // interrupted mid-line would have.
    for s in streams {
        let path = c.data_file("web-01", s);
        let text = std::fs::read(&path).unwrap();
        if text.ends_with(b"\n") {
            let stored = offsets(&path).len() as u64;
            if stored < per_stream {
                let next = record("web-01", s, stored * 200, "whole");
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(&next.as_bytes()[..next.len() / 2]).unwrap();
            }
        }
    }

    // Restart and re-send everything the agent has not seen acknowledged
    // (here: all of it, the worst case).
    c.start();
    let resp = c.connect(Some(&id)).ingest(&batch(&all));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reply = resp.json();
    assert_eq!(reply["records"].as_u64(), Some(all.len() as u64));
    let expected: Vec<u64> = (0..per_stream).map(|i| i * 200).collect();
    for s in streams {
        let path = c.data_file("web-01", s);
        assert_eq!(
            offsets(&path),
            expected,
            "stream {s}: every record exactly once"
        );
    }
    // And the stored lines are the records as sent.
    let lines = stored_lines(&s1);
    assert_eq!(lines[0], all[0]);
    assert_eq!(lines.last().unwrap(), &all[all.len() - 2]);
}

#[test]
fn overlong_streak_alerts_once_per_streak() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    let mut offset = 0;
    let mut next = |part: &str| {
        offset += 100;
        record("web-01", "s1", offset, part)
    };
    // 12 over-length parts (one alert at the 10th), a whole record ends
    // the streak, then 10 more parts (a second alert).
    let mut lines: Vec<String> = (0..6).flat_map(|_| [next("head"), next("tail")]).collect();
    lines.push(next("whole"));
    lines.extend((0..5).flat_map(|_| [next("head"), next("tail")]));
    let resp = conn.ingest(&batch(&lines));
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The streak goes on in the next batch: no new alert.
    let more: Vec<String> = (0..3).flat_map(|_| [next("head"), next("tail")]).collect();
    assert_eq!(conn.ingest(&batch(&more)).status, 200);

    let alerts: Vec<Value> = std::fs::read_to_string(c.dir.join("alerts.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0]["host"], "web-01");
    assert_eq!(alerts[0]["stream"], "s1");
    assert_eq!(alerts[0]["path"], "/var/log/app.log");
    assert_eq!(alerts[0]["offset"], 1000);
    assert_eq!(alerts[1]["offset"], 2300);
    assert_eq!(
        metric(&c.metrics(), "log_sensor_collector_alerts_total"),
        2.0
    );
    let db = rusqlite::Connection::open(c.dir.join("collector.db")).unwrap();
    let rows: Vec<(String, String, i64)> = db
        .prepare("SELECT host_id, stream, at_offset FROM alerts ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            ("web-01".into(), "s1".into(), 1000),
            ("web-01".into(), "s1".into(), 2300)
        ]
    );
    let parts: Vec<String> = stored_lines(&c.data_file("web-01", "s1"))
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["part"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        parts.len(),
        lines.len() + more.len(),
        "parts are stored, not merged"
    );
    assert_eq!(parts[0], "head");
    assert_eq!(parts[12], "whole");
}

#[test]
fn renew_gives_a_fresh_certificate_for_the_same_host() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec!["evil.example".to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let resp = c
        .connect(Some(&id))
        .post_json("/v1/renew", &json!({"csr": csr}));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reply = resp.json();
    assert_eq!(
        reply["host_id"], "web-01",
        "the certificate decides the host, not the CSR"
    );
    assert_ne!(reply["serial"].as_str().unwrap(), id.serial);
    let renewed = Identity::new(
        reply["cert"].as_str().unwrap(),
        &key,
        reply["serial"].as_str().unwrap(),
    );
    let resp = c
        .connect(Some(&renewed))
        .ingest(&batch(&[record("web-01", "s", 0, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());
    // Renew without a certificate is not allowed.
    let resp = c.connect(None).post_json("/v1/renew", &json!({"csr": csr}));
    assert_eq!(resp.status, 401);
}

#[test]
fn metrics_are_prometheus_text_and_healthz_answers() {
    let mut c = Collector::new();
    c.start();
    let resp = c.connect(None).request("GET", "/healthz", &[], b"");
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok\n"));
    let text = c.metrics();
    let mut names = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        names.insert(name.to_owned());
    }
    for n in [
        "batches_total",
        "records_total",
        "bytes_total",
        "duplicates_dropped_total",
        "refused_handshakes_total",
        "enrolments_total",
        "alerts_total",
    ] {
        assert!(
            names.contains(&format!("log_sensor_collector_{n}")),
            "{n} missing"
        );
    }
    let resp = c.connect(None).request("GET", "/nope", &[], b"");
    assert_eq!(resp.status, 404);
}

#[test]
fn init_refuses_to_replace_a_ca_and_keys_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Collector::new();
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(c.dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let ca_before = std::fs::read(c.dir.join("ca.pem")).unwrap();
    let out = Command::new(BIN)
        .args(["init", "--dir", c.d(), "--name", "localhost"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(c.dir.join("ca.pem")).unwrap(), ca_before);
    let config = std::fs::read_to_string(c.dir.join("collector.toml")).unwrap();
    assert!(
        config.contains("cert_days = 30") && config.contains("overlong_alert_after = 10"),
        "{config}"
    );
    // user del, then the user cannot enrol any more.
    run(&["user", "del", "--dir", c.d(), USER]);
    let out = Command::new(BIN)
        .args(["user", "del", "--dir", c.d(), USER])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Throughput of the collector alone: clients here send pre-built batches
/// of `BENCH_LINES` records with ~210-byte messages over `BENCH_CONNS`
/// connections (one stream each; each batch waits for its acknowledgement,
/// as the agent does). Run in release:
/// `cargo test --release -p log-sensor-collector --test collector bench -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run in release by hand"]
fn bench_ingest_throughput() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let lines = env("BENCH_LINES", 2_000_000);
    let conns = env("BENCH_CONNS", 2);
    let batch_lines = env("BENCH_BATCH", 16_384);
    for gzip in [false, true] {
        let mut c = Collector::new();
        c.start();
        let id = c.enroll("bench-host");
        let msg = "m".repeat(209);
        let (mut wire_bytes, mut msg_bytes) = (0u64, 0u64);
        // Per connection: its stream id and its batches.
        let mut work: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
        for k in 0..conns {
            let stream = format!("{k:016x}");
            let mine = lines / conns + u64::from(k < lines % conns);
            let mut batches = Vec::new();
            let mut offset = 0u64;
            for start in (0..mine).step_by(batch_lines as usize) {
                let mut body = Vec::new();
                for _ in start..(start + batch_lines).min(mine) {
                    let l = json!({"host": "bench-host", "source": "app", "stream": stream,
                        "path": "/var/log/bench.log", "offset": offset, "len": 210, "part": "whole",
                        "ts": "2026-11-26T12:00:00.000000Z", "msg": msg})
                    .to_string();
                    body.extend_from_slice(l.as_bytes());
                    body.push(b'\n');
                    offset += 210;
                    msg_bytes += 210;
                }
                wire_bytes += body.len() as u64;
                if gzip {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(&body).unwrap();
                    body = gz.finish().unwrap();
                }
                batches.push(body);
            }
            work.push((stream, batches));
        }
        let pid = c.child.as_ref().unwrap().id();
        let cpu = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
            let ticks: f64 =
                fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
            ticks / 100.0
        };
        let mut connections: Vec<Conn> = (0..conns).map(|_| c.connect(Some(&id))).collect();
        let cpu0 = cpu();
        let t0 = Instant::now();
        std::thread::scope(|scope| {
            for (conn, (_, batches)) in connections.iter_mut().zip(&work) {
                scope.spawn(move || {
                    let headers: &[(&str, &str)] = if gzip {
                        &[("Content-Encoding", "gzip")]
                    } else {
                        &[]
                    };
                    for b in batches {
                        let r = conn.request("POST", "/v1/ingest", headers, b);
                        assert_eq!(r.status, 200, "{}", r.text());
                    }
                });
            }
        });
        let secs = t0.elapsed().as_secs_f64();
        let cpu_secs = cpu() - cpu0;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap()
            .to_owned();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        eprintln!(
            "gzip={gzip} conns={conns}: {lines} records, {:.0} MiB of messages ({:.0} MiB NDJSON) in {secs:.2} s: \
             {:.0} MiB/s of messages, {:.0} MiB/s NDJSON; collector CPU {cpu_secs:.2} s; {hwm}",
            mib(msg_bytes),
            mib(wire_bytes),
            mib(msg_bytes) / secs,
            mib(wire_bytes) / secs,
        );
        let stored: u64 = work
            .iter()
            .map(|(stream, _)| offsets(&c.data_file("bench-host", stream)).len() as u64)
            .sum();
        assert_eq!(stored, lines);
    }
}

#[test]
fn sigterm_stops_serve_cleanly_after_answering() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    assert_eq!(
        conn.ingest(&batch(&[record("web-01", "s", 0, "whole")]))
            .status,
        200
    );
    let mut child = c.child.take().unwrap();
    // SAFETY: signalling our own child process by its pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = poll(|| child.try_wait().unwrap());
    assert!(status.success(), "{status:?}\n{}", c.log());
    assert!(c.log().contains("collector stopped"), "{}", c.log());
}

#[test]
fn a_key_readable_by_other_users_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Collector::new();
    std::fs::set_permissions(c.dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    c.start();
    let log = c.log();
    assert!(
        log.contains("ca.key is readable by other users (mode 0644): chmod 600 it"),
        "{log}"
    );
    assert!(!log.contains("server.key is readable"), "{log}");
}

#[test]
fn a_second_serve_on_the_same_dir_is_refused_with_the_first_ones_pid() {
    // Two servers on one folder each checked duplicates against their own view of it: records
    // were stored twice, and one acknowledged batch was left out of the files.
    let mut c = Collector::new();
    c.start();
    let addr_before = std::fs::read_to_string(c.dir.join("serve.addr")).unwrap();
    let mut second = Command::new(BIN)
        .args(["serve", "--dir", c.d(), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            second.kill().unwrap();
            second.wait().unwrap();
            panic!("a second serve on the same --dir started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    let pid = c.child.as_ref().unwrap().id();
    assert!(
        err.contains("in use by another log-sensor-collector serve")
            && err.contains(&format!("(pid {pid})")),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(c.dir.join("serve.addr")).unwrap(),
        addr_before,
        "the refused one must not announce itself"
    );
    // The first goes on serving; once it is gone (kill -9 too) the folder is free again.
    let id = c.enroll("web-01");
    let mut conn = c.connect(Some(&id));
    assert_eq!(
        conn.ingest(&batch(&[record("web-01", "s", 0, "whole")]))
            .status,
        200
    );
    c.kill9();
    c.start();
}

#[test]
fn a_revoked_host_cannot_resume_an_earlier_tls_session() {
    // A real agent keeps one client config, whose session cache lets later
    // connections resume without sending the certificate again; resumption
    // must not slip past a revocation.
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let config = client_config(&c.dir.join("ca.pem"), Some(&id));
    let connect = || Conn::with_config(TcpStream::connect(c.addr()).unwrap(), Arc::clone(&config));
    for offset in [0, 100] {
        let mut conn = connect().unwrap();
        let resp = conn.ingest(&batch(&[record("web-01", "s", offset, "whole")]));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    run(&["revoke", "--dir", c.d(), "web-01"]);
    // An empty request, so the refusal arrives as the TLS alert on the
    // read rather than as a broken pipe on a large write.
    let result = connect().and_then(|mut conn| conn.try_request("POST", "/v1/ingest", &[], b""));
    match result {
        Ok(resp) => panic!("revoked host got {} {}", resp.status, resp.text()),
        Err(e) => assert_eq!(refusal(&e), "CertificateRevoked", "{e}"),
    }
    assert_eq!(offsets(&c.data_file("web-01", "s")), vec![0, 100]);
}

#[test]
fn an_open_connection_is_closed_when_its_certificate_expires() {
    let mut c = Collector::new();
    c.start();
    // A certificate from the collector's own CA that expires in a few seconds, registered as
    // issued.
    let serial = [0x41u8, 2, 3, 4, 5, 6, 7, 8];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (cert, key) = c.sign_client_cert(
        "web-01",
        Some(&serial),
        time::OffsetDateTime::from_unix_timestamp(now - 60).unwrap(),
        time::OffsetDateTime::from_unix_timestamp(now + 8).unwrap(),
    );
    let db = rusqlite::Connection::open(c.dir.join("collector.db")).unwrap();
    db.execute(
        "INSERT INTO certs (serial, host_id, username, issued_at, not_after) VALUES (?1, 'web-01', 'alice', ?2, ?3)",
        rusqlite::params!["4102030405060708", now, now + 8],
    )
    .unwrap();
    let id = Identity::new(&cert.pem(), &key, "4102030405060708");
    let mut conn = c.connect(Some(&id));
    let resp = conn.ingest(&batch(&[record("web-01", "s", 0, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Without sending anything, the server closes the connection at expiry.
    conn.assert_closed_by_server("of expiry");
    // A certificate is valid through its notAfter second; from the next
    // one on, new handshakes are refused.
    poll(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (t > now + 8).then_some(())
    });
    assert_refused(&c, &id, "CertificateExpired");
    assert!(metric(&c.metrics(), "log_sensor_collector_connections_cut_total") >= 1.0);
}

// ------------------------------------------------- enrolment under a burst

/// Sends `n` enrolments at once, each on its own connection opened (from
/// the address `who` gives it) before any is sent; returns each reply's
/// status and code, in order.
fn enrol_burst(
    c: &Collector,
    n: usize,
    who: impl Fn(usize) -> (String, String, String, String) + Sync,
) -> Vec<(u16, String)> {
    let csr = {
        let key = KeyPair::generate().unwrap();
        CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
    };
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n)
            .map(|i| {
                let (start, who, csr) = (&start, &who, &csr);
                s.spawn(move || {
                    let (from, user, password, host) = who(i);
                    let mut conn = c.connect_from(&from, None);
                    start.wait();
                    let resp = conn.post_json(
                        "/v1/enroll",
                        &json!({"username": user, "password": password, "host_id": host, "csr": csr}),
                    );
                    let code = resp.json()["code"].as_str().unwrap_or("").to_owned();
                    (resp.status, code)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

fn count(statuses: &[(u16, String)], status: u16) -> usize {
    statuses.iter().filter(|(s, _)| *s == status).count()
}

/// Issue #10.2: sixty wrong passwords for one user from one address, sent
/// at once, were all checked (60 × 401, 1 GiB of argon2 memory) since each
/// try was counted only after its check. Now a try counts when it starts:
/// exactly `max_failures` are checked, the rest are 429; and however many
/// tries the limits let through, at most `max_password_checks` run at once.
#[test]
fn concurrent_wrong_passwords_are_limited_and_checked_a_few_at_a_time() {
    let mut c = Collector::with_config(|cfg| {
        set_config(cfg, "max_password_checks", "2", "1");
    });
    c.start();
    let burst = enrol_burst(&c, 60, |_| {
        (
            "127.0.0.1".into(),
            USER.into(),
            "nope".into(),
            "web-01".into(),
        )
    });
    assert_eq!(count(&burst, 401), 5, "{burst:?}");
    assert_eq!(count(&burst, 429), 55, "{burst:?}");
    let m = c.metrics();
    assert_eq!(metric(&m, "log_sensor_collector_enrol_failures_total"), 5.0);
    assert_eq!(metric(&m, "log_sensor_collector_password_checks_peak"), 1.0);

    // Eight tries the limits all let through (two fresh addresses, four
    // names each, none of them known): still one check at a time. On a
    // slow machine some may give up waiting for the one slot (429 busy).
    let spread = enrol_burst(&c, 8, |i| {
        (
            format!("127.0.0.{}", 10 + i / 4),
            format!("nobody-{i}"),
            "nope".into(),
            "web-01".into(),
        )
    });
    assert!(
        spread
            .iter()
            .all(|(s, code)| *s == 401 || (*s == 429 && code == "busy")),
        "{spread:?}"
    );
    assert!(count(&spread, 401) >= 2, "{spread:?}");
    let m = c.metrics();
    assert_eq!(metric(&m, "log_sensor_collector_password_checks_peak"), 1.0);
    assert_eq!(metric(&m, "log_sensor_collector_password_checks"), 0.0);
    // The right password from a clean address still works once the burst
    // is over (the user's five failures are for alice, so use bob).
    let pw = c.root.path().join("pw");
    run(&[
        "user",
        "add",
        "--dir",
        c.d(),
        "bob",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let ok = enrol_burst(&c, 1, |_| {
        (
            "127.0.0.20".into(),
            "bob".into(),
            PASSWORD.into(),
            "web-01".into(),
        )
    });
    assert_eq!(ok[0].0, 200, "{ok:?}");
}

/// Issue #10.2: eight enrolments of one host id at once produced two live
/// certificates in 1–2 of 40 trials (check, then issue, in two steps).
/// One must win and the others get 409.
#[test]
fn simultaneous_enrolments_of_one_host_issue_one_certificate() {
    let mut c = Collector::with_config(|cfg| {
        // All eight checked at once, so they reach the issue together (and
        // none waits for room under the failure limit).
        set_config(cfg, "max_password_checks", "2", "8");
        set_config(cfg, "max_failures", "5", "50");
    });
    c.start();
    for trial in 0..8 {
        let host = format!("race-{trial}");
        let burst = enrol_burst(&c, 8, |_| {
            (
                "127.0.0.1".into(),
                USER.into(),
                PASSWORD.into(),
                host.clone(),
            )
        });
        assert_eq!(count(&burst, 200), 1, "trial {trial}: {burst:?}");
        assert_eq!(count(&burst, 409), 7, "trial {trial}: {burst:?}");
        assert!(burst
            .iter()
            .all(|(s, code)| *s == 200 || code == "already_enrolled"));
        let db = rusqlite::Connection::open(c.dir.join("collector.db")).unwrap();
        let certs: i64 = db
            .query_row(
                "SELECT count(*) FROM certs WHERE host_id = ?1",
                [&host],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(certs, 1, "trial {trial}");
    }
}

/// Writes `byte` every 200 ms on `conn` until the server answers or closes
/// it; fails if it has not within `DEADLINE`.
fn trickle_until_answered(conn: &mut Conn, byte: u8, what: &str) {
    conn.tls
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    loop {
        match conn.tls.sock.peek(&mut [0u8; 1]) {
            Ok(_) => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: still held after {DEADLINE:?} of trickling"
        );
        if conn
            .tls
            .write_all(&[byte])
            .and_then(|_| conn.tls.flush())
            .is_err()
        {
            break;
        }
    }
    conn.tls.sock.set_read_timeout(Some(DEADLINE)).unwrap();
}

/// Issue #10.8: an enrolment whose body trickled a byte a second was still
/// held after 81 s, since `body_timeout_secs` only cuts a body that stops.
/// A request without a certificate must arrive whole, headers and body,
/// within `unauthenticated_timeout_secs`.
#[test]
fn a_trickling_stranger_is_cut_at_the_total_deadline() {
    let mut c = Collector::with_config(|cfg| {
        set_config(cfg, "unauthenticated_timeout_secs", "10", "2");
    });
    c.start();
    let mut body = c.connect(None);
    let head = "POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4000\r\n\r\n{";
    body.tls.write_all(head.as_bytes()).unwrap();
    trickle_until_answered(&mut body, b' ', "a trickling enrolment body");
    let cut = body.read_response().expect("a reply to the trickled body");
    assert_eq!(cut.status, 408, "{}", cut.text());
    assert_eq!(cut.json()["code"], "request_timeout");
    assert!(
        cut.text().contains("unauthenticated_timeout_secs"),
        "{}",
        cut.text()
    );
    body.assert_closed_by_server("after a 408");

    // Headers trickled a line at a time never end, so the connection is
    // closed when the same deadline passes.
    let mut headers = c.connect(None);
    headers
        .tls
        .write_all(b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    trickle_until_answered(&mut headers, b'x', "trickling headers");
    // An agent with a certificate keeps its connection across the same
    // pause (its idle limit is 75 s).
    let id = c.enroll("web-01");
    let mut agent = c.connect(Some(&id));
    let first = agent.ingest(&batch(&[record("web-01", "s1", 0, "whole")]));
    assert_eq!(first.status, 200, "{}", first.text());
    std::thread::sleep(Duration::from_secs(3));
    let second = agent.ingest(&batch(&[record("web-01", "s1", 10, "whole")]));
    assert_eq!(second.status, 200, "{}", second.text());
}

// ------------------------------------------------ streams and descriptors

/// Issue #10.3: one batch carrying 16,384 new stream ids was stored (16,406
/// descriptors held), and when two such failed they left 19,978 empty
/// files. A batch creating more than `max_new_streams_per_batch` streams is
/// refused, naming the limit, and takes away every file it created.
#[test]
fn a_batch_naming_too_many_new_streams_is_refused_and_leaves_no_file() {
    let mut c = Collector::with_config(|cfg| {
        set_config(cfg, "max_new_streams_per_batch", "1024", "50");
    });
    c.start();
    let id = c.enroll("web-01");
    let first = c
        .connect(Some(&id))
        .ingest(&batch(&[record("web-01", "s0", 0, "whole")]));
    assert_eq!(first.status, 200, "{}", first.text());
    let data = c.dir.join("data");
    let before = files_under(&data);
    // Small enough (under 256 KiB) to be read whole before it is refused.
    let many: Vec<String> = std::iter::once(record("web-01", "s0", 200, "whole"))
        .chain((0..300).map(|i| record("web-01", &format!("new-{i}"), 0, "whole")))
        .collect();
    let resp = c.connect(Some(&id)).ingest(&batch(&many));
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["code"], "too_many_new_streams");
    // The limit as a number, for the agent to adopt without parsing the message.
    assert_eq!(resp.json()["limit"], 50, "{}", resp.text());
    assert!(
        resp.text().contains("50") && resp.text().contains("max_new_streams_per_batch"),
        "{}",
        resp.text()
    );
    assert_eq!(files_under(&data), before, "no file left behind");
    assert_eq!(offsets(&c.data_file("web-01", "s0")), vec![0]);
    // Sent in batches under the limit, they all get in.
    for chunk in many.chunks(50) {
        let resp = c.connect(Some(&id)).ingest(&batch(chunk));
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(files_under(&data).len(), 301);
    assert_eq!(offsets(&c.data_file("web-01", "s0")), vec![0, 200]);
}

/// Stream files the collector process has open now.
fn open_files_under(pid: u32, dir: &Path) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Issue #10.3: streams written over time, more of them than
/// `max_open_stream_files`, more even in one batch: every record is stored
/// once, and the collector never holds more stream files open than the cap
/// (the least recently used is closed, and reopened when next written).
#[test]
fn many_streams_over_time_are_stored_through_a_few_open_files() {
    let mut c = Collector::with_config(|cfg| {
        set_config(cfg, "max_open_stream_files", "1024", "16");
    });
    c.start();
    let id = c.enroll("web-01");
    let pid = c.child.as_ref().unwrap().id();
    let data = c.dir.join("data");
    let mut conn = c.connect(Some(&id));
    let mut most_open = 0;
    for round in 0..3u64 {
        for b in 0..10 {
            let lines: Vec<String> = (0..20)
                .map(|k| record("web-01", &format!("s{}", b * 20 + k), round * 200, "whole"))
                .collect();
            let resp = conn.ingest(&batch(&lines));
            assert_eq!(resp.status, 200, "round {round} batch {b}: {}", resp.text());
            most_open = most_open.max(open_files_under(pid, &data));
        }
    }
    assert!(
        most_open <= 16,
        "{most_open} stream files open at once (max_open_stream_files = 16)"
    );
    assert!(most_open > 0, "the count sees the collector's files");
    for n in 0..200 {
        assert_eq!(
            offsets(&c.data_file("web-01", &format!("s{n}"))),
            vec![0, 200, 400],
            "stream s{n}"
        );
    }
}

// ------------------------------------------------ bodies, renewals, rotated files

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A gzip body of several members (`cat a.gz b.gz`) is one batch; bytes after its last member
/// that start no other are refused naming them. They were refused as "unexpected end of file".
#[test]
fn gzip_members_are_one_batch_and_trailing_bytes_are_named() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let lines: Vec<String> = (0..20)
        .map(|i| record("web-01", "s1", i * 100, "whole"))
        .collect();
    let two = [gzip(&batch(&lines[..10])), gzip(&batch(&lines[10..]))].concat();
    let gz = [("Content-Encoding", "gzip")];
    let resp = c
        .connect(Some(&id))
        .request("POST", "/v1/ingest", &gz, &two);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["stored"], 20);
    let file = c.data_file("web-01", "s1");
    assert_eq!(stored_lines(&file), lines);

    let more = record("web-01", "s1", 5000, "whole");
    let body = [&gzip(&batch(&[more]))[..], b"junk\n"].concat();
    let resp = c
        .connect(Some(&id))
        .request("POST", "/v1/ingest", &gz, &body);
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(resp.json()["code"], "bad_batch");
    let error = resp.json()["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("5 trailing bytes after the gzip stream"),
        "{error}"
    );
    assert!(!error.contains("unexpected end of file"), "{error}");
    assert_eq!(stored_lines(&file), lines, "nothing of it stored");
}

fn renew(c: &Collector, id: &Identity) -> Response {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    c.connect(Some(id))
        .post_json("/v1/renew", &json!({"csr": csr}))
}

/// A host with a valid certificate could call `/v1/renew` in a loop, each call signing a
/// certificate and writing the database: past `max_renewals` within the window it gets 429
/// with a `Retry-After`, counted in /metrics, while other hosts renew and it still ships.
#[test]
fn renewals_past_the_limit_are_refused_per_host() {
    let mut c = Collector::with_config(|cfg| set_config(cfg, "max_renewals", "10", "2"));
    c.start();
    let (a, b) = (c.enroll("web-01"), c.enroll("web-02"));
    for n in 0..2 {
        let resp = renew(&c, &a);
        assert_eq!(resp.status, 200, "renewal {n}: {}", resp.text());
    }
    let resp = renew(&c, &a);
    assert_eq!(resp.status, 429, "{}", resp.text());
    assert_eq!(resp.json()["code"], "rate_limited");
    let error = resp.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("\"web-01\" has renewed 2 times"), "{error}");
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "Retry-After: {retry}");
    assert_eq!(
        metric(
            &c.metrics(),
            "log_sensor_collector_renew_rate_limited_total"
        ),
        1.0
    );
    assert_eq!(
        metric(&c.metrics(), "log_sensor_collector_renewals_total"),
        2.0
    );
    // The limit is the host's: another renews, and the limited one still ships.
    assert_eq!(renew(&c, &b).status, 200);
    let resp = c
        .connect(Some(&a))
        .ingest(&batch(&[record("web-01", "s", 0, "whole")]));
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// An operator's logrotate moving the collector's output files: after a rename (with or
/// without a new file put in place), a delete or a copytruncate, new records go to the file at
/// the original path, and re-sends are still duplicates. They went on into the renamed file (or
/// the deleted one).
#[test]
fn a_stream_file_moved_away_is_followed_by_a_new_one_at_its_path() {
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let file = c.data_file("web-01", "app");
    let mut conn = c.connect(Some(&id));
    let mut offset = 0;
    let mut send = |conn: &mut Conn, n: u64| {
        let lines: Vec<String> = (offset..offset + n)
            .map(|o| record("web-01", "app", o, "whole"))
            .collect();
        offset += n;
        let resp = conn.ingest(&batch(&lines));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["stored"].as_u64(), Some(n));
    };
    send(&mut conn, 3);
    // logrotate's default: rename, then a new empty file in its place.
    let rotated = file.with_extension("ndjson.1");
    std::fs::rename(&file, &rotated).unwrap();
    std::fs::File::create(&file).unwrap();
    send(&mut conn, 2);
    assert_eq!(offsets(&rotated), vec![0, 1, 2]);
    assert_eq!(offsets(&file), vec![3, 4]);
    // `nocreate`: renamed, nothing in its place; the collector makes the file.
    let rotated2 = file.with_extension("ndjson.2");
    std::fs::rename(&file, &rotated2).unwrap();
    send(&mut conn, 1);
    assert_eq!(offsets(&rotated2), vec![3, 4]);
    assert_eq!(offsets(&file), vec![5]);
    // Deleted.
    std::fs::remove_file(&file).unwrap();
    send(&mut conn, 1);
    assert_eq!(offsets(&file), vec![6]);
    // copytruncate: copied, then cut to nothing in place; appended from its new end.
    std::fs::copy(&file, file.with_extension("ndjson.3")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(0)
        .unwrap();
    send(&mut conn, 1);
    assert_eq!(offsets(&file), vec![7]);
    // Re-sends of records now in rotated files are still duplicates, across a restart too, and
    // with the file moved away while the collector was stopped.
    let resend = batch(&[
        record("web-01", "app", 1, "whole"),
        record("web-01", "app", 7, "whole"),
    ]);
    let resp = conn.ingest(&resend);
    assert_eq!(resp.json()["duplicates"], 2, "{}", resp.text());
    drop(conn);
    c.kill9();
    std::fs::rename(&file, file.with_extension("ndjson.4")).unwrap();
    c.start();
    let mut conn = c.connect(Some(&id));
    let resp = conn.ingest(&resend);
    assert_eq!(resp.json()["duplicates"], 2, "{}", resp.text());
    send(&mut conn, 1);
    assert_eq!(offsets(&file), vec![8]);
    assert!(
        c.log().contains("stream file moved away"),
        "logged: {}",
        c.log()
    );
}

/// The real logrotate over the collector's `data/`, as an operator would set it up: `nocreate`,
/// `create` and `copytruncate` (one stream each), with `compress` and `delaycompress`, run
/// between batches and re-sends. Every record ends up in exactly one of a stream's files, the
/// current one holding the batches after the last rotation. Skipped without logrotate.
#[test]
fn logrotate_over_the_stream_files_loses_and_duplicates_nothing() {
    if Command::new("logrotate").arg("--version").output().is_err() {
        eprintln!("logrotate is not installed: skipped");
        return;
    }
    let mut c = Collector::new();
    c.start();
    let id = c.enroll("web-01");
    let streams = ["a", "b", "c"];
    let conf = c.root.path().join("logrotate.conf");
    let modes = ["nocreate", "create 0600", "copytruncate"];
    let text: String = streams
        .iter()
        .zip(modes)
        .map(|(s, mode)| {
            format!(
                "{} {{\n    rotate 10\n    {mode}\n    compress\n    delaycompress\n    missingok\n}}\n",
                c.data_file("web-01", s).display()
            )
        })
        .collect();
    std::fs::write(&conf, text).unwrap();
    let state = c.root.path().join("logrotate.state");
    let mut conn = c.connect(Some(&id));
    let mut next = 0;
    for round in 0..4 {
        let lines: Vec<String> = (next..next + 5)
            .flat_map(|o| streams.map(|s| record("web-01", s, o, "whole")))
            .collect();
        // Each batch once more: the second is all duplicates.
        for _ in 0..2 {
            let resp = conn.ingest(&batch(&lines));
            assert_eq!(resp.status, 200, "round {round}: {}", resp.text());
        }
        next += 5;
        let out = Command::new("logrotate")
            .args(["-f", "-s"])
            .arg(&state)
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "logrotate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last: Vec<String> = (next..next + 2)
        .flat_map(|o| streams.map(|s| record("web-01", s, o, "whole")))
        .collect();
    assert_eq!(conn.ingest(&batch(&last)).status, 200);
    next += 2;
    let host_dir = c.dir.join("data").join("web-01");
    for s in streams {
        let current = c.data_file("web-01", s);
        assert_eq!(offsets(&current), vec![next - 2, next - 1], "stream {s}");
        let mut all = Vec::new();
        let mut files = 0;
        for entry in std::fs::read_dir(&host_dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !name.starts_with(&format!("{s}.ndjson")) {
                continue;
            }
            files += 1;
            let mut text = String::new();
            let file = std::fs::File::open(&path).unwrap();
            if name.ends_with(".gz") {
                flate2::read::MultiGzDecoder::new(file)
                    .read_to_string(&mut text)
                    .unwrap();
            } else {
                std::io::BufReader::new(file)
                    .read_to_string(&mut text)
                    .unwrap();
            }
            all.extend(text.lines().map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            }));
        }
        all.sort_unstable();
        assert_eq!(
            all,
            (0..next).collect::<Vec<_>>(),
            "stream {s}, {files} files"
        );
        assert!(files >= 4, "stream {s} was rotated: {files} files");
    }
}
