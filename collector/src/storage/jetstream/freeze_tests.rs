//! Nodes frozen with SIGSTOP (their sockets open, nothing answering), as
//! a stalled VM or a long GC pause looks to the rest of the cluster: two
//! of three (no quorum) and one for 15 s, the stream's leader or a
//! follower, while batches are stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::api;
use super::tests::{messages, nats_server, store, stored_offsets, want, Cluster, Node};
use super::{ApiError, JetStream, JetStreamError};
use crate::storage::StoreError;

impl Node {
    /// SIGSTOP, returning once the node is frozen (its sockets stay open).
    /// kill(2) returns before the stop takes hold: the signal only queues,
    /// and the process stops when one of its threads next runs and takes
    /// it, then stops the others. Until then a loaded machine lets the
    /// node's other threads go on for milliseconds, long enough to
    /// acknowledge a replication round (this is how a store with "two of
    /// three nodes stopped" came back acknowledged). So wait until every
    /// thread is in state `T`.
    pub(super) fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.child.as_ref().expect("running").id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "{} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT: the node goes on where it stopped.
    pub(super) fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
}

/// Whether every thread of `pid` is stopped (state `T` in
/// `/proc/PID/task/*/stat`, the field after the parenthesised name).
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

/// Two of three nodes frozen (SIGSTOP): no quorum, so nothing is
/// acknowledged and the agent keeps its batch; once they thaw, the re-sent
/// batch is stored, and every record is there once. (It once saw a store
/// acknowledged: the nodes had been signalled but were not yet stopped,
/// see [`Node::freeze`].)
#[test]
fn without_quorum_nothing_is_acknowledged_and_everything_arrives_after() {
    let c = Cluster::start(nats_server(), 3, "");
    // The collector talks to the stream's leader, which stays up and
    // takes the commit: the refusal must say the cluster did not answer,
    // not that another collector won a race.
    let probe = c.connect(&[0], 3);
    let at = c
        .nodes
        .iter()
        .position(|n| n.name == leader(&probe))
        .unwrap();
    let js = JetStream::connect(&c.config_waiting(&[at], 3, 2), 3).unwrap();
    store(&js, &[("s", 0, 5)]).unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != at).collect();
    for &i in &others {
        c.nodes[i].freeze();
    }
    let refused = store(&js, &[("s", 5, 10)]);
    let err = refused.expect_err("acknowledged without quorum");
    eprintln!("without quorum: {err}");
    assert!(
        matches!(
            err,
            StoreError::JetStream(JetStreamError::Api(ApiError::Timeout { .. }))
        ),
        "{err}"
    );
    for &i in &others {
        c.nodes[i].thaw();
    }
    // The agent re-sends what was not acknowledged, and more.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match store(&js, &[("s", 5, 12)]) {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("not stored after the nodes thawed: {e}"),
        }
    }
    assert_eq!(stored_offsets(&js, "s"), want(12));
}

/// The node leading the records stream, as the cluster reports it.
fn leader(js: &JetStream) -> String {
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
    info["cluster"]["leader"].as_str().unwrap().to_owned()
}

/// An agent storing stream "s" batch after batch, each re-sending a few
/// records before the next unacknowledged one (as after a lost answer),
/// until `stop` is set and it has caught up with what it was given;
/// returns the records acknowledged.
fn ship(js: Arc<JetStream>, acked: Arc<AtomicU64>, stop: Arc<AtomicU64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut step = 0u64;
    loop {
        let next = acked.load(Ordering::SeqCst);
        let until = stop.load(Ordering::SeqCst);
        if until != 0 && next >= until {
            return next;
        }
        assert!(Instant::now() < deadline, "the agent did not finish");
        step += 1;
        let from = next.saturating_sub(step % 3);
        let to = from + 4 + step % 5;
        match store(&js, &[("s", from, to)]) {
            Ok(_) => {
                acked.fetch_max(to, Ordering::SeqCst);
                // An agent's pace, not a flood: keeps the read-back short.
                std::thread::sleep(Duration::from_millis(20));
            }
            // Not acknowledged: sent again (a stall while the cluster
            // elects a leader or waits for the frozen node).
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Freezes `target(leader)` for 15 s while an agent ships through a
/// collector on another node; after the thaw every record is stored once,
/// in offset order, and each over-length streak alerted once.
fn frozen_for_15_s(pick: fn(&str, &Cluster) -> usize) {
    let c = Cluster::start(nats_server(), 3, "");
    let probe = c.connect(&[0], 3);
    let target = pick(&leader(&probe), &c);
    let via = (target + 1) % 3;
    let js = Arc::new(JetStream::connect(&c.config_waiting(&[via], 3, 2), 3).unwrap());
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicU64::new(0));
    let agent = {
        let (js, acked, stop) = (Arc::clone(&js), Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || ship(js, acked, stop))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::SeqCst) < 20 {
        assert!(
            Instant::now() < deadline,
            "nothing stored before the freeze"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    c.nodes[target].freeze();
    let before = acked.load(Ordering::SeqCst);
    // The scenario's length, not a wait for a result.
    std::thread::sleep(Duration::from_secs(15));
    let during = acked.load(Ordering::SeqCst) - before;
    c.nodes[target].thaw();
    // Some more batches after the thaw, then the agent stops.
    stop.store(acked.load(Ordering::SeqCst) + 40, Ordering::SeqCst);
    let n = agent.join().unwrap();
    eprintln!(
        "{} frozen 15 s: {during} records acknowledged meanwhile, {n} in all",
        c.nodes[target].name
    );
    // Stored at least everything acknowledged, each record once and in
    // order (a batch whose answer was lost may be stored beyond `n`).
    let got = stored_offsets(&js, "s");
    assert!(
        got.len() as u64 >= n,
        "{} stored, {n} acknowledged",
        got.len()
    );
    assert_eq!(got, want(got.len() as u64));
    // Every seventh record ends a streak of six over-length parts, and a
    // streak's third record (threshold 3) raises its one alert.
    let k = got.len() as u64;
    let alerts = messages(&js, &js.names.alert("h", "s")).len() as u64;
    assert_eq!(
        alerts,
        k / 7 + u64::from(k % 7 >= 3),
        "alerts for {k} records"
    );
}

#[test]
fn the_stream_leader_frozen_15_s_loses_and_duplicates_nothing() {
    frozen_for_15_s(|leader, c| c.nodes.iter().position(|n| n.name == leader).unwrap());
}

#[test]
fn a_follower_frozen_15_s_loses_and_duplicates_nothing() {
    frozen_for_15_s(|leader, c| c.nodes.iter().position(|n| n.name != leader).unwrap());
}
