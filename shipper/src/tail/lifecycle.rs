//! Letting go of files: truncation in place, closing a drained file, and remembering where
//! each stream stopped (the timers that call for it are in `timers`).

use super::*;

impl Tailer {
    /// The file under an open stream was truncated in place. Complete lines waiting for a
    /// multiline record go out; a partial last line does not: its rest was written before the
    /// truncation, so a copy of the file (if the globs find one) continues the stream from the
    /// start of that line. The file itself, now new content, becomes a new stream.
    pub(super) fn truncated(&mut self, mut t: Tracked, out: &mut Intake<'_>) {
        self.stats.truncations.fetch_add(1, Ordering::Relaxed);
        tracing::info!(stream = %t.id, path = %t.path.display(), "truncated in place; its new content is a new stream");
        self.flush_framer(&mut t, false, out);
        self.remember(t, StreamState::Truncated);
    }

    /// Lets go of a file: what is left goes out, the stream is remembered in `state`.
    pub(super) fn close(&mut self, mut t: Tracked, state: StreamState, out: &mut Intake<'_>) {
        self.flush_framer(&mut t, true, out);
        self.remember(t, state);
    }

    /// Hands what the framer holds back to the batch and moves the stream's checkpoint: the
    /// record waiting for its multiline continuation, or with `finish` everything, a partial
    /// last line included.
    pub(super) fn flush_framer(&mut self, t: &mut Tracked, finish: bool, out: &mut Intake<'_>) {
        let slot = self.slot(t, out);
        let ts = now_ms();
        let mut push = |r: Rec<'_>| {
            out.push(slot, &r, ts, None);
        };
        if finish {
            t.framer.finish(&mut push);
        } else {
            t.framer.flush_pending_record(&mut push);
        }
        self.update_checkpoint(t, &[], out);
    }

    pub(super) fn remember(&mut self, t: Tracked, state: StreamState) {
        if let Some(k) = self.registry.get_mut(&t.id) {
            k.resume = t.framer.consumed();
            k.resume_marker = t.consumed_marker;
            k.row.read_offset = t.framer.position();
            k.row.state = state;
            k.row.size = t.size;
            let row = k.row.clone();
            self.persist(&row);
        }
        if state == StreamState::Done {
            self.finished.insert(t.key, file_version(t.file()));
        }
        tracing::info!(stream = %t.id, path = %t.path.display(), state = state.as_str(), "closed");
        self.forget(&t);
        // Something may have been waiting for this stream to let go.
        if !self.deferred.is_empty() {
            self.scan_requested = true;
        }
    }

    /// Closes without flushing: it will be reopened at the last record boundary.
    pub(super) fn close_quietly(&mut self, t: Tracked) {
        if let Some(k) = self.registry.get_mut(&t.id) {
            k.resume = t.framer.consumed();
            k.resume_marker = t.consumed_marker;
        }
        self.forget(&t);
    }

    pub(super) fn forget(&mut self, t: &Tracked) {
        self.slots.held_total = self.slots.held_total.saturating_sub(t.held);
        self.dirty.remove(&t.key);
        if self.by_path.get(t.path.as_os_str()) == Some(&t.key) {
            self.by_path.remove(t.path.as_os_str());
        }
        self.stats
            .open_files
            .store(self.open.len() as u64, Ordering::Relaxed);
    }
}
