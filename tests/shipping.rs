//! End-to-end tests of shipping off the host: the real `log-sensor` binary against the real
//! `log-sensor-collector` and a real rsyslog (gtls driver), over TLS on loopback.
//!
//! Every PKI is generated here (the collector's by its own `init`, the syslog one with rcgen); no
//! key is committed. Processes are killed when their fixture drops. Tests poll for outcomes with
//! generous deadlines and never assert timings.

#[path = "support/collector.rs"]
mod collector;
#[path = "support/pki.rs"]
mod pki;
#[path = "support/mod.rs"]
mod support;

use collector::{free_port, Collector, PASSWORD, USER};
use pki::Pki;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::*;

const HOST: &str = "web-01";

// ------------------------------------------------------------------ the agent

struct Agent {
    env: AgentEnv,
}

impl std::ops::Deref for Agent {
    type Target = AgentEnv;
    fn deref(&self) -> &AgentEnv {
        &self.env
    }
}

impl Agent {
    /// A folder with `logs/` and a config shipping `logs/*.log` to the given `[sink]` body.
    fn new(sink: &str, batch: &str) -> Agent {
        let max_wait = if batch.contains("max_wait") {
            ""
        } else {
            "max_wait = \"100ms\""
        };
        let env = AgentEnv::with_config(&format!(
            r#"
host_id = "{HOST}"
state_dir = "state"
[sources.app]
paths = ["logs/*.log"]
[batch]
{max_wait}
{batch}
[discovery]
rescan_interval = "500ms"
[sink]
{sink}
"#
        ));
        Agent { env }
    }

    /// Each start writes a stderr file of its own (agent-N.err), so a restart keeps the
    /// first run's log.
    fn start(&self) -> Proc {
        let mut c = self.cmd();
        c.arg("run");
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        Proc::spawn("log-sensor", &mut c, &self.p(&format!("agent-{n}.err")))
    }

    /// `log-sensor enroll` against `c` as USER, the password in a file as an operator keeps it.
    fn enroll_cmd(&self, c: &Collector, password: &str) -> Command {
        let pw = self.p("pw");
        std::fs::write(&pw, format!("{password}\n")).unwrap();
        let mut cmd = self.cmd();
        cmd.args([
            "enroll",
            "--server",
            &c.url(),
            "--user",
            USER,
            "--password-file",
        ])
        .arg(&pw)
        .arg("--ca")
        .arg(c.ca());
        cmd
    }

    fn enroll(&self, c: &Collector) -> std::process::Output {
        self.enroll_cmd(c, PASSWORD).output().unwrap()
    }

    fn enroll_ok(&self, c: &Collector) -> String {
        let out = self.enroll(c);
        assert!(
            out.status.success(),
            "enroll failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until everything in `logs/app.log` is committed; returns its size.
    fn wait_all_committed(&self) -> u64 {
        let size = std::fs::metadata(self.p("logs/app.log")).unwrap().len();
        wait_for("every offset committed", PATIENCE, || {
            self.committed() == size
        });
        size
    }

    /// Waits for a sink_error alert containing `needle` (`what` names it in a timeout).
    fn wait_alert(&self, running: &Proc, what: &str, needle: &str) {
        wait_for(
            &format!(
                "a sink_error alert {what}; agent stderr:\n{}",
                tail(&running.stderr_text())
            ),
            PATIENCE,
            || self.sink_alerts().iter().any(|d| d.contains(needle)),
        );
    }
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix} line {i:06} {}", "z".repeat(i % 50)))
        .collect()
}

fn tail(s: &str) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(40)..].join("\n")
}

/// Waits until the collector holds every line of `want` for `host`, then checks each is stored
/// exactly once (one record per line text, and one per stream and offset).
fn assert_stored_exactly_once(c: &Collector, agent: &Proc, want: &[String]) {
    wait_for(
        &format!(
            "{} records at the collector; agent stderr tail:\n{}",
            want.len(),
            tail(&agent.stderr_text())
        ),
        PATIENCE * 2,
        || c.stored(HOST).len() >= want.len(),
    );
    let stored = c.stored(HOST);
    let mut by_msg: HashMap<&str, usize> = HashMap::new();
    let mut by_offset: HashMap<(String, u64), usize> = HashMap::new();
    for r in &stored {
        assert_eq!(r["host"], HOST);
        *by_msg.entry(r["msg"].as_str().unwrap()).or_default() += 1;
        *by_offset
            .entry((
                r["stream"].as_str().unwrap().to_string(),
                r["offset"].as_u64().unwrap(),
            ))
            .or_default() += 1;
    }
    for w in want {
        assert_eq!(by_msg.get(w.as_str()), Some(&1), "{w:?} stored once");
    }
    assert_eq!(stored.len(), want.len(), "nothing stored twice or extra");
    assert!(by_offset.values().all(|&n| n == 1));
}

fn collector_sink(c: &Collector, extra: &str) -> String {
    format!("type = \"collector\"\nurl = \"{}\"\n{extra}", c.url())
}

// ------------------------------------------------------------------ collector tests

#[test]
fn enrol_then_ship_stores_every_record_exactly_once() {
    let mut c = Collector::new();
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "max_records = 300");

    // No silent trust on first use: without --ca the command refuses to run.
    let out = agent
        .cmd()
        .args([
            "enroll",
            "--server",
            &c.url(),
            "--user",
            USER,
            "--password-file",
        ])
        .arg(agent.p("nope"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ca"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let printed = agent.enroll_ok(&c);
    let key = agent.p("state/tls/key.pem");
    assert!(printed.contains(key.to_str().unwrap()), "{printed}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(agent.p("state/tls/cert.pem").exists());
    assert_eq!(
        std::fs::read(agent.p("state/tls/ca.pem")).unwrap(),
        std::fs::read(c.ca()).unwrap()
    );
    assert!(!printed.contains(PASSWORD));

    let want = lines("first", 3000);
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &want);
    assert!(!a.stderr_text().contains(PASSWORD));
    // Committed only what the collector acknowledged: by now, all of it.
    agent.wait_all_committed();
    // The default compression ("auto") moved to lz4 after the collector's first reply said it
    // reads it; everything above went through that codec but the first batch.
    let log = a.stderr_text();
    assert!(
        log.contains("request bodies now go in the encoding the collector announces")
            && log.contains("encoding=Lz4"),
        "{}",
        tail(&log)
    );
}

/// A collector as they were before lz4 (a stand-in: the older binary is not at hand): mutual
/// TLS, `POST /v1/ingest` with a plain or gzip body acknowledged, any other Content-Encoding
/// refused with 415, no `Accept-Encoding` in its replies. Counts the lines it got per
/// encoding.
struct OldCollector {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
}

impl OldCollector {
    fn start(pki: &Pki) -> OldCollector {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use std::io::{BufRead, BufReader, Read, Write};
        use std::sync::{Arc, Mutex};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.p("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let certs = CertificateDer::pem_file_iter(pki.p("server.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.p("server.key")).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(BTreeMap::new()));
        let counts = got.clone();
        // A thread per connection; they end with the test.
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                let (config, counts) = (config.clone(), counts.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                    'requests: loop {
                        let (mut len, mut encoding) = (0usize, String::new());
                        loop {
                            let mut line = String::new();
                            match tls.read_line(&mut line) {
                                Ok(0) | Err(_) => break 'requests,
                                Ok(_) => {}
                            }
                            let line = line.trim_end();
                            if line.is_empty() {
                                break;
                            }
                            if let Some((k, v)) = line.split_once(':') {
                                match k.to_ascii_lowercase().as_str() {
                                    "content-length" => len = v.trim().parse().unwrap(),
                                    "content-encoding" => encoding = v.trim().to_string(),
                                    _ => {}
                                }
                            }
                        }
                        let mut body = vec![0; len];
                        if tls.read_exact(&mut body).is_err() {
                            break;
                        }
                        let plain = match encoding.as_str() {
                            "" => Some(body),
                            "gzip" => {
                                let mut out = Vec::new();
                                flate2::read::MultiGzDecoder::new(&body[..])
                                    .read_to_end(&mut out)
                                    .unwrap();
                                Some(out)
                            }
                            _ => None,
                        };
                        let lines = plain
                            .as_ref()
                            .map(|p| p.iter().filter(|&&b| b == b'\n').count());
                        *counts.lock().unwrap().entry(encoding.clone()).or_default() +=
                            lines.unwrap_or(0);
                        let (status, reply) = match lines {
                            Some(n) => (
                                "200 OK",
                                format!(r#"{{"records":{n},"stored":{n},"duplicates":0}}"#),
                            ),
                            None => (
                                "415 Unsupported Media Type",
                                serde_json::json!({
                                    "error": format!("unsupported Content-Encoding {encoding:?} (use gzip or none)"),
                                    "code": "unsupported_encoding",
                                })
                                .to_string(),
                            ),
                        };
                        let close = if lines.is_some() {
                            ""
                        } else {
                            "Connection: close\r\n"
                        };
                        let out = tls.get_mut();
                        let written = write!(
                        out,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{close}Content-Length: {}\r\n\r\n{reply}",
                        reply.len()
                    )
                    .and_then(|_| out.flush());
                        if written.is_err() || lines.is_none() {
                            break;
                        }
                    }
                });
            }
        });
        OldCollector { port, got }
    }

    fn got(&self) -> BTreeMap<String, usize> {
        self.got.lock().unwrap().clone()
    }
}

/// A new agent against an older collector: with the default compression it never sends lz4
/// (the collector announces nothing), so everything arrives in gzip; with `compression = "lz4"`
/// the refusal says what to change.
#[test]
fn an_older_collector_gets_gzip_and_an_explicit_lz4_is_named_when_refused() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(&root.path().join("pki"), HOST);
    let old = OldCollector::start(&pki);
    let sink = |extra: &str| {
        format!(
            "type = \"collector\"\nurl = \"https://localhost:{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
            old.port,
            pki.p("ca.pem"),
            pki.p("client.pem"),
            pki.p("client.key")
        )
    };
    let agent = Agent::new(&sink(""), "max_records = 200");
    let want = lines("old", 2000);
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    agent.wait_all_committed();
    let got = old.got();
    assert_eq!(got.get("gzip"), Some(&want.len()), "{got:?}");
    assert_eq!(got.len(), 1, "nothing but gzip: {got:?}");
    drop(a);

    let agent = Agent::new(&sink("compression = \"lz4\""), "");
    append_lines(&agent.p("logs/app.log"), &want[..10]);
    let a = agent.start();
    agent.wait_alert(&a, "naming the refused compression", "sink.compression");
    let alert = agent.sink_alerts().join("\n");
    assert!(alert.contains("415"), "{alert}");
    assert_eq!(agent.committed(), 0, "nothing committed");
}

#[test]
fn a_batch_larger_than_the_collectors_limit_is_sent_in_pieces() {
    // The collector takes at most 20 MiB per request; one agent batch holds about 45 MiB of
    // NDJSON. Sent whole it would be refused (413) forever.
    let mut c = Collector::with_config(|cfg| {
        assert!(cfg.contains("max_batch_bytes = 67108864"), "{cfg}");
        *cfg = cfg.replace("max_batch_bytes = 67108864", "max_batch_bytes = 20971520");
    });
    c.start();
    let agent = Agent::new(
        &collector_sink(&c, "compression = \"none\""),
        "max_records = 1000000\nmax_bytes = \"64MiB\"\nmax_wait = \"3s\"",
    );
    agent.enroll_ok(&c);
    let want: Vec<String> = (0..100_000)
        .map(|i| format!("big batch line {i:07} {}", "q".repeat(180)))
        .collect();
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &want);
    assert!(
        !a.stderr_text().contains("too_large"),
        "{}",
        tail(&a.stderr_text())
    );
}

#[test]
fn insecure_first_contact_works_and_says_so_loudly() {
    let mut c = Collector::new();
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "");
    let pw = agent.p("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let out = agent
        .cmd()
        .args([
            "enroll",
            "--server",
            &c.url(),
            "--user",
            USER,
            "--password-file",
        ])
        .arg(&pw)
        .arg("--insecure-first-contact")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("WARNING") && stderr.contains("NOT"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD));
    assert_eq!(
        std::fs::read(agent.p("state/tls/ca.pem")).unwrap(),
        std::fs::read(c.ca()).unwrap()
    );

    // A wrong password is refused with the collector's reason, and stores nothing new.
    let out = agent.enroll_cmd(&c, "wrong").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid_credentials"), "{stderr}");
}

#[test]
fn agent_against_a_stopped_collector_delivers_everything_once_it_starts() {
    let mut c = Collector::new();
    c.start();
    // An outage is alerted once it outlasts sink.alert_after (30 s by default).
    let agent = Agent::new(
        &collector_sink(&c, "compression = \"none\"\nalert_after = \"1s\""),
        "max_records = 500",
    );
    agent.enroll_ok(&c);
    c.kill9();

    let want = lines("while-down", 5000);
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    wait_for("the agent to see the collector down", PATIENCE, || {
        agent
            .sink_alerts()
            .iter()
            .any(|d| d.contains("cannot connect"))
    });
    assert_eq!(
        agent.committed(),
        0,
        "nothing committed while the collector is down"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.committed(), 0);

    c.start();
    assert_stored_exactly_once(&c, &a, &want);
}

/// A TCP relay in front of the collector that can go silent: while it is, bytes in both
/// directions are read and dropped, which is what a cut cable or a firewall that drops packets
/// looks like to the agent (no reset, no close, nothing).
struct Relay {
    port: u16,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = silent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (from, into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let s = s.clone();
                    std::thread::spawn(move || Relay::pump(from, into, &s));
                }
            }
        });
        Relay { port, silent }
    }

    fn pump(
        mut from: std::net::TcpStream,
        mut into: std::net::TcpStream,
        silent: &std::sync::atomic::AtomicBool,
    ) {
        use std::io::{Read, Write};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = into.shutdown(std::net::Shutdown::Write);
                    return;
                }
                Ok(_) if silent.load(std::sync::atomic::Ordering::SeqCst) => {}
                Ok(n) => {
                    if into.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn set_silent(&self, silent: bool) {
        self.silent
            .store(silent, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The network goes silent under an open keep-alive connection (the collector neither replies
/// nor closes): the agent names the silence after `sink.timeout`, commits nothing meanwhile,
/// and delivers everything exactly once when the network comes back.
#[test]
fn a_silent_network_is_named_after_the_timeout_and_loses_nothing() {
    let mut c = Collector::new();
    c.start();
    let relay = Relay::start(c.port);
    let agent = Agent::new(
        &format!(
            "type = \"collector\"\nurl = \"https://127.0.0.1:{}\"\ntimeout = \"2s\"\nalert_after = \"1s\"\n",
            relay.port
        ),
        "max_records = 500",
    );
    agent.enroll_ok(&c);
    let before = lines("before", 2000);
    append_lines(&agent.p("logs/app.log"), &before);
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &before);
    let size = agent.wait_all_committed();

    relay.set_silent(true);
    let during = lines("during", 3000);
    append_lines(&agent.p("logs/app.log"), &during);
    agent.wait_alert(&a, "naming the silence", "no answer from");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.committed(), size, "nothing committed while silent");
    assert_eq!(c.stored(HOST).len(), before.len());

    relay.set_silent(false);
    let all: Vec<String> = before.iter().chain(during.iter()).cloned().collect();
    assert_stored_exactly_once(&c, &a, &all);
}

#[test]
fn collector_kill9_mid_batch_then_restart_stores_every_record_exactly_once() {
    let mut c = Collector::new();
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "max_records = 2000");
    agent.enroll_ok(&c);
    let want: Vec<String> = (0..3)
        .flat_map(|round| lines(&format!("kill{round}"), 40_000))
        .collect();
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    let mut seen = 0;
    for round in 0..3 {
        // Shipping is under way (more than before, not all): kill the collector in the middle.
        wait_for(&format!("progress before kill {round}"), PATIENCE, || {
            c.stored(HOST).len() > seen
        });
        c.kill9();
        seen = c.stored(HOST).len();
        if seen >= want.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        c.start();
    }
    if c.proc.is_none() {
        c.start();
    }
    assert_stored_exactly_once(&c, &a, &want);
}

#[test]
fn revoked_certificate_alerts_commits_nothing_then_reenrolment_delivers() {
    let mut c = Collector::new();
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "");
    agent.enroll_ok(&c);
    let before = lines("before", 200);
    append_lines(&agent.p("logs/app.log"), &before);
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &before);
    let committed_before = agent.wait_all_committed();

    c.revoke(HOST);
    let after = lines("after", 300);
    append_lines(&agent.p("logs/app.log"), &after);
    agent.wait_alert(&a, "naming the revocation", "REVOKED");
    assert!(
        a.stderr_text().contains("REVOKED"),
        "the log says it too:\n{}",
        tail(&a.stderr_text())
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent.committed(),
        committed_before,
        "nothing committed while the certificate is revoked"
    );
    assert_eq!(c.stored(HOST).len(), before.len());

    // Re-enrolling while the agent runs: it picks up the new files and the waiting data goes.
    agent.enroll_ok(&c);
    let all: Vec<String> = before.iter().chain(after.iter()).cloned().collect();
    assert_stored_exactly_once(&c, &a, &all);
}

#[test]
fn expired_certificate_is_named_commits_nothing_then_reenrolment_delivers() {
    let mut c = Collector::new();
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "");
    agent.enroll_ok(&c);
    // Our own key, a certificate from the collector's CA that expired in 2020.
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(agent.p("state/tls/key.pem")).unwrap())
            .unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(c.dir.join("ca.key")).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(c.ca()).unwrap(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![HOST.to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, HOST);
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let expired = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(agent.p("state/tls/cert.pem"), expired.pem()).unwrap();

    let want = lines("expired", 100);
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    agent.wait_alert(&a, "naming the expiry", "EXPIRED");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.committed(), 0, "nothing committed");
    assert!(c.stored(HOST).is_empty());

    // The certificate the collector issued first is still live in its database (only our copy
    // was swapped), and a host with a live certificate cannot enrol again: revoke it first.
    let out = agent.enroll(&c);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.revoke(HOST);
    agent.enroll_ok(&c);
    assert_stored_exactly_once(&c, &a, &want);
}

#[test]
fn certificate_is_renewed_at_the_configured_share_of_its_lifetime() {
    // One-day certificates, backdated 5 min by the collector; renewing at 0.0036 of the lifetime
    // (about 312 s after not_before) means a renewal some seconds after each issue.
    let mut c = Collector::with_config(|cfg| *cfg = cfg.replace("cert_days = 30", "cert_days = 1"));
    c.start();
    let agent = Agent::new(&collector_sink(&c, "renew_at = 0.0036"), "");
    agent.enroll_ok(&c);
    let first_cert = std::fs::read(agent.p("state/tls/cert.pem")).unwrap();
    let want1 = lines("pre-renewal", 100);
    append_lines(&agent.p("logs/app.log"), &want1);
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &want1);
    wait_for(
        &format!("a renewal; agent stderr:\n{}", tail(&a.stderr_text())),
        PATIENCE,
        // The file is swapped in before the renewal is logged: wait for both.
        || {
            std::fs::read(agent.p("state/tls/cert.pem")).unwrap() != first_cert
                && a.stderr_text().contains("client certificate renewed")
        },
    );
    let list = c.certs_list();
    assert!(
        list.lines().filter(|l| l.contains(HOST)).count() >= 2,
        "the collector issued a renewal:\n{list}"
    );
    // The renewed certificate is the one in use from now on, and shipping goes on.
    let want2 = lines("post-renewal", 100);
    append_lines(&agent.p("logs/app.log"), &want2);
    let all: Vec<String> = want1.iter().chain(want2.iter()).cloned().collect();
    assert_stored_exactly_once(&c, &a, &all);
    assert!(!a.stderr_text().contains("renewal failed"));
}

// ------------------------------------------------------------------ syslog to a real rsyslog

/// rsyslogd in the foreground with its own config, work directory and pid file, receiving
/// RFC 5425 over TLS (gtls, x509/name, only `HOST` permitted) on a loopback port, and writing
/// each message with its structured data to `out`.
struct Rsyslog {
    proc: Option<Proc>,
    port: u16,
    out: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Path, pki: &Pki) -> Rsyslog {
        Self::start_on(dir, Some(pki), free_port())
    }

    /// With `pki`, TLS as above; without, plain TCP (`tls = false` on the agent's side).
    fn start_on(dir: &Path, pki: Option<&Pki>, port: u16) -> Rsyslog {
        let work = dir.join("rsyslog-work");
        std::fs::create_dir_all(&work).unwrap();
        let out = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        let tls = match pki {
            Some(pki) => format!(
                r#"
global(workDirectory="{work}" maxMessageSize="128k"
       DefaultNetstreamDriver="gtls"
       DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="x509/name" PermittedPeer=["{HOST}"])
"#,
                work = work.display(),
                ca = pki.p("ca.pem"),
                cert = pki.p("server.pem"),
                key = pki.p("server.key"),
            ),
            None => format!(
                "global(workDirectory=\"{}\" maxMessageSize=\"128k\")\nmodule(load=\"imtcp\")\n",
                work.display()
            ),
        };
        std::fs::write(
            &conf,
            format!(
                r#"{tls}
template(name="t" type="string" string="%hostname%|%app-name%|%structured-data%|%msg%\n")
ruleset(name="r") {{ action(type="omfile" file="{out}" template="t") }}
input(type="imtcp" port="{port}" ruleset="r")
"#,
                out = out.display(),
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
        let proc = Proc::spawn("rsyslogd", &mut cmd, &dir.join("rsyslog.err"));
        wait_for("rsyslog to listen", PATIENCE, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Rsyslog {
            proc: Some(proc),
            port,
            out,
        }
    }

    fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(libc::SIGTERM);
            p.wait_exit(PATIENCE);
        }
    }

    /// Each received message: (hostname, app-name, structured data, msg).
    fn received(&self) -> Vec<(String, String, String, String)> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, '|');
                let (h, a, rest) = (it.next()?, it.next()?, it.next()?);
                if let Some(msg) = rest.strip_prefix("-|") {
                    return Some((h.to_string(), a.to_string(), "-".into(), msg.to_string()));
                }
                // The SD ends at the first unescaped `]` followed by `|`.
                let end = rest.find("]|")?;
                Some((
                    h.to_string(),
                    a.to_string(),
                    rest[..=end].to_string(),
                    rest[end + 2..].to_string(),
                ))
            })
            .collect()
    }
}

fn sd_param(sd: &str, name: &str) -> Option<String> {
    let start = sd.find(&format!(" {name}=\""))? + name.len() + 3;
    let mut out = String::new();
    let mut chars = sd[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

fn syslog_sink(pki: &Pki, port: u16, cert: &str) -> String {
    syslog_sink_trusting(pki, port, cert, "ca.pem")
}

fn syslog_sink_trusting(pki: &Pki, port: u16, cert: &str, ca: &str) -> String {
    format!(
        "type = \"syslog\"\naddress = \"127.0.0.1:{port}\"\ntls = true\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\napp_name = \"shipper\"\nfacility = \"local3\"\n",
        pki.p(ca),
        pki.p(&format!("{cert}.pem")),
        pki.p(&format!("{cert}.key")),
    )
}

#[test]
fn syslog_over_tls_to_a_real_rsyslog_delivers_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), HOST);
    let rs = Rsyslog::start(tmp.path(), &pki);
    let agent = Agent::new(&syslog_sink(&pki, rs.port, "client"), "max_records = 700");
    // A file name needing SD escaping, one record over max_record_bytes (64 KiB: shipped as its
    // head and its tail) and one record that is not UTF-8.
    let log = agent.p("logs/we]ird\"name.log");
    let want = lines("syslog", 5000);
    append_lines(&log, &want);
    let long = format!("long-{}", "x".repeat(69_995));
    append_lines(&log, std::slice::from_ref(&long));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"bin \xff\xfe end\n").unwrap();
    }
    let mut offsets: BTreeMap<u64, String> = BTreeMap::new();
    let mut at = 0u64;
    for l in &want {
        offsets.insert(at, l.clone());
        at += l.len() as u64 + 1;
    }
    let long_offset = at;
    let tail_offset = at + 70_000 - 65_536;
    offsets.insert(long_offset, long[..65_536].to_string());
    offsets.insert(tail_offset, long[70_000 - 65_536..].to_string());
    let bin_offset = at + 70_001;
    let total = bin_offset + b"bin \xff\xfe end\n".len() as u64;
    let expected = want.len() + 3;

    let a = agent.start();
    wait_for(
        &format!(
            "{expected} messages at rsyslog; agent stderr:\n{}",
            tail(&a.stderr_text())
        ),
        PATIENCE * 2,
        || rs.received().len() >= expected,
    );
    wait_for("every offset committed", PATIENCE, || {
        agent.committed() == total
    });
    let got = rs.received();
    assert_eq!(got.len(), expected, "each record exactly once");
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (host, app, sd, msg) in &got {
        assert_eq!(host, HOST);
        assert_eq!(app, "shipper");
        assert!(sd.starts_with("[logsensor@32473 "), "{sd}");
        assert_eq!(sd_param(sd, "host"), None, "HOSTNAME carries it");
        assert_eq!(sd_param(sd, "source").as_deref(), Some("app"));
        assert_eq!(
            sd_param(sd, "path").as_deref(),
            Some(log.to_str().unwrap()),
            "escaped path in {sd}"
        );
        assert_eq!(sd_param(sd, "stream").map(|s| s.len()), Some(16));
        let offset: u64 = sd_param(sd, "offset").unwrap().parse().unwrap();
        *seen.entry(offset).or_default() += 1;
        let part = sd_param(sd, "part").unwrap();
        if offset == long_offset || offset == tail_offset {
            assert_eq!(
                part,
                if offset == long_offset {
                    "head"
                } else {
                    "tail"
                }
            );
            assert_eq!(sd_param(sd, "len").as_deref(), Some("70000"));
            assert_eq!(Some(msg), offsets.get(&offset), "{part} of the long record");
            continue;
        }
        assert_eq!(part, "whole");
        if offset == bin_offset {
            assert_eq!(sd_param(sd, "enc").as_deref(), Some("base64"));
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(msg.trim())
                .unwrap();
            assert_eq!(bytes, b"bin \xff\xfe end");
        } else {
            assert_eq!(
                Some(msg),
                offsets.get(&offset),
                "content at offset {offset}"
            );
            assert_eq!(
                sd_param(sd, "len"),
                None,
                "a whole record's length is its message's"
            );
        }
    }
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(seen.len(), expected);
}

/// Each `structured_data` choice is parsed by rsyslog as valid RFC 5424, and carries what it
/// promises: `full` every parameter, `minimal` stream and offset (plus part and len on the parts
/// of a cut record, enc on one that is not UTF-8), `none` no structured data but enc's marker.
#[test]
fn syslog_structured_data_choices_each_reach_a_real_rsyslog_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), HOST);
    let rs = Rsyslog::start(tmp.path(), &pki);
    // The app name says which choice a message was sent with.
    let choices = ["full", "minimal", "none"];
    let agents: Vec<Agent> = choices
        .iter()
        .map(|c| {
            let sink = syslog_sink(&pki, rs.port, "client").replace(
                "app_name = \"shipper\"",
                &format!("app_name = \"{c}\"\nstructured_data = \"{c}\""),
            );
            Agent::new(&sink, "")
        })
        .collect();
    let want = lines("sd", 300);
    let long = format!("long-{}", "y".repeat(69_995));
    let bin = b"bin \xff\xfe end\n";
    // (offset, part, message rsyslog must show) for every record, in file order.
    let mut expected: Vec<(u64, &str, String)> = Vec::new();
    let mut at = 0u64;
    for l in &want {
        expected.push((at, "whole", l.clone()));
        at += l.len() as u64 + 1;
    }
    expected.push((at, "head", long[..65_536].to_string()));
    expected.push((
        at + 70_000 - 65_536,
        "tail",
        long[70_000 - 65_536..].to_string(),
    ));
    at += 70_001;
    use base64::Engine;
    let bin_b64 = base64::engine::general_purpose::STANDARD.encode(&bin[..bin.len() - 1]);
    expected.push((at, "whole", bin_b64.clone()));
    let total = at + bin.len() as u64;
    for agent in &agents {
        let log = agent.p("logs/app.log");
        append_lines(&log, &want);
        append_lines(&log, std::slice::from_ref(&long));
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(bin).unwrap();
    }
    let running: Vec<Proc> = agents.iter().map(|a| a.start()).collect();
    wait_for(
        &format!(
            "{} messages at rsyslog; the none agent's stderr:\n{}",
            expected.len() * 3,
            tail(&running[2].stderr_text())
        ),
        PATIENCE * 2,
        || rs.received().len() >= expected.len() * 3,
    );
    for agent in &agents {
        wait_for("every offset committed", PATIENCE, || {
            agent.committed() == total
        });
    }
    let got = rs.received();
    assert_eq!(got.len(), expected.len() * 3, "each record exactly once");
    for choice in choices {
        let mine: Vec<_> = got.iter().filter(|(_, app, _, _)| app == choice).collect();
        assert_eq!(mine.len(), expected.len(), "{choice}: one message a record");
        // One stream a file, one connection an agent: messages arrive in file order.
        for ((host, _, sd, msg), (offset, part, text)) in mine.iter().zip(&expected) {
            assert_eq!(host, HOST);
            assert_eq!(msg, text, "{choice}: the message at offset {offset}");
            let base64 = *text == bin_b64;
            if choice == "none" {
                let marker = if base64 {
                    "[logsensor@32473 enc=\"base64\"]"
                } else {
                    "-"
                };
                assert_eq!(sd, marker, "none: no structured data at {offset}");
                continue;
            }
            assert_eq!(
                sd_param(sd, "offset").and_then(|o| o.parse().ok()),
                Some(*offset),
                "{choice}: {sd}"
            );
            assert_eq!(sd_param(sd, "stream").map(|s| s.len()), Some(16), "{sd}");
            assert_eq!(
                sd_param(sd, "enc").as_deref(),
                base64.then_some("base64"),
                "{sd}"
            );
            let cut = *part != "whole";
            assert_eq!(
                sd_param(sd, "len").as_deref(),
                cut.then_some("70000"),
                "{sd}"
            );
            if choice == "full" {
                assert_eq!(sd_param(sd, "part").as_deref(), Some(*part), "{sd}");
                assert_eq!(sd_param(sd, "source").as_deref(), Some("app"), "{sd}");
                assert!(sd_param(sd, "path").is_some(), "{sd}");
            } else {
                assert_eq!(
                    sd_param(sd, "part").as_deref(),
                    cut.then_some(*part),
                    "{sd}"
                );
                assert_eq!(sd_param(sd, "source"), None, "minimal: {sd}");
                assert_eq!(sd_param(sd, "path"), None, "minimal: {sd}");
            }
        }
    }
    drop(running);
}

#[test]
fn syslog_refused_client_certificate_commits_nothing_until_a_good_one_is_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), HOST);
    let rs = Rsyslog::start(tmp.path(), &pki);
    let agent = Agent::new(&syslog_sink(&pki, rs.port, "wrong"), "");
    let want = lines("refused", 50);
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    agent.wait_alert(
        &a,
        "about the refused certificate",
        "refused our client certificate",
    );
    // Some retries later, still nothing committed and nothing received.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.committed(), 0, "nothing committed");
    assert!(
        rs.received().is_empty(),
        "rsyslog let a wrong client through"
    );
}

#[test]
fn syslog_over_plain_tcp_survives_a_receiver_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rs = Rsyslog::start_on(tmp.path(), None, free_port());
    let agent = Agent::new(
        &format!(
            "type = \"syslog\"\naddress = \"127.0.0.1:{}\"\ntls = false\n",
            rs.port
        ),
        "max_records = 100",
    );
    let first = lines("plain-first", 300);
    append_lines(&agent.p("logs/app.log"), &first);
    let a = agent.start();
    let msgs = |rs: &Rsyslog| -> Vec<String> { rs.received().into_iter().map(|r| r.3).collect() };
    wait_for("the first lines at rsyslog", PATIENCE, || {
        msgs(&rs).len() >= first.len()
    });
    let size = agent.wait_all_committed();

    rs.stop();
    let second = lines("plain-second", 300);
    append_lines(&agent.p("logs/app.log"), &second);
    wait_for(
        &format!(
            "a sink_error alert while rsyslog is down; agent stderr:\n{}",
            tail(&a.stderr_text())
        ),
        PATIENCE,
        || !agent.sink_alerts().is_empty(),
    );
    assert_eq!(
        agent.committed(),
        size,
        "nothing committed while the receiver is down"
    );

    let port = rs.port;
    let rs = Rsyslog::start_on(tmp.path(), None, port);
    let all: Vec<String> = first.iter().chain(second.iter()).cloned().collect();
    wait_for(
        &format!(
            "every line at rsyslog; agent stderr:\n{}",
            tail(&a.stderr_text())
        ),
        PATIENCE * 2,
        || {
            let got: std::collections::HashSet<String> = msgs(&rs).into_iter().collect();
            all.iter().all(|l| got.contains(l))
        },
    );
    // At least once: nothing missing; a batch cut by the restart may have been re-sent whole.
    let got = msgs(&rs);
    assert!(got.len() >= all.len());
    assert!(got.iter().all(|m| all.contains(m)), "only our records");
}

#[test]
fn syslog_receiver_our_ca_does_not_vouch_for_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(&tmp.path().join("pki"), HOST);
    let rs = Rsyslog::start(tmp.path(), &pki);
    let agent = Agent::new(
        &syslog_sink_trusting(&pki, rs.port, "client", "other-ca.pem"),
        "",
    );
    append_lines(&agent.p("logs/app.log"), &lines("untrusted", 20));
    let a = agent.start();
    agent.wait_alert(
        &a,
        "about the server's certificate",
        "server's certificate does not verify",
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.committed(), 0, "nothing committed");
    assert!(
        rs.received().is_empty(),
        "nothing sent to an unverified server"
    );
}

// ------------------------------------------------------------------ --cert / --key

/// The seed's `--cert`: an agent that never enrolled ships with a certificate and key obtained
/// elsewhere (here, by another agent's enrolment), named on its command line; `start` passes
/// them on to the background agent, and a reload keeps them.
#[test]
fn cert_and_key_on_the_command_line_replace_the_enrolled_identity() {
    let mut c = Collector::new();
    c.start();
    let issued = Agent::new(&collector_sink(&c, ""), "");
    issued.enroll_ok(&c);
    let ca = c.ca().display().to_string();
    let agent = Agent::new(&collector_sink(&c, &format!("ca = {ca:?}")), "");
    let (cert, key) = (
        issued.p("state/tls/cert.pem"),
        issued.p("state/tls/key.pem"),
    );

    // Without the flags it has no identity: the sink names the missing enrolled certificate.
    let out = agent.cmd().arg("start").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cert.pem"), "{err}");

    // Without a running agent, get reads the file with the flags over it.
    let out = agent
        .cmd()
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["get", "sink.key"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(key.to_str().unwrap()) && shown.contains("(command_line)"),
        "{shown}"
    );

    let want = lines("with-cert", 50);
    append_lines(&agent.p("logs/app.log"), &want);
    let out = agent
        .cmd()
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("start")
        .env("LOG_SENSOR_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stop = || {
        let _ = agent.cmd().arg("stop").output();
    };
    wait_for("records stored with the --cert identity", PATIENCE, || {
        c.stored(HOST).len() >= want.len()
    });
    // Kept across a reload: the origin says where the value comes from.
    let out = agent.cmd().arg("reload").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = agent.cmd().args(["get", "sink.cert"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(cert.to_str().unwrap()) && listed.contains("command_line"),
        "{listed}"
    );
    let more = lines("after-reload", 5);
    append_lines(&agent.p("logs/app.log"), &more);
    wait_for("records after the reload", PATIENCE, || {
        c.stored(HOST).len() >= want.len() + more.len()
    });
    stop();
    assert!(
        !agent.p("state/tls/cert.pem").exists(),
        "nothing enrolled here"
    );

    // A key others can read is refused, naming the file and the fix.
    let open_key = agent.p("open-key.pem");
    std::fs::copy(&key, &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent
        .cmd()
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&open_key)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("open-key.pem") && err.contains("0644"),
        "{err}"
    );

    // A sink without client certificates says so rather than ignoring the flags.
    let plain = Agent::new("type = \"file\"\npath = \"state/out.ndjson\"", "");
    let out = plain
        .cmd()
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("check")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--cert") && err.contains("\"file\""),
        "{err}"
    );
}

// ------------------------------------------------------------------ the collector's limits

/// Issue #10 follow-up: an agent that just found thousands of small files sends batches naming
/// thousands of new streams. The collector refuses a request creating more than
/// `max_new_streams_per_batch` (400 `too_many_new_streams`), and the sink used to send the same
/// batch again forever: shipping stopped for good. Now every request names at most 1024
/// streams (the collector's default), and a collector configured lower says its limit in the
/// refusal, which the sink adopts. Returns the agent's stderr.
fn many_small_files_reach_a_collector_limiting_new_streams_to(limit: Option<u32>) -> String {
    const FILES: usize = 3000;
    let mut c = Collector::with_config(|cfg| {
        if let Some(n) = limit {
            let default = "max_new_streams_per_batch = 1024";
            assert!(cfg.contains(default), "{cfg}");
            *cfg = cfg.replace(default, &format!("max_new_streams_per_batch = {n}"));
        }
    });
    c.start();
    // Long enough a wait that a batch holds every file found by one scan.
    let agent = Agent::new(&collector_sink(&c, ""), "max_wait = \"2s\"");
    agent.enroll_ok(&c);
    let mut want = Vec::with_capacity(FILES);
    let mut size = 0;
    for i in 0..FILES {
        let line = format!("small file {i:05} says hello");
        size += line.len() as u64 + 1;
        std::fs::write(agent.p(&format!("logs/f{i:05}.log")), format!("{line}\n")).unwrap();
        want.push(line);
    }
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &want);
    wait_for(
        &format!(
            "every offset committed; agent stderr:\n{}",
            tail(&a.stderr_text())
        ),
        PATIENCE,
        || agent.committed() == size,
    );
    let streams = std::fs::read_dir(c.dir.join("data").join(HOST))
        .unwrap()
        .count();
    assert_eq!(streams, FILES, "one stream file per log file");
    a.stderr_text()
}

#[test]
fn thousands_of_new_files_reach_a_collector_whose_new_stream_limit_is_lower() {
    let stderr = many_small_files_reach_a_collector_limiting_new_streams_to(Some(100));
    // The sink adopted the collector's limit from its reply, once.
    assert_eq!(
        stderr.matches("requests now carry at most").count(),
        1,
        "{}",
        tail(&stderr)
    );
    assert!(
        stderr.contains("streams_per_request=100"),
        "{}",
        tail(&stderr)
    );
}

#[test]
fn thousands_of_new_files_reach_a_collector_with_the_default_new_stream_limit() {
    let stderr = many_small_files_reach_a_collector_limiting_new_streams_to(None);
    // Cut at the collector's default from the start: never refused.
    assert!(
        !stderr.contains("too_many_new_streams"),
        "{}",
        tail(&stderr)
    );
}

/// A collector whose `max_batch_bytes` is below the agent's batches (1 MiB of records, more as
/// NDJSON) refuses each request 413 `too_large`, and the sink used to send the same request
/// again forever: every source routed to it stalled for good. Now the refusal lowers the sink's
/// byte cap (to what the reply's `limit` allows, or by halving where the collector states none)
/// and the batch goes again in requests that fit. `compression`: "none" is refused on its
/// Content-Length before a byte is read, gzip and LZ4 once decoded. Returns the agent's stderr.
fn batches_reach_a_collector_whose_max_batch_bytes_is_lower(compression: &str) -> String {
    let mut c = Collector::with_config(|cfg| {
        let default = "max_batch_bytes = 67108864";
        assert!(cfg.contains(default), "{cfg}");
        *cfg = cfg.replace(default, "max_batch_bytes = 524288");
    });
    c.start();
    let agent = Agent::new(
        &collector_sink(&c, &format!("compression = \"{compression}\"")),
        "",
    );
    agent.enroll_ok(&c);
    // About 4 MiB of records: four full batches, each well over the collector's limit.
    let want: Vec<String> = (0..20_000)
        .map(|i| format!("over the limit line {i:06} {}", "w".repeat(150 + i % 50)))
        .collect();
    append_lines(&agent.p("logs/app.log"), &want);
    let a = agent.start();
    assert_stored_exactly_once(&c, &a, &want);
    agent.wait_all_committed();
    let stderr = a.stderr_text();
    assert!(
        stderr.contains("requests now carry at most"),
        "the cap was lowered: {}",
        tail(&stderr)
    );
    let alerts = agent.sink_alerts().join("\n");
    assert!(
        alerts.contains("replied 413")
            && alerts.contains("the batch is sent again in requests of at most"),
        "{alerts}"
    );
    stderr
}

#[test]
fn batches_larger_than_a_collectors_max_batch_bytes_are_cut_to_fit_it() {
    batches_reach_a_collector_whose_max_batch_bytes_is_lower("auto");
}

#[test]
fn uncompressed_batches_refused_on_their_content_length_are_cut_to_fit_too() {
    batches_reach_a_collector_whose_max_batch_bytes_is_lower("none");
}

/// One record whose line alone is over the collector's `max_batch_bytes` cannot be cut: the
/// refusal names it (stream, offset, size) and the fix, and it is sent again, never dropped nor
/// committed, until the collector takes it; then every line arrives once.
#[test]
fn a_record_over_the_collectors_max_batch_bytes_is_named_and_held_until_it_is_raised() {
    let mut c = Collector::with_config(|cfg| {
        let default = "max_batch_bytes = 67108864";
        assert!(cfg.contains(default), "{cfg}");
        *cfg = cfg.replace(default, "max_batch_bytes = 32768");
    });
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "");
    agent.enroll_ok(&c);
    let before = lines("before the long one", 10);
    let long = format!("the long one {}", "L".repeat(40_000));
    let after = lines("after the long one", 10);
    let offset: usize = before.iter().map(|l| l.len() + 1).sum();
    let mut want = before.clone();
    want.push(long);
    want.extend(after);
    append_lines(&agent.p("logs/app.log"), &want);
    let size = std::fs::metadata(agent.p("logs/app.log")).unwrap().len();
    let a = agent.start();
    let named = format!("the record at offset {offset} of stream");
    agent.wait_alert(&a, "naming the long record", &named);
    let alert = agent
        .sink_alerts()
        .into_iter()
        .find(|d| d.contains(&named))
        .unwrap();
    for needle in [
        "logs/app.log",
        "one NDJSON line of",
        "raised above",
        "sources.app.max_record_bytes",
        "nothing is committed",
    ] {
        assert!(alert.contains(needle), "{needle:?} in {alert}");
    }
    assert!(agent.committed() < size, "the long record is not committed");
    assert!(
        c.stored(HOST).iter().all(|r| r["offset"] != offset as u64),
        "nor stored"
    );
    // The operator raises the limit: the record the sink kept sending goes through at last.
    c.kill9();
    let config = c.dir.join("collector.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("max_batch_bytes = 32768", "max_batch_bytes = 67108864"),
    )
    .unwrap();
    c.start();
    assert_stored_exactly_once(&c, &a, &want);
    agent.wait_all_committed();
}

/// A fleet enrolling at once against a collector checking one password at a time: those that
/// wait longer than the collector allows for the check (5 s) are answered 429 `busy` with
/// `Retry-After`, which `log-sensor enroll` used to report as a failure. Now it waits and asks
/// again, and every host gets its certificate.
#[test]
fn a_fleet_enrolling_at_once_waits_out_a_busy_collector() {
    const HOSTS: usize = 20;
    let mut c = Collector::with_config(|cfg| {
        let default = "max_password_checks = 2";
        assert!(cfg.contains(default), "{cfg}");
        *cfg = cfg.replace(default, "max_password_checks = 1");
        // Successes from one address must not wait for room under the failure limit.
        *cfg = cfg.replace("max_failures = 5", "max_failures = 50");
    });
    c.start();
    let agents: Vec<Agent> = (0..HOSTS)
        .map(|i| {
            let a = Agent::new(&collector_sink(&c, ""), "");
            let cfg = std::fs::read_to_string(a.p("agent.toml")).unwrap();
            let cfg = cfg.replace(
                &format!("host_id = \"{HOST}\""),
                &format!("host_id = \"fleet-{i}\""),
            );
            std::fs::write(a.p("agent.toml"), cfg).unwrap();
            a
        })
        .collect();
    let running: Vec<std::process::Child> = agents
        .iter()
        .map(|a| {
            a.enroll_cmd(&c, PASSWORD)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // A password check takes a fraction of a second here, so the queue alone may drain in time.
    // Once the first certificate is issued the others are queued behind the one check; a
    // collector stalled past its 5 s wait (a paused VM, swapping) then answers them busy.
    let collector = c.proc.as_ref().unwrap();
    wait_for("the first certificate", PATIENCE, || {
        collector
            .stderr_text()
            .contains("issued client certificate")
    });
    collector.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    collector.signal(libc::SIGCONT);
    let mut waited = 0;
    for (i, child) in running.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "fleet-{i}: {}", tail(&stderr));
        assert!(agents[i].p("state/tls/cert.pem").exists(), "fleet-{i}");
        waited += stderr.matches("(429 busy); trying again in").count();
        assert!(!stderr.contains(PASSWORD), "fleet-{i}");
    }
    assert!(waited > 0, "no enrolment was answered busy");
    let list = c.certs_list();
    for i in 0..HOSTS {
        assert!(list.contains(&format!("fleet-{i}")), "{list}");
    }
}

/// A `rate_limited` 429 is about failed passwords: asking again would only extend it, so
/// `log-sensor enroll` stops at once and says what it means.
#[test]
fn enroll_reports_a_rate_limit_at_once_without_retrying() {
    let mut c = Collector::with_config(|cfg| {
        *cfg = cfg.replace("max_failures = 5", "max_failures = 1");
    });
    c.start();
    let agent = Agent::new(&collector_sink(&c, ""), "");
    let enroll_with = |password: &str| agent.enroll_cmd(&c, password).output().unwrap();
    let wrong = enroll_with("wrong");
    assert!(!wrong.status.success());
    let limited = enroll_with(PASSWORD);
    let stderr = String::from_utf8_lossy(&limited.stderr);
    assert!(!limited.status.success(), "{stderr}");
    assert!(
        stderr.contains("429 rate_limited") && stderr.contains("Retry-After"),
        "{stderr}"
    );
    assert!(!stderr.contains("trying again in"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}
