//! The collector sink with several URLs, end to end: the real `log-sensor` against two real
//! embedded `log-sensor-collector serve` processes sharing one CA (the second a copy of the
//! first's directory), one killed -9 while the agent ships.
//!
//! Two embedded collectors are two stores, each with its own high-water marks: a batch whose
//! acknowledgement died with the first is sent again, whole, to the second, which stores it
//! too. So across them delivery is at least once (every line in the union), and each store on
//! its own holds every record it has exactly once. Exactly once across collectors needs the
//! JetStream tier (`tests/collector/cluster.rs`).

#[path = "support/collector.rs"]
mod collector;
#[path = "support/mod.rs"]
mod support;

use collector::{Collector, PASSWORD, USER};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use support::*;

const HOST: &str = "web-01";

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
    /// Ships `logs/*.log` to the collectors at `urls`, in that configured order.
    fn new(urls: &[String], extra: &str) -> Agent {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        let env = AgentEnv::with_config(&format!(
            r#"
host_id = "{HOST}"
state_dir = "state"
[sources.app]
paths = ["logs/*.log"]
[batch]
max_wait = "100ms"
max_records = 1000
[discovery]
rescan_interval = "500ms"
[sink]
type = "collector"
urls = [{}]
{extra}
"#,
            urls.join(", ")
        ));
        Agent { env }
    }

    /// `log-sensor enroll` without --server: the sink's URLs, in the host's order.
    fn enroll(&self, ca: &std::path::Path) -> String {
        let out = self.try_enroll(ca, PASSWORD);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "enroll failed: {stderr}");
        stderr
    }

    fn try_enroll(&self, ca: &std::path::Path, password: &str) -> std::process::Output {
        std::fs::write(self.p("pw"), format!("{password}\n")).unwrap();
        self.cmd()
            .args(["enroll", "--user", USER, "--password-file"])
            .arg(self.p("pw"))
            .arg("--ca")
            .arg(ca)
            .output()
            .unwrap()
    }

    /// The running agent's status of its one sink.
    fn sink_status(&self) -> Value {
        let out = self.cmd().args(["status", "--json"]).output().unwrap();
        let st: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        st["sinks"][0].clone()
    }
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix} line {i:06} {}", "z".repeat(i % 50)))
        .collect()
}

/// Each store on its own: no (stream, offset) twice. Returns its lines.
fn exactly_once_in(c: &Collector, name: &str) -> Vec<String> {
    let stored = c.stored(HOST);
    let mut by_offset: HashMap<(String, u64), usize> = HashMap::new();
    for r in &stored {
        *by_offset
            .entry((
                r["stream"].as_str().unwrap().to_string(),
                r["offset"].as_u64().unwrap(),
            ))
            .or_default() += 1;
    }
    let twice: Vec<_> = by_offset.iter().filter(|(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "collector {name} stored twice: {twice:?}");
    stored
        .iter()
        .map(|r| r["msg"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the two stores together hold every line of `want`.
fn wait_union(a: &Collector, b: &Collector, agent: &Proc, want: &[String]) {
    wait_for(
        &format!(
            "{} lines across the two collectors; agent stderr tail:\n{}",
            want.len(),
            tail(&agent.stderr_text())
        ),
        PATIENCE * 2,
        || {
            let got: HashSet<String> = a
                .stored(HOST)
                .iter()
                .chain(b.stored(HOST).iter())
                .filter_map(|r| r["msg"].as_str().map(str::to_string))
                .collect();
            want.iter().all(|w| got.contains(w))
        },
    );
}

/// The agent's home collector killed -9 while it ships: the agent fails over to the other,
/// commits only what a collector acknowledged, raises no alert for a failover that took well
/// under `alert_after`, says where it sends in status; once the home collector is back it
/// returns there (`failback_after`). Every line reaches the union of the stores, each store
/// holds each record once.
#[test]
fn a_home_collector_killed_mid_stream_fails_over_and_loses_nothing() {
    let mut a = Collector::new();
    a.start();
    // The configured order puts A where this host's hash lands, so A is its home.
    let b_port = collector::free_port();
    let b_url = format!("https://127.0.0.1:{b_port}");
    let urls = match log_sensor::config::home_index(HOST, 2) {
        0 => [a.url(), b_url],
        _ => [b_url, a.url()],
    };
    let agent = Agent::new(&urls, "failback_after = \"1s\"");
    // Enrolled through the sink's URLs (no --server), the home one first, while only A runs.
    agent.enroll(&a.ca());
    assert!(agent.p("state/tls/cert.pem").exists());
    // An embedded collector accepts only certificates in its own database: B starts as a copy
    // of A's directory made after the enrolment (stopped for the copy), as an operator would.
    a.kill9();
    let mut b = a.twin();
    b.port = b_port;
    a.start();
    b.start();

    let first = lines("first", 20_000);
    append_lines(&agent.p("logs/app.log"), &first);
    let running = agent.start();
    wait_for("shipping under way on the home collector", PATIENCE, || {
        !a.stored(HOST).is_empty()
    });
    a.kill9();
    let on_a = a.stored(HOST).len();
    let second = lines("second", 10_000);
    append_lines(&agent.p("logs/app.log"), &second);
    let mut want: Vec<String> = first.iter().chain(second.iter()).cloned().collect();
    wait_union(&a, &b, &running, &want);
    eprintln!(
        "home collector had {on_a} of {} lines when killed",
        first.len()
    );
    assert!(!b.stored(HOST).is_empty(), "the other collector took over");
    let size = std::fs::metadata(agent.p("logs/app.log")).unwrap().len();
    wait_for("every offset committed", PATIENCE, || {
        agent.committed() == size
    });
    let st = agent.sink_status();
    assert_eq!(st["current"], b.url(), "{st}");
    assert!(st["failovers"].as_u64().unwrap_or(0) >= 1, "{st}");
    assert_eq!(
        agent.sink_alerts(),
        Vec::<String>::new(),
        "a failover well under alert_after raises no alert"
    );

    // Home again: the agent goes back to it, and what it ships now lands there.
    a.start();
    let third = lines("third", 3_000);
    append_lines(&agent.p("logs/app.log"), &third);
    want.extend(third.iter().cloned());
    wait_union(&a, &b, &running, &want);
    let mut round = 0;
    wait_for(
        &format!(
            "the agent back on its home collector; stderr tail:\n{}",
            tail(&running.stderr_text())
        ),
        PATIENCE,
        || {
            round += 1;
            let more = lines(&format!("fourth-{round}"), 200);
            append_lines(&agent.p("logs/app.log"), &more);
            want.extend(more);
            std::thread::sleep(std::time::Duration::from_millis(500));
            a.stored(HOST).len() > on_a
        },
    );
    wait_union(&a, &b, &running, &want);
    assert!(running
        .stderr_text()
        .contains("back on this host's home collector"));
    let on_a = exactly_once_in(&a, "A");
    let on_b = exactly_once_in(&b, "B");
    let both: HashSet<&String> = on_a.iter().collect::<HashSet<_>>();
    let twice = on_b.iter().filter(|l| both.contains(l)).count();
    eprintln!(
        "A holds {}, B holds {}, {twice} lines in both (a batch whose reply was lost with A)",
        on_a.len(),
        on_b.len()
    );
    let union: HashSet<&String> = on_a.iter().chain(on_b.iter()).collect();
    for w in &want {
        assert!(union.contains(w), "{w:?} lost");
    }
    let written: HashSet<&String> = want.iter().collect();
    assert_eq!(union, written, "nothing but the lines written");
    let size = std::fs::metadata(agent.p("logs/app.log")).unwrap().len();
    wait_for("every offset committed", PATIENCE, || {
        agent.committed() == size
    });
    assert_eq!(agent.sink_status()["current"], a.url());
}

/// `enroll` and the certificate renewal go down the host's order past a home collector that
/// does not answer; a refusal that any collector would make (a wrong password) ends `enroll` at
/// once, named.
#[test]
fn enrolment_and_renewal_move_past_a_home_collector_that_is_down() {
    // One-day certificates renewed at 0.0036 of their lifetime: some seconds after each issue
    // (the collector backdates them 5 min).
    let mut c = Collector::with_config(|cfg| *cfg = cfg.replace("cert_days = 30", "cert_days = 1"));
    c.start();
    let down = format!("https://127.0.0.1:{}", collector::free_port());
    let urls = match log_sensor::config::home_index(HOST, 2) {
        0 => [down, c.url()],
        _ => [c.url(), down],
    };
    let agent = Agent::new(&urls, "renew_at = 0.0036");
    let out = agent.try_enroll(&c.ca(), "not the password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused the enrolment (401"), "{stderr}");
    agent.enroll(&c.ca());
    let first_cert = std::fs::read(agent.p("state/tls/cert.pem")).unwrap();
    // Idle: the sink never connected, so the renewal asks the home URL first.
    let running = agent.start();
    wait_for(
        &format!("a renewal; agent stderr:\n{}", tail(&running.stderr_text())),
        PATIENCE,
        || {
            std::fs::read(agent.p("state/tls/cert.pem")).unwrap() != first_cert
                && running.stderr_text().contains("client certificate renewed")
        },
    );
    let list = c.certs_list();
    assert!(
        list.lines().filter(|l| l.contains(HOST)).count() >= 2,
        "the collector issued a renewal:\n{list}"
    );
    assert!(!running.stderr_text().contains("renewal failed"));
}

/// Every collector down for longer than `alert_after`: one `sink_error` alert for the outage,
/// however many tries fail over between the URLs meanwhile; nothing committed until one is
/// back (`shipping.rs` has the delivery after an outage).
#[test]
fn an_outage_of_every_collector_is_alerted_once_past_alert_after() {
    let mut c = Collector::new();
    c.start();
    let down = format!("https://127.0.0.1:{}", collector::free_port());
    let agent = Agent::new(&[c.url(), down], "alert_after = \"300ms\"");
    agent.enroll(&c.ca());
    c.kill9();
    let want = lines("outage", 2_000);
    append_lines(&agent.p("logs/app.log"), &want);
    let running = agent.start();
    let tries_past_the_alert = |min: u64| {
        let st = agent.sink_status();
        !agent.sink_alerts().is_empty() && st["failovers"].as_u64().unwrap_or(0) >= min
    };
    wait_for("the outage's alert", PATIENCE, || tries_past_the_alert(0));
    let failovers = agent.sink_status()["failovers"].as_u64().unwrap();
    wait_for("more failovers after the alert", PATIENCE, || {
        tries_past_the_alert(failovers + 2)
    });
    let alerts = agent.sink_alerts();
    assert_eq!(alerts.len(), 1, "one alert for the outage: {alerts:?}");
    assert!(
        alerts[0].contains("no collector has acknowledged a batch for")
            && alerts[0].contains("sink.alert_after"),
        "{alerts:?}"
    );
    assert_eq!(
        agent.committed(),
        0,
        "nothing acknowledged, nothing committed"
    );
    assert!(running
        .stderr_text()
        .contains("collector failed; its batches go to the next collector URL"));
}

/// A collector that stops answering for a few seconds (SIGSTOP: what a JetStream leader
/// election looks like from the agent) costs timed-out tries, counted in status, but no
/// `sink_error` alert; once it answers again everything arrives once.
#[test]
fn a_collector_stalled_for_seconds_raises_no_alert_and_loses_nothing() {
    let mut c = Collector::new();
    c.start();
    let agent = Agent::new(&[c.url()], "timeout = \"1s\"");
    agent.enroll(&c.ca());
    let before = lines("before", 1_000);
    append_lines(&agent.p("logs/app.log"), &before);
    let running = agent.start();
    wait_for("the first lines stored", PATIENCE, || {
        c.stored(HOST).len() == before.len()
    });
    let collector = c.proc.as_ref().unwrap();
    collector.signal(libc::SIGSTOP);
    let during = lines("during", 3_000);
    append_lines(&agent.p("logs/app.log"), &during);
    wait_for(
        "tries timing out against the stalled collector",
        PATIENCE,
        || agent.sink_status()["errors"].as_u64().unwrap_or(0) >= 2,
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    collector.signal(libc::SIGCONT);
    let want: Vec<String> = before.iter().chain(during.iter()).cloned().collect();
    wait_union(&c, &c, &running, &want);
    assert_eq!(exactly_once_in(&c, "the stalled one").len(), want.len());
    assert_eq!(
        agent.sink_alerts(),
        Vec::<String>::new(),
        "a stall is no alert"
    );
    assert!(running.stderr_text().contains("no answer from"));
}
