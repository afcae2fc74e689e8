//! The agent's parts wired as `run` wires them, in-process and stepped: a real log file, the
//! real tailer and store, the pipeline driven round by round.

use crate::batch::Batch;
use crate::status::ShipStats;
use crate::store::Store;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

/// An agent's pipeline in-process: a real log file, the real tailer and store, driven round by
/// round; handed-over batches arrive on `rx`.
struct Rig {
    dir: tempfile::TempDir,
    store: std::sync::Arc<Mutex<Store>>,
    pipeline: crate::pipeline::Pipeline,
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
        let mut pipeline =
            crate::pipeline::Pipeline::new(cfg.clone(), tx, stop.clone(), bell.clone());
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

    /// Rounds until what was appended is read, then the batch handed over. The tailer learns
    /// of an append from inotify, on the watcher's thread: polled, with a generous deadline.
    fn batch(&mut self) -> Batch {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            while self.pipeline.round().unwrap() {}
            assert!(self.pipeline.flush());
            if let Ok(b) = self.rx.try_recv() {
                return b;
            }
            assert!(std::time::Instant::now() < deadline, "nothing read");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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
    crate::pipeline::commit::Committer::new(&rig.store, &stats).batch(&mut b);
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
