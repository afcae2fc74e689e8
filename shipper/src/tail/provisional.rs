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
    /// Its bytes before the offset could not be read now: look again at the next scan.
    NotNow,
    /// None, or not this file's (other content on a reused inode, or already followed).
    NotThis,
}

impl Tailer {
    /// The provisional stream of `source` on `key` that the plain file `file`, now `size` bytes
    /// and long enough to fingerprint, continues.
    pub(super) fn provisional_grown(
        &self,
        source: &Source,
        file: &File,
        key: FileKey,
        size: u64,
    ) -> Provisional {
        let Some(c) = self.registry.provisional_on(&source.name, key.0, key.1) else {
            return Provisional::NotThis;
        };
        // Followed already (the same inode under a second name is one open file, so this is a
        // second claim), or read through a decoder: a stream's offsets count the bytes of one
        // decoding, and a plain file never continues an archive's.
        if c.row.compressed || self.open_stream(&c.row.stream).is_some() || c.resume > size {
            return Provisional::NotThis;
        }
        match read::verify_marker(file, false, c.resume, c.resume_marker) {
            Ok(true) => Provisional::Continue {
                id: c.row.stream.clone(),
                resume: c.resume,
                marker: c.resume_marker,
            },
            Ok(false) => Provisional::NotThis,
            Err(_) => Provisional::NotNow,
        }
    }
}
