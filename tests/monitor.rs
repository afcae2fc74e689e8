//! End-to-end tests of the HTTP monitor: the real `log-sensor` binary with `[monitor] listen`
//! on real log files, its `/metrics` read by the reference Prometheus parser (the
//! `prometheus-client` package, from the venv `tests/setup.sh` makes), its JSON read back into
//! `Status`, and its page rendered by a real headless Chromium (Debian's `chromium`).

#[path = "support/mod.rs"]
mod support;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use log_sensor::status::Status;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn python() -> PathBuf {
    let py = workspace().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run tests/setup.sh (it creates the venv with prometheus-client)",
        py.display()
    );
    py
}

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.exists(),
        "{} is missing: run tests/setup.sh (it installs Debian's chromium)",
        p.display()
    );
    p
}

/// An answer read off the wire by hand, so the test trusts nothing of the server's framing.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

fn http(port: u16, method: &str, path: &str) -> std::io::Result<Reply> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(PATIENCE))?;
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut all = Vec::new();
    c.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no end of head"))?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let reply = Reply {
        status,
        head,
        body: all[split + 4..].to_vec(),
    };
    if method != "HEAD" {
        let len: usize = reply
            .header("content-length")
            .expect("Content-Length")
            .parse()
            .unwrap();
        assert_eq!(len, reply.body.len(), "Content-Length matches the body");
    }
    Ok(reply)
}

fn get(port: u16, path: &str) -> Reply {
    http(port, "GET", path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn status(port: u16) -> Status {
    let r = get(port, "/api/v1/status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("/api/v1/status deserialises into Status")
}

/// An agent with its monitor on a free loopback port.
struct Monitored {
    dir: tempfile::TempDir,
    agent: Proc,
    port: u16,
}

impl Monitored {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `config` plus a `[monitor]` table (with `monitor_extra` lines) and starts the
    /// agent. The free port is found by binding port 0 and letting it go; if something else
    /// takes it before the agent binds, the agent refuses to start and another port is tried.
    fn start(dir: tempfile::TempDir, config: &str, monitor_extra: &str) -> Monitored {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            std::fs::write(
                dir.path().join("agent.toml"),
                format!("{config}\n[monitor]\nlisten = \"127.0.0.1:{port}\"\n{monitor_extra}\n"),
            )
            .unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_log-sensor"));
            cmd.arg("-c")
                .arg(dir.path().join("agent.toml"))
                .arg("run")
                .env("LOG_SENSOR_LOG", "debug")
                .stdout(Stdio::null());
            let mut agent = Proc::spawn("log-sensor", &mut cmd, &dir.path().join("agent.err"));
            let mut exited = false;
            wait_for("the monitor to answer", PATIENCE, || {
                exited = !agent.is_running();
                exited || http(port, "GET", "/healthz").is_ok()
            });
            if !exited {
                return Monitored { dir, agent, port };
            }
            let err = agent.stderr_text();
            assert!(
                err.contains("cannot serve the monitor on"),
                "the agent exited at start:\n{err}"
            );
        }
        panic!("no free port could be bound in 5 tries");
    }
}

/// The metric families as `prometheus_client.parser` reads them.
fn parse_metrics(text: &str) -> Vec<Value> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
json.dump(out, sys.stdout)
"#;
    let mut child = Command::new(python())
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser rejected /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

/// The value of the sample `name` with exactly `labels`.
fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| {
            let l = s["labels"].as_object().unwrap();
            s["name"] == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .and_then(|s| s["value"].as_f64())
}

/// Text as an HTML serializer writes it inside an element.
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The DOM after the page's script ran, cut before the script itself so only rendered content
/// is searched.
fn rendered_dom(port: u16, scratch: &Path) -> String {
    let out = scratch.join("dom.html");
    let mut cmd = chromium_cmd(&scratch.join("profile-dom"));
    cmd.arg("--dump-dom")
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(std::fs::File::create(&out).unwrap());
    let mut browser = Proc::spawn("chromium", &mut cmd, &scratch.join("chromium-dom.err"));
    assert_eq!(browser.wait_exit(Duration::from_secs(120)), Some(0));
    let dom = std::fs::read_to_string(&out).unwrap();
    match dom.find("<script") {
        Some(i) => dom[..i].to_string(),
        None => dom,
    }
}

fn chromium_cmd(profile: &Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=5000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

const APP_LINES: usize = 300;
const ODD_LINES: usize = 120;
/// A last line still being written: read but never committed, so it stays as lag.
const PARTIAL: &str = "a line still being written";
/// A file name that is HTML: the page must show it as text.
const ODD_NAME: &str = "<img src=x onerror=document.title=1>&.log";

/// Two sources with known content: `app` (whole lines and an unfinished one) and `odd` (a file
/// with an HTML name, past its max_file_bytes so it raises a `file_too_large` alert).
fn shipped_agent() -> Monitored {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let app: Vec<String> = (0..APP_LINES)
        .map(|i| format!("app line {i:05} {}", "x".repeat(i % 30)))
        .collect();
    append_lines(&dir.path().join("logs/app.log"), &app);
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("logs/app.log"))
        .unwrap()
        .write_all(PARTIAL.as_bytes())
        .unwrap();
    let odd: Vec<String> = (0..ODD_LINES)
        .map(|i| format!("odd line {i:05} with \"quotes\" & <tags>"))
        .collect();
    append_lines(&dir.path().join("logs").join(ODD_NAME), &odd);
    let config = r#"
host_id = "monitor-test-host"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[sources.odd]
paths = ["logs/<*.log"]
max_file_bytes = 2000
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
rotate_wait = "500ms"
[sink]
type = "file"
path = "state/out.ndjson"
"#;
    let m = Monitored::start(dir, config, "");
    // Everything shipped and the unfinished line seen: the picture the tests then check.
    wait_for(
        &format!(
            "all records shipped; agent stderr:\n{}",
            m.agent.stderr_text()
        ),
        PATIENCE,
        || {
            let s = status(m.port);
            let by = |n: &str| s.sources.iter().find(|x| x.name == n).cloned();
            matches!((by("app"), by("odd")), (Some(a), Some(o))
                if a.records_shipped == APP_LINES as u64
                    && o.records_shipped == ODD_LINES as u64
                    && a.lag_bytes == PARTIAL.len() as u64)
                && s.alerts.iter().any(|a| a.kind == "file_too_large")
                && s.batch_latency.count > 0
        },
    );
    m
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_match_what_was_shipped() {
    let mut m = shipped_agent();
    let r = get(m.port, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let families = parse_metrics(&r.text());

    for f in &families {
        let name = f["name"].as_str().unwrap();
        assert!(name.starts_with("log_sensor_"), "{name}");
        assert_ne!(f["type"], "unknown", "{name} has a # TYPE");
        assert!(
            !f["help"].as_str().unwrap().is_empty(),
            "{name} has a # HELP"
        );
    }
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&families, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    let app = [("source", "app")];
    let odd = [("source", "odd")];
    assert_eq!(
        value("log_sensor_source_records_shipped_total", &app),
        APP_LINES as f64
    );
    assert_eq!(
        value("log_sensor_source_records_shipped_total", &odd),
        ODD_LINES as f64
    );
    let app_size = std::fs::metadata(m.p("logs/app.log")).unwrap().len() as f64;
    assert_eq!(
        value("log_sensor_source_bytes_read_total", &app),
        app_size,
        "every byte read, the unfinished line too"
    );
    assert_eq!(
        value("log_sensor_source_bytes_shipped_total", &app),
        app_size - PARTIAL.len() as f64
    );
    assert_eq!(
        value("log_sensor_source_lag_bytes", &app),
        PARTIAL.len() as f64
    );
    assert_eq!(value("log_sensor_source_lag_bytes", &odd), 0.0);
    assert_eq!(value("log_sensor_lag_bytes", &[]), PARTIAL.len() as f64);
    assert_eq!(
        value("log_sensor_records_shipped_total", &[]),
        (APP_LINES + ODD_LINES) as f64
    );
    assert!(value("log_sensor_alerts_total", &[("kind", "file_too_large")]) >= 1.0);
    assert_eq!(value("log_sensor_open_files", &[]), 2.0);
    assert_eq!(value("log_sensor_healthy", &[]), 1.0);
    assert_eq!(
        value(
            "log_sensor_sink_errors_total",
            &[("sink", "default"), ("kind", "file")]
        ),
        0.0
    );
    assert_eq!(value("log_sensor_store_writable", &[]), 1.0);
    assert!(value("log_sensor_store_bytes", &[]) > 0.0);
    assert_eq!(value("log_sensor_fingerprint_collisions_total", &[]), 0.0);
    assert_eq!(value("log_sensor_truncations_total", &[]), 0.0);
    assert!(value("log_sensor_uptime_seconds", &[]) >= 0.0);
    let count = value("log_sensor_batch_latency_seconds_count", &[]);
    assert!(count > 0.0);
    assert_eq!(
        value("log_sensor_batch_latency_seconds_bucket", &[("le", "+Inf")]),
        count
    );
    let hist = families
        .iter()
        .find(|f| f["name"] == "log_sensor_batch_latency_seconds")
        .unwrap();
    assert_eq!(hist["type"], "histogram");

    // The JSON says the same as the metrics, and the other routes behave.
    let s = status(m.port);
    assert_eq!(s.host_id, "monitor-test-host");
    assert_eq!(s.sink.kind, "file");
    assert!(s.health.ok);
    let stream = s
        .streams
        .iter()
        .find(|x| x.path.ends_with("/logs/app.log"))
        .unwrap();
    assert_eq!(stream.lag_bytes, PARTIAL.len() as u64);
    let h = get(m.port, "/healthz");
    assert_eq!((h.status, h.text().as_str()), (200, "ok\n"));
    assert_eq!(get(m.port, "/nope?x=1").status, 404);
    let post = http(m.port, "POST", "/metrics").unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    let head = http(m.port, "HEAD", "/metrics").unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    // Stopping stops the monitor too: the agent exits 0 and the port is closed.
    m.agent.signal(libc::SIGTERM);
    assert_eq!(m.agent.wait_exit(PATIENCE), Some(0));
    assert!(TcpStream::connect(("127.0.0.1", m.port)).is_err());
}

#[test]
fn the_page_renders_live_data_in_headless_chromium() {
    let m = shipped_agent();
    let s = status(m.port);
    let scratch = tempfile::tempdir().unwrap();

    let dom = rendered_dom(m.port, scratch.path());
    let app = s
        .streams
        .iter()
        .find(|x| x.path.ends_with("/logs/app.log"))
        .unwrap();
    // The stream's row, written by the script: its path and its lag in bytes.
    let at = dom
        .find(&format!("data-stream=\"{}\"", app.stream))
        .unwrap_or_else(|| panic!("no row for stream {}:\n{dom}", app.stream));
    let row = &dom[at..at + dom[at..].find("</tr>").unwrap()];
    assert!(row.contains(&html_text(&app.path)), "{row}");
    assert!(
        row.contains(&format!("data-bytes=\"{}\"", PARTIAL.len())),
        "{row}"
    );
    // The alert, and the HTML file name shown as text, never parsed into an element.
    let alerts = &dom[dom.find("id=\"alerts\"").unwrap()..];
    assert!(alerts.contains("file_too_large"), "{alerts}");
    assert!(alerts.contains(&html_text(ODD_NAME)), "{alerts}");
    assert!(
        !dom.contains("<img"),
        "a file name became an element:\n{dom}"
    );
    assert!(dom.contains("monitor-test-host"));
    assert!(dom.contains(">healthy<"), "the health badge");

    // A screenshot, kept beside the test binaries for a person to look at.
    let png = scratch.path().join("page.png");
    let mut cmd = chromium_cmd(&scratch.path().join("profile-shot"));
    cmd.arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,900")
        .arg(format!("http://127.0.0.1:{}/", m.port))
        .stdout(Stdio::null());
    let mut browser = Proc::spawn(
        "chromium",
        &mut cmd,
        &scratch.path().join("chromium-shot.err"),
    );
    assert_eq!(browser.wait_exit(Duration::from_secs(120)), Some(0));
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG magic");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1280, 900));
    // A blank or error page compresses to a few KiB; the rendered tables do not.
    assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    let _ = std::fs::copy(
        &png,
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("monitor-page.png"),
    );
}

#[test]
fn healthz_is_503_with_a_reason_once_the_sink_fails_past_unhealthy_after() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    // 2 MB: reading it takes several reads, each filling a batch (see max_records below).
    let lines: Vec<String> = (0..20_000)
        .map(|i| format!("doomed line {i} {}", "x".repeat(90)))
        .collect();
    append_lines(&dir.path().join("logs/app.log"), &lines);
    // /dev/full refuses every write with ENOSPC, for root too: a sink that really fails.
    let config = r#"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
# Each read fills a batch, and a few batches fill the sink's window: the pipeline stops
# reading, so what is written during the outage stays unread in the file.
max_records = 5
[sink]
type = "file"
path = "/dev/full"
sync = false
"#;
    let m = Monitored::start(dir, config, "unhealthy_after = \"1s\"");
    wait_for(
        &format!("/healthz to fail; stderr:\n{}", m.agent.stderr_text()),
        PATIENCE,
        || get(m.port, "/healthz").status == 503,
    );
    let h = get(m.port, "/healthz");
    let reason = h.text();
    assert!(
        reason.contains("sink file /dev/full failing for"),
        "{reason}"
    );
    assert!(reason.contains("No space left on device"), "{reason}");

    let s = status(m.port);
    assert!(!s.health.ok);
    assert_eq!(s.sink.state, "failing");
    assert!(s.alerts.iter().any(|a| a.kind == "sink_error"));
    let size = std::fs::metadata(m.p("logs/app.log")).unwrap().len();
    let families = parse_metrics(&get(m.port, "/metrics").text());
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&families, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    assert_eq!(value("log_sensor_healthy", &[]), 0.0);
    assert_eq!(
        value(
            "log_sensor_sink_failing",
            &[("sink", "default"), ("kind", "file")]
        ),
        1.0
    );
    assert!(
        value(
            "log_sensor_sink_errors_total",
            &[("sink", "default"), ("kind", "file")]
        ) >= 1.0
    );
    assert!(value("log_sensor_alerts_total", &[("kind", "sink_error")]) >= 1.0);
    assert_eq!(
        value(
            "log_sensor_source_records_shipped_total",
            &[("source", "app")]
        ),
        0.0
    );
    // Nothing is committed while the sink fails: the whole file is lag.
    wait_for("the whole file to be lag", PATIENCE, || {
        status(m.port).sources[0].lag_bytes == size
    });
    // And the lag grows with the file while the outage lasts, in the store's own view too.
    let more: Vec<String> = (0..30)
        .map(|i| format!("line written during the outage {i}"))
        .collect();
    append_lines(&m.p("logs/app.log"), &more);
    let grown = std::fs::metadata(m.p("logs/app.log")).unwrap().len();
    wait_for("the lag to follow the file", PATIENCE, || {
        status(m.port).sources[0].lag_bytes == grown
    });
    let out = Command::new(env!("CARGO_BIN_EXE_log-sensor"))
        .arg("-c")
        .arg(m.p("agent.toml"))
        .args(["query", "SELECT lag_bytes FROM stream_lag"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&grown.to_string()), "{text}");
}

#[test]
fn a_taken_monitor_port_fails_the_start_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        dir.path().join("agent.toml"),
        format!(
            "state_dir = \"state\"\n[sources.app]\npaths = [\"logs/*.log\"]\n[sink]\ntype = \"stdout\"\n[monitor]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_log-sensor"));
    cmd.arg("-c")
        .arg(dir.path().join("agent.toml"))
        .arg("run")
        .stdout(Stdio::null());
    let mut agent = Proc::spawn("log-sensor", &mut cmd, &dir.path().join("agent.err"));
    assert_eq!(agent.wait_exit(PATIENCE), Some(1));
    let err = agent.stderr_text();
    assert!(
        err.contains(&format!("cannot serve the monitor on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("monitor.listen"), "{err}");
    drop(taken);
}

/// The messages in an NDJSON file.
fn msgs_in(path: &Path) -> Vec<String> {
    read_ndjson(path)
        .iter()
        .filter_map(|r| r["msg"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn a_store_that_cannot_grow_stays_unhealthy_until_it_commits_and_loses_no_position() {
    // Only the state dir is on a small tmpfs; the sink has room. A ballast file takes the
    // tmpfs's last byte, so every transaction that has something to write gets ENOSPC.
    let fs = tmpfs::Tmpfs::new(4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (a_log, b_log) = (logs.join("a.log"), logs.join("b.log"));
    let mut want: Vec<String> = (0..200)
        .map(|i| format!("a before the disk filled {i}"))
        .collect();
    append_lines(&a_log, &want);
    let config = format!(
        r#"
state_dir = "{}"
[sources.app]
paths = ["logs/*.log"]
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
[sink]
type = "file"
path = "out.ndjson"
sync = false
"#,
        fs.path().display()
    );
    let mut m = Monitored::start(dir, &config, "");
    let out = m.p("out.ndjson");
    wait_for("a.log committed", PATIENCE, || {
        status(m.port).sources[0].records_shipped == 200
    });
    let ballast = fs.fill();
    // b.log appears while the store is full: its row cannot be written yet. a.log, which has
    // one, grows too.
    let b: Vec<String> = (0..500)
        .map(|i| format!("b found while full {i}"))
        .collect();
    append_lines(&b_log, &b);
    want.extend(b);
    let a = "a as the disk filled".to_string();
    append_lines(&a_log, std::slice::from_ref(&a));
    want.push(a);
    let healthz = |m: &Monitored| {
        let h = get(m.port, "/healthz");
        (h.status, h.text())
    };
    wait_for("/healthz to say the store is unwritable", PATIENCE, || {
        let (code, text) = healthz(&m);
        code == 503 && text.contains("store unwritable")
    });
    // Records keep being delivered while their commits fail, b.log's alone (a stream without a
    // row) or with a.log's: every sample until the space comes back says unwritable.
    for round in 0..6 {
        let mut new = vec![format!("b while full {round}")];
        append_lines(&b_log, &new);
        if round % 2 == 1 {
            let a = format!("a while full {round}");
            append_lines(&a_log, std::slice::from_ref(&a));
            new.push(a);
        }
        want.extend(new.iter().cloned());
        wait_for(&format!("round {round} delivered"), PATIENCE, || {
            let (code, text) = healthz(&m);
            assert!(
                code == 503 && text.contains("store unwritable"),
                "round {round}: /healthz answered {code} {text:?} while no commit can be written"
            );
            let got = msgs_in(&out);
            new.iter().all(|n| got.contains(n))
        });
    }
    std::fs::remove_file(&ballast).unwrap();
    // Nothing new is read: what was delivered meanwhile is committed once the store can grow.
    let b_size = std::fs::metadata(&b_log).unwrap().len();
    wait_for(
        &format!(
            "b.log's offset committed; stderr:\n{}",
            tail(&m.agent.stderr_text())
        ),
        PATIENCE,
        || {
            let s = status(m.port);
            s.health.ok
                && s.streams
                    .iter()
                    .any(|x| x.path.ends_with("b.log") && x.committed_offset == b_size)
        },
    );
    assert_eq!(get(m.port, "/healthz").status, 200);
    m.agent.signal(libc::SIGTERM);
    assert_eq!(m.agent.wait_exit(PATIENCE), Some(0));
    // Held to the end: dropping it would kill the restarted agent before the checks.
    let _restarted = Monitored::start(m.dir, &config, "");
    let last = "b after the restart".to_string();
    append_lines(&b_log, std::slice::from_ref(&last));
    want.push(last.clone());
    wait_for("the line written after the restart", PATIENCE, || {
        msgs_in(&out).contains(&last)
    });
    let mut counts = std::collections::HashMap::new();
    for g in msgs_in(&out) {
        *counts.entry(g).or_insert(0) += 1;
    }
    let resent: Vec<&String> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(g, _)| g)
        .collect();
    assert!(
        resent.is_empty(),
        "sent again after a clean restart: {} records, e.g. {:?}",
        resent.len(),
        resent.first()
    );
    assert_eq!(counts.len(), want.len(), "every record delivered");
}

/// The many-files counters reach status and /metrics: with more files than open slots, files
/// wait for a slot (held back), and files idle past close_inactive give their descriptor back
/// (parked), all shown as they move.
#[test]
fn held_back_and_parked_files_show_in_status_and_metrics() {
    const FILES: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("logs")).unwrap();
    let mut want = 0;
    for f in 0..FILES {
        let lines: Vec<String> = (0..20).map(|i| format!("file {f} line {i}")).collect();
        want += lines.len() as u64;
        append_lines(&dir.path().join(format!("logs/f{f}.log")), &lines);
    }
    let config = r#"
host_id = "monitor-test-host"
state_dir = "state"
[sources.app]
paths = ["logs/*.log"]
[batch]
max_wait = "100ms"
[discovery]
rescan_interval = "500ms"
rotate_wait = "500ms"
max_open_files = 2
close_inactive = "1s"
[sink]
type = "file"
path = "state/out.ndjson"
"#;
    let mut m = Monitored::start(dir, config, "");
    wait_for(
        &format!(
            "every line shipped, files held back, all {FILES} parked; agent stderr:\n{}",
            m.agent.stderr_text()
        ),
        PATIENCE,
        || {
            let c = status(m.port).counters;
            c.records_shipped == want && c.held_back > 0 && c.parked_files == FILES as u64
        },
    );
    let families = parse_metrics(&get(m.port, "/metrics").text());
    let value = |name: &str| sample(&families, name, &[]).unwrap_or_else(|| panic!("no {name}"));
    assert!(value("log_sensor_held_back_total") >= 1.0);
    assert_eq!(value("log_sensor_parked_files"), FILES as f64);
    assert_eq!(value("log_sensor_open_files"), 0.0);
    assert_eq!(value("log_sensor_partial_parks_total"), 0.0);

    // A parked file written again is reopened and its new line ships.
    append_lines(&m.p("logs/f0.log"), &["file 0 again".to_string()]);
    wait_for("the new line shipped", PATIENCE, || {
        status(m.port).counters.records_shipped == want + 1
    });
    m.agent.signal(libc::SIGTERM);
    assert_eq!(m.agent.wait_exit(PATIENCE), Some(0));
}
