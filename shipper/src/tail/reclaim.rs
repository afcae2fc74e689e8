//! Streams left behind: the store says a stream was being read (or that its last batch may have
//! been lost), no glob matches its file now, and no handle holds it. Typically the agent was down
//! (kill -9, a reboot) while `logrotate` renamed `app.log` to `app.log.1`, and the globs name
//! only `app.log`: the rotated file still holds the stream's unread tail.
//!
//! Such a file is looked for in the stream's old folder by device and inode, confirmed by the
//! fingerprint and by the hash of the bytes before the resume offset (an inode is reused once its
//! file is deleted), then drained to its end and let go, as a live rename is drained. A file on
//! the inode with other content, under a rotated name of the stream's path, beside a copy of the
//! stream's bytes, was copied and truncated (copytruncate) and written again while nobody
//! looked, then rotated: it is read from 0 as a new stream. Fluent Bit
//! looks files up by inode alone and so lets a reused inode inherit an old offset; the two hashes
//! are what keeps that from happening here.

use super::*;
use std::os::unix::fs::DirEntryExt;

/// What looking for a left-behind stream's file came to.
enum Search {
    /// Found and confirmed: draining.
    Draining,
    /// Neither in its folder nor anywhere a glob matches: let go.
    Gone(&'static str),
    /// Not decidable now (a gzip archive still being written): look again at the next scan.
    NotNow,
}

impl Tailer {
    /// Looks for the file of every stream left behind. `present` holds every file the globs
    /// match now; a stream whose file is among them is identified by the scan as usual.
    pub(super) fn reclaim_left_behind(&mut self, present: &HashSet<FileKey>) {
        let open_ids: HashSet<&str> = self.open.values().map(|t| t.id.as_str()).collect();
        let left: Vec<Known> = self
            .registry
            .iter()
            .filter(|k| {
                let unfinished = match k.row.state {
                    StreamState::Active => true,
                    // Let go, but a crash may have lost the batch that held its last records.
                    StreamState::Released | StreamState::Done => k.resume < k.row.read_offset,
                    StreamState::Truncated | StreamState::Unreadable | StreamState::Stopped => {
                        false
                    }
                };
                unfinished
                    && !open_ids.contains(k.row.stream.as_str())
                    && !present.contains(&(k.row.device, k.row.inode))
                    && !self.looked_for.contains(&k.row.stream)
            })
            .cloned()
            .collect();
        for k in left {
            // A source removed from the config stops its streams where they are.
            let Some(source) = self.cfg.sources.iter().position(|s| s.name == k.row.source) else {
                continue;
            };
            self.looked_for.insert(k.row.stream.clone());
            match self.reclaim(source, &k) {
                Search::Draining => {}
                Search::NotNow => {
                    self.looked_for.remove(&k.row.stream);
                }
                Search::Gone(why) => {
                    tracing::info!(stream = %k.row.stream, path = %k.row.path, offset = k.resume, "{why}; let go");
                    self.let_go(&k);
                }
            }
        }
    }

    fn reclaim(&mut self, source_ix: usize, k: &Known) -> Search {
        let key = (k.row.device, k.row.inode);
        let old = PathBuf::from(&k.row.path);
        let Some(folder) = old.parent() else {
            return Search::Gone("its path has no folder");
        };
        let Some((path, file)) = find_by_inode(folder, key) else {
            return Search::Gone("its file is not in its folder any more");
        };
        // A short stream with nothing committed has neither fingerprint nor marker: only a
        // rotated name (`app.log.1`, `app.log-20261201`) says that its inode was not reused.
        if k.row.fingerprint.is_none() && k.resume_marker.is_none() && !rotated_name(&old, &path) {
            return Search::Gone("nothing confirms that the file on its inode is the stream's");
        }
        let source = self.cfg.sources[source_ix].clone();
        let head_len = (k.row.fp_bytes as usize).max(source.fingerprint_bytes);
        let decoding = head::Decoding::for_path(source.detect_compression, &path);
        let head = match head::read_head(&file, head_len, decoding) {
            Ok(h) => h,
            Err(HeadError::GzipIncomplete) => return Search::NotNow,
            Err(_) => return Search::Gone("the file on its inode is not the stream's"),
        };
        if head.compressed != k.row.compressed {
            return Search::Gone("the file on its inode is not the stream's");
        }
        let continues = match self.continues(k, &file, &head) {
            Ok(c) => c,
            Err(NotNow) => return Search::NotNow,
        };
        let md = match file.metadata() {
            Ok(m) => m,
            Err(_) => return Search::NotNow,
        };
        let f = Found {
            source: source_ix,
            path: path.clone(),
            device: key.0,
            inode: key.1,
            size: md.len(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            symlink: false,
        };
        let existing = match continues {
            Ok(()) => {
                tracing::info!(stream = %k.row.stream, path = %path.display(), offset = k.resume, "found outside the globs by its inode; draining it");
                Some((k.row.stream.clone(), k.resume, k.resume_marker))
            }
            // Other content on the stream's inode, under a rotated name of its path, and the
            // stream's own bytes in another file of its folder: that is the copy copytruncate
            // made, so the file was truncated in place and written again at the live path while
            // nobody looked, then rotated out of the globs. Its content is the source's and was
            // never read: read from 0 as a new stream, unless a stream already owns it. Without
            // such a copy, other bytes on the inode are taken for a reused inode and left alone
            // (`tests/rotation.rs`, a file on the old inode with another head is not shipped).
            Err(why)
                if !head.compressed
                    && rotated_name(&old, &path)
                    && self.copied_away(k, folder, &old, key, &source) =>
            {
                if self.open.contains_key(&key) || self.content_owned_elsewhere(k, &file, &head) {
                    return Search::Gone(why);
                }
                tracing::info!(stream = %k.row.stream, path = %path.display(), "{why}: rewritten while unwatched, then rotated; reading it from 0 as a new stream");
                self.let_go(k);
                None
            }
            Err(why) => return Search::Gone(why),
        };
        self.start(&f, &source, file, key, &head, existing);
        match self.open.get_mut(&key) {
            Some(t) => {
                // No glob matches it: drained, then closed rotate_wait from now.
                t.released_at = Some(Instant::now());
                Search::Draining
            }
            // A gzip archive still being written: again at the next scan.
            None if self.deferred.contains_key(&key) => Search::NotNow,
            // Found to hold nothing more (an archive read to its end), or not openable (alerted).
            None => Search::Draining,
        }
    }
}

/// The bytes before the offset could not be read now (an archive still being written).
struct NotNow;

impl Tailer {
    /// Does `file`, found on `k`'s inode, continue `k`? `Err(why)` inside when it holds other
    /// content: another fingerprint, shorter than the offset, other bytes before it.
    fn continues(
        &self,
        k: &Known,
        file: &File,
        head: &head::Head,
    ) -> Result<Result<(), &'static str>, NotNow> {
        if let Some(fp) = k.row.fingerprint {
            let n = k.row.fp_bytes as usize;
            if head.bytes.len() < n || head::hash(&head.bytes[..n]) != fp {
                return Ok(Err("the file on its inode has another fingerprint"));
            }
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if !head.compressed && size < k.resume {
            return Ok(Err(
                "the file on its inode is shorter than the stream's offset",
            ));
        }
        match open::verify_marker(file, head.compressed, k.resume, k.resume_marker) {
            Ok(true) => Ok(Ok(())),
            Ok(false) => Ok(Err(
                "the file on its inode has other bytes before the offset",
            )),
            Err(_) => Err(NotNow),
        }
    }

    /// Is the content of `file` (on `k`'s inode, not `k`'s) already another known stream's? Then
    /// that stream resumes it (by the scan, or by its own search here), and reading it again
    /// from 0 would ship it twice: after a crash lost the last batch of `k`, `k` is looked for
    /// again at the next start and finds the file its successor was read from.
    fn content_owned_elsewhere(&self, k: &Known, file: &File, head: &head::Head) -> bool {
        self.registry
            .on_file(k.row.device, k.row.inode)
            .into_iter()
            .filter(|o| o.row.stream != k.row.stream && o.row.source == k.row.source)
            .any(|o| match self.continues(o, file, head) {
                Ok(c) => c.is_ok(),
                Err(NotNow) => true,
            })
    }

    /// Is `k`'s content, up to its resume offset, in another file of `folder` named like a
    /// rotation of `old` (the copy `copytruncate` makes, perhaps rotated on since)? Only a
    /// stream whose bytes can be confirmed (a fingerprint, or an offset with its hash) can be
    /// recognised in a copy.
    fn copied_away(
        &self,
        k: &Known,
        folder: &Path,
        old: &Path,
        inode: FileKey,
        source: &Source,
    ) -> bool {
        if k.row.fingerprint.is_none() && (k.resume == 0 || k.resume_marker.is_none()) {
            return false;
        }
        let Ok(entries) = std::fs::read_dir(folder) else {
            return false;
        };
        let head_len = (k.row.fp_bytes as usize).max(source.fingerprint_bytes);
        entries.flatten().any(|e| {
            let path = e.path();
            if e.ino() == inode.1 || !rotated_name(old, &path) {
                return false;
            }
            let Ok(file) = open::open_to_follow(&path) else {
                return false;
            };
            let decoding = head::Decoding::for_path(source.detect_compression, &path);
            match head::read_head(&file, head_len, decoding) {
                Ok(h) => {
                    h.compressed == k.row.compressed
                        && matches!(self.continues(k, &file, &h), Ok(Ok(())))
                }
                Err(_) => false,
            }
        })
    }

    /// Marks an active stream let go and persists it. Released: a same-head file the globs
    /// find later (its .gz) still continues it.
    fn let_go(&mut self, k: &Known) {
        if k.row.state == StreamState::Active {
            if let Some(k) = self.registry.get_mut(&k.row.stream) {
                k.row.state = StreamState::Released;
                let row = k.row.clone();
                self.persist(&row);
            }
        }
    }
}

/// The file in `folder` with this (device, inode), opened. The inode in the folder entry spares
/// a stat per file; the handle's own stat confirms it (the entry may have changed since).
fn find_by_inode(folder: &Path, key: FileKey) -> Option<(PathBuf, File)> {
    let entries = std::fs::read_dir(folder).ok()?;
    for e in entries.flatten() {
        if e.ino() != key.1 {
            continue;
        }
        let path = e.path();
        let Ok(file) = open::open_to_follow(&path) else {
            continue;
        };
        match file.metadata() {
            Ok(md) if md.is_file() && (md.dev(), md.ino()) == key => return Some((path, file)),
            _ => continue,
        }
    }
    None
}

/// Is `found` named like a rotation of `old` (its name followed by a suffix, as `logrotate`
/// names them with or without `dateext`)?
fn rotated_name(old: &Path, found: &Path) -> bool {
    match (old.file_name(), found.file_name()) {
        (Some(o), Some(f)) => f.as_encoded_bytes().starts_with(o.as_encoded_bytes()),
        _ => false,
    }
}
