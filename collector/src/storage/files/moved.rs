//! Stream files moved away or truncated while the collector runs: an operator's logrotate
//! renaming them (`create` or `nocreate`), a script deleting them, or `copytruncate`.
//!
//! The collector keeps each stream's file open, so before this module a renamed file went on
//! receiving every record, and a deleted one swallowed them. Now each batch's first touch of a
//! stream compares the file its state describes (device and inode, taken when it was opened)
//! with a `stat` of the stream's path, one syscall per stream and batch beside the batch's
//! fsync of it. A different file or none there: the stream goes on in the file at the path (a
//! new one if none, as rsyslog and Fluent Bit do after a rename). The same file but shorter
//! than written (truncated in place): it goes on from the new end, not past it.
//!
//! Duplicates are judged by the stream's high-water offset, which is the index's and the
//! state's, not the file's: it stays as it was, so nothing is stored twice across files. The
//! index is moved to the new file before anything is written there, so recovery after a crash
//! never reads the new file from where the old one ended.
//!
//! A file can also move while a batch is being written to it and closed meanwhile (more
//! streams in use than `max_open_stream_files`): reopening it by its path would then write to,
//! or fsync, some other file. [`OpenFiles::get`](super::open_files::OpenFiles::get) checks the
//! file it reopens, and the batch syncs the lines it left in the moved one with `syncfs`
//! before going on in the new one.

use std::fs::{File, Metadata, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::{io_err, FileStore, FilesError, StreamState};
use crate::db::StreamIndex;
use log_sensor_common::clock::now_secs as unix_now;
use log_sensor_common::fsutil;

/// Which file a descriptor or a path names: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(super) fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What a stream's path names now, beside the file its state describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtPath {
    /// The stream's file, at least as long as written.
    Same,
    /// The stream's file, cut to `len` behind the collector's back (copytruncate).
    Truncated { len: u64 },
    /// Another file (logrotate's `create`), or none (renamed without one, or deleted).
    Moved,
}

fn look(path: &Path, st: &StreamState) -> Result<AtPath, FilesError> {
    match std::fs::metadata(path) {
        Ok(m) if FileId::of(&m) != st.file => Ok(AtPath::Moved),
        Ok(m) if m.len() < st.len => Ok(AtPath::Truncated { len: m.len() }),
        Ok(_) => Ok(AtPath::Same),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AtPath::Moved),
        Err(e) => Err(io_err(path, "stat")(e)),
    }
}

impl FileStore {
    /// Makes `st` describe the file at its path again if its file was moved away or truncated.
    /// The caller holds the host's batch, so nothing else writes this stream meanwhile.
    pub(super) fn follow_moved(
        &self,
        host: &str,
        stream: &str,
        st: &mut StreamState,
    ) -> Result<(), FilesError> {
        match look(&st.path, st)? {
            AtPath::Same => return Ok(()),
            AtPath::Truncated { len } => {
                tracing::warn!(path = %st.path.display(), was = st.len, now = len, "stream file truncated behind the collector (copytruncate?); appending from its new end");
                st.len = len;
            }
            AtPath::Moved => {
                self.files.close(st.id);
                let file = self.open_at_path(&st.path)?;
                let meta = file.metadata().map_err(io_err(&st.path, "stat"))?;
                tracing::info!(path = %st.path.display(), len = meta.len(), "stream file moved away; its stream goes on in the file at its path");
                st.file = FileId::of(&meta);
                st.len = meta.len();
                self.files.insert(st.id, file);
            }
        }
        // Before a line goes to the new file: the index's length is the old file's, and
        // recovery after a crash would read the new file from there.
        if let Some(high_water) = st.mark {
            let index = StreamIndex {
                high_water,
                file_len: st.len,
                streak: st.streak.count,
                streak_alerted: st.streak.alerted,
            };
            self.db
                .commit_batch(host, &[(stream, index)], &[], unix_now())?;
        }
        Ok(())
    }

    /// The file at a moved stream's path: the one put there (logrotate's `create`), or a new
    /// one, its folder too if that went (both made durable before a line is written there).
    fn open_at_path(&self, path: &Path) -> Result<File, FilesError> {
        let dir = path.parent().expect("stream files live in a host folder");
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err(dir, "create"))?;
            fsutil::sync_dir(&self.data_dir).map_err(io_err(&self.data_dir, "sync"))?;
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        if !existed {
            fsutil::sync_dir(dir).map_err(io_err(dir, "sync"))?;
        }
        Ok(file)
    }

    /// Makes durable lines written to a stream file that has since moved away from its path,
    /// and so cannot be opened to fsync: `syncfs` writes out every file of the filesystem
    /// holding `data/` (a rename stays within it). Costly, and only reached when a file moved
    /// during a batch that had to close it.
    pub(super) fn sync_moved(&self, path: &Path) -> Result<(), FilesError> {
        let dir = File::open(&self.data_dir).map_err(io_err(&self.data_dir, "open"))?;
        // SAFETY: syncfs on a descriptor we own; no memory is passed.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io_err(
                path,
                "syncfs (the file moved away during its batch)",
            )(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}
