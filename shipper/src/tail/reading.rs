//! Reading an open stream: a bounded turn of reads, framing into the batch, the checkpoint
//! each batch will commit, truncation seen at the end of the file, and small-file promotion.

use super::*;

impl Tailer {
    /// Gives each stream with bytes to read its bounded turn, until the batch is full. A pass
    /// cut short by a full batch goes on where it stopped at the next call, so under load every
    /// file gets its turn, not only the first ones of the set.
    pub(super) fn read_dirty(&mut self, out: &mut Intake<'_>) -> bool {
        if self.pass.is_empty() {
            self.pass = self.dirty.iter().copied().collect();
        }
        let mut worked = false;
        while let Some(key) = self.pass.pop() {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if !self.dirty.contains(&key) {
                continue;
            }
            let Some(mut t) = self.open.remove(&key) else {
                self.dirty.remove(&key);
                continue;
            };
            let outcome = self.read_turn(&mut t, out);
            self.account_held(&mut t);
            self.arm(&mut t);
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
                        self.close(*t, StreamState::Done, out);
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
                    self.truncated(*t, out);
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
                        self.close_quietly(*t);
                    } else {
                        self.alert(
                            "read_error",
                            Some(&src),
                            Some(&t.id),
                            Some(&t.path),
                            format!("read failed at offset {}: {e}", t.framer.position()),
                        );
                        self.close_quietly(*t);
                    }
                }
            }
            self.enforce_held_budget();
            if out.full() {
                break;
            }
        }
        worked
    }

    pub(super) fn slot(&mut self, t: &mut Tracked, out: &mut Intake<'_>) -> u32 {
        if let Some((g, s)) = t.slot {
            if g == out.generation() {
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
        let s = out.open_stream(t.meta.clone(), Ack::Store(cp));
        t.slot = Some((out.generation(), s));
        s
    }

    /// After framing: what acknowledging this batch will commit for the stream.
    pub(super) fn update_checkpoint(
        &mut self,
        t: &mut Tracked,
        chunk: &[u8],
        out: &mut Intake<'_>,
    ) {
        let consumed = t.framer.consumed();
        let slot = self.slot(t, out);
        let Some(cp) = out.ack_mut(slot).checkpoint_mut() else {
            unreachable!("a file's slot carries a store checkpoint")
        };
        if cp.committed_offset != consumed {
            t.consumed_marker = open::marker_in_chunk(chunk, t.framer.position(), consumed)
                .or_else(|| {
                    if t.compressed {
                        None
                    } else {
                        open::marker_at(t.file(), consumed).ok().flatten()
                    }
                });
        }
        cp.committed_offset = consumed;
        cp.committed_hash = t.consumed_marker;
        cp.read_offset = t.framer.position();
        // What was just read is in the file; a size from before this read made the store's
        // size trail its committed offset by a read.
        if !t.compressed {
            t.size = t.size.max(t.framer.position());
        }
        cp.size = t.size;
    }

    pub(super) fn read_turn(&mut self, t: &mut Tracked, out: &mut Intake<'_>) -> Outcome {
        // The config's Arc, not a copy of the source (three glob sets): this runs per read.
        let cfg = self.cfg.clone();
        let source = &cfg.sources[t.source];
        let mut buf = std::mem::take(&mut self.buf);
        let mut outcome = Outcome::Progress;
        let mut reads = 0;
        if t.at_eof && !t.compressed {
            reads = 1;
            if let Some(o) = self.resume(t, &mut buf, source, out) {
                outcome = o;
                reads = usize::MAX;
            }
        }
        while reads != usize::MAX && !self.turn_over(t, reads) {
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
            self.take_chunk(t, &buf[..n], 0, source, out);
            if !t.compressed && n < buf.len() {
                // A regular file reads short only at its end: no second read to see 0, no fstat.
                outcome = self.at_short_end(t, None);
                break;
            }
            if out.full() {
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

    /// Reading on from an earlier end of a plain file, in one pread where it can. Before reading
    /// on, the content before our position must be unchanged: truncated and written again past
    /// our position before we looked (copytruncate then new lines, `45aa8a8`) is caught by the
    /// hash of the 64 bytes before the position and of the file's head, not by the size. The
    /// pread starts at those 64 bytes (or at the head, for a position within
    /// [`RESUME_FROM_HEAD`]), so the call that fetches the new bytes also returns the bytes that
    /// guard them; a short read is the end of the file, so no fstat is needed either. Returns
    /// the turn's outcome when the turn ends here, None when the buffer filled and reading goes
    /// on.
    fn resume(
        &mut self,
        t: &mut Tracked,
        buf: &mut [u8],
        source: &Source,
        out: &mut Intake<'_>,
    ) -> Option<Outcome> {
        let pos = t.framer.position();
        let k = pos.min(open::MARKER_BYTES);
        let from = if pos <= RESUME_FROM_HEAD { 0 } else { pos - k };
        let got = match t.reader.read_at(from, buf) {
            Ok(n) => n,
            Err(e) => return Some(Outcome::Failed(e)),
        };
        if from + (got as u64) < pos {
            return Some(Outcome::Truncated);
        }
        let at = (pos - from) as usize;
        let before = (k > 0).then(|| crate::file::head::hash(&buf[at - k as usize..at]));
        if t.pos_marker.is_some() && before != t.pos_marker {
            return Some(Outcome::Truncated);
        }
        if let Some((len, hash)) = t.head_check {
            let head = if from == 0 {
                // len <= pos <= got: the head is in what was just read.
                Some(crate::file::head::hash(&buf[..len as usize]))
            } else {
                super::head_hash(t.file(), len)
            };
            if head != Some(hash) {
                return Some(Outcome::Truncated);
            }
        }
        t.reader.taken_to(from + got as u64);
        if got > at {
            self.take_chunk(t, &buf[..got], at, source, out);
        }
        if got < buf.len() {
            let head = (from == 0).then_some(&buf[..got]);
            return Some(self.at_short_end(t, head));
        }
        None
    }

    /// New bytes `window[start..]` (the window ends at the bytes just read, and may begin with
    /// bytes before them, which spare a pread for the markers).
    fn take_chunk(
        &mut self,
        t: &mut Tracked,
        window: &[u8],
        start: usize,
        source: &Source,
        out: &mut Intake<'_>,
    ) {
        let n = window.len() - start;
        t.at_eof = false;
        t.last_data = Instant::now();
        if t.fingerprint.is_none()
            && !t.compressed
            && t.framer.position() + n as u64 >= source.fingerprint_bytes as u64
        {
            self.promote(t, source);
        }
        self.frame_chunk(t, window, start, out);
        let pos = t.framer.position();
        if let Some(m) = open::marker_in_chunk(window, pos, pos) {
            t.pos_marker = Some(m);
        } else if !t.compressed {
            t.pos_marker = open::marker_at(t.file(), pos).ok().flatten();
        }
        self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn frame_chunk(
        &mut self,
        t: &mut Tracked,
        window: &[u8],
        start: usize,
        out: &mut Intake<'_>,
    ) {
        let slot = self.slot(t, out);
        let ts = now_ms();
        let stats = &self.stats;
        t.framer.push(&window[start..], &mut |r: Rec<'_>| {
            stats.records_read.fetch_add(1, Ordering::Relaxed);
            if r.part == crate::frame::Part::Head {
                stats.overlong_records.fetch_add(1, Ordering::Relaxed);
            }
            out.push(slot, &r, ts, None);
        });
        self.update_checkpoint(t, window, out);
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

    /// A plain file read short: that was its end (its size then is our position). Truncation
    /// after this read is caught when reading resumes. `head` is the file's bytes from 0, when
    /// the read began there.
    pub(super) fn at_short_end(&mut self, t: &mut Tracked, head: Option<&[u8]>) -> Outcome {
        t.at_eof = true;
        t.size = t.framer.position();
        let n = self.cfg.sources[t.source].fingerprint_bytes as u64;
        let want = t.framer.position().min(n);
        if want > 0 && t.head_check.map(|(len, _)| len < want).unwrap_or(true) {
            t.head_check = match head {
                Some(h) if h.len() as u64 >= want => {
                    Some((want, crate::file::head::hash(&h[..want as usize])))
                }
                _ => super::head_hash(t.file(), want).map(|h| (want, h)),
            };
        }
        Outcome::Eof
    }

    /// A short file reached N bytes: it gains its fingerprint and keeps its id and offset.
    pub(super) fn promote(&mut self, t: &mut Tracked, source: &Source) {
        let Ok(head) = head::read_head(t.file(), source.fingerprint_bytes, head::Decoding::Raw)
        else {
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
