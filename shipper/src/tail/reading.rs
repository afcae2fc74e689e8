//! Reading an open stream: a bounded turn of reads, framing into the batch, the checkpoint
//! each batch will commit, truncation seen at the end of the file, and small-file promotion.

use super::*;

impl Tailer {
    pub(super) fn read_dirty(&mut self) -> Option<bool> {
        let keys: Vec<FileKey> = self.dirty.iter().copied().collect();
        let mut worked = false;
        for key in keys {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let Some(mut t) = self.open.remove(&key) else {
                self.dirty.remove(&key);
                continue;
            };
            let outcome = self.read_turn(&mut t);
            self.account_held(&mut t);
            if !matches!(outcome, Outcome::Progress) {
                self.dirty.remove(&key);
            }
            match outcome {
                Outcome::Progress => {
                    worked = true;
                    self.open.insert(key, t);
                }
                Outcome::Eof => {
                    t.dirty = false;
                    if t.compressed {
                        // An archive is immutable: at its end it is done.
                        self.close(t, StreamState::Done);
                    } else {
                        self.open.insert(key, t);
                    }
                }
                Outcome::Truncated => {
                    // The file's new content is a new stream, read from the handle we hold: by
                    // now it may be deleted or renamed out of the globs, its path another file.
                    let path = t.path.clone();
                    let source = t.source;
                    let handle = t.file().try_clone();
                    self.truncated(t);
                    if let Ok(file) = handle {
                        self.adopt_file(source, path, file);
                    }
                }
                Outcome::Failed(e) => {
                    let src = self.cfg.sources[t.source].name.clone();
                    if t.compressed && e.kind() == io::ErrorKind::UnexpectedEof {
                        // Archive still being written: reopen at the last record boundary once
                        // it stops growing.
                        let size = t.file().metadata().map(|m| m.len()).unwrap_or(0);
                        self.gzip_pending.insert(key, size);
                        self.close_quietly(t);
                    } else {
                        self.alert(
                            "read_error",
                            Some(&src),
                            Some(&t.id),
                            Some(&t.path),
                            format!("read failed at offset {}: {e}", t.framer.position()),
                        );
                        self.close_quietly(t);
                    }
                }
            }
            self.enforce_held_budget();
            if self.batch_due() && !self.ship() {
                return None;
            }
        }
        Some(worked)
    }

    pub(super) fn slot(&mut self, t: &mut Tracked) -> u32 {
        if let Some((g, s)) = t.slot {
            if g == self.batch.generation {
                return s;
            }
        }
        let cp = Checkpoint {
            stream: t.id.clone(),
            committed_offset: t.framer.consumed(),
            committed_hash: t.consumed_marker,
            read_offset: t.framer.position(),
            size: t.size,
            ..Checkpoint::default()
        };
        let s = self.batch.add_stream(t.meta.clone(), cp);
        t.slot = Some((self.batch.generation, s));
        s
    }

    /// After framing: what acknowledging this batch will commit for the stream.
    pub(super) fn update_checkpoint(&mut self, t: &mut Tracked, chunk: &[u8]) {
        let consumed = t.framer.consumed();
        let slot = self.slot(t);
        let cp = &mut self.batch.streams[slot as usize].checkpoint;
        if cp.committed_offset != consumed {
            t.consumed_marker = read::marker_in_chunk(chunk, t.framer.position(), consumed)
                .or_else(|| {
                    if t.compressed {
                        None
                    } else {
                        read::marker_at(t.file(), consumed).ok().flatten()
                    }
                });
        }
        cp.committed_offset = consumed;
        cp.committed_hash = t.consumed_marker;
        cp.read_offset = t.framer.position();
        cp.size = t.size;
    }

    pub(super) fn read_turn(&mut self, t: &mut Tracked) -> Outcome {
        // Before reading on from an earlier end: is the content before our position unchanged?
        // Truncated and written again past our position before we looked (copytruncate then
        // new lines) is caught by the bytes before the position, not by the size.
        if t.at_eof && !t.compressed {
            match std::fs::File::metadata(t.file()) {
                Ok(md) if md.len() < t.framer.position() || super::rewritten(t) => {
                    return Outcome::Truncated
                }
                Ok(md) => t.size = md.len(),
                Err(e) => return Outcome::Failed(e),
            }
        }
        // The config's Arc, not a copy of the source (three glob sets): this runs per read.
        let cfg = self.cfg.clone();
        let source = &cfg.sources[t.source];
        let mut buf = std::mem::take(&mut self.buf);
        let mut outcome = Outcome::Progress;
        let mut reads = 0;
        while !self.turn_over(t, reads) {
            reads += 1;
            let n = match t.reader.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    outcome = Outcome::Failed(e);
                    break;
                }
            };
            if n == 0 {
                outcome = self.at_end(t);
                break;
            }
            t.at_eof = false;
            t.last_data = Instant::now();
            if t.fingerprint.is_none()
                && !t.compressed
                && t.framer.position() + n as u64 >= source.fingerprint_bytes as u64
            {
                self.promote(t, &source);
            }
            let chunk = &buf[..n];
            self.frame_chunk(t, chunk);
            if let Some(m) = read::marker_in_chunk(chunk, t.framer.position(), t.framer.position())
            {
                t.pos_marker = Some(m);
            } else if !t.compressed {
                t.pos_marker = read::marker_at(t.file(), t.framer.position())
                    .ok()
                    .flatten();
            }
            self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
            if !t.compressed {
                t.size = t.size.max(t.framer.position());
            }
            if self.batch.len() >= self.cfg.batch.max_records
                || self.batch.data_bytes() >= self.cfg.batch.max_bytes
            {
                break;
            }
        }
        self.buf = buf;
        if !t.alerted_too_large && t.size > source.max_file_bytes {
            t.alerted_too_large = true;
            if let Some(k) = self.registry.get_mut(&t.id) {
                k.row.alerted_too_large = true;
                let row = k.row.clone();
                self.persist(&row);
            }
            self.alert(
                "file_too_large",
                Some(&source.name),
                Some(&t.id),
                Some(&t.path),
                format!(
                    "file is {} bytes, over max_file_bytes {}; still reading",
                    t.size, source.max_file_bytes
                ),
            );
        }
        outcome
    }

    pub(super) fn frame_chunk(&mut self, t: &mut Tracked, chunk: &[u8]) {
        let slot = self.slot(t);
        let ts = now_ms();
        let batch = &mut self.batch;
        let stats = &self.stats;
        t.framer.push(chunk, &mut |r: Rec<'_>| {
            stats.records_read.fetch_add(1, Ordering::Relaxed);
            if r.part == crate::frame::Part::Head {
                stats.overlong_records.fetch_add(1, Ordering::Relaxed);
            }
            batch.push(slot, &r, ts);
        });
        self.update_checkpoint(t, chunk);
    }

    pub(super) fn at_end(&mut self, t: &mut Tracked) -> Outcome {
        if t.compressed {
            t.at_eof = true;
            return Outcome::Eof;
        }
        match t.file().metadata() {
            Ok(md) if md.len() < t.framer.position() => return Outcome::Truncated,
            Ok(md) => t.size = md.len(),
            Err(e) => return Outcome::Failed(e),
        }
        t.at_eof = true;
        // Remember how the file starts (up to N bytes), for the same-size rewrite check.
        let n = self.cfg.sources[t.source].fingerprint_bytes as u64;
        let want = t.framer.position().min(n);
        if want > 0 && t.head_check.map(|(len, _)| len < want).unwrap_or(true) {
            t.head_check = super::head_hash(t.file(), want).map(|h| (want, h));
        }
        Outcome::Eof
    }

    /// A short file reached N bytes: it gains its fingerprint and keeps its id and offset.
    pub(super) fn promote(&mut self, t: &mut Tracked, source: &Source) {
        let Ok(head) = fingerprint::read_head(
            t.file(),
            source.fingerprint_bytes,
            fingerprint::Decoding::Raw,
        ) else {
            return;
        };
        let Fingerprint::Checksum { hash, .. } = head.fingerprint(source.fingerprint_bytes) else {
            return;
        };
        t.fingerprint = Some(hash);
        t.meta.fingerprint = Some(hash);
        // Records from here on carry the fingerprint; those already in the batch were read while
        // the stream was short and keep none.
        t.slot = None;
        if let Some(k) = self.registry.get_mut(&t.id) {
            k.row.fingerprint = Some(hash);
            k.row.fp_bytes = source.fingerprint_bytes as u64;
            let row = k.row.clone();
            self.persist(&row);
        }
        tracing::debug!(stream = %t.id, "promoted: fingerprint taken");
    }
}
