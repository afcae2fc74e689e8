//! The pipeline and the shipping loop against real files, a real store and scripted sinks.

use super::ship::{ship_loop, ShipTo};
use crate::batch::{Batch, StreamMeta};
use crate::frame::{Part, Rec};
use crate::sink::{Sink, SinkError};
use crate::status::ShipStats;
use crate::store::Store;
use crate::store::{Checkpoint, StreamRow, StreamState};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;

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

fn batch(generation: u64) -> Batch {
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
    b
}

/// Eight batches through a window of two, with failures on a confirm and on a submit: every
/// batch reaches the receiver, in order, and is committed exactly once.
#[test]
fn pipelined_batches_commit_in_order_once_and_failures_redeliver_from_the_oldest() {
    for window in [1, 2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
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
        let store = Mutex::new(store);
        let stored = Arc::new(Mutex::new(Vec::new()));
        let sink = Scripted {
            window,
            wire: VecDeque::new(),
            stored: stored.clone(),
            failures: vec![(3, false), (5, true), (6, false), (6, false)],
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        for g in 1..=8 {
            tx.send(batch(g)).unwrap();
        }
        drop(tx);
        let stats = ShipStats::default();
        let stop = AtomicBool::new(false);
        ship_loop(
            rx,
            ShipTo {
                sink: Box::new(sink),
                store: &store,
                stop: &stop,
                stats: &stats,
                recycle: None,
                sinks: None,
                wanted: None,
            },
        );
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
        assert!(stats.sink_errors.load(Ordering::Relaxed) >= 4);
        assert!(store.alerts().unwrap().iter().any(|a| a.1 == "sink_error"));
    }
}

/// An agent's pipeline in-process: a real log file, the real tailer and store, driven round by
/// round; handed-over batches arrive on `rx`.
struct Rig {
    dir: tempfile::TempDir,
    store: std::sync::Arc<Mutex<Store>>,
    pipeline: super::Pipeline,
    rx: crossbeam_channel::Receiver<Batch>,
    configs: crossbeam_channel::Sender<std::sync::Arc<crate::config::Config>>,
}

fn config(dir: &std::path::Path, host: &str) -> std::sync::Arc<crate::config::Config> {
    let text = format!(
        r#"
host_id = "{host}"
state_dir = "state"
[sources.app]
paths = ["logs/app.log"]
[sink]
type = "stdout"
"#
    );
    let path = dir.join("agent.toml");
    std::sync::Arc::new(crate::config::Config::parse(&path, &text).unwrap())
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let cfg = config(dir.path(), "h1");
        let store = std::sync::Arc::new(Mutex::new(Store::open(&cfg.state_dir).unwrap()));
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let bell = crate::input::Bell::new();
        let mut pipeline = super::Pipeline::new(cfg.clone(), tx, stop.clone(), bell.clone());
        let stats = std::sync::Arc::new(crate::status::TailStats::default());
        let tailer = crate::tail::Tailer::new(cfg, store.clone(), stop, stats, bell).unwrap();
        pipeline.input(Box::new(tailer));
        let (configs, configs_rx) = crossbeam_channel::unbounded();
        pipeline.configs_from(configs_rx);
        Rig {
            dir,
            store,
            pipeline,
            rx,
            configs,
        }
    }

    fn append(&self, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("logs/app.log"))
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    }

    /// Rounds until the inputs are idle, then the batch handed over (each round scans: the
    /// tailer's turns in a test scan in line).
    fn batch(&mut self) -> Batch {
        for _ in 0..20 {
            if !self.pipeline.round().unwrap() {
                break;
            }
        }
        assert!(self.pipeline.flush());
        self.rx.try_recv().expect("a batch handed over")
    }
}

/// Drops the records whose message starts with `prefix`, and tags the others with a field.
struct DropPrefix(&'static [u8]);

impl crate::transform::Transform for DropPrefix {
    fn describe(&self) -> String {
        "drop lines by prefix".into()
    }
    fn apply(&mut self, rec: &mut crate::transform::Draft<'_>) -> crate::transform::Verdict {
        assert_eq!(
            rec.stream.source.as_ref(),
            "app",
            "the transform sees the source"
        );
        if rec.bytes.starts_with(self.0) {
            return crate::transform::Verdict::Drop;
        }
        rec.fields = Some(std::borrow::Cow::Owned(
            format!(r#"{{"seen_at":{}}}"#, rec.offset).into_bytes(),
        ));
        crate::transform::Verdict::Keep
    }
}

/// The transform hook is the way into a batch: a dropped record is not shipped but its offset
/// commits (the last line is a dropped one, and the committed offset is the file's end); a
/// kept one is shipped with what the transform made of it.
#[test]
fn a_dropped_record_commits_its_offset_and_a_kept_one_ships_as_transformed() {
    let mut rig = Rig::new();
    rig.pipeline.transform("app", Box::new(DropPrefix(b"drop")));
    let text = "keep 1\ndrop 2\nkeep 3\ndrop 4\n";
    rig.append(text);
    let mut b = rig.batch();
    let msgs: Vec<String> = b
        .records()
        .map(|r| String::from_utf8(r.bytes.to_vec()).unwrap())
        .collect();
    assert_eq!(msgs, ["keep 1", "keep 3"]);
    let mut nd = Vec::new();
    b.write_ndjson(&mut nd);
    let line: serde_json::Value =
        serde_json::from_slice(nd.split(|&c| c == b'\n').nth(1).unwrap()).unwrap();
    assert_eq!(
        line["fields"]["seen_at"], 14,
        "the kept record carries the fields its transform set"
    );
    let stream = b.streams[0].meta.id.to_string();
    let stats = ShipStats::default();
    super::commit::Committer::new(&rig.store, &stats).batch(&mut b);
    assert_eq!(
        rig.store.lock().unwrap().stream_offsets(&stream).unwrap(),
        Some((text.len() as u64, 2)),
        "committed past the dropped last line; only kept records counted as shipped"
    );
}

/// A batch delivered before a reload changed the host comes back for reuse after it: the
/// records read into it are read under the new host, not the old batch's.
#[test]
fn a_recycled_batch_takes_the_host_of_the_config_in_force() {
    let mut rig = Rig::new();
    let (back_tx, back_rx) = crossbeam_channel::unbounded();
    rig.pipeline.recycle_from(back_rx);
    rig.append("one\n");
    let first = rig.batch();
    assert_eq!(first.host.as_ref(), "h1");
    rig.configs.send(config(rig.dir.path(), "h2")).unwrap();
    rig.append("two\n");
    let second = rig.batch();
    assert_eq!(second.host.as_ref(), "h2");
    back_tx.send(first).unwrap();
    rig.append("three\n");
    // The round that reads "three" fills the batch taken when "two" was handed over; the one
    // after is the recycled first batch.
    let third = rig.batch();
    rig.append("four\n");
    let fourth = rig.batch();
    for b in [&third, &fourth] {
        assert!(b.records().all(|r| r.host == "h2"), "{:?}", b.host);
        assert_eq!(b.host.as_ref(), "h2");
    }
}
