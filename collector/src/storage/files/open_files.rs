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
//!
//! A file reopened by its path is checked to be the stream's (the same device and inode): an
//! operator may have moved it away meanwhile (`moved`), and writing to or syncing whatever is
//! at the path now would put lines in, or make durable, the wrong file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use super::moved::FileId;

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

    /// The stream's file `expect`, opened for append at `path` if it is not open; None when
    /// `path` names another file now, or none (it was moved away). The caller holds the
    /// stream's lock, so no other thread opens the same stream meanwhile.
    pub(super) fn get(
        &self,
        id: StreamId,
        path: &Path,
        expect: FileId,
    ) -> io::Result<Option<Arc<File>>> {
        {
            let mut inner = self.inner();
            inner.tick += 1;
            let tick = inner.tick;
            if let Some((used, file)) = inner.files.get_mut(&id) {
                *used = tick;
                return Ok(Some(Arc::clone(file)));
            }
        }
        let file = match OpenOptions::new().read(true).append(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if FileId::of(&file.metadata()?) != expect {
            return Ok(None);
        }
        Ok(Some(self.insert(id, file)))
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
        let ids: Vec<FileId> = paths
            .iter()
            .map(|p| FileId::of(&std::fs::metadata(p).unwrap()))
            .collect();
        let files = OpenFiles::new(2);
        let get = |i: usize| files.get(i as u64, &paths[i], ids[i]).unwrap().unwrap();
        let a = get(0);
        get(1);
        // 0 is used again, so 1 is the one closed for 2.
        get(0);
        get(2);
        assert_eq!(files.open_count(), 2);
        assert!(files.inner().files.contains_key(&0));
        assert!(!files.inner().files.contains_key(&1));
        // A file closed while in use stays usable by its holder.
        get(3);
        get(1);
        assert!(!files.inner().files.contains_key(&0));
        (&*a).write_all(b"still open\n").unwrap();
        let reopened = get(0);
        (&*reopened).write_all(b"reopened\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&paths[0]).unwrap(),
            "still open\nreopened\n"
        );
        files.close(0);
        assert_eq!(files.open_count(), 1);
    }

    /// A closed file is reopened only if its path still names it: moved away, its path names
    /// another file or none.
    #[test]
    fn a_file_moved_away_while_closed_is_not_reopened_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        File::create(&path).unwrap();
        let id = FileId::of(&std::fs::metadata(&path).unwrap());
        let files = OpenFiles::new(1);
        files.get(0, &path, id).unwrap().unwrap();
        files.close(0);
        std::fs::rename(&path, dir.path().join("s.1")).unwrap();
        assert!(files.get(0, &path, id).unwrap().is_none(), "renamed");
        File::create(&path).unwrap();
        assert!(
            files.get(0, &path, id).unwrap().is_none(),
            "another file there"
        );
        assert_eq!(files.open_count(), 0);
    }
}
