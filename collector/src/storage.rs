//! Durable, duplicate-free storage: one append-only NDJSON file per host
//! and stream under `DIR/data/`, plus each stream's high-water offset in
//! the SQLite index.
//!
//! Crash safety rests on one order and one rule:
//! * order: append the batch's lines (as its body arrives, see
//!   [`Writing`]), fsync the file, then move the index in one transaction,
//!   then acknowledge; a batch refused or cut short is cut back off the
//!   files;
//! * rule: the file is the truth. The first time a stream is touched after
//!   a start, its state is rebuilt from the index *and* the file: lines
//!   past the indexed length (written, but the process died before the
//!   index moved) are read to recover the real mark, and a torn last line
//!   (died mid-write) is cut off. The sender re-sends whatever was not
//!   acknowledged, and offsets at or below the mark are dropped, so every
//!   record ends up stored exactly once.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Deserialize;

use crate::alerts::Streak;
use crate::db::{AlertRow, Db, DbError, StreamIndex};
use crate::ingest::{Batch, Part, StreamRecords};
use crate::names::encode_component;
use log_sensor_common::clock::now_secs as unix_now;
use log_sensor_common::fsutil;

mod append;
mod open_files;
use append::Append;
use open_files::{OpenFiles, StreamId};

/// Stream states kept in memory beyond this many are forgotten when idle
/// (and recovered from the index and file when next touched). Memory only:
/// open files have their own cap.
const MAX_CACHED_STREAMS: usize = 8192;

/// The limits [`Storage`] enforces (`collector.toml`).
#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    /// `max_open_stream_files`.
    pub max_open_files: usize,
    /// `max_new_streams_per_batch`.
    pub max_new_streams_per_batch: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            max_open_files: 1024,
            max_new_streams_per_batch: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: line at byte {at} is not a stored record: {source}")]
    Corrupt {
        path: PathBuf,
        at: u64,
        source: serde_json::Error,
    },
    #[error("the batch creates more than {limit} new streams for host {host:?} (max_new_streams_per_batch); nothing of it is stored: send the streams over several batches")]
    TooManyNewStreams { host: String, limit: usize },
    #[error(transparent)]
    Db(#[from] DbError),
}

fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    pub stored: usize,
    pub duplicates: usize,
    pub bytes_written: u64,
    pub alerts: Vec<AlertRow>,
}

/// A stream's live state, valid only while its file is consistent with it.
#[derive(Debug)]
struct StreamState {
    /// Its file's key in [`Storage::files`].
    id: StreamId,
    path: PathBuf,
    /// Length of the file, always at a line boundary.
    len: u64,
    /// Offset of the last stored record; `None` for an empty stream.
    mark: Option<u64>,
    streak: Streak,
    /// Alerts found during recovery that the crash kept from being raised.
    pending_alerts: Vec<AlertRow>,
}

type Key = (String, String);

/// The stream states in memory.
#[derive(Default)]
struct Streams {
    by_key: HashMap<Key, Arc<Mutex<StreamState>>>,
    /// Gives each state loaded its own [`StreamId`].
    next_id: StreamId,
    /// Idle states are forgotten when the map reaches this size; doubled
    /// past the states in use, so a batch holding many cannot make every
    /// lookup scan them all.
    prune_at: usize,
}

/// The store for all hosts and streams.
pub struct Storage {
    data_dir: PathBuf,
    db: Arc<Db>,
    /// `overlong_alert_after` from the config.
    alert_after: u64,
    limits: StorageLimits,
    /// Streams touched since start; each behind its own lock so different
    /// streams are written in parallel.
    streams: Mutex<Streams>,
    /// The stream files open now, at most `max_open_files`; every write,
    /// sync and cut goes through it.
    files: OpenFiles,
    /// Hosts with a batch being written: one at a time per host, so a
    /// batch's lines are never interleaved with another's and can be cut
    /// back off if it fails.
    busy: Mutex<HashSet<String>>,
    idle: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The two fields recovery needs from a stored line.
#[derive(Deserialize)]
struct Stored {
    offset: u64,
    part: Part,
}

impl Storage {
    pub fn new(
        data_dir: PathBuf,
        db: Arc<Db>,
        alert_after: u64,
        limits: StorageLimits,
    ) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir, "create"))?;
        Ok(Storage {
            data_dir,
            db,
            alert_after,
            limits,
            streams: Mutex::new(Streams {
                prune_at: MAX_CACHED_STREAMS,
                ..Streams::default()
            }),
            files: OpenFiles::new(limits.max_open_files),
            busy: Mutex::new(HashSet::new()),
            idle: Condvar::new(),
        })
    }

    /// Where a stream's records live; never outside `data_dir`.
    pub fn stream_path(&self, host: &str, stream: &str) -> PathBuf {
        self.data_dir
            .join(encode_component(host))
            .join(format!("{}.ndjson", encode_component(stream)))
    }

    /// Stores a host-checked batch: new records are appended and synced,
    /// then the index moves; records at or below a stream's mark are
    /// counted as duplicates. Returns only once everything is durable.
    pub fn store(&self, host: &str, batch: &Batch) -> Result<StoreOutcome, StorageError> {
        let mut writing = self.begin(host);
        writing.append(&batch.body, &batch.streams)?;
        writing.commit()
    }

    /// Starts writing a batch of `host`, once the host's previous one is
    /// done.
    pub fn begin(&self, host: &str) -> Writing<'_> {
        let mut busy = lock(&self.busy);
        while busy.contains(host) {
            busy = self.idle.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(host.to_owned());
        Writing {
            storage: self,
            host: host.to_owned(),
            open: Vec::new(),
            created: 0,
            stored: 0,
            duplicates: 0,
            done: false,
        }
    }

    fn alert(
        &self,
        host: &str,
        stream: &str,
        path: Option<String>,
        offset: u64,
        count: u64,
    ) -> AlertRow {
        AlertRow {
            at: unix_now(),
            kind: "overlong_streak",
            host_id: host.to_owned(),
            stream: stream.to_owned(),
            path,
            at_offset: offset,
            count,
        }
    }

    /// The live state of a stream, recovering it on first touch, and
    /// whether its file was created now (only when `may_create`).
    fn state(
        &self,
        host: &str,
        stream: &str,
        may_create: bool,
    ) -> Result<(Arc<Mutex<StreamState>>, bool), StorageError> {
        let key = (host.to_owned(), stream.to_owned());
        let mut map = lock(&self.streams);
        if let Some(s) = map.by_key.get(&key) {
            return Ok((Arc::clone(s), false));
        }
        if map.by_key.len() >= map.prune_at {
            let files = &self.files;
            map.by_key.retain(|_, s| {
                // Held only by the map (which is locked): nobody can be
                // using it, or start to.
                let idle = Arc::strong_count(s) == 1;
                if idle {
                    files.close(lock(s).id);
                }
                !idle
            });
            map.prune_at = MAX_CACHED_STREAMS.max(2 * map.by_key.len());
        }
        let index = self.db.stream_index(host, stream)?;
        map.next_id += 1;
        let (state, created) = self.recover(host, stream, index, map.next_id, may_create)?;
        let state = Arc::new(Mutex::new(state));
        map.by_key.insert(key, Arc::clone(&state));
        Ok((state, created))
    }

    /// Forgets a stream whose file a failed batch removed.
    fn forget(&self, host: &str, stream: &str) {
        let key = (host.to_owned(), stream.to_owned());
        if let Some(s) = lock(&self.streams).by_key.remove(&key) {
            self.files.close(lock(&s).id);
        }
    }

    fn recover(
        &self,
        host: &str,
        stream: &str,
        index: Option<StreamIndex>,
        id: StreamId,
        may_create: bool,
    ) -> Result<(StreamState, bool), StorageError> {
        let path = self.stream_path(host, stream);
        let existed = path.exists();
        if !existed && !may_create {
            return Err(StorageError::TooManyNewStreams {
                host: host.to_owned(),
                limit: self.limits.max_new_streams_per_batch,
            });
        }
        let host_dir = path.parent().expect("stream files live in a host folder");
        if !host_dir.exists() {
            std::fs::create_dir_all(host_dir).map_err(io_err(host_dir, "create"))?;
            fsutil::sync_dir(&self.data_dir).map_err(io_err(&self.data_dir, "sync"))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        if !existed {
            fsutil::sync_dir(host_dir).map_err(io_err(host_dir, "sync"))?;
        }
        let actual = file.metadata().map_err(io_err(&path, "stat"))?.len();
        let (start, mut mark, mut streak) = match index {
            Some(i) if i.file_len <= actual => (
                i.file_len,
                Some(i.high_water),
                Streak {
                    count: i.streak,
                    alerted: i.streak_alerted,
                },
            ),
            // No index yet, or the file is shorter than the index says
            // (replaced behind our back): the file alone decides.
            _ => (0, None, Streak::default()),
        };
        let mut pending_alerts = Vec::new();
        let mut end = start;
        if start < actual {
            let mut reader = BufReader::with_capacity(1 << 20, &file);
            reader
                .seek(SeekFrom::Start(start))
                .map_err(io_err(&path, "seek"))?;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader
                    .read_until(b'\n', &mut line)
                    .map_err(io_err(&path, "read"))?;
                if n == 0 || line.last() != Some(&b'\n') {
                    break;
                }
                let rec: Stored =
                    serde_json::from_slice(&line).map_err(|source| StorageError::Corrupt {
                        path: path.clone(),
                        at: end,
                        source,
                    })?;
                mark = Some(rec.offset);
                if streak.observe(rec.part, self.alert_after) {
                    let path_field = serde_json::from_slice::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("path").and_then(|p| p.as_str()).map(str::to_owned));
                    pending_alerts.push(self.alert(
                        host,
                        stream,
                        path_field,
                        rec.offset,
                        streak.count,
                    ));
                }
                end += n as u64;
            }
            if end < actual {
                // A torn line from a write that never finished; it was never
                // acknowledged, so the sender still has it.
                file.set_len(end)
                    .map_err(io_err(&path, "truncate torn line"))?;
            }
            // Lines past the index may still sit only in the page cache (the
            // process died before its fsync). They now count as stored, and
            // re-sends of them will be acknowledged as duplicates without a
            // write, so make them durable first.
            file.sync_all().map_err(io_err(&path, "sync"))?;
        }
        self.files.insert(id, file);
        let state = StreamState {
            id,
            path,
            len: end,
            mark,
            streak,
            pending_alerts,
        };
        Ok((state, !existed))
    }
}

/// A batch being stored while its body is still arriving: [`append`]
/// writes the records parsed so far to their streams' files (and starts
/// their writeback, so the final fsync has little left to wait for);
/// [`commit`] makes them durable and moves the index. Dropped without a
/// commit (the body was refused or cut short), it cuts every file back to
/// where the batch began: nothing of it stays stored.
///
/// [`append`]: Writing::append
/// [`commit`]: Writing::commit
pub struct Writing<'s> {
    storage: &'s Storage,
    host: String,
    /// The streams this batch touched, in order.
    open: Vec<Open>,
    /// Of those, how many have a file this batch created.
    created: usize,
    stored: usize,
    duplicates: usize,
    done: bool,
}

/// One stream's share of the batch so far.
struct Open {
    stream: String,
    state: Arc<Mutex<StreamState>>,
    /// The file did not exist before this batch: a failure removes it.
    created: bool,
    /// The file's length before this batch.
    start_len: u64,
    len: u64,
    mark: Option<u64>,
    streak: Streak,
    /// Alerts recovery found (raised with this batch, or put back if it
    /// fails), then the batch's own.
    pending: Vec<AlertRow>,
    alerts: Vec<AlertRow>,
    /// Of the stream's records in the batch, how many were seen.
    seen: usize,
    /// Where the last writeback started.
    kicked: u64,
}

impl Writing<'_> {
    /// Writes the records of `streams` not seen yet (their lists only grow
    /// between calls); `body` is the body so far.
    pub fn append(&mut self, body: &[u8], streams: &[StreamRecords]) -> Result<(), StorageError> {
        let storage = self.storage;
        let mut lines = Append::new(body);
        for (i, sr) in streams.iter().enumerate() {
            if self.open.len() <= i {
                let may_create = self.created < storage.limits.max_new_streams_per_batch;
                let (state, created) = storage.state(&self.host, &sr.stream, may_create)?;
                self.created += usize::from(created);
                let mut st = lock(&state);
                self.open.push(Open {
                    stream: sr.stream.clone(),
                    created,
                    start_len: st.len,
                    len: st.len,
                    mark: st.mark,
                    streak: st.streak,
                    pending: std::mem::take(&mut st.pending_alerts),
                    alerts: Vec::new(),
                    seen: 0,
                    kicked: st.len,
                    state: Arc::clone(&state),
                });
            }
            let o = &mut self.open[i];
            lines.clear();
            for r in &sr.records[o.seen..] {
                if o.mark.is_some_and(|m| r.offset <= m) {
                    self.duplicates += 1;
                    continue;
                }
                self.stored += 1;
                lines.push_line(r.line.clone());
                o.mark = Some(r.offset);
                if o.streak.observe(r.part, storage.alert_after) {
                    let path = crate::ingest::path_of_line(&body[r.line.clone()]);
                    o.alerts.push(storage.alert(
                        &self.host,
                        &sr.stream,
                        path,
                        r.offset,
                        o.streak.count,
                    ));
                }
            }
            o.seen = sr.records.len();
            if lines.is_empty() {
                continue;
            }
            let st = lock(&o.state);
            let file = storage
                .files
                .get(st.id, &st.path)
                .map_err(io_err(&st.path, "open"))?;
            lines
                .write_all_to(&mut &*file)
                .map_err(io_err(&st.path, "append"))?;
            o.len += lines.len();
            // Start writing these pages out now, while the rest of the body
            // arrives; the commit's fdatasync then waits for less.
            if o.len - o.kicked >= 1 << 20 {
                start_writeback(&file, o.kicked, o.len - o.kicked);
                o.kicked = o.len;
            }
        }
        Ok(())
    }

    /// Makes the batch durable and moves the index: the acknowledgement may
    /// go out when this returns Ok.
    pub fn commit(mut self) -> Result<StoreOutcome, StorageError> {
        let mut outcome = StoreOutcome {
            stored: self.stored,
            duplicates: self.duplicates,
            ..StoreOutcome::default()
        };
        for o in &self.open {
            if o.len > o.start_len {
                let st = lock(&o.state);
                let file = self
                    .storage
                    .files
                    .get(st.id, &st.path)
                    .map_err(io_err(&st.path, "open"))?;
                file.sync_data().map_err(io_err(&st.path, "sync"))?;
            }
        }
        // Durable now: from here on the lines stay, whatever happens to the
        // index (recovery reads lines past it).
        self.done = true;
        let mut marks: Vec<(&str, StreamIndex)> = Vec::new();
        for o in &mut self.open {
            let mut st = lock(&o.state);
            st.len = o.len;
            st.mark = o.mark;
            st.streak = o.streak;
            let alerts = o.pending.len() + o.alerts.len();
            if o.len == o.start_len && alerts == 0 {
                continue;
            }
            outcome.bytes_written += o.len - o.start_len;
            outcome.alerts.append(&mut o.pending);
            outcome.alerts.append(&mut o.alerts);
            if let Some(high_water) = o.mark {
                marks.push((
                    o.stream.as_str(),
                    StreamIndex {
                        high_water,
                        file_len: o.len,
                        streak: o.streak.count,
                        streak_alerted: o.streak.alerted,
                    },
                ));
            }
        }
        if !marks.is_empty() || !outcome.alerts.is_empty() {
            self.storage
                .db
                .commit_batch(&self.host, &marks, &outcome.alerts, unix_now())?;
        }
        Ok(outcome)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if !self.done {
            let storage = self.storage;
            let mut removed_any = false;
            for o in self.open.drain(..) {
                let mut st = lock(&o.state);
                st.pending_alerts = o.pending;
                if o.created {
                    // The batch made this file: take it away again, so a
                    // refused batch (one naming thousands of streams, say)
                    // leaves no empty files behind.
                    storage.files.close(st.id);
                    match std::fs::remove_file(&st.path) {
                        Ok(()) => {
                            drop(st);
                            storage.forget(&self.host, &o.stream);
                            removed_any = true;
                            continue;
                        }
                        Err(e) => {
                            tracing::error!(path = %st.path.display(), error = %e, "cannot remove the stream file of a failed batch");
                        }
                    }
                }
                if o.len == o.start_len {
                    continue;
                }
                let cut = storage
                    .files
                    .get(st.id, &st.path)
                    .and_then(|f| f.set_len(o.start_len));
                if let Err(e) = cut {
                    // The lines stay: forget the state, so the next touch
                    // recovers from the file (they are well-formed lines of
                    // this host's, counted as stored, their re-sends as
                    // duplicates).
                    tracing::error!(path = %st.path.display(), error = %e, "cannot cut a failed batch off its stream file");
                    drop(st);
                    storage.forget(&self.host, &o.stream);
                }
            }
            if removed_any {
                // The host's folder too, if the batch made it (removing a
                // folder that still has files fails, and is meant to).
                let _ = std::fs::remove_dir(storage.data_dir.join(encode_component(&self.host)));
            }
        }
        lock(&self.storage.busy).remove(&self.host);
        self.storage.idle.notify_all();
    }
}

/// Asks the kernel to start writing `len` bytes from `from` to disk, without
/// waiting (a hint: failure only means the fsync does it all).
fn start_writeback(file: &File, from: u64, len: u64) {
    // SAFETY: sync_file_range on a descriptor we own; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
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

    fn setup(dir: &Path) -> (Arc<Db>, Storage) {
        let db = Arc::new(Db::create(&dir.join("c.db")).unwrap());
        let limits = StorageLimits {
            max_open_files: 2,
            max_new_streams_per_batch: 3,
        };
        let s = Storage::new(dir.join("data"), Arc::clone(&db), 3, limits).unwrap();
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
        let a =
            [10, 11, 12, 13].map(|o| line("a", o, if o == 13 { "tail" } else { "whole" }) + "\n");
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
            matches!(err, StorageError::TooManyNewStreams { limit: 3, .. }),
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
}

/// A model test: random sends, re-sends and crashes (clean, mid-line, and
/// between the file sync and the index commit) against the real store;
/// after every step each stream's file must hold every record sent so far
/// exactly once, in order, and the alerts raised must match the streaks in
/// what is stored.
#[cfg(test)]
mod model {
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

    fn open(dir: &Path) -> Storage {
        let db = Arc::new(Db::create(&dir.join("c.db")).unwrap());
        // One open file for two streams: every switch closes one and
        // reopens the other, mid-batch and across crashes.
        let limits = StorageLimits {
            max_open_files: 1,
            ..StorageLimits::default()
        };
        Storage::new(dir.join("data"), db, ALERT_AFTER, limits).unwrap()
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
}
