//! NDJSON appended to a file, one record per line; fsync'd before acknowledging when `sync`.

use super::{Sink, SinkError};
use crate::batch::Batch;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct FileSink {
    path: PathBuf,
    file: File,
    sync: bool,
    buf: Vec<u8>,
}

impl FileSink {
    pub fn open(path: &Path, sync: bool) -> Result<FileSink, SinkError> {
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
            .open(path)
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
            sync,
            buf: Vec::new(),
        })
    }
}

impl Sink for FileSink {
    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        let name = self.describe();
        let fail = |e: std::io::Error| SinkError::Failed {
            sink: name.clone(),
            message: e.to_string(),
        };
        // Encoded on the tailer's thread already; this thread only writes.
        let bytes = batch.ndjson(&mut self.buf);
        self.file.write_all(bytes).map_err(fail)?;
        if self.sync {
            self.file.sync_data().map_err(fail)?;
        }
        if self.buf.capacity() > 64 << 20 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
}
