//! One batch on its way into the stream files: appended as its body
//! arrives, made durable and indexed at its commit, cut back off if
//! dropped before.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use super::{io_err, lock, Append, FileStore, FilesError, StoreOutcome, StreamState};
use crate::alerts::Streak;
use crate::db::{AlertRow, StreamIndex};
use crate::ingest::StreamRecords;
use crate::names::encode_component;
use log_sensor_common::clock::now_secs as unix_now;

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
    storage: &'s FileStore,
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

impl<'s> Writing<'s> {
    /// A batch of `host`, which the caller has marked busy.
    pub(super) fn new(storage: &'s FileStore, host: &str) -> Writing<'s> {
        Writing {
            storage,
            host: host.to_owned(),
            open: Vec::new(),
            created: 0,
            stored: 0,
            duplicates: 0,
            done: false,
        }
    }

    /// Writes the records of `streams` not seen yet (their lists only grow
    /// between calls); `body` is the body so far.
    pub fn append(&mut self, body: &[u8], streams: &[StreamRecords]) -> Result<(), FilesError> {
        let storage = self.storage;
        let mut lines = Append::new(body);
        for (i, sr) in streams.iter().enumerate() {
            if self.open.len() <= i {
                let may_create = self.created < storage.limits.max_new_streams_per_batch;
                let (state, created) = storage.state(&self.host, &sr.stream, may_create)?;
                self.created += usize::from(created);
                let mut st = lock(&state);
                // Once a batch: an operator may have moved or truncated the file since the
                // last one (`moved`).
                storage.follow_moved(&self.host, &sr.stream, &mut st)?;
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
            let mut st = lock(&o.state);
            let file = match storage
                .files
                .get(st.id, &st.path, st.file)
                .map_err(io_err(&st.path, "open"))?
            {
                Some(file) => file,
                None => {
                    // Moved away since this batch began, while it was closed to stay under
                    // `max_open_stream_files`: what this batch wrote there must be durable
                    // before the acknowledgement, and the rest goes to the file at the path.
                    // (Should the batch fail after this, those lines stay in the moved file.)
                    if o.len > o.start_len {
                        storage.sync_moved(&st.path)?;
                    }
                    storage.follow_moved(&self.host, &sr.stream, &mut st)?;
                    o.start_len = st.len;
                    o.len = st.len;
                    o.kicked = st.len;
                    storage
                        .files
                        .get(st.id, &st.path, st.file)
                        .map_err(io_err(&st.path, "open"))?
                        .ok_or_else(|| moved_again(&st.path))?
                }
            };
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
    pub fn commit(mut self) -> Result<StoreOutcome, FilesError> {
        let mut outcome = StoreOutcome {
            stored: self.stored,
            duplicates: self.duplicates,
            ..StoreOutcome::default()
        };
        for o in &self.open {
            if o.len > o.start_len {
                let st = lock(&o.state);
                match self
                    .storage
                    .files
                    .get(st.id, &st.path, st.file)
                    .map_err(io_err(&st.path, "open"))?
                {
                    Some(file) => file.sync_data().map_err(io_err(&st.path, "sync"))?,
                    // Moved away after its lines were written, and closed since: the next
                    // batch follows the move; these lines stay in the moved file.
                    None => self.storage.sync_moved(&st.path)?,
                }
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
                    .get(st.id, &st.path, st.file)
                    .and_then(|f| match f {
                        // Cut only a file still at least as long: one truncated behind
                        // our back would be padded with zeros up to where the batch began.
                        Some(f) if f.metadata()?.len() >= o.start_len => {
                            f.set_len(o.start_len).map(|()| true)
                        }
                        _ => Ok(false),
                    });
                let failed = match cut {
                    Ok(true) => continue,
                    Ok(false) => "the file was moved away or truncated meanwhile".to_string(),
                    Err(e) => e.to_string(),
                };
                // The lines stay: forget the state, so the next touch recovers
                // from the index and the file (lines past the mark are well-formed
                // lines of this host's, counted as stored, their re-sends as
                // duplicates).
                tracing::error!(path = %st.path.display(), error = %failed, "cannot cut a failed batch off its stream file");
                drop(st);
                storage.forget(&self.host, &o.stream);
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

/// A file moved away again between being followed and written: a race with the operator
/// that the next batch settles.
fn moved_again(path: &std::path::Path) -> FilesError {
    io_err(path, "open")(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the stream file was moved away again while its batch was written",
    ))
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
