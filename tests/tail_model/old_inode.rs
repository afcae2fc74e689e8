//! Which stream a file found on an old inode continues: orderings the model found with
//! `MODEL_CASES=3000`, pinned, and the focused tests of their fixes (`shipper/src/tail/reclaim.rs`,
//! a copytruncated file rotated out of the globs while down; `tail/provisional.rs`, several short
//! streams on one reused inode).

use super::*;

/// `paths = ["logs/app.log"]`: truncated in place and written again while the agent was down,
/// then rotated out of the globs before it started. The stream's inode now holds new content
/// under `app.log.1`; found by the model with `MODEL_CASES=3000`.
#[test]
fn copytruncated_and_rewritten_while_down_then_rotated_away_is_read() {
    check_with(
        NARROW,
        &[
            Op::Append(8, 34),
            Op::CopyTruncate,
            Op::Kill,
            Op::Append(9, 23),
            Op::Rotate,
        ],
    )
    .unwrap();
}

/// Exactly once across clean restarts, found by the model with `MODEL_CASES=3000`.
#[test]
fn rotations_across_clean_restarts_deliver_once() {
    use Op::*;
    check_exactly_once(&[
        Restart,
        Append(1, 2),
        Tick,
        Append(2, 10),
        Append(2, 8),
        Append(4, 50),
        Append(2, 6),
        Rotate,
        Append(2, 9),
        Rotate,
        Restart,
        Append(2, 1),
        Append(1, 5),
        Append(7, 57),
        Tick,
        Rotate,
        Restart,
        Rotate,
        Tick,
        Append(11, 41),
        Restart,
        Append(5, 23),
        Rotate,
        Append(1, 5),
        Tick,
        Restart,
        Append(1, 9),
        Append(2, 6),
        Restart,
        Restart,
        Rotate,
        Restart,
        Append(11, 105),
        Append(1, 10),
        Append(2, 6),
    ])
    .unwrap();
}

/// A short file on a reused inode: the stream of an earlier short file that had that inode (let
/// go when it was rotated away and deleted) is still in the store beside the stream of the file
/// there now. Which one a restart tried depended on their random ids: about half the time it
/// tried only the stale one, whose bytes do not match, and read the file again from 0 as a new
/// stream. The stale stream here gets the smallest id, so it is always the one tried first.
#[test]
fn a_short_file_on_a_reused_inode_continues_its_own_stream_not_a_stale_one() {
    let mut h = Harness::new(WIDE);
    h.apply(&Op::Append(1, 5));
    h.pump();
    h.tailer = None;
    {
        let mut store = h.store.lock().unwrap();
        let rows = store.load_streams().unwrap();
        assert_eq!(rows.len(), 1, "one short stream: {rows:?}");
        let mut stale = rows[0].clone();
        stale.stream = "0000000000000000".into();
        stale.path = h.p("app.log.2").display().to_string();
        stale.state = log_sensor::store::StreamState::Released;
        stale.read_offset = 10;
        stale.committed_offset = 10;
        stale.committed_hash = log_sensor::file::open::marker_in_chunk(b"L9-other\nX", 10, 10);
        store.upsert_stream(&stale).unwrap();
    }
    h.start();
    // Once still short, once grown past N: both ways of finding a short stream again.
    h.apply(&Op::Append(1, 0));
    h.apply(&Op::Restart);
    h.apply(&Op::Append(3, 60));
    h.apply(&Op::Restart);
    h.pump();
    let mut seen: HashSet<&str> = HashSet::new();
    let twice: Vec<&String> = h
        .delivered
        .iter()
        .filter(|d| !seen.insert(d.as_str()))
        .collect();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert_eq!(seen.len(), h.written.len(), "delivered {:?}", h.delivered);
}

/// The agent stopped; `app.log` copied and truncated in place (copytruncate), written again
/// (shorter than the old offset, longer with another head, shorter than N), then rotated out of
/// the globs (`paths = ["logs/app.log"]`) before the start. Found on the stream's inode with
/// other content, the file was let go and its new lines lost. (Without the copy, other content
/// on the inode is a reused inode's, left alone: `tests/rotation.rs`.)
#[test]
fn copytruncated_and_rewritten_while_stopped_then_rotated_out_of_the_globs_is_read() {
    for (n, len) in [(2u8, 3u8), (9, 100), (1, 0)] {
        let mut h = Harness::new(NARROW);
        h.apply(&Op::Append(5, 40));
        h.pump();
        h.tailer = None;
        std::fs::copy(h.p("app.log"), h.p("app.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(h.p("app.log"))
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(h.p("app.log"))
            .unwrap();
        for i in 0..n {
            let line = format!("R{i}-{}", "r".repeat(len as usize));
            writeln!(f, "{line}").unwrap();
            h.written.push(line);
        }
        drop(f);
        h.make_room_for_dot1();
        std::fs::rename(h.p("app.log"), h.p("app.log.1")).unwrap();
        std::fs::File::create(h.p("app.log")).unwrap();
        h.start();
        h.pump();
        let delivered: HashSet<&str> = h.delivered.iter().map(String::as_str).collect();
        let missing: Vec<&String> = h
            .written
            .iter()
            .filter(|w| !delivered.contains(w.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "rewrite ({n}, {len}): never delivered: {missing:?}"
        );
        // As if a crash had lost the old stream's last batch: it is looked for again at every
        // start, and finds the file its successor was read from. Not read again.
        {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(h.p("app.log.1")).unwrap().ino();
            let old = h.p("app.log").display().to_string();
            let mut store = h.store.lock().unwrap();
            let rows = store.load_streams().unwrap();
            let mut k = rows
                .into_iter()
                .find(|r| r.inode == ino && r.path == old)
                .expect("the old stream on the rewritten file's inode");
            k.read_offset += 10;
            store.upsert_stream(&k).unwrap();
        }
        let before = h.delivered.len();
        h.apply(&Op::Restart);
        h.apply(&Op::Restart);
        assert_eq!(
            &h.delivered[before..],
            &[] as &[String],
            "rewrite ({n}, {len}): read again"
        );
    }
}
