//! Unit tests of the file store: re-sends, cut-back batches, restarts, limits.

use super::*;
use crate::ingest::parse_batch;
use std::io::Write;
use std::time::Duration;

fn line(stream: &str, offset: u64, part: &str) -> String {
    format!(
        r#"{{"host":"h","stream":"{stream}","offset":{offset},"len":1,"part":"{part}","path":"/p","msg":"m{offset}"}}"#
    )
}

fn batch(lines: &[String]) -> Batch {
    parse_batch(lines.join("\n").into_bytes(), "h").unwrap()
}

fn setup(dir: &Path) -> (Arc<Db>, FileStore) {
    let db = Arc::new(Db::create(&dir.join("c.db")).unwrap());
    let limits = StorageLimits {
        max_open_files: 2,
        max_new_streams_per_batch: 3,
    };
    let s = FileStore::new(dir.join("data"), Arc::clone(&db), 3, limits).unwrap();
    (db, s)
}

fn offsets(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["offset"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn resent_records_are_acknowledged_once_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    let b = batch(&[
        line("a", 0, "whole"),
        line("a", 10, "whole"),
        line("b", 0, "whole"),
    ]);
    let o = s.store("h", &b).unwrap();
    assert_eq!((o.stored, o.duplicates), (3, 0));
    let b2 = batch(&[
        line("a", 10, "whole"),
        line("a", 20, "whole"),
        line("b", 0, "whole"),
    ]);
    let o = s.store("h", &b2).unwrap();
    assert_eq!((o.stored, o.duplicates), (1, 2));
    assert_eq!(offsets(&s.stream_path("h", "a")), vec![0, 10, 20]);
}

/// A batch written while its body arrived and then dropped (refused or
/// cut short) leaves the files, marks and streaks as they were: sent
/// again, all of it is new, stored once, and its alert is raised then.
#[test]
fn a_batch_not_committed_is_cut_back_off_and_stored_whole_when_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    s.store("h", &batch(&[line("a", 0, "whole")])).unwrap();
    let path = s.stream_path("h", "a");
    let before = std::fs::read(&path).unwrap();
    // Three over-length parts: alert_after is 3 in `setup`.
    let second = batch(&[
        line("a", 10, "head"),
        line("a", 20, "tail"),
        line("b", 0, "whole"),
        line("a", 30, "head"),
    ]);
    {
        let mut w = s.begin("h");
        w.append(&second.body, &second.streams).unwrap();
        assert!(std::fs::read(&path).unwrap().len() > before.len());
    }
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(
        !s.stream_path("h", "b").exists(),
        "the file the batch created is gone"
    );
    let o = s.store("h", &second).unwrap();
    assert_eq!((o.stored, o.duplicates, o.alerts.len()), (4, 0, 1));
    assert_eq!(offsets(&path), vec![0, 10, 20, 30]);
    assert_eq!(offsets(&s.stream_path("h", "b")), vec![0]);
}

/// One host writes one batch at a time: a second waits for the first
/// to commit or be dropped, so their lines never interleave.
#[test]
fn a_hosts_second_batch_waits_for_its_first() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    let s = Arc::new(s);
    let first = s.begin("h");
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            let w = s.begin("h");
            tx.send(()).unwrap();
            drop(w);
        })
    };
    // Another host is not held up.
    drop(s.begin("other"));
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    drop(first);
    rx.recv_timeout(Duration::from_secs(20)).unwrap();
    waiter.join().unwrap();
}

#[test]
fn stored_bytes_are_each_new_line_and_one_newline() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    s.store("h", &batch(&[line("a", 10, "whole")])).unwrap();
    // CRLF endings, a blank line, two streams interleaved, a re-sent
    // record between two new ones, and no newline at the end.
    let body = format!(
        "{}\r\n{}\n\n{}\n{}\n{}\r\n{}\n{}",
        line("a", 5, "whole"),
        line("a", 11, "whole"),
        line("b", 0, "whole"),
        line("a", 12, "whole"),
        line("b", 1, "head"),
        line("a", 12, "whole"),
        line("a", 13, "tail"),
    );
    let o = s
        .store("h", &parse_batch(body.into_bytes(), "h").unwrap())
        .unwrap();
    assert_eq!((o.stored, o.duplicates), (5, 2));
    let a = [10, 11, 12, 13].map(|o| line("a", o, if o == 13 { "tail" } else { "whole" }) + "\n");
    let b = [line("b", 0, "whole") + "\n", line("b", 1, "head") + "\n"];
    assert_eq!(
        std::fs::read_to_string(s.stream_path("h", "a")).unwrap(),
        a.concat()
    );
    assert_eq!(
        std::fs::read_to_string(s.stream_path("h", "b")).unwrap(),
        b.concat()
    );
    assert_eq!(
        o.bytes_written as usize,
        a[1..].concat().len() + b.concat().len()
    );
}

#[test]
fn restart_recovers_marks_and_cuts_torn_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path;
    {
        let (_db, s) = setup(dir.path());
        s.store("h", &batch(&[line("a", 0, "whole")])).unwrap();
        path = s.stream_path("h", "a");
    }
    // The process died after writing two more lines and half a third,
    // before the index moved.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    writeln!(f, "{}", line("a", 10, "whole")).unwrap();
    writeln!(f, "{}", line("a", 20, "whole")).unwrap();
    write!(f, "{}", &line("a", 30, "whole")[..15]).unwrap();
    drop(f);
    let (_db, s) = setup(dir.path());
    let resend = batch(&[
        line("a", 0, "whole"),
        line("a", 10, "whole"),
        line("a", 20, "whole"),
        line("a", 30, "whole"),
    ]);
    let o = s.store("h", &resend).unwrap();
    assert_eq!((o.stored, o.duplicates), (1, 3));
    assert_eq!(offsets(&path), vec![0, 10, 20, 30]);
}

#[test]
fn streak_alerts_once_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_db, s) = setup(dir.path());
        let o = s
            .store("h", &batch(&[line("a", 0, "head"), line("a", 5, "tail")]))
            .unwrap();
        assert!(o.alerts.is_empty());
    }
    let (_db, s) = setup(dir.path());
    let o = s
        .store("h", &batch(&[line("a", 10, "head"), line("a", 15, "tail")]))
        .unwrap();
    assert_eq!(o.alerts.len(), 1);
    assert_eq!(o.alerts[0].at_offset, 10);
    assert_eq!(o.alerts[0].path.as_deref(), Some("/p"));
    let o = s
        .store(
            "h",
            &batch(&[
                line("a", 20, "head"),
                line("a", 25, "whole"),
                line("a", 30, "head"),
            ]),
        )
        .unwrap();
    assert!(o.alerts.is_empty());
}

#[test]
fn racing_resends_of_one_stream_store_each_record_once() {
    // An agent that timed out and re-sent on a second connection while
    // the first batch was still being written.
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    let lines: Vec<String> = (0..400).map(|i| line("a", i * 10, "whole")).collect();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            let lines = &lines;
            scope.spawn(move || {
                for chunk in lines.chunks(37 + t) {
                    s.store("h", &batch(chunk)).unwrap();
                }
            });
        }
    });
    let want: Vec<u64> = (0..400).map(|i| i * 10).collect();
    assert_eq!(offsets(&s.stream_path("h", "a")), want);
}

/// Issue #10.3: one batch naming 16,384 new streams held as many
/// descriptors and left empty files behind when it failed.
#[test]
fn a_batch_creating_too_many_streams_is_refused_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    // At most three new streams a batch and two open files.
    let (_db, s) = setup(dir.path());
    s.store("h", &batch(&[line("a", 0, "whole")])).unwrap();
    let names = ["a", "b", "c", "d", "e"];
    let many: Vec<String> = names.iter().map(|n| line(n, 10, "whole")).collect();
    let err = s.store("h", &batch(&many)).unwrap_err();
    assert!(
        matches!(err, FilesError::TooManyNewStreams { limit: 3, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("max_new_streams_per_batch"),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(s.stream_path("h", "a").parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["a.ndjson"]);
    assert_eq!(offsets(&s.stream_path("h", "a")), vec![0]);
    // In two batches they all get in, through two open files.
    s.store("h", &batch(&many[..4])).unwrap();
    let o = s.store("h", &batch(&many)).unwrap();
    assert_eq!((o.stored, o.duplicates), (1, 4));
    assert_eq!(offsets(&s.stream_path("h", "a")), vec![0, 10]);
    for n in &names[1..] {
        assert_eq!(offsets(&s.stream_path("h", n)), vec![10], "stream {n}");
    }
    assert!(s.files.open_count() <= 2);
}

#[test]
fn hostile_ids_stay_inside_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    let p = s.stream_path("../../etc", "../x/y");
    assert!(p.starts_with(dir.path().join("data")));
    assert_eq!(
        p.components().count(),
        dir.path().join("data").components().count() + 2
    );
}

/// A file truncated in place (copytruncate) while a batch was written to it: the failed
/// batch's cut-back must not set the file's length back up to where the batch began, which
/// padded it with zero bytes that recovery then refused as a corrupt line.
#[test]
fn a_failed_batch_never_pads_a_file_truncated_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, s) = setup(dir.path());
    s.store("h", &batch(&[line("a", 0, "whole")])).unwrap();
    let path = s.stream_path("h", "a");
    {
        let b = batch(&[line("a", 10, "whole")]);
        let mut writing = s.begin("h");
        writing.append(&b.body, &b.streams).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        // Dropped uncommitted: the body was refused.
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"", "no zero bytes");
    let o = s
        .store(
            "h",
            &batch(&[line("a", 0, "whole"), line("a", 10, "whole")]),
        )
        .unwrap();
    assert_eq!(
        (o.stored, o.duplicates),
        (1, 1),
        "the mark outlives the file"
    );
    assert_eq!(offsets(&path), vec![10]);
}
