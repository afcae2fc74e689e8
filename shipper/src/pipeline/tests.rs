//! The pipeline and the shipping loop against real files, a real store and scripted sinks.

use super::fanout::{group_loop, GroupTo};
use super::ship::{sink_loop, Feed, SinkTo};
use crate::batch::{Batch, StreamMeta};
use crate::frame::{Part, Rec};
use crate::sink::{Sink, SinkError};
use crate::status::ShipStats;
use crate::store::{Checkpoint, Store, StreamRow, StreamState};
use crossbeam_channel::Receiver;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A receiver behind a pipelined sink, as the collector behaves: it stores batches in the
/// order they arrive and drops any at or below its high-water mark; failures are scripted.
struct Scripted {
    window: usize,
    /// Generations written and not yet confirmed.
    wire: VecDeque<u64>,
    stored: Arc<Mutex<Vec<u64>>>,
    /// (generation, fail on submit?) for each scripted failure, used once.
    failures: Vec<(u64, bool)>,
}

impl Scripted {
    fn fail(&mut self, generation: u64, on_submit: bool) -> bool {
        let hit = self
            .failures
            .iter()
            .position(|f| *f == (generation, on_submit));
        hit.map(|i| self.failures.remove(i)).is_some()
    }
    fn lost(&mut self) -> SinkError {
        self.wire.clear();
        SinkError::Failed {
            sink: "scripted".into(),
            message: "connection lost".into(),
        }
    }
}

impl Sink for Scripted {
    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.submit(batch)?;
        self.confirm()
    }
    fn describe(&self) -> String {
        "scripted".into()
    }
    fn window(&self) -> usize {
        self.window
    }
    fn submit(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if self.fail(batch.generation, true) {
            return Err(self.lost());
        }
        let mut stored = self.stored.lock().unwrap();
        if stored.last().is_none_or(|&m| batch.generation > m) {
            stored.push(batch.generation);
        }
        self.wire.push_back(batch.generation);
        Ok(())
    }
    fn confirm(&mut self) -> Result<(), SinkError> {
        let Some(g) = self.wire.pop_front() else {
            return Ok(());
        };
        if self.fail(g, false) {
            return Err(self.lost());
        }
        Ok(())
    }
}

/// The agent's wiring in small: one group of `sinks`, its batches from `rx`, committed into
/// `store` once every sink acknowledged them.
fn ship(
    rx: Receiver<Batch>,
    sinks: Vec<Box<dyn Sink>>,
    store: &Mutex<Store>,
    commits: &ShipStats,
    per_sink: &[ShipStats],
    stop: &AtomicBool,
) {
    let (heard_tx, heard) = crossbeam_channel::unbounded();
    let mut to_sinks = Vec::new();
    let mut parts = Vec::new();
    for sink in sinks {
        let (tx, batches) = crossbeam_channel::unbounded();
        to_sinks.push(tx);
        let heard = heard_tx.clone();
        parts.push((sink, Feed { batches, heard }));
    }
    drop(heard_tx);
    std::thread::scope(|scope| {
        for ((sink, feed), stats) in parts.into_iter().zip(per_sink) {
            scope.spawn(move || {
                sink_loop(SinkTo {
                    sink,
                    name: "scripted".into(),
                    store,
                    stop,
                    stats,
                    feeds: vec![feed],
                    rebuild: None,
                })
            });
        }
        group_loop(
            rx,
            GroupTo {
                store,
                stats: commits,
                sinks: to_sinks,
                heard,
                limit: 4,
                recycle: None,
                outlook: None,
            },
        );
    });
}

/// An input's own acknowledgement: says which batch it was in when told.
#[derive(Debug)]
struct Logged {
    generation: u64,
    log: Arc<Mutex<Vec<u64>>>,
}

impl crate::batch::Acknowledge for Logged {
    fn acknowledged(&mut self) -> Result<(), crate::batch::AckError> {
        self.log.lock().unwrap().push(self.generation);
        Ok(())
    }
}

/// Two records of file stream `s` (a store checkpoint) and one of an input that keeps its own
/// position (its acknowledgement logs into `acks`).
fn batch(generation: u64, acks: &Arc<Mutex<Vec<u64>>>) -> Batch {
    let mut b = Batch::new("h".into(), generation);
    let meta = StreamMeta {
        id: "s".into(),
        source: "app".into(),
        fingerprint: None,
        path: "/var/log/app.log".into(),
    };
    let mut none = crate::transform::Transforms::none();
    let limits = crate::batch::Limits {
        max_records: 100,
        max_bytes: 1 << 20,
    };
    let mut out = crate::batch::Intake::new(&mut b, &mut none, limits);
    let cp = Checkpoint {
        stream: "s".into(),
        committed_offset: generation * 10,
        committed_hash: None,
        read_offset: generation * 10,
        size: generation * 10,
        ..Checkpoint::default()
    };
    let slot = out.open_stream(meta, crate::batch::Ack::Store(cp));
    for i in 0..2 {
        let rec = Rec {
            offset: (generation - 1) * 10 + i * 5,
            len: 4,
            part: Part::Whole,
            bytes: b"line",
        };
        out.push(slot, &rec, 0, None);
    }
    let own = Logged {
        generation,
        log: acks.clone(),
    };
    let meta = StreamMeta {
        id: "q".into(),
        source: "osquery".into(),
        fingerprint: None,
        path: "outbox".into(),
    };
    let slot = out.open_stream(meta, crate::batch::Ack::Input(Box::new(own)));
    let rec = Rec {
        offset: generation,
        len: 2,
        part: Part::Whole,
        bytes: b"{}",
    };
    out.push(slot, &rec, 0, None);
    drop(out);
    b
}

/// A store that knows file stream `s` of source `app`, nothing committed.
fn store_with_stream(dir: &std::path::Path) -> Store {
    let mut store = Store::open(dir).unwrap();
    store
        .upsert_stream(&StreamRow {
            stream: "s".into(),
            source: "app".into(),
            fingerprint: None,
            fp_bytes: 0,
            path: "/var/log/app.log".into(),
            device: 1,
            inode: 1,
            compressed: false,
            size: 0,
            read_offset: 0,
            committed_offset: 0,
            committed_hash: None,
            first_seen: 0,
            state: StreamState::Active,
            alerted_too_large: false,
        })
        .unwrap();
    store
}

/// Two sinks, one failing again and again: each gets all eight batches in order, and a
/// batch's acknowledgements are given back once, in order, only when both have it.
#[test]
fn with_two_sinks_a_batch_commits_once_both_have_it_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Mutex::new(store_with_stream(dir.path()));
    let (healthy, flaky) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(Scripted {
            window: 2,
            wire: VecDeque::new(),
            stored: healthy.clone(),
            failures: vec![],
        }),
        Box::new(Scripted {
            window: 1,
            wire: VecDeque::new(),
            stored: flaky.clone(),
            failures: vec![(1, true), (1, true), (4, false), (8, true), (8, false)],
        }),
    ];
    let (tx, rx) = crossbeam_channel::unbounded();
    let acks = Arc::new(Mutex::new(Vec::new()));
    for g in 1..=8 {
        tx.send(batch(g, &acks)).unwrap();
    }
    drop(tx);
    let stats = ShipStats::default();
    let per_sink = [ShipStats::default(), ShipStats::default()];
    let stop = AtomicBool::new(false);
    ship(rx, sinks, &store, &stats, &per_sink, &stop);
    let all: Vec<u64> = (1..=8).collect();
    assert_eq!(*healthy.lock().unwrap(), all);
    assert_eq!(*flaky.lock().unwrap(), all);
    assert_eq!(
        *acks.lock().unwrap(),
        all,
        "each acknowledgement once, in order"
    );
    assert_eq!(
        store.lock().unwrap().stream_offsets("s").unwrap(),
        Some((80, 16)),
        "the last offset, each batch's records counted once"
    );
    assert_eq!(stats.batches.load(Ordering::Relaxed), 8);
    assert_eq!(per_sink[0].sink_errors.load(Ordering::Relaxed), 0);
    assert!(per_sink[1].sink_errors.load(Ordering::Relaxed) >= 5);
}

/// Eight batches through a window of two, with failures on a confirm and on a submit: every
/// batch reaches the receiver, in order, and is committed exactly once: its store checkpoint,
/// and the acknowledgement its other input defined, in batch order.
#[test]
fn pipelined_batches_commit_in_order_once_and_failures_redeliver_from_the_oldest() {
    for window in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let store = Mutex::new(store_with_stream(dir.path()));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            window,
            wire: VecDeque::new(),
            stored: stored.clone(),
            failures: vec![(3, false), (5, true), (6, false), (6, false)],
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        let acks = Arc::new(Mutex::new(Vec::new()));
        for g in 1..=8 {
            tx.send(batch(g, &acks)).unwrap();
        }
        drop(tx);
        let stats = ShipStats::default();
        let sink_stats = [ShipStats::default()];
        let stop = AtomicBool::new(false);
        ship(rx, vec![Box::new(sink)], &store, &stats, &sink_stats, &stop);
        assert_eq!(
            *stored.lock().unwrap(),
            (1..=8).collect::<Vec<_>>(),
            "window {window}"
        );
        let store = store.lock().unwrap();
        assert_eq!(
            store.stream_offsets("s").unwrap(),
            Some((80, 16)),
            "window {window}: the last offset, and each batch's records counted once"
        );
        assert_eq!(stats.batches.load(Ordering::Relaxed), 8);
        assert_eq!(
            *acks.lock().unwrap(),
            (1..=8).collect::<Vec<_>>(),
            "window {window}: each input acknowledgement once, in batch order"
        );
        assert!(sink_stats[0].sink_errors.load(Ordering::Relaxed) >= 4);
        assert!(store.alerts().unwrap().iter().any(|a| a.1 == "sink_error"));
    }
}

/// Only a sink that reads NDJSON has batches encoded ahead; the syslog sink reads records.
#[test]
fn batches_are_encoded_ahead_only_once_a_sink_wants_ndjson() {
    use crate::sink::Encoding;
    let wanted = super::Wanted::default();
    assert_eq!(wanted.get(), Encoding::Records);
    wanted.set(Encoding::Ndjson);
    assert_eq!(wanted.get(), Encoding::Ndjson);
    wanted.set(Encoding::Records);
    assert_eq!(wanted.get(), Encoding::Records);
}
