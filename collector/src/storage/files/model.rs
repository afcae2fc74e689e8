//! A model test: random sends, re-sends and crashes (clean, mid-line, and
//! between the file sync and the index commit) against the real store;
//! after every step each stream's file must hold every record sent so far
//! exactly once, in order, and the alerts raised must match the streaks in
//! what is stored.

use super::*;
use crate::ingest::parse_batch;
use proptest::prelude::*;
use std::io::Write;

const STREAMS: [&str; 2] = ["a", "../b"];
const ALERT_AFTER: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Send records `[held - back, held - back + len)` of a stream.
    Send {
        stream: usize,
        back: u8,
        len: u8,
    },
    /// The same, but the process dies after the file sync and before
    /// the index commit.
    SendThenDieBeforeIndex {
        stream: usize,
        back: u8,
        len: u8,
    },
    /// The process dies while half of the next record is written.
    DieMidLine {
        stream: usize,
    },
    /// The batch is written as its body arrives, then refused or cut
    /// short before its commit.
    SendThenFail {
        stream: usize,
        back: u8,
        len: u8,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..6u8, 0..12u8).prop_map(|(stream, back, len)| Op::Send { stream, back, len }),
        1 => (0..2usize, 0..6u8, 1..12u8)
            .prop_map(|(stream, back, len)| Op::SendThenDieBeforeIndex { stream, back, len }),
        1 => (0..2usize).prop_map(|stream| Op::DieMidLine { stream }),
        1 => (0..2usize, 0..6u8, 1..12u8)
            .prop_map(|(stream, back, len)| Op::SendThenFail { stream, back, len }),
        1 => Just(Op::Restart),
    ]
}

/// Runs of six over-length parts, each ended by a whole record.
fn part(i: u64) -> &'static str {
    match i % 7 {
        6 => "whole",
        n if n % 2 == 0 => "head",
        _ => "tail",
    }
}

fn line(stream: &str, i: u64) -> String {
    serde_json::json!({"host": "h", "stream": stream, "offset": i * 10, "part": part(i), "msg": i})
        .to_string()
}

fn body(stream: &str, from: u64, to: u64) -> Vec<u8> {
    (from..to)
        .map(|i| line(stream, i) + "\n")
        .collect::<String>()
        .into_bytes()
}

fn expected_alerts(held: u64) -> usize {
    let mut s = Streak::default();
    (0..held)
        .filter(|i| {
            let p = match part(*i) {
                "whole" => Part::Whole,
                "head" => Part::Head,
                _ => Part::Tail,
            };
            s.observe(p, ALERT_AFTER)
        })
        .count()
}

fn open(dir: &Path) -> FileStore {
    let db = Arc::new(Db::create(&dir.join("c.db")).unwrap());
    // One open file for two streams: every switch closes one and
    // reopens the other, mid-batch and across crashes.
    let limits = StorageLimits {
        max_open_files: 1,
        ..StorageLimits::default()
    };
    FileStore::new(dir.join("data"), db, ALERT_AFTER, limits).unwrap()
}

fn set_index(dir: &Path, stream: &str, index: Option<StreamIndex>) {
    let conn = rusqlite::Connection::open(dir.join("c.db")).unwrap();
    conn.execute(
        "DELETE FROM streams WHERE host_id = 'h' AND stream = ?1",
        [stream],
    )
    .unwrap();
    if let Some(i) = index {
        conn.execute(
            "INSERT INTO streams VALUES ('h', ?1, ?2, ?3, ?4, ?5, 0)",
            rusqlite::params![
                stream,
                i.high_water as i64,
                i.file_len as i64,
                i.streak as i64,
                i.streak_alerted as i64
            ],
        )
        .unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn every_record_stored_exactly_once(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        // The model: how many records of each stream the store holds.
        let mut held = [0u64; 2];
        let mut alerts = 0usize;
        for op in ops {
            match op {
                Op::Send { stream, back, len } => {
                    let from = held[stream].saturating_sub(u64::from(back));
                    let to = from + u64::from(len);
                    let batch = parse_batch(body(STREAMS[stream], from, to), "h").unwrap();
                    let o = store.store("h", &batch).unwrap();
                    let new = to.saturating_sub(held[stream]);
                    prop_assert_eq!(o.stored as u64, new);
                    prop_assert_eq!(o.duplicates as u64, u64::from(len) - new);
                    held[stream] = held[stream].max(to);
                    alerts += o.alerts.len();
                }
                Op::SendThenDieBeforeIndex { stream, back, len } => {
                    let name = STREAMS[stream];
                    let before = store.db.stream_index("h", name).unwrap();
                    let from = held[stream].saturating_sub(u64::from(back));
                    let to = from + u64::from(len);
                    let batch = parse_batch(body(name, from, to), "h").unwrap();
                    // Its alerts died with the process (never logged).
                    store.store("h", &batch).unwrap();
                    drop(store);
                    set_index(dir.path(), name, before);
                    held[stream] = held[stream].max(to);
                    store = open(dir.path());
                }
                Op::DieMidLine { stream } => {
                    drop(store);
                    let path = open(dir.path()).stream_path("h", STREAMS[stream]);
                    if path.exists() {
                        let next = line(STREAMS[stream], held[stream]);
                        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                        f.write_all(&next.as_bytes()[..next.len() / 2]).unwrap();
                    }
                    store = open(dir.path());
                }
                Op::SendThenFail { stream, back, len } => {
                    let from = held[stream].saturating_sub(u64::from(back));
                    let batch = parse_batch(body(STREAMS[stream], from, from + u64::from(len)), "h").unwrap();
                    store.begin("h").append(&batch.body, &batch.streams).unwrap();
                }
                Op::Restart => {
                    drop(store);
                    store = open(dir.path());
                }
            }
            for (s, name) in STREAMS.iter().enumerate() {
                let path = store.stream_path("h", name);
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
                let offsets: Vec<u64> = complete
                    .lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"].as_u64().unwrap())
                    .collect();
                let want: Vec<u64> = (0..held[s]).map(|i| i * 10).collect();
                prop_assert_eq!(offsets, want);
                // A stream nothing was stored in has no file: a failed
                // batch takes away the files it created.
                prop_assert!(held[s] > 0 || !path.exists(), "{} left behind", path.display());
            }
        }
        // Touch every stream once more (a pure re-send) so alerts found
        // during recovery are raised, then compare with the model.
        for (s, name) in STREAMS.iter().enumerate() {
            if held[s] > 0 {
                let batch = parse_batch(body(name, held[s] - 1, held[s]), "h").unwrap();
                alerts += store.store("h", &batch).unwrap().alerts.len();
            }
        }
        prop_assert_eq!(alerts, expected_alerts(held[0]) + expected_alerts(held[1]));
    }
}
