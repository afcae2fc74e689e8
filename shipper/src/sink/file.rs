//! NDJSON appended to a file, one record per line; fsync'd before acknowledging when `sync`.
//!
//! The file only ever holds whole lines: a batch that fails part-way (ENOSPC after a partial
//! write, a failed fsync) is cut off again before the error is returned, as the collector does
//! with its stream files; the retry then starts where the failed batch started. A line torn by a
//! crash mid-write is cut at the next open: that batch was never acknowledged, so it comes again.

use super::{Sink, SinkError};
use crate::batch::Batch;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub struct FileSink {
    path: PathBuf,
    file: File,
    sync: bool,
    buf: Vec<u8>,
    /// A regular file, which a failed batch can be cut off; a pipe or device cannot be unwritten.
    regular: bool,
    /// The length a failed batch must be cut back to, when cutting it failed too: done before
    /// anything else is written, so nothing ever lands behind a torn line.
    cut_to: Option<u64>,
}

impl FileSink {
    /// `mode` is given to a file this creates; one that exists keeps the mode its owner chose.
    pub fn open(path: &Path, sync: bool, mode: u32) -> Result<FileSink, SinkError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |message: String| SinkError::Failed {
            sink: format!("file {}", path.display()),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fail(format!("cannot create folder {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(path)
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        let regular = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat: {e}")))?
            .is_file();
        let mut sink = FileSink {
            path: path.to_path_buf(),
            file,
            sync,
            buf: Vec::new(),
            regular,
            cut_to: None,
        };
        // Read through a handle of its own: the sink's is write-only, which is all it may need.
        let whole = match regular.then(|| File::open(path)) {
            Some(Ok(f)) => whole_lines_len(&f).map_err(|e| fail(format!("cannot read: {e}")))?,
            Some(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the sink file to check its last line");
                None
            }
            None => None,
        };
        if let Some(len) = whole {
            tracing::warn!(path = %path.display(), len, "cutting a line torn by an interrupted write; its batch is sent again");
            sink.cut(len)
                .map_err(|e| fail(format!("cannot cut a torn last line: {e}")))?;
        }
        Ok(sink)
    }

    /// Truncates the file back to `len` (and syncs that when `sync`); remembers it on failure.
    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        if !self.regular {
            return Ok(());
        }
        let r = self.file.set_len(len).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        self.cut_to = r.is_err().then_some(len);
        r
    }

    fn append(&mut self, batch: &Batch) -> std::io::Result<()> {
        // Encoded on the pipeline's thread already; this thread only writes.
        let bytes = batch.ndjson(&mut self.buf);
        self.file.write_all(bytes)?;
        if self.sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

impl Sink for FileSink {
    fn encoding(&self) -> super::Encoding {
        super::Encoding::Ndjson
    }

    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let name = self.describe();
        let fail = |message: String| SinkError::Failed {
            sink: name.clone(),
            message,
        };
        if let Some(len) = self.cut_to {
            self.cut(len).map_err(|e| {
                fail(format!(
                    "cannot cut a failed batch off at byte {len}, so nothing is written behind it: {e}"
                ))
            })?;
        }
        // Taken each time, not remembered: the file may have been rotated or truncated since.
        let before = self.file.metadata().map_err(|e| fail(e.to_string()))?.len();
        let written = self.append(batch);
        if self.buf.capacity() > 64 << 20 {
            self.buf = Vec::new();
        }
        written.map_err(|e| match self.cut(before) {
            Ok(()) => fail(e.to_string()),
            Err(c) => fail(format!(
                "{e}; cutting the batch off failed too ({c}), retried before the next write"
            )),
        })
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}

/// How every line this sink writes starts.
const RECORD_START: &[u8] = b"{\"host\":\"";

/// The length up to the end of the file's last whole line, when the file ends in a torn record
/// of ours. A last line that does not start like one is not ours to cut (the sink was pointed
/// at a file that held something else): it is left alone.
fn whole_lines_len(file: &File) -> std::io::Result<Option<u64>> {
    let Some(whole) = last_line_start(file)? else {
        return Ok(None);
    };
    let len = file.metadata()?.len();
    let mut head = vec![0u8; RECORD_START.len().min((len - whole) as usize)];
    file.read_exact_at(&mut head, whole)?;
    Ok(RECORD_START.starts_with(&head).then_some(whole))
}

/// Where the file's last line starts, when that line has no end.
fn last_line_start(file: &File) -> std::io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.read_exact_at(part, start)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            let whole = start + i as u64 + 1;
            return Ok((whole < len).then_some(whole));
        }
        end = start;
    }
    Ok((len > 0).then_some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_file_gets_the_mode_and_an_existing_one_keeps_its_own() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let new = dir.path().join("new.ndjson");
        FileSink::open(&new, false, 0o600).unwrap();
        assert_eq!(mode(&new), 0o600);
        let group = dir.path().join("group.ndjson");
        FileSink::open(&group, false, 0o640).unwrap();
        assert_eq!(mode(&group), 0o640);
        let old = dir.path().join("old.ndjson");
        std::fs::write(&old, b"").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        FileSink::open(&old, false, 0o600).unwrap();
        assert_eq!(mode(&old), 0o644);
    }

    #[test]
    fn whole_lines_len_finds_where_a_torn_record_starts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let cases: [(&[u8], Option<u64>); 7] = [
            (b"", None),
            (b"{}\n{}\n", None),
            (b"{}\n{\"host\":\"h\",\"ms", Some(3)),
            (b"{}\n{\"ho", Some(3)),
            (b"{\"host\":\"h", Some(0)),
            (b"\n", None),
            // Not a record of ours: someone else's file, left whole.
            (b"{}\nplain text without an end", None),
        ];
        for (text, want) in cases {
            std::fs::write(&p, text).unwrap();
            let f = File::open(&p).unwrap();
            assert_eq!(whole_lines_len(&f).unwrap(), want, "{text:?}");
        }
        // A torn line longer than one read.
        let mut long = b"{}\n{\"host\":\"".to_vec();
        long.extend(vec![b'x'; 200_000]);
        std::fs::write(&p, &long).unwrap();
        assert_eq!(whole_lines_len(&File::open(&p).unwrap()).unwrap(), Some(3));
    }
}
