//! Where batches go. A sink returns Ok only once the destination has the batch: that return is
//! the acknowledgement after which offsets are committed.

pub mod collector;
mod file;
mod stdout;
pub mod syslog;

pub use file::FileSink;
pub use stdout::StdoutSink;

use crate::batch::Batch;
use crate::config::{NamedSink, SinkConfig, DEFAULT_SINK};
pub use crate::status::Destination;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink}: {message}")]
    Failed { sink: String, message: String },
    /// The destination did not answer or asked us to wait, and the sink rides it out (a
    /// collector failing over to the next URL, a leader election): retried and counted like any
    /// failure, but never alerted. The sink itself returns `Failed` once when such an outage has
    /// lasted long enough to be worth an alert.
    #[error("{sink}: {message}")]
    Unavailable { sink: String, message: String },
}

/// The form a sink takes its batches in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The records as NDJSON, as they are ([`Batch::ndjson`]): the pipeline encodes each batch
    /// ahead on its own thread, so that work overlaps the sink's sending of the previous one.
    Ndjson,
    /// The records one by one ([`Batch::records`]): the sink encodes them its own way.
    Records,
}

/// A destination for batches.
///
/// The acknowledgement is the sink's only say in what is committed: it confirms batches, in
/// order, and the shipping loop gives each confirmed batch's acknowledgements back to the
/// inputs (see `crate::batch::ack`). A sink never sees, and cannot commit, an input's position.
pub trait Sink: Send {
    /// Delivers the batch; Ok means acknowledged.
    fn send(&mut self, batch: &Batch) -> Result<(), SinkError>;
    /// A short description for logs and status ("file /var/lib/x.ndjson").
    fn describe(&self) -> String;

    /// The form this sink wants batches in; asked whenever the sink is (re)built.
    fn encoding(&self) -> Encoding {
        Encoding::Records
    }

    /// How many batches may be in flight at once: submitted, not yet confirmed. A sink whose
    /// acknowledgement is a round trip keeps the next batch on the wire meanwhile: the
    /// collector's reply after storing, the syslog relay's TCP acknowledgement.
    fn window(&self) -> usize {
        1
    }
    /// Starts delivering `batch`, after the batches already in flight. With a window of 1 this
    /// is [`Sink::send`]: the batch is acknowledged when it returns.
    fn submit(&mut self, batch: &Batch) -> Result<(), SinkError> {
        self.send(batch)
    }
    /// Waits for the acknowledgement of the oldest batch in flight; Ok means acknowledged.
    /// After an error from `submit` or `confirm`, nothing is in flight any more: the caller
    /// sends the unacknowledged batches again, in order.
    fn confirm(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Where the sink sends now, when it has several destinations to choose from.
    fn destination(&self) -> Option<Destination> {
        None
    }
}

/// The sink's kind as configured (`file`, `stdout`, …).
pub fn kind(cfg: &SinkConfig) -> &'static str {
    match cfg {
        SinkConfig::File { .. } => "file",
        SinkConfig::Stdout => "stdout",
        SinkConfig::Collector(_) => "collector",
        SinkConfig::Syslog(_) => "syslog",
    }
}

/// The sink as status pages name it.
pub fn describe(cfg: &SinkConfig) -> String {
    match cfg {
        SinkConfig::File { path, .. } => format!("file {}", path.display()),
        SinkConfig::Stdout => "stdout".into(),
        SinkConfig::Collector(opts) => opts.describe(),
        SinkConfig::Syslog(opts) => syslog::describe(opts),
    }
}

/// Every sink as `check` and the start-up line name them: `sink file /x` for the one `[sink]`,
/// `sinks archive (file /x), central (collector https://…)` for named ones.
pub fn describe_all(sinks: &[NamedSink]) -> String {
    match sinks {
        [one] if one.name == DEFAULT_SINK => format!("sink {}", describe(&one.sink)),
        _ => {
            let each: Vec<String> = sinks
                .iter()
                .map(|s| format!("{} ({})", s.name, describe(&s.sink)))
                .collect();
            format!("sinks {}", each.join(", "))
        }
    }
}

/// What [`build`] would refuse to start on, found by reading files only (`log-sensor check`):
/// a collector sink whose CA, certificate or key do not load (not enrolled yet), a syslog sink
/// whose TLS files do not, a file sink whose path cannot be opened or its folder made. Named as the
/// agent names a sink that cannot start: `sinks.NAME (…)` for a named one.
pub fn check(n: &NamedSink) -> Result<(), SinkError> {
    let checked = match &n.sink {
        SinkConfig::Collector(opts) => collector::CollectorSink::check(opts),
        SinkConfig::Syslog(opts) => syslog::SyslogSink::check(opts),
        SinkConfig::File { path, .. } => FileSink::check(path),
        SinkConfig::Stdout => Ok(()),
    };
    checked.map_err(|e| named(&n.name, e))
}

/// A sink that cannot start, named as the config names it: `sinks.NAME (…)` for a named one.
pub fn named(name: &str, e: SinkError) -> SinkError {
    match e {
        SinkError::Failed { sink, message } if name != DEFAULT_SINK => SinkError::Failed {
            sink: format!("sinks.{name} ({sink})"),
            message,
        },
        e => e,
    }
}

pub fn build(cfg: &SinkConfig) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match cfg {
        SinkConfig::File { path, sync, mode } => Box::new(FileSink::open(path, *sync, *mode)?),
        SinkConfig::Stdout => Box::new(StdoutSink::new()),
        SinkConfig::Collector(opts) => Box::new(collector::CollectorSink::open(opts)?),
        SinkConfig::Syslog(opts) => Box::new(syslog::SyslogSink::open(opts)?),
    })
}
