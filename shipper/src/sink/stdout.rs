//! NDJSON on standard output (logs go to standard error, so the two never mix).

use super::{Sink, SinkError};
use crate::batch::Batch;
use std::io::Write;

#[derive(Default)]
pub struct StdoutSink {
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn new() -> Self {
        StdoutSink::default()
    }
}

impl Sink for StdoutSink {
    fn encoding(&self) -> super::Encoding {
        super::Encoding::Ndjson
    }

    fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let bytes = batch.ndjson(&mut self.buf);
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)
            .and_then(|_| out.flush())
            .map_err(|e| SinkError::Failed {
                sink: "stdout".into(),
                message: e.to_string(),
            })
    }

    fn describe(&self) -> String {
        "stdout".into()
    }
}
