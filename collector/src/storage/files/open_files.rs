//! The stream files kept open, at most `max_open_stream_files` of them:
//! at the cap the least recently used are closed, and reopened when their
//! stream is next written. One batch naming 16,384 streams once held as
//! many descriptors, and two such batches left every other host's ingest
//! failing with "Too many open files".
//!
//! Files are handed out as `Arc<File>`, so closing one another thread is
//! writing only takes it out of the cache; its descriptor closes when that
//! write is done. Open descriptors are then at most the cap plus the
//! writes in progress.
//!
//! Closing a file with unsynced lines loses nothing: a commit reopens it
//! and `fdatasync`s the new descriptor, which writes out every dirty page
//! of the file, whichever descriptor wrote it. A writeback error that
//! happened while it was closed is still reported to that fsync (Linux
//! reports an error no descriptor has seen yet to the next one opened,
//! since 4.16).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Which stream a file belongs to: a number given to each stream's state
/// when it is loaded, cheaper to hash than its host and stream ids.
pub(super) type StreamId = u64;

pub(super) struct OpenFiles {
    max: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Bumped at every use; an entry's tick says when it was last used.
    tick: u64,
    files: HashMap<StreamId, (u64, Arc<File>)>,
}

impl OpenFiles {
    pub(super) fn new(max: usize) -> OpenFiles {
        OpenFiles {
            max: max.max(1),
            inner: Mutex::new(Inner {
                tick: 0,
                files: HashMap::new(),
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream's file (which must exist), opened for append if it is
    /// not open. The caller holds the stream's lock, so no other thread
    /// opens the same stream meanwhile.
    pub(super) fn get(&self, id: StreamId, path: &Path) -> io::Result<Arc<File>> {
        {
            let mut inner = self.inner();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((used, file)) = inner.files.get_mut(&id) {
                *used = tick;
                return Ok(Arc::clone(file));
            }
        }
        let file = OpenOptions::new().read(true).append(true).open(path)?;
        Ok(self.insert(id, file))
    }

    /// Keeps `file` (just opened) as the stream's; at the cap, the least
    /// recently used eighth is closed first.
    pub(super) fn insert(&self, id: StreamId, file: File) -> Arc<File> {
        let file = Arc::new(file);
        let mut closed = Vec::new();
        {
            let mut inner = self.inner();
            inner.tick += 1;
            let tick = inner.tick;
            if inner.files.len() >= self.max && !inner.files.contains_key(&id) {
                // The oldest eighth goes at once: finding them is a pass
                // over the cache, paid once per eighth of it instead of at
                // every open while more streams are written than it holds.
                let mut by_age: Vec<(u64, StreamId)> = inner
                    .files
                    .iter()
                    .map(|(id, (used, _))| (*used, *id))
                    .collect();
                let evict = (self.max / 8).max(1).min(by_age.len());
                by_age.select_nth_unstable(evict - 1);
                for (_, old) in &by_age[..evict] {
                    closed.extend(inner.files.remove(old));
                }
            }
            if let Some((_, old)) = inner.files.insert(id, (tick, Arc::clone(&file))) {
                closed.push((0, old));
            }
        }
        // Closed outside the lock.
        drop(closed);
        file
    }

    /// Closes the stream's file if it is open (its stream is forgotten, or
    /// its file removed).
    pub(super) fn close(&self, id: StreamId) {
        let closed = self.inner().files.remove(&id);
        drop(closed);
    }

    #[cfg(test)]
    pub(super) fn open_count(&self) -> usize {
        self.inner().files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_least_recently_used_is_closed_and_reopened_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..4).map(|i| dir.path().join(format!("{i}"))).collect();
        for p in &paths {
            File::create(p).unwrap();
        }
        let files = OpenFiles::new(2);
        let a = files.get(0, &paths[0]).unwrap();
        files.get(1, &paths[1]).unwrap();
        // 0 is used again, so 1 is the one closed for 2.
        files.get(0, &paths[0]).unwrap();
        files.get(2, &paths[2]).unwrap();
        assert_eq!(files.open_count(), 2);
        assert!(files.inner().files.contains_key(&0));
        assert!(!files.inner().files.contains_key(&1));
        // A file closed while in use stays usable by its holder.
        files.get(3, &paths[3]).unwrap();
        files.get(1, &paths[1]).unwrap();
        assert!(!files.inner().files.contains_key(&0));
        (&*a).write_all(b"still open\n").unwrap();
        let reopened = files.get(0, &paths[0]).unwrap();
        (&*reopened).write_all(b"reopened\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths[0]).unwrap(),
            "still open\nreopened\n"
        );
        files.close(0);
        assert_eq!(files.open_count(), 1);
    }
}
