//! Routes end to end: the real agent with several sinks, one of them a syslog relay over plain
//! TCP that is not listening at first. A source routed only to healthy sinks keeps shipping; a
//! source routed to the stopped one waits (its offsets stay where its sinks all have it); a
//! kill -9 in between loses nothing; once the relay listens it receives everything, at least
//! once, as does every other sink of that source.

mod support;

use serde_json::Value;
use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// Lines of 40 bytes: enough of them make a backlog larger than what a group may hold out.
fn lines(tag: &str, from: usize, to: usize) -> Vec<String> {
    (from..to)
        .map(|i| format!("{tag}-{i:06}-{}", "x".repeat(28 - tag.len())))
        .collect()
}

fn msgs(path: &Path) -> Vec<String> {
    read_ndjson(path)
        .iter()
        .filter_map(|r| r["msg"].as_str().map(str::to_string))
        .collect()
}

fn status(env: &AgentEnv) -> Option<Value> {
    let out = env
        .cmd()
        .args(["status", "--json"])
        .env("LOG_SENSOR_LOG", "warn")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).ok()
}

/// The committed bytes of `source`'s streams, from the running agent's status.
fn committed(env: &AgentEnv, source: &str) -> Option<u64> {
    let st = status(env)?;
    let streams = st["streams"].as_array()?;
    let mine: Vec<&Value> = streams.iter().filter(|s| s["source"] == source).collect();
    if mine.is_empty() {
        return None;
    }
    Some(
        mine.iter()
            .map(|s| s["committed_offset"].as_u64().unwrap_or(0))
            .sum(),
    )
}

/// `source` (one file, `logs/SOURCE.log`) is committed to its end.
fn all_committed(env: &AgentEnv, source: &str) -> bool {
    let len = std::fs::metadata(env.p(&format!("logs/{source}.log")))
        .map(|m| m.len())
        .unwrap_or(0);
    committed(env, source).is_some_and(|c| c == len && len > 0)
}

/// A port nothing listens on (bound once, then let go).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP syslog receiver: every connection's bytes, kept per connection so that frames of two
/// connections do not interleave.
struct Relay {
    conns: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>,
}

impl Relay {
    fn listen(port: u16) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the relay's port");
        let conns: Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>> = Arc::default();
        let all = conns.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
                all.lock().unwrap().push(buf.clone());
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 65536];
                    while let Ok(n) = stream.read(&mut chunk) {
                        if n == 0 {
                            return;
                        }
                        buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                    }
                });
            }
        });
        Relay { conns }
    }

    /// The MSG part of every whole octet-counted frame received (RFC 5425 `LEN SP MSG`; the
    /// MSG of RFC 5424 is what follows the structured data; our lines have no spaces).
    fn msgs(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in self.conns.lock().unwrap().iter() {
            let bytes = c.lock().unwrap().clone();
            let mut rest = &bytes[..];
            while let Some(sp) = rest.iter().position(|&b| b == b' ') {
                let Ok(len) = std::str::from_utf8(&rest[..sp]).unwrap().parse::<usize>() else {
                    break;
                };
                let Some(frame) = rest.get(sp + 1..sp + 1 + len) else {
                    break;
                };
                let text = String::from_utf8_lossy(frame);
                if let Some(last) = text.trim_end().rsplit(' ').next() {
                    out.push(last.trim_start_matches('\u{feff}').to_string());
                }
                rest = &rest[sp + 1 + len..];
            }
        }
        out
    }
}

/// `GET path` from the monitor: (status code, body); None while it does not answer.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn config(relay_port: u16, monitor_port: u16) -> String {
    format!(
        r#"
host_id = "test-host"
state_dir = "state"
[monitor]
listen = "127.0.0.1:{monitor_port}"
unhealthy_after = "1s"
[sources.solo]
paths = ["logs/solo.log"]
sinks = ["local"]
[sources.both]
paths = ["logs/both.log"]
sinks = ["archive", "relay"]
[batch]
max_wait = "100ms"
max_bytes = "1KiB"
[discovery]
rescan_interval = "500ms"
[sinks.local]
type = "file"
path = "state/local.ndjson"
[sinks.archive]
type = "file"
path = "state/archive.ndjson"
[sinks.relay]
type = "syslog"
address = "127.0.0.1:{relay_port}"
tls = false
"#
    )
}

fn has_all(got: &[String], want: &[String]) -> bool {
    let got: HashSet<&String> = got.iter().collect();
    want.iter().all(|w| got.contains(w))
}

#[test]
fn a_stopped_sink_holds_back_only_its_sources_and_gets_everything_once_it_returns() {
    let port = free_port();
    let monitor = free_port();
    let env = AgentEnv::with_config(&config(port, monitor));
    let solo = env.p("logs/solo.log");
    let both = env.p("logs/both.log");
    // 2.4 MB: more than the group may hold out (its sinks' windows and one more batch, each
    // at most one 256 KiB read past max_bytes, and the batch being built).
    let both_lines = lines("both", 0, 60_000);
    append_lines(&both, &both_lines);
    let mut solo_lines = lines("solo", 0, 100);
    append_lines(&solo, &solo_lines);
    let mut agent = env.start();

    // The relay is down: solo ships, and keeps shipping what is written meanwhile.
    wait_for(
        &format!(
            "solo to reach the local sink; stderr:\n{}",
            tail(&agent.stderr_text())
        ),
        PATIENCE,
        || has_all(&msgs(&env.p("state/local.ndjson")), &solo_lines),
    );
    let more = lines("solo", 100, 200);
    append_lines(&solo, &more);
    solo_lines.extend(more);
    wait_for("the solo lines written during the outage", PATIENCE, || {
        has_all(&msgs(&env.p("state/local.ndjson")), &solo_lines)
    });
    wait_for("solo committed to its end", PATIENCE, || {
        all_committed(&env, "solo")
    });
    // …while both waits for the relay: nothing of it is committed, and status names the relay.
    wait_for("the relay shown failing", PATIENCE, || {
        status(&env).is_some_and(|st| {
            st["sinks"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|k| k["name"] == "relay" && k["state"] == "failing")
            })
        })
    });
    wait_for("/healthz 503 naming the relay", PATIENCE, || {
        get(monitor, "/healthz").is_some_and(|(code, body)| {
            code == 503 && body.contains("sink relay (syslog tcp://127.0.0.1:")
        })
    });
    let metrics = get(monitor, "/metrics").unwrap().1;
    assert!(
        metrics.contains(r#"log_sensor_sink_failing{sink="relay",kind="syslog"} 1"#)
            && metrics.contains(r#"log_sensor_sink_failing{sink="local",kind="file"} 0"#),
        "{metrics}"
    );
    let c = committed(&env, "both").unwrap_or(0);
    assert_eq!(c, 0, "both committed {c} bytes with its relay down");
    let archived = msgs(&env.p("state/archive.ndjson"));
    assert!(
        archived.len() < both_lines.len(),
        "a pipeline waiting for one sink reads on only within its bounded window: {} of {} archived",
        archived.len(),
        both_lines.len()
    );

    // kill -9 while both is held back; restart, still without the relay.
    agent.signal(libc::SIGKILL);
    agent.wait_exit(PATIENCE);
    let more = lines("solo", 200, 250);
    append_lines(&solo, &more);
    solo_lines.extend(more);
    let mut agent = env.start();
    wait_for("solo again after the restart", PATIENCE, || {
        has_all(&msgs(&env.p("state/local.ndjson")), &solo_lines)
    });

    // The relay returns: it and the archive get every line of both.
    let relay = Relay::listen(port);
    wait_for(
        &format!(
            "every line of both at the relay; stderr:\n{}",
            tail(&agent.stderr_text())
        ),
        PATIENCE,
        || has_all(&relay.msgs(), &both_lines),
    );
    wait_for("every line of both in the archive", PATIENCE, || {
        has_all(&msgs(&env.p("state/archive.ndjson")), &both_lines)
    });
    wait_for("both committed to its end", PATIENCE, || {
        all_committed(&env, "both")
    });
    wait_for("/healthz 200 again", PATIENCE, || {
        get(monitor, "/healthz").is_some_and(|(code, _)| code == 200)
    });
    // Nothing of solo went where it is not routed, nor both.
    assert!(!relay.msgs().iter().any(|m| m.starts_with("solo")));
    assert!(!msgs(&env.p("state/archive.ndjson"))
        .iter()
        .any(|m| m.starts_with("solo")));
    assert!(!msgs(&env.p("state/local.ndjson"))
        .iter()
        .any(|m| m.starts_with("both")));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
}

#[test]
fn without_sinks_a_source_goes_to_every_sink() {
    let env = AgentEnv::with_config(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
[sinks.one]
type = "file"
path = "state/one.ndjson"
[sinks.two]
type = "file"
path = "state/two.ndjson"
"#,
    );
    let want = lines("app", 0, 50);
    append_lines(&env.p("logs/app.log"), &want);
    let mut agent = env.start();
    for sink in ["one", "two"] {
        wait_for(&format!("every line in sink {sink}"), PATIENCE, || {
            has_all(&msgs(&env.p(&format!("state/{sink}.ndjson"))), &want)
        });
    }
    wait_for("app committed", PATIENCE, || all_committed(&env, "app"));
    let st = status(&env).unwrap();
    let names: Vec<&str> = st["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["one", "two"]);
    for s in st["sinks"].as_array().unwrap() {
        assert_eq!(s["records"], 50, "{s}");
    }
    let text = String::from_utf8(
        env.cmd()
            .arg("status")
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(text.contains("sink one: file"), "{text}");
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
}

#[test]
fn bad_routes_are_config_errors_naming_the_key() {
    let base = r#"
state_dir = "state"
[sinks.archive]
type = "file"
path = "state/archive.ndjson"
"#;
    let cases = [
        (
            "[sources.app]\npaths = [\"logs/a.log\"]\nsinks = [\"central\"]\n",
            "sources.app.sinks: unknown sink \"central\" (the sinks are: archive)",
        ),
        (
            "[sink]\ntype = \"stdout\"\n",
            "[sink] and [sinks.*] are both set",
        ),
        (
            "[osquery]\nsinks = [\"nope\"]\n",
            "osquery.sinks: unknown sink \"nope\"",
        ),
        (
            "[sinks.relay]\ntype = \"syslog\"\ntls = false\n",
            "sinks.relay.address",
        ),
    ];
    for (extra, want) in cases {
        let env = AgentEnv::with_config(&format!("{base}{extra}"));
        let out = env
            .cmd()
            .arg("check")
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: accepted");
        assert!(err.contains(want), "{extra}: {err}");
    }
}

fn ls(env: &AgentEnv, args: &[&str]) -> std::process::Output {
    env.cmd()
        .args(args)
        .env("LOG_SENSOR_LOG", "warn")
        .output()
        .unwrap()
}

/// `get`/`set` see `sinks.*` keys; a set that changes a sink rebuilds it between batches, one
/// that would move a source to other sinks is refused with the reason and changes nothing.
#[test]
fn a_set_rebuilds_a_named_sink_and_a_route_change_is_refused() {
    let env = AgentEnv::with_config(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
[sinks.one]
type = "file"
path = "state/one.ndjson"
[sinks.two]
type = "file"
path = "state/two.ndjson"
"#,
    );
    let log = env.p("logs/app.log");
    let first = lines("app", 0, 20);
    append_lines(&log, &first);
    let mut agent = env.start();
    wait_for("the first lines in two", PATIENCE, || {
        has_all(&msgs(&env.p("state/two.ndjson")), &first)
    });
    let got = ls(&env, &["get", "sinks.two.path"]);
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("state/two.ndjson"),
        "{got:?}"
    );
    let set = ls(&env, &["set", "sinks.two.path", "state/three.ndjson"]);
    assert!(set.status.success(), "{set:?}");
    let second = lines("app", 20, 40);
    append_lines(&log, &second);
    wait_for("the later lines in the rebuilt sink", PATIENCE, || {
        has_all(&msgs(&env.p("state/three.ndjson")), &second)
            && has_all(&msgs(&env.p("state/one.ndjson")), &second)
    });
    let refused = ls(&env, &["set", "sources.app.sinks", r#"["one"]"#]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a route change was taken");
    assert!(
        err.contains("sources.app.sinks") && err.contains("restart"),
        "{err}"
    );
    let third = lines("app", 40, 60);
    append_lines(&log, &third);
    wait_for("still both sinks after the refusal", PATIENCE, || {
        has_all(&msgs(&env.p("state/three.ndjson")), &third)
            && has_all(&msgs(&env.p("state/one.ndjson")), &third)
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
}

/// A syslog source routes like a file source: its messages go to the sinks it names only.
#[test]
fn a_syslog_source_goes_only_to_its_sinks() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = udp.local_addr().unwrap().port();
    drop(udp);
    let env = AgentEnv::with_config(&format!(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
sinks = ["two"]
[sources.net]
type = "syslog"
listen = ["udp://127.0.0.1:{port}"]
sinks = ["one"]
[batch]
max_wait = "100ms"
[sinks.one]
type = "file"
path = "state/one.ndjson"
[sinks.two]
type = "file"
path = "state/two.ndjson"
"#
    ));
    let app = lines("app", 0, 10);
    append_lines(&env.p("logs/app.log"), &app);
    let mut agent = env.start();
    wait_for("app in two", PATIENCE, || {
        has_all(&msgs(&env.p("state/two.ndjson")), &app)
    });
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let want = vec!["net-000001-routed".to_string()];
    // UDP may be dropped before the listener is up: send until it arrives.
    wait_for(
        &format!(
            "the datagram in one; stderr:\n{}",
            tail(&agent.stderr_text())
        ),
        PATIENCE,
        || {
            let _ = sender.send_to(
                b"<13>1 2026-12-02T03:00:00Z host app - - - net-000001-routed",
                ("127.0.0.1", port),
            );
            has_all(&msgs(&env.p("state/one.ndjson")), &want)
        },
    );
    assert!(!msgs(&env.p("state/two.ndjson"))
        .iter()
        .any(|m| m.starts_with("net")));
    assert!(!msgs(&env.p("state/one.ndjson"))
        .iter()
        .any(|m| m.starts_with("app")));
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
}

/// The sink named `name` in the running agent's status.
fn sink_status(env: &AgentEnv, name: &str) -> Option<Value> {
    status(env)?["sinks"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

/// Regression: a failing sink was retried with backoff without looking for a reload, so a
/// reload (or `set`) meant to fix it never took effect. And status named the sink of the
/// config, not the one in use: a new sink that could not start showed as the sink, "ok".
#[test]
fn a_set_replaces_a_failing_sink_and_status_names_the_sink_in_use() {
    let env = AgentEnv::with_config(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
[sinks.bad]
type = "file"
path = "/dev/full"
"#,
    );
    let log = env.p("logs/app.log");
    let first = lines("app", 0, 20);
    append_lines(&log, &first);
    let mut agent = env.start();
    wait_for("the sink to fail", PATIENCE, || {
        sink_status(&env, "bad").is_some_and(|s| s["state"] == "failing")
    });
    // Long enough for a backoff of a few seconds, shorter than the wait below.
    std::thread::sleep(Duration::from_secs(4));
    let good = env.p("state/good.ndjson");
    let set = ls(&env, &["set", "sinks.bad.path", good.to_str().unwrap()]);
    assert!(set.status.success(), "{set:?}");
    wait_for(
        "the failing batch in the new sink",
        Duration::from_secs(3),
        || has_all(&msgs(&good), &first),
    );
    // And not the old sink's error, which would read as the new one's.
    wait_for("status naming the new sink", PATIENCE, || {
        sink_status(&env, "bad").is_some_and(|s| {
            s["state"] == "ok"
                && s["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("good.ndjson"))
                && s["last_error"].is_null()
        })
    });
    // A path under a regular file cannot be opened: the set is refused, naming the sink and
    // the path, and the sink in use stays, as does the earlier `set` that made it.
    let blocked = env.p("agent.toml/x.ndjson");
    let set = ls(&env, &["set", "sinks.bad.path", blocked.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&set.stderr);
    assert!(!set.status.success(), "{set:?}");
    assert!(
        said.contains("sinks.bad")
            && said.contains("agent.toml/x.ndjson")
            && said.contains("the running sink stays"),
        "{said}"
    );
    let get = ls(&env, &["get", "sinks.bad.path"]);
    assert!(
        String::from_utf8_lossy(&get.stdout).contains("good.ndjson"),
        "{get:?}"
    );
    let second = lines("app", 20, 40);
    append_lines(&log, &second);
    wait_for("the later lines in the sink still in use", PATIENCE, || {
        has_all(&msgs(&good), &second)
    });
    let st = sink_status(&env, "bad").unwrap();
    assert!(
        st["description"]
            .as_str()
            .is_some_and(|d| d.contains("good.ndjson")),
        "{st}"
    );
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(PATIENCE), Some(0));
}

/// Regression: the backoff between retries of a failing sink (up to 30 s) was a sleep that a
/// stop did not end, and the shutdown grace only started after it: a stop took longer than
/// systemd's TimeoutStopSec. Now a stop is over within the grace (10 s).
#[test]
fn a_stop_does_not_wait_out_a_failing_sinks_backoff() {
    let env = AgentEnv::with_config(
        r#"
host_id = "test-host"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[batch]
max_wait = "100ms"
[sink]
type = "file"
path = "/dev/full"
"#,
    );
    append_lines(&env.p("logs/app.log"), &lines("app", 0, 5));
    let mut agent = env.start();
    wait_for("the sink to fail", PATIENCE, || {
        !env.sink_alerts().is_empty()
    });
    // After 14 s of failures the sink is in a backoff of about 10 s (of 12.8 s less jitter),
    // and the next would be 19 s or more.
    std::thread::sleep(Duration::from_secs(14));
    let asked = std::time::Instant::now();
    agent.signal(libc::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(15));
    assert!(
        code.is_some(),
        "still running {:?} after SIGTERM; stderr:\n{}",
        asked.elapsed(),
        tail(&agent.stderr_text())
    );
}
