//! Which stream a file is: a file no stream has open (found by a scan, `scanning`) is
//! identified in one place, [`Tailer::identify`] — the same file after a restart (also one short when last seen
//! and grown past N since, `provisional`), a same-head file still open
//! (a rotation in progress or a shared header), a stream whose file is gone (renamed while we
//! were away, or its gzip archive), or a new stream.

use super::provisional::Provisional;
use super::*;

impl Tailer {
    /// Opens a file no stream has open and decides which stream it is.
    pub(super) fn adopt(&mut self, f: Found) {
        let file = match open::open_to_follow(&f.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                if self.alerted_paths.insert(f.path.clone()) {
                    let kind = if e.kind() == io::ErrorKind::PermissionDenied {
                        "permission_denied"
                    } else {
                        "read_error"
                    };
                    let src = self.cfg.sources[f.source].name.clone();
                    self.alert(
                        kind,
                        Some(&src),
                        None,
                        Some(&f.path),
                        format!("cannot open: {e}; retrying every scan"),
                    );
                }
                return;
            }
        };
        self.adopt_file(f.source, f.path, file);
    }

    /// Decides which stream an opened file is and starts following it. `path` is where it was
    /// found; the handle, not the path, is what is read.
    pub(super) fn adopt_file(&mut self, source_ix: usize, path: PathBuf, file: File) {
        let cfg = self.cfg.clone();
        let source = &cfg.sources[source_ix];
        let md = match file.metadata() {
            Ok(m) => m,
            Err(_) => return,
        };
        let key = (md.dev(), md.ino());
        if self.open.contains_key(&key) {
            return;
        }
        let f = Found {
            source: source_ix,
            path,
            device: key.0,
            inode: key.1,
            size: md.len(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            symlink: false,
        };
        if self.alerted_paths.remove(&f.path) {
            tracing::info!(path = %f.path.display(), "file readable again");
        }
        // The longest N any known stream of this source was fingerprinted with.
        let n = source.fingerprint_bytes;
        let head_len = self
            .registry_fp_lengths(&source.name)
            .into_iter()
            .chain(std::iter::once(n))
            .max()
            .unwrap_or(n);
        let decoding = head::Decoding::for_path(source.detect_compression, &f.path);
        let head = match head::read_head(&file, head_len, decoding) {
            Ok(h) => h,
            // Looked at again when it has bytes: the wake-up of its first write asks for a scan.
            Err(HeadError::Empty) => return,
            Err(HeadError::GzipIncomplete) => {
                // A gzip archive still being written: look again once it stops growing.
                self.deferred.entry(key).or_insert_with(Instant::now);
                self.gzip_pending.insert(key, md.len());
                return;
            }
            Err(e @ (HeadError::NotGzip | HeadError::CorruptGzip(_))) => {
                // Never shipped as text; skipped while it stays as it is, alerted once.
                self.refused.insert(key, file_version(&file));
                self.alert(
                    "read_error",
                    Some(&source.name),
                    None,
                    Some(&f.path),
                    format!("{e}; not read"),
                );
                return;
            }
            Err(HeadError::Io(e)) => {
                if self.alerted_paths.insert(f.path.clone()) {
                    self.alert(
                        "read_error",
                        Some(&source.name),
                        None,
                        Some(&f.path),
                        format!("cannot read head: {e}"),
                    );
                }
                return;
            }
        };
        match self.identify(&source, &file, key, &head) {
            // An archive that must wait (its bytes before the offset still being written, or a
            // same-head stream still draining) is looked at again once its size is stable.
            Identity::Wait if head.compressed => {
                self.gzip_pending.insert(key, md.len());
            }
            Identity::Wait => {}
            Identity::Finished => {
                self.finished.insert(key, file_version(&file));
            }
            Identity::Existing { id, resume, marker } => {
                self.start(&f, &source, file, key, &head, Some((id, resume, marker)))
            }
            Identity::New { collision_with } => {
                if let Some(other) = collision_with {
                    self.stats
                        .fingerprint_collisions
                        .fetch_add(1, Ordering::Relaxed);
                    self.alert(
                        "fingerprint_collision",
                        Some(&source.name),
                        Some(&other),
                        Some(&f.path),
                        format!("same first {n} bytes as the open stream {other}; read as a stream of its own"),
                    );
                }
                self.start(&f, &source, file, key, &head, None)
            }
        }
    }

    /// Every N the source's known streams were fingerprinted with: a stream fingerprinted under
    /// an older `fingerprint_bytes` is still recognised by hashing the head at its own N.
    pub(super) fn registry_fp_lengths(&self, source: &str) -> Vec<usize> {
        self.registry.fp_lengths(source)
    }

    /// Which stream a newly opened file is: the one exhaustive decision.
    fn identify(
        &mut self,
        source: &Source,
        file: &File,
        key: FileKey,
        head: &head::Head,
    ) -> Identity {
        let n = source.fingerprint_bytes;
        let usable = |k: &Known| {
            !matches!(k.row.state, StreamState::Done | StreamState::Truncated)
                || (k.row.device, k.row.inode) != key
        };
        let cands = self.registry.by_fingerprint(&source.name, |m| {
            (head.bytes.len() >= m).then(|| head::hash(&head.bytes[..m]))
        });
        // A file shorter than N is still found as its own stream, fingerprinted under a smaller
        // `fingerprint_bytes` that its head covers: raising N must not read it again. Only the
        // same file (inode): other streams sharing that old head are for the short-file checks
        // below (archives of short streams, finished short archives) to judge, as before.
        let fingerprinted = match head.fingerprint(n) {
            Fingerprint::Checksum { .. } => true,
            Fingerprint::Provisional => cands.iter().any(|c| (c.row.device, c.row.inode) == key),
        };
        match fingerprinted {
            true => {
                // 1. The same file as before (agent restart).
                if let Some(c) = cands.iter().find(|c| (c.row.device, c.row.inode) == key) {
                    // An archive read to its end is finished only once that end was committed;
                    // a crash may have lost the last batch.
                    if c.row.state == StreamState::Done && c.resume >= c.row.read_offset {
                        return Identity::Finished;
                    }
                    if c.row.state == StreamState::Done {
                        return self.existing_if_marker_holds(c, file, head.compressed);
                    }
                    if usable(c) && self.open_stream(&c.row.stream).is_none() {
                        return self.existing_if_marker_holds(c, file, head.compressed);
                    }
                }
                // 1b. The same file, short when last seen and grown past N while we were down.
                if !head.compressed {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    match self.provisional_of(source, file, key, false, size) {
                        Provisional::Continue { id, resume, marker } => {
                            return Identity::Existing { id, resume, marker }
                        }
                        Provisional::NotNow => return Identity::Wait,
                        Provisional::NotThis | Provisional::Finished => {}
                    }
                }
                // 2. A same-head file is still open: a rotation copy or archive in the making, or a
                //    genuinely different file with a shared header. Wait for the open one to be let
                //    go; if it stays live past rotate_wait, they are two streams.
                let open_cands: Vec<&Known> = cands
                    .iter()
                    .copied()
                    .filter(|c| self.open_stream(&c.row.stream).is_some())
                    .collect();
                if !open_cands.is_empty() {
                    let draining = open_cands.iter().any(|c| {
                        self.open_stream(&c.row.stream)
                            .is_some_and(|t| t.released_at.is_some())
                    });
                    let since = *self.deferred.entry(key).or_insert_with(Instant::now);
                    if draining || since.elapsed() < self.cfg.discovery.rotate_wait {
                        return Identity::Wait;
                    }
                    self.deferred.remove(&key);
                    return Identity::New {
                        collision_with: Some(open_cands[0].row.stream.clone()),
                    };
                }
                // 3. A stream whose file is gone: this file continues it (renamed while we were
                //    down, or its compressed archive).
                if let Some(c) = cands.iter().find(|c| usable(c)) {
                    return self.existing_if_marker_holds(c, file, head.compressed);
                }
                // 4. The archive of a stream still short when last read.
                if head.compressed {
                    match self.short_archive_of(source, key, head) {
                        Provisional::Continue { id, resume, marker } => {
                            return Identity::Existing { id, resume, marker }
                        }
                        Provisional::NotNow => return Identity::Wait,
                        Provisional::NotThis | Provisional::Finished => {}
                    }
                }
                Identity::New {
                    collision_with: None,
                }
            }
            false => {
                if head.compressed {
                    match self.short_archive_seen(source, file, key) {
                        Provisional::Continue { id, resume, marker } => {
                            return Identity::Existing { id, resume, marker }
                        }
                        Provisional::Finished => return Identity::Finished,
                        Provisional::NotNow => return Identity::Wait,
                        Provisional::NotThis => {}
                    }
                }
                // Other bytes on its inode (reused) are not the end of it: a short archive may
                // still continue another short stream.
                let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                match self.provisional_of(source, file, key, head.compressed, size) {
                    Provisional::Continue { id, resume, marker } => {
                        return Identity::Existing { id, resume, marker }
                    }
                    Provisional::NotNow => return Identity::Wait,
                    Provisional::NotThis | Provisional::Finished => {}
                }
                // A short archive of a short stream: match on the bytes before where it stopped.
                if head.compressed {
                    match self.short_archive_of(source, key, head) {
                        Provisional::Continue { id, resume, marker } => {
                            return Identity::Existing { id, resume, marker }
                        }
                        Provisional::NotNow => return Identity::Wait,
                        Provisional::NotThis | Provisional::Finished => {}
                    }
                }
                Identity::New {
                    collision_with: None,
                }
            }
        }
    }

    fn existing_if_marker_holds(&self, c: &Known, file: &File, compressed: bool) -> Identity {
        match open::verify_marker(file, compressed, c.resume, c.resume_marker) {
            Ok(true) => Identity::Existing {
                id: c.row.stream.clone(),
                resume: c.resume,
                marker: c.resume_marker,
            },
            // Same head, different content before the offset: rewritten, not continued.
            Ok(false) => Identity::New {
                collision_with: None,
            },
            Err(_) => Identity::Wait,
        }
    }

    /// Opens the stream's reader and starts following it.
    pub(super) fn start(
        &mut self,
        f: &Found,
        source: &Source,
        file: File,
        key: FileKey,
        head: &head::Head,
        existing: Option<(String, u64, Option<u64>)>,
    ) {
        let n = source.fingerprint_bytes;
        let fingerprint = match head.fingerprint(n) {
            Fingerprint::Checksum { hash, .. } => Some(hash),
            Fingerprint::Provisional => None,
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (id, offset, marker) = match &existing {
            Some((id, resume, marker)) if head.compressed || size >= *resume => {
                (id.clone(), *resume, *marker)
            }
            // Shorter than what was committed: truncated while we were away. New content.
            // Decided before the reader takes the file: the stream holds one descriptor.
            _ => (new_stream_id(&source.name, key, fingerprint), 0, None),
        };
        let (reader, offset, marker, id) = match Reader::open_at(file, head.compressed, offset) {
            Ok(r) => (r, offset, marker, id),
            Err(OpenAtError::Short { .. }) if head.compressed => {
                // The archive holds nothing past what was shipped.
                self.finish_archive_without_reading(&id, f, key, size);
                return;
            }
            Err(OpenAtError::Short { .. }) => {
                // Truncated between the fstat above and now: the next scan sees it anew.
                self.scan_requested = true;
                return;
            }
            Err(OpenAtError::Incomplete { .. }) => {
                // A gzip archive still being written: look again once it stops growing.
                self.deferred.entry(key).or_insert_with(Instant::now);
                self.gzip_pending.insert(key, size);
                return;
            }
            Err(OpenAtError::Io(e)) => {
                if self.alerted_paths.insert(f.path.clone()) {
                    self.alert(
                        "read_error",
                        Some(&source.name),
                        Some(&id),
                        Some(&f.path),
                        format!("cannot open at offset {offset}: {e}"),
                    );
                }
                return;
            }
        };
        let path_str = f.path.display().to_string();
        let row = match self.registry.get(&id) {
            Some(k) if existing.is_some() => {
                let mut row = k.row.clone();
                row.path = path_str.clone();
                row.device = key.0;
                row.inode = key.1;
                row.compressed = head.compressed;
                row.size = size;
                row.state = StreamState::Active;
                // A short stream continued by a file now N bytes long gains its fingerprint, as
                // promotion gives it while reading; an archive's too (its head is decoded), or
                // after a restart it has nothing to be found by but its stream's old inode.
                if row.fingerprint.is_none() {
                    if let Some(fp) = fingerprint {
                        row.fingerprint = Some(fp);
                        row.fp_bytes = n as u64;
                    }
                }
                row
            }
            _ => StreamRow {
                stream: id.clone(),
                source: source.name.clone(),
                fingerprint,
                fp_bytes: n as u64,
                path: path_str.clone(),
                device: key.0,
                inode: key.1,
                compressed: head.compressed,
                size,
                read_offset: offset,
                committed_offset: offset,
                committed_hash: marker,
                first_seen: now_secs(),
                state: StreamState::Active,
                alerted_too_large: false,
            },
        };
        self.persist(&row);
        let known = Known {
            resume: offset,
            resume_marker: marker,
            row: row.clone(),
        };
        self.registry.insert(known);
        self.deferred.remove(&key);
        self.gzip_pending.remove(&key);
        self.looked_for.remove(&id);
        tracing::info!(stream = %id, path = %path_str, offset, compressed = head.compressed, "following");
        let t = Tracked {
            id: id.clone(),
            source: f.source,
            key,
            path: f.path.clone(),
            compressed: head.compressed,
            reader,
            framer: Framer::new(&source.framing, offset),
            meta: StreamMeta {
                id: id.as_str().into(),
                source: source.name.as_str().into(),
                fingerprint: row.fingerprint,
                path: path_str.into(),
            },
            fingerprint: row.fingerprint,
            size,
            // The row just written has it.
            noted_size: size,
            at_eof: false,
            dirty: true,
            last_data: Instant::now(),
            released_at: None,
            pos_marker: marker,
            head_check: None,
            consumed_marker: marker,
            slot: None,
            alerted_too_large: row.alerted_too_large,
            opened_at: Instant::now(),
            held: 0,
            timer_at: None,
        };
        // The path names this file only if nothing else took it since (a stream continued on
        // a handle whose file was deleted keeps its old path for the record, not for events).
        let named_here = std::fs::metadata(&f.path)
            .map(|m| (m.dev(), m.ino()) == key)
            .unwrap_or(false);
        if named_here || !self.by_path.contains_key(f.path.as_os_str()) {
            self.by_path.insert(f.path.clone().into_os_string(), key);
        }
        self.dirty.insert(key);
        self.open.insert(key, Box::new(t));
        self.stats
            .open_files
            .store(self.open.len() as u64, Ordering::Relaxed);
    }

    pub(super) fn finish_archive_without_reading(
        &mut self,
        id: &str,
        f: &Found,
        key: FileKey,
        size: u64,
    ) {
        if let Some(k) = self.registry.get_mut(id) {
            k.row.path = f.path.display().to_string();
            k.row.device = key.0;
            k.row.inode = key.1;
            k.row.compressed = true;
            k.row.size = size;
            k.row.state = StreamState::Done;
            let row = k.row.clone();
            self.persist(&row);
        }
        if let Ok(f) = File::open(&f.path) {
            self.finished.insert(key, file_version(&f));
        }
    }
}

enum Identity {
    /// Not now: look again at the next scan.
    Wait,
    /// An archive already read to its end.
    Finished,
    Existing {
        id: String,
        resume: u64,
        marker: Option<u64>,
    },
    New {
        collision_with: Option<String>,
    },
}

/// A fresh stream id: 16 hex digits, unique per host.
fn new_stream_id(source: &str, key: FileKey, fp: Option<u64>) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seed = format!(
        "{source}\0{}:{}\0{fp:?}\0{nanos}\0{}",
        key.0,
        key.1,
        std::process::id()
    );
    format!("{:016x}", head::hash(seed.as_bytes()))
}
