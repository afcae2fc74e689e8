//! The embedded backend's records: one append-only NDJSON file per host
//! and stream under `DIR/data/`, plus each stream's high-water offset and
//! streak in the SQLite index, stored duplicate-free.
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
//!
//! The mark belongs to the stream, not to its file: a file an operator
//! moves away or truncates (`moved`) is followed by one at its path, and the
//! mark carries on.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde::Deserialize;

use crate::alerts::Streak;
use crate::db::{AlertRow, Db, DbError, StreamIndex};
use crate::ingest::{Batch, Part};
use crate::names::encode_component;
use log_sensor_common::clock::now_secs as unix_now;
use log_sensor_common::fsutil;

use super::StoreOutcome;

mod append;
#[cfg(test)]
mod model;
mod moved;
mod open_files;
#[cfg(test)]
mod tests;
mod writing;
use append::Append;
use moved::FileId;
use open_files::{OpenFiles, StreamId};
pub use writing::Writing;

/// Stream states kept in memory beyond this many are forgotten when idle
/// (and recovered from the index and file when next touched). Memory only:
/// open files have their own cap.
const MAX_CACHED_STREAMS: usize = 8192;

/// The limits [`FileStore`] enforces (`collector.toml`).
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
pub enum FilesError {
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

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// A stream's live state, valid only while its file is consistent with it.
#[derive(Debug)]
struct StreamState {
    /// Its file's key in [`FileStore::files`].
    id: StreamId,
    path: PathBuf,
    /// The file `len` is the length of, as opened: the path may name another
    /// one later (`moved`).
    file: FileId,
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
pub struct FileStore {
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

impl FileStore {
    pub fn new(
        data_dir: PathBuf,
        db: Arc<Db>,
        alert_after: u64,
        limits: StorageLimits,
    ) -> Result<FileStore, FilesError> {
        std::fs::create_dir_all(&data_dir).map_err(io_err(&data_dir, "create"))?;
        Ok(FileStore {
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
    pub fn store(&self, host: &str, batch: &Batch) -> Result<StoreOutcome, FilesError> {
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
        Writing::new(self, host)
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
    /// whether it is a new stream whose file was created now (only when
    /// `may_create`).
    fn state(
        &self,
        host: &str,
        stream: &str,
        may_create: bool,
    ) -> Result<(Arc<Mutex<StreamState>>, bool), FilesError> {
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
    ) -> Result<(StreamState, bool), FilesError> {
        let path = self.stream_path(host, stream);
        let existed = path.exists();
        // A stream with an index but no file had its file moved away while the
        // collector was stopped: not a new stream.
        let new = !existed && index.is_none();
        if new && !may_create {
            return Err(FilesError::TooManyNewStreams {
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
        let meta = file.metadata().map_err(io_err(&path, "stat"))?;
        let actual = meta.len();
        let (start, mut mark, mut streak) = match index {
            Some(i) => (
                i.file_len,
                Some(i.high_water),
                Streak {
                    count: i.streak,
                    alerted: i.streak_alerted,
                },
            ),
            // No index yet: the file alone decides.
            None => (0, None, Streak::default()),
        };
        // A file shorter than the index says is not the file indexed: it was
        // moved away and replaced, or truncated, while the collector was
        // stopped. The mark stays (records at or below it were stored, in the
        // file moved away), and the file is read from its start for lines past
        // it.
        let replaced = index.filter(|i| i.file_len > actual);
        let start = if replaced.is_some() { 0 } else { start };
        let mut pending_alerts = Vec::new();
        let mut end = start;
        // Where the first line past the mark starts, in a replaced file.
        let mut first_past = None;
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
                    serde_json::from_slice(&line).map_err(|source| FilesError::Corrupt {
                        path: path.clone(),
                        at: end,
                        source,
                    })?;
                end += n as u64;
                if mark.is_some_and(|m| rec.offset <= m) {
                    // Not a line past the mark (a file put back at the path):
                    // neither stored now nor part of the streak.
                    continue;
                }
                first_past.get_or_insert(end - n as u64);
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
        if let Some(i) = replaced {
            // The index must describe this file before a line is written to it
            // (as after a move seen while running, `moved`): a crash later
            // would have recovery read it from where the old file ended. Lines
            // past the mark, if any, stay past the indexed length, so the next
            // recovery reads them (and their alerts) again.
            let index = StreamIndex {
                file_len: first_past.unwrap_or(end),
                ..i
            };
            self.db
                .commit_batch(host, &[(stream, index)], &[], unix_now())?;
        }
        self.files.insert(id, file);
        let state = StreamState {
            id,
            path,
            file: FileId::of(&meta),
            len: end,
            mark,
            streak,
            pending_alerts,
        };
        Ok((state, new))
    }
}
