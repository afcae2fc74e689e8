//! Collectors on a JetStream cluster when the cluster misbehaves: a
//! revocation while the other collector's own NATS server is killed, and
//! more open atomic batches than the stream allows. Real collector binaries
//! and real nats-server 2.15.1 processes (`.venv`, tests/setup.sh) on
//! loopback.

use std::io::BufRead;

use super::cluster::{free_port, nats_server};
use super::*;

/// `n` nats-server nodes with JetStream (a cluster when `n` > 1), each
/// killed on drop or by [`Nodes::kill9`].
struct Nodes {
    _dir: tempfile::TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

impl Nodes {
    fn start(n: usize) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c)| format!("\"nats://127.0.0.1:{c}\""))
            .collect();
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, (port, cport))| {
                let cluster = if n > 1 {
                    format!(
                        "cluster {{ name: f, listen: \"127.0.0.1:{cport}\", routes: [{}] }}\n",
                        routes.join(", ")
                    )
                } else {
                    String::new()
                };
                let conf = dir.path().join(format!("n{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
                         jetstream {{ store_dir: \"{}\" }}\n{cluster}",
                        dir.path().join(format!("n{i}")).display(),
                    ),
                )
                .unwrap();
                Some(
                    Command::new(nats_server())
                        .arg("-c")
                        .arg(&conf)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                )
            })
            .collect();
        Nodes {
            _dir: dir,
            ports: ports.iter().map(|(p, _)| *p).collect(),
            nodes,
        }
    }

    /// `[storage]` naming node `i` only (the client learns the others).
    fn storage(&self, i: usize) -> String {
        format!(
            "\n[storage]\ntype = \"jetstream\"\nservers = [\"nats://127.0.0.1:{}\"]\nprefix = \"f\"\nreplicas = {}\n",
            self.ports[i],
            if self.nodes.len() >= 3 { 3 } else { 1 }
        )
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}

/// A collector on node `node`: `init`, `[storage]`, and (with `user`) the
/// user added through the cluster once it is ready; or, given `first`,
/// the first's CA, keys and config copied in (README: adding a collector).
fn collector(nodes: &Nodes, node: usize, first: Option<&Collector>) -> Collector {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("collector");
    let d = dir.to_str().unwrap().to_owned();
    let base = match first {
        None => {
            run(&["init", "--dir", &d, "--name", "localhost"]);
            std::fs::read_to_string(dir.join("collector.toml")).unwrap()
        }
        Some(first) => {
            std::fs::create_dir_all(&dir).unwrap();
            for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
                std::fs::copy(first.dir.join(f), dir.join(f)).unwrap();
            }
            let text = std::fs::read_to_string(first.dir.join("collector.toml")).unwrap();
            text.split("\n[storage]").next().unwrap().to_owned()
        }
    };
    std::fs::write(dir.join("collector.toml"), base + &nodes.storage(node)).unwrap();
    if first.is_none() {
        let pw = root.path().join("pw");
        std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
        let args = ["user", "add", "--dir", &d, USER, "--password-file"];
        // A loaded machine has taken over half a minute to form a cluster.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(BIN).args(args).arg(&pw).output().unwrap();
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "user add: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Collector {
        root,
        dir,
        child: None,
        addr: None,
    }
}

/// Collector B talks to node 1 only. Node 1 is killed -9 and, at once, the
/// host is revoked through collector A: from the revocation's commit on, B
/// accepts nothing of that host (no batch on its open connection, no new
/// handshake), and the open connection is cut once B's view is current
/// again (its client having moved to another node).
#[test]
fn a_revocation_holds_on_a_collector_whose_nats_server_was_just_killed() {
    let mut nodes = Nodes::start(3);
    let mut a = collector(&nodes, 0, None);
    let mut b = collector(&nodes, 1, Some(&a));
    a.start();
    b.start();
    let id = a.enroll("web-01");
    let mut on_b = b.connect(Some(&id));
    let r = on_b.ingest(&batch(&[record("web-01", "s", 0, "whole")]));
    assert_eq!(r.status, 200, "{}", r.text());

    // The revoke starts as node 1 dies; if node 1 led a stream, the
    // revoke's own reads wait for the election and may time out: the
    // operator runs it again (revoking twice is harmless).
    let revoke = {
        let d = a.d().to_owned();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let out = Command::new(BIN)
                    .args(["revoke", "--dir", &d, "web-01"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "revoke: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        })
    };
    nodes.kill9(1);
    revoke.join().unwrap();
    let committed = Instant::now();

    // Whatever B's state, a batch on the open connection is not stored:
    // refused (403 revoked, or 500 while B cannot check) or the connection
    // is already cut.
    match on_b.try_request(
        "POST",
        "/v1/ingest",
        &[],
        &batch(&[record("web-01", "s", 10, "whole")]),
    ) {
        Ok(r) => {
            assert_ne!(r.status, 200, "a revoked host's batch stored: {}", r.text());
            eprintln!(
                "batch on the open connection refused: {} {}",
                r.status,
                r.text()
            );
        }
        Err(e) => eprintln!("open connection already cut: {e}"),
    }
    // Nor is a new handshake let through.
    match Conn::try_open(b.addr(), &b.dir.join("ca.pem"), Some(&id)).and_then(|mut c| {
        c.try_request(
            "POST",
            "/v1/ingest",
            &[],
            &batch(&[record("web-01", "s", 20, "whole")]),
        )
    }) {
        Ok(r) => assert_ne!(r.status, 200, "a revoked host's batch stored: {}", r.text()),
        Err(e) => eprintln!("new handshake refused: {}", refusal(&e)),
    }
    eprintln!(
        "refused everything {:?} after the revoke",
        committed.elapsed()
    );

    // Once B reaches the cluster again, its open connections of the host
    // are cut and its handshakes refused as revoked.
    poll(|| {
        Conn::try_open(b.addr(), &b.dir.join("ca.pem"), Some(&id))
            .and_then(|mut c| c.try_request("POST", "/v1/ingest", &[], b""))
            .err()
            .filter(|e| refusal(e) == "CertificateRevoked")
    });
    eprintln!(
        "B refuses as revoked {:?} after the revoke",
        committed.elapsed()
    );
    on_b.assert_closed_by_server("on the collector whose server was killed");
    let cut = committed.elapsed();
    eprintln!("open connection cut {cut:?} after the revoke");
}

/// A raw NATS connection, enough to publish with headers: the test holds
/// atomic batches open the way a crowd of collectors would.
struct RawNats {
    reader: std::io::BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawNats {
    fn connect(port: u16) -> RawNats {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut n = RawNats {
            reader: std::io::BufReader::new(tcp.try_clone().unwrap()),
            writer: tcp,
        };
        let mut info = String::new();
        n.reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        n.writer
            .write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
            .unwrap();
        n.flush();
        n
    }

    /// One message of batch `id` at `seq`, without a reply subject.
    fn batch_message(&mut self, subject: &str, id: &str, seq: u32) {
        let headers =
            format!("NATS/1.0\r\nNats-Batch-Id: {id}\r\nNats-Batch-Sequence: {seq}\r\n\r\n");
        let body = "{}";
        let frame = format!(
            "HPUB {subject} {} {}\r\n{headers}{body}\r\n",
            headers.len(),
            headers.len() + body.len()
        );
        self.writer.write_all(frame.as_bytes()).unwrap();
    }

    /// PING and wait for PONG: the server has read all sent before.
    fn flush(&mut self) {
        self.writer.write_all(b"PING\r\n").unwrap();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if line.starts_with("PONG") {
                return;
            }
        }
    }
}

/// With as many atomic batches open on the stream as the server allows
/// (50 by default), a batch is refused with a 503 that says to retry and
/// names the limit; nothing is lost, and the same batch is stored once
/// room comes back.
#[test]
fn more_open_batches_than_the_stream_allows_is_a_retryable_503() {
    let nodes = Nodes::start(1);
    let mut a = collector(&nodes, 0, None);
    a.start();
    let id = a.enroll("web-01");
    let mut raw = RawNats::connect(nodes.ports[0]);
    for i in 0..50 {
        raw.batch_message("f.alert.x.y", &format!("held{i}"), 1);
    }
    raw.flush();
    let body = batch(&[
        record("web-01", "s", 0, "whole"),
        record("web-01", "s", 10, "whole"),
    ]);
    let r = a.connect(Some(&id)).ingest(&body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("1"), "{}", r.head);
    assert_eq!(r.json()["code"], "too_many_open_batches", "{}", r.text());
    let message = r.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("max_inflight_per_stream") && message.contains("f_records"),
        "{message}"
    );
    // A gap in a batch's sequence makes the server drop it: room again.
    for i in 0..50 {
        raw.batch_message("f.alert.x.y", &format!("held{i}"), 3);
    }
    raw.flush();
    let r = poll(|| {
        let r = a.connect(Some(&id)).ingest(&body);
        (r.status != 503).then_some(r)
    });
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["stored"].clone(), r.json()["duplicates"].clone()),
        (json!(2), json!(0))
    );
}
