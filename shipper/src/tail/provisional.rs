//! A short stream found again grown: a file shorter than N when the agent last saw it is read
//! under a provisional identity (its device and inode) and gains its fingerprint when it reaches
//! N bytes (`reading.rs`, `promote`). When it grows past N while the agent is down, the restarted
//! agent finds a fingerprint no stream has; this is where the provisional stream of the same file
//! is recognised instead, so that it keeps its id and offset rather than being shipped again
//! from 0 as a new stream.
//!
//! Device and inode alone do not say it is the same file (an inode is reused once its file is
//! deleted, and a new small file may now own the inode of one rotated away while we were down):
//! the hash of the bytes before the committed offset must match too, the check every resume
//! makes. Vector's `file-source` has no provisional identity (a short file waits until it has N
//! bytes); Fluent Bit's `in_tail` resumes by inode alone, which lets a reused inode inherit an
//! old offset — the hash is what keeps that from happening here.

use super::*;

/// What the provisional stream of a file's device and inode came to.
pub(super) enum Provisional {
    /// Confirmed: the file continues this stream, which gains its fingerprint as it starts.
    Continue {
        id: String,
        resume: u64,
        marker: Option<u64>,
    },
    /// An archive read to its end before: nothing to read.
    Finished,
    /// Its bytes before the offset could not be read now: look again at the next scan.
    NotNow,
    /// None, or not this file's (other content on a reused inode, or already followed).
    NotThis,
}

impl Tailer {
    /// The provisional stream of `source` on `key` that `file` (now `size` bytes, `compressed`
    /// as its head was read) continues: after a restart, a file still short, or one grown past N
    /// while the agent was down.
    pub(super) fn provisional_of(
        &self,
        source: &Source,
        file: &File,
        key: FileKey,
        compressed: bool,
        size: u64,
    ) -> Provisional {
        let mut confirmed: Vec<&Known> = Vec::new();
        let mut not_now = false;
        for c in self.registry.provisional_on(&source.name, key.0, key.1) {
            // Followed already (the same inode under a second name is one open file, so this
            // is a second claim); or of another decoding: a stream's offsets count the bytes of
            // one decoding, and a reused inode may hold an archive where a plain file was.
            if c.row.compressed != compressed || self.open_stream(&c.row.stream).is_some() {
                continue;
            }
            // Shorter than what was committed: truncated while we were away, new content.
            if (!compressed && c.resume > size) || unconfirmable(c) {
                continue;
            }
            match open::verify_marker(file, compressed, c.resume, c.resume_marker) {
                Ok(true) => confirmed.push(c),
                Ok(false) => {}
                Err(_) => not_now = true,
            }
        }
        // Each confirmed one's bytes before its offset are the file's, so the one furthest
        // along ships nothing twice and skips nothing unseen; ties go to the smallest id, so
        // the choice does not depend on hash order.
        let best = confirmed.into_iter().max_by(|a, b| {
            a.resume
                .cmp(&b.resume)
                .then(b.row.stream.cmp(&a.row.stream))
        });
        match best {
            Some(c) => Provisional::Continue {
                id: c.row.stream.clone(),
                resume: c.resume,
                marker: c.resume_marker,
            },
            None if not_now => Provisional::NotNow,
            None => Provisional::NotThis,
        }
    }

    /// The stream a short archive (still shorter than N once decoded) was read as before a
    /// restart. It has no fingerprint to be found by, and provisional lookups skip finished
    /// streams, so without this a short `.gz` read to its end was read again at every start.
    pub(super) fn short_archive_seen(
        &self,
        source: &Source,
        file: &File,
        key: FileKey,
    ) -> Provisional {
        let Some(c) = self
            .registry
            .on_file(key.0, key.1)
            .into_iter()
            .filter(|k| {
                k.row.source == source.name
                    && k.row.fingerprint.is_none()
                    && k.row.compressed
                    && k.row.state == StreamState::Done
            })
            .min_by(|a, b| a.row.stream.cmp(&b.row.stream))
        else {
            return Provisional::NotThis;
        };
        if self.open_stream(&c.row.stream).is_some() || unconfirmable(c) {
            return Provisional::NotThis;
        }
        // A reused inode holds other bytes before the offset.
        match open::verify_marker(file, true, c.resume, c.resume_marker) {
            // Finished only once its end was committed: a crash may have lost the last batch.
            Ok(true) if c.resume >= c.row.read_offset => Provisional::Finished,
            Ok(true) => Provisional::Continue {
                id: c.row.stream.clone(),
                resume: c.resume,
                marker: c.resume_marker,
            },
            Ok(false) => Provisional::NotThis,
            Err(_) => Provisional::NotNow,
        }
    }

    /// The short stream an archive continues, matched on the bytes before where the stream
    /// stopped: a short archive, or one whose stream grew past N unread before it was rotated
    /// and compressed (with the agent down, or before it read on). A pass over the source's
    /// provisional streams only: an archive has no inode in common with its stream.
    pub(super) fn short_archive_of(
        &mut self,
        source: &Source,
        key: FileKey,
        head: &head::Head,
    ) -> Provisional {
        let len = head.bytes.len() as u64;
        let mut waiting_for_open = false;
        let short: Vec<(String, u64, Option<u64>, bool)> = self
            .registry
            .provisional(&source.name)
            .into_iter()
            .filter(|k| k.row.state != StreamState::Done)
            .map(|k| match self.open_stream(&k.row.stream) {
                // An open stream's resume point in the registry is where it was opened; where it
                // is now is the reader's.
                Some(t) => (
                    k.row.stream.clone(),
                    t.framer.consumed(),
                    t.consumed_marker,
                    t.released_at.is_some(),
                ),
                None => (k.row.stream.clone(), k.resume, k.resume_marker, false),
            })
            .collect();
        for (id, resume, marker, draining) in short {
            if resume == 0 || resume > len || marker.is_none() {
                continue;
            }
            if open::marker_in_chunk(&head.bytes[..resume as usize], resume, resume) != marker {
                continue;
            }
            if self.open_stream(&id).is_some() {
                // Still open on its plain file (rotated, then compressed before it was let
                // go): wait for it to be drained and let go, as a same-head file waits for an
                // open stream, or the archive is read again as a new stream. One that stays live
                // past rotate_wait is another file's.
                let since = *self.deferred.entry(key).or_insert_with(Instant::now);
                waiting_for_open |= draining || since.elapsed() < self.cfg.discovery.rotate_wait;
                continue;
            }
            return Provisional::Continue { id, resume, marker };
        }
        if waiting_for_open {
            Provisional::NotNow
        } else {
            Provisional::NotThis
        }
    }
}

/// A stream with an offset but no hash of the bytes before it (an archive whose last read was
/// shorter than the hash's 64 bytes keeps none): on a reused inode it would make other content
/// resume past its start, losing it. Read again instead: a duplicate, not a loss.
fn unconfirmable(c: &Known) -> bool {
    c.resume > 0 && c.resume_marker.is_none()
}
