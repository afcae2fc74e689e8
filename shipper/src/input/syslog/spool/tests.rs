use super::*;

fn rec(i: usize) -> SpoolRecord {
    SpoolRecord {
        ts_ms: i as i64,
        part: if i % 3 == 0 { Part::Head } else { Part::Whole },
        len: 100 + i as u64,
        fields: format!("{{\"peer\":\"127.0.0.1:{i}\"}}").into_bytes(),
        msg: format!("message {i}").into_bytes(),
    }
}

fn write(spool: &mut Spool, range: std::ops::Range<usize>) {
    for i in range {
        let mut buf = Vec::new();
        rec(i).encode_into(&mut buf);
        spool.append(&buf).unwrap();
    }
    spool.sync().unwrap();
}

fn read_all(r: &mut SpoolReader) -> Vec<SpoolRecord> {
    let mut out = Vec::new();
    while let Some((_, _, rec)) = r.next().unwrap() {
        out.push(rec);
    }
    out
}

#[test]
fn records_round_trip_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 0, 200, 1 << 30).unwrap();
    write(&mut spool, 0..20);
    assert!(segments(dir.path()).unwrap().len() > 3);
    let mut r = SpoolReader::new(dir.path(), spool.state().clone(), 0);
    assert_eq!(read_all(&mut r), (0..20).map(rec).collect::<Vec<_>>());
    let end = r.position();
    drop(spool);
    let mut spool = Spool::open(dir.path(), 0, 200, 1 << 30).unwrap();
    assert_eq!(spool.state().durable.load(Ordering::Relaxed), end);
    write(&mut spool, 20..25);
    let mut r = SpoolReader::new(dir.path(), spool.state().clone(), end);
    assert_eq!(read_all(&mut r), (20..25).map(rec).collect::<Vec<_>>());
}

#[test]
fn an_empty_spool_starts_at_the_committed_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 5000, 1 << 20, 1 << 30).unwrap();
    write(&mut spool, 0..1);
    let mut r = SpoolReader::new(dir.path(), spool.state().clone(), 0);
    let (at, _, rec0) = r.next().unwrap().unwrap();
    assert_eq!((at, rec0), (5000, rec(0)));
}

#[test]
fn unsynced_records_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 0, 1 << 20, 1 << 30).unwrap();
    let mut buf = Vec::new();
    rec(1).encode_into(&mut buf);
    spool.append(&buf).unwrap();
    let mut r = SpoolReader::new(dir.path(), spool.state().clone(), 0);
    assert_eq!(r.next().unwrap(), None);
    spool.sync().unwrap();
    assert_eq!(read_all(&mut r), vec![rec(1)]);
}

#[test]
fn a_torn_tail_is_cut_at_open_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 0, 1 << 20, 1 << 30).unwrap();
    write(&mut spool, 0..5);
    let good = spool.state().durable.load(Ordering::Relaxed);
    drop(spool);
    let seg = dir.path().join(segment_name(0));
    for torn in [&b"\x30\x00"[..], &[0xff; 40][..]] {
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(torn).unwrap();
        // A whole record whose checksum is wrong is damage too.
        drop(f);
        let spool = Spool::open(dir.path(), 0, 1 << 20, 1 << 30).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), good);
        assert_eq!(
            spool.state().torn_bytes.load(Ordering::Relaxed),
            torn.len() as u64
        );
        let mut r = SpoolReader::new(dir.path(), spool.state().clone(), 0);
        assert_eq!(read_all(&mut r), (0..5).map(rec).collect::<Vec<_>>());
    }
    let mut buf = Vec::new();
    rec(9).encode_into(&mut buf);
    let n = buf.len();
    buf[n - 1] ^= 1;
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&buf).unwrap();
    drop(f);
    Spool::open(dir.path(), 0, 1 << 20, 1 << 30).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), good);
}

#[test]
fn reclaim_deletes_only_committed_whole_segments_and_clears_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 0, 200, 600).unwrap();
    assert!(
        spool.state().low.load(Ordering::Relaxed),
        "an empty spool is low"
    );
    write(&mut spool, 0..20);
    assert!(spool.state().full.load(Ordering::Relaxed));
    assert!(!spool.state().low.load(Ordering::Relaxed));
    let segs = segments(dir.path()).unwrap();
    // Committed into the middle of the third segment: the first two go.
    let committed = segs[2].0 + 1;
    spool.reclaim(committed).unwrap();
    let left = segments(dir.path()).unwrap();
    assert_eq!(left[0].0, segs[2].0);
    let on_disk: u64 = left
        .iter()
        .map(|(_, p)| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(spool.state().disk_bytes.load(Ordering::Relaxed), on_disk);
    // Everything committed: all but the segment being written go; no longer full.
    let end = spool.state().durable.load(Ordering::Relaxed);
    spool.reclaim(end).unwrap();
    assert_eq!(segments(dir.path()).unwrap().len(), 1);
    assert_eq!(spool.state().disk_bytes.load(Ordering::Relaxed), 0);
    assert!(!spool.state().full.load(Ordering::Relaxed));
    assert!(spool.state().low.load(Ordering::Relaxed));
    // A reader that starts before what was reclaimed resumes at the oldest segment.
    write(&mut spool, 20..22);
    let mut r = SpoolReader::new(dir.path(), spool.state().clone(), 0);
    assert_eq!(read_all(&mut r), vec![rec(20), rec(21)]);
}
