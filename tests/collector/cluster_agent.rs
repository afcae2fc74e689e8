//! The real agent (`log-sensor run`, its collector sink with `urls = [...]`) shipping to
//! collectors on one JetStream cluster: a collector killed -9 under it, the whole cluster
//! stalled under it as in a leader election. Read back with `export`: every line once, in
//! offset order.

use super::*;

/// The agent binary, built beside the collector's (`cargo test --workspace` builds both).
fn agent_bin() -> PathBuf {
    let p = Path::new(BIN).with_file_name("log-sensor");
    assert!(
        p.exists(),
        "{} is not built: build the workspace's binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

fn url(c: &Collector) -> String {
    format!("https://127.0.0.1:{}", c.addr().port())
}

/// An agent's folder: its config shipping `logs/app.log` to `urls`, its CLI, and while
/// started its `run` process.
struct Agent {
    dir: tempfile::TempDir,
    host: &'static str,
    run: Option<KillOnDrop>,
}

impl Agent {
    fn new(host: &'static str, urls: &[String]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        std::fs::write(
            dir.path().join("agent.toml"),
            format!(
                "host_id = \"{host}\"\nstate_dir = \"state\"\n\
                 [sources.app]\npaths = [\"logs/*.log\"]\n\
                 [batch]\nmax_wait = \"100ms\"\nmax_records = 1000\n\
                 [discovery]\nrescan_interval = \"500ms\"\n\
                 [sink]\ntype = \"collector\"\nurls = [{}]\n",
                urls.join(", ")
            ),
        )
        .unwrap();
        Agent {
            dir,
            host,
            run: None,
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(agent_bin())
            .arg("-c")
            .arg(self.p("agent.toml"))
            .args(args)
            .env("LOG_SENSOR_LOG", "warn")
            .output()
            .unwrap()
    }

    /// `enroll --server` on `c` only.
    fn enroll_on(&self, c: &Collector) {
        std::fs::write(self.p("pw"), format!("{PASSWORD}\n")).unwrap();
        let (pw, ca) = (self.p("pw"), c.dir.join("ca.pem"));
        let out = self.cli(&[
            "enroll",
            "--server",
            &url(c),
            "--user",
            USER,
            "--password-file",
            pw.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&mut self) {
        let log = std::fs::File::create(self.p("agent.err")).unwrap();
        self.run = Some(KillOnDrop(
            Command::new(agent_bin())
                .arg("-c")
                .arg(self.p("agent.toml"))
                .arg("run")
                .env("LOG_SENSOR_LOG", "info")
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.p("agent.err")).unwrap_or_default()
    }

    fn query(&self, sql: &str) -> Vec<Value> {
        let out = self.cli(&["query", "--json", sql]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn committed(&self) -> u64 {
        self.query("SELECT COALESCE(SUM(committed_offset), 0) AS n FROM streams")
            .first()
            .and_then(|r| r["n"].as_u64())
            .unwrap_or(0)
    }

    fn sink_alerts(&self) -> Vec<Value> {
        self.query("SELECT detail FROM alerts WHERE kind = 'sink_error'")
    }

    /// The running agent's status of its one sink.
    fn sink(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)["sinks"][0].clone()
    }

    /// Appends lines `prefix line N…` to `logs/app.log`; returns them.
    fn write(&self, prefix: &str, n: usize) -> Vec<String> {
        let lines: Vec<String> = (0..n)
            .map(|i| format!("{prefix} line {i:06} {}", "y".repeat(i % 40)))
            .collect();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.p("logs/app.log"))
            .unwrap();
        f.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
        lines
    }

    fn wait_all_committed(&self) {
        let size = std::fs::metadata(self.p("logs/app.log")).unwrap().len();
        wait_until("every line committed", || self.committed() == size, &|| {
            self.log()
        });
    }

    /// What the cluster holds of this host, read through `export` from `c`'s directory, once
    /// it has reached the last line written: exactly `want`, each once, at the offsets the
    /// lines have in the file.
    fn assert_exported_once_in_order(&self, c: &Collector, want: &[String]) {
        let out = self.p("export.ndjson");
        let _export = KillOnDrop(
            Command::new(BIN)
                .args(["export", "--dir", c.d(), "--to", out.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(self.p("export.err")).unwrap())
                .spawn()
                .unwrap(),
        );
        let exported = || -> Vec<Value> {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|r: &Value| r["host"] == self.host)
                .collect()
        };
        let last = want.last().unwrap().clone();
        wait_until(
            "export to reach the last line",
            || exported().iter().any(|r| r["msg"] == last),
            &|| {
                let export = std::fs::read_to_string(self.p("export.err")).unwrap_or_default();
                let got = exported();
                format!(
                    "{}\nexport got {} records of this host, the last {:?}; its log:\n{export}",
                    self.log(),
                    got.len(),
                    got.last().map(|r| r["msg"].clone())
                )
            },
        );
        let mut offset = 0;
        let expected: Vec<(u64, &str)> = want
            .iter()
            .map(|l| {
                let at = offset;
                offset += l.len() as u64 + 1;
                (at, l.as_str())
            })
            .collect();
        let got = exported();
        let got: Vec<(u64, &str)> = got
            .iter()
            .map(|r| (r["offset"].as_u64().unwrap(), r["msg"].as_str().unwrap()))
            .collect();
        assert_eq!(got.len(), expected.len(), "each line once");
        assert!(got == expected, "in offset order, as written");
    }
}

/// Polls `f` for up to a minute (the agent and the cluster share a loaded machine); fails with
/// the agent's log.
fn wait_until(what: &str, mut f: impl FnMut() -> bool, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; agent log:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The real agent, enrolled on collector A and shipping to `urls = [B, A]`, its host id one
/// whose home is the first URL (B): ingest on another collector than the one that enrolled
/// it. B is killed -9 while the agent ships; the agent fails over to A with no alert, and the
/// cluster holds every line once, in offset order, whatever B had stored of the batch it was
/// killed in (the marks are shared: A stores only what B had not).
#[test]
fn the_agent_fails_over_between_collectors_of_one_cluster_and_every_line_is_stored_once() {
    let nats = Nats::start();
    let mut a = Collector::on_cluster(&nats, 0);
    let mut b = a.joining(&nats, 1);
    a.start();
    b.start();
    // "web.02" hashes to the first of two URLs (`log_sensor::config::home_index`).
    let mut agent = Agent::new("web.02", &[url(&b), url(&a)]);
    agent.enroll_on(&a);
    let mut want = agent.write("before", 20_000);
    agent.start();
    // Mid-stream: something of it acknowledged by B.
    wait_until("a first commit", || agent.committed() > 0, &|| agent.log());
    assert_eq!(agent.sink()["current"], url(&b), "{}", agent.log());
    b.kill9();
    want.extend(agent.write("after", 10_000));
    agent.wait_all_committed();
    let st = agent.sink();
    assert_eq!(st["current"], url(&a), "{st}");
    assert!(st["failovers"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        agent.sink_alerts().is_empty(),
        "a failover to a live collector raises no alert"
    );
    agent.assert_exported_once_in_order(&a, &want);
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`). kill(2)
/// returns before a SIGSTOP takes hold, and on a loaded machine a signalled node's threads
/// have run on for milliseconds, long enough to replicate a batch.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

/// SIGSTOP to nodes `which`, returning once each is wholly stopped.
fn freeze(nats: &Nats, which: &[usize], agent: &Agent) {
    for &i in which {
        // SAFETY: a signal to a child process of this test.
        unsafe { libc::kill(nats.nodes[i].id() as i32, libc::SIGSTOP) };
    }
    wait_until(
        "the frozen nodes to stop",
        || {
            which
                .iter()
                .all(|&i| all_threads_stopped(nats.nodes[i].id()))
        },
        &|| agent.log(),
    );
}

fn thaw(nats: &Nats, which: &[usize]) {
    for &i in which {
        // SAFETY: a signal to a child process of this test.
        unsafe { libc::kill(nats.nodes[i].id() as i32, libc::SIGCONT) };
    }
}

/// Nodes `frozen` stopped (SIGSTOP) for 8 s while the agent ships, then thawed: with two or
/// three of three frozen there is no quorum, so nothing written meanwhile is committed (a
/// reply already on its way when the nodes stopped may still land in the first second); no
/// `sink_error` alert is raised (the stall is shorter than the sink's `alert_after`), and once
/// the nodes run again every line is stored once, in offset order.
fn stall_without_quorum(frozen: &[usize]) {
    let nats = Nats::start();
    let mut a = Collector::on_cluster(&nats, 0);
    let mut b = a.joining(&nats, 1);
    a.start();
    b.start();
    let mut agent = Agent::new("web.02", &[url(&b), url(&a)]);
    agent.enroll_on(&a);
    let mut want = agent.write("before", 2_000);
    agent.start();
    agent.wait_all_committed();
    freeze(&nats, frozen, &agent);
    want.extend(agent.write("during", 5_000));
    std::thread::sleep(Duration::from_secs(1));
    let committed = agent.committed();
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(7) {
        assert_eq!(agent.committed(), committed, "committed without quorum");
        std::thread::sleep(Duration::from_millis(250));
    }
    thaw(&nats, frozen);
    agent.wait_all_committed();
    assert!(
        agent.sink_alerts().is_empty(),
        "a stall shorter than alert_after is no alert: {:?}",
        agent.sink_alerts()
    );
    eprintln!("the sink after the stall: {}", agent.sink());
    agent.assert_exported_once_in_order(&a, &want);
}

/// Every node stopped: what a leader election is to the agent, both collectors stalling at
/// once, a little longer.
#[test]
fn the_agent_rides_out_a_stalled_cluster_without_an_alert() {
    stall_without_quorum(&[0, 1, 2]);
}

/// Two of three nodes stopped, one of them collector B's: B cannot answer, A's node is up but
/// without quorum. The agent commits nothing until quorum returns.
#[test]
fn without_quorum_the_agent_commits_nothing_and_everything_arrives_after() {
    stall_without_quorum(&[1, 2]);
}

/// The records stream's leader frozen for 15 s while the agent ships: the two other nodes
/// elect a new leader and go on, the agent commits through it, and once the old leader runs
/// again (and finds itself a follower) every line is stored once, in offset order.
#[test]
fn the_stream_leader_frozen_15_s_under_the_agent_loses_and_duplicates_nothing() {
    let nats = Nats::start();
    let mut a = Collector::on_cluster(&nats, 0);
    let mut b = a.joining(&nats, 1);
    a.start();
    b.start();
    let mut agent = Agent::new("web.02", &[url(&b), url(&a)]);
    agent.enroll_on(&a);
    let mut want = agent.write("before", 20_000);
    agent.start();
    wait_until("a first commit", || agent.committed() > 0, &|| agent.log());
    let leader = settled_leader(&nats, &agent);
    eprintln!("freezing the stream leader n{leader} for 15 s");
    freeze(&nats, &[leader], &agent);
    let frozen = Instant::now();
    let at_freeze = agent.committed();
    want.extend(agent.write("frozen", 10_000));
    wait_until(
        "commits while the old leader is frozen",
        || agent.committed() > at_freeze,
        &|| agent.log(),
    );
    std::thread::sleep(Duration::from_secs(15).saturating_sub(frozen.elapsed()));
    thaw(&nats, &[leader]);
    want.extend(agent.write("thawed", 5_000));
    agent.wait_all_committed();
    let reader = if leader == 0 { &b } else { &a };
    agent.assert_exported_once_in_order(reader, &want);
}

/// Waits until the records stream has a leader and two current replicas; returns the leader.
fn settled_leader(nats: &Nats, agent: &Agent) -> usize {
    let mut leader = None;
    wait_until(
        "the records stream to have a leader and two current replicas",
        || {
            leader = nats.settled_leader("t_records");
            leader.is_some()
        },
        &|| format!("{}\n{}", nats.describe("t_records"), agent.log()),
    );
    leader.unwrap()
}

/// The real agent shipping through two collectors while the records stream's leader is
/// killed -9, restarted, and then a follower is killed -9: each kill mid-stream (lines
/// written before it still unacknowledged), each followed by progress on the two nodes
/// left. The agent commits only what the cluster acknowledged, re-sends the rest (perhaps
/// cut at other boundaries, perhaps to the other collector), and the cluster holds every
/// line once, in offset order.
#[test]
fn the_agent_ships_through_a_leader_and_then_a_follower_killed_9_and_every_line_is_stored_once() {
    let mut nats = Nats::start();
    let mut a = Collector::on_cluster(&nats, 0);
    let mut b = a.joining(&nats, 1);
    a.start();
    b.start();
    let mut agent = Agent::new("web.02", &[url(&b), url(&a)]);
    agent.enroll_on(&a);
    let mut want = agent.write("before", 20_000);
    agent.start();
    wait_until("a first commit", || agent.committed() > 0, &|| agent.log());
    let leader = settled_leader(&nats, &agent);
    eprintln!("killing the stream leader n{leader}");
    nats.kill9(leader);
    let at_kill = agent.committed();
    want.extend(agent.write("leaderless", 10_000));
    wait_until(
        "commits after the leader was killed",
        || agent.committed() > at_kill,
        &|| agent.log(),
    );
    nats.restart(leader);
    let leader = settled_leader(&nats, &agent);
    let follower = (leader + 1) % 3;
    eprintln!("killing the follower n{follower} (leader n{leader})");
    want.extend(agent.write("follower", 10_000));
    nats.kill9(follower);
    agent.wait_all_committed();
    nats.restart(follower);
    let reader = if follower == 0 { &b } else { &a };
    agent.assert_exported_once_in_order(reader, &want);
}
