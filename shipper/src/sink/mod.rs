//! Where batches go. A sink returns Ok only once the destination has the batch: that return is
//! the acknowledgement after which offsets are committed.

pub mod collector;
mod file;
mod stdout;
pub mod syslog;

pub use file::FileSink;
pub use stdout::StdoutSink;

use crate::batch::Batch;
use crate::config::SinkConfig;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {message}")]
    Failed { sink: String, message: String },
}

pub trait Sink: Send {
    /// Delivers the batch; Ok means acknowledged.
    fn send(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// A short description for logs and status ("file /var/lib/x.ndjson").
    fn describe(&self) -> String;
}

pub fn build(cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg {
        SinkConfig::File { path, sync } => Box::new(FileSink::open(path, *sync)?),
        SinkConfig::Stdout => Box::new(StdoutSink::new()),
        SinkConfig::Collector(opts) => Box::new(collector::CollectorSink::open(opts)?),
        SinkConfig::Syslog(opts) => Box::new(syslog::SyslogSink::open(opts)?),
    })
}
