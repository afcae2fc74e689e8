//! While a sink outage holds the pipeline, nothing commits and no turn comes, so the stream rows
//! would keep the sizes of their last commit and `lag_bytes` would stand still while the files
//! grow. Now and then the files written since (inotify marked them dirty) are looked at, and
//! the sizes that grew (by those looks, or by reads into the held batches) go to the store in
//! one transaction; nothing is read and no checkpoint moves.

use super::*;

/// How often the sizes are noted while the outage lasts: `status` and the tables refresh every
/// second or two, and 10,000 files written meanwhile cost one fstat each per round.
pub(super) const NOTE_EVERY: Duration = Duration::from_secs(1);

impl Tailer {
    pub(super) fn note_stalled_sizes(&mut self) {
        if self
            .last_stall_note
            .is_some_and(|at| at.elapsed() < NOTE_EVERY)
        {
            return;
        }
        self.last_stall_note = Some(Instant::now());
        self.drain_wakes();
        // Without inotify nothing marks the written files: every open one is looked at.
        let every = self.watch.is_none();
        let mut grown = Vec::new();
        for (key, t) in self.open.iter_mut() {
            if !t.compressed && (every || self.dirty.contains(key)) {
                if let Ok(md) = t.file().metadata() {
                    t.size = t.size.max(md.len());
                }
            }
            // Bytes read into the batches the outage holds grew `size` too, uncommitted.
            if t.size > t.noted_size {
                t.noted_size = t.size;
                grown.push((t.id.clone(), t.size));
            }
        }
        if grown.is_empty() {
            return;
        }
        let res = self.store.lock().expect("store lock").note_sizes(&grown);
        if let Err(e) = res {
            tracing::debug!(error = %e, streams = grown.len(), "cannot note the sizes of stalled files");
        }
    }
}
