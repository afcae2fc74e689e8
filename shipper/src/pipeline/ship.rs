//! The shipping side: each batch to the sink until it is acknowledged, then its
//! acknowledgements back to the inputs through the [`Committer`]. Nothing here knows an input:
//! a batch's acknowledgements are data it carries (`crate::batch::ack`).
//!
//! Fan-out later: with several sinks, each sink would run this loop over the same batches
//! (shared, e.g. `Arc<Batch>`), and the committer would take a batch once the last of them has
//! acknowledged it. Batches keep their order in every sink, so the committer still sees them in
//! build order; nothing in the acknowledgement changes.

use super::commit::Committer;
use super::Wanted;
use crate::batch::Batch;
use crate::sink::{self, Sink, SinkError};
use crate::status::ShipStats;
use crate::store::{Alert, Store};
use crossbeam_channel::{Receiver, RecvError, RecvTimeoutError, TryRecvError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a stopping agent keeps retrying a failing sink before it gives up on the batch in
/// flight (it stays uncommitted and is read again at the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the shipping thread is given besides its batches.
pub struct ShipTo<'a> {
    pub sink: Box<dyn Sink>,
    pub store: &'a Mutex<Store>,
    pub stop: &'a AtomicBool,
    pub stats: &'a ShipStats,
    /// Where delivered batches go back to the pipeline to be filled again.
    pub recycle: Option<crossbeam_channel::Sender<Batch>>,
    /// Sinks a reload built the config of: replaced between batches.
    pub sinks: Option<Receiver<crate::config::SinkConfig>>,
    /// Told the encoding of each sink, for the pipeline to encode batches ahead in.
    pub wanted: Option<std::sync::Arc<Wanted>>,
}

/// Sends each batch until the sink acknowledges it, then commits; never drops a batch.
///
/// Up to the sink's window of batches are in flight; they are acknowledged, and so committed,
/// strictly in order. After a failure every batch in flight is sent again, in order, one at a
/// time, until the sink works again: the receiver's high-water marks make whatever it had
/// already stored harmless.
pub fn ship_loop(rx: Receiver<Batch>, to: ShipTo<'_>) {
    if let Some(w) = &to.wanted {
        w.set(to.sink.encoding());
    }
    let mut s = Shipping {
        sink: to.sink,
        store: to.store,
        committer: Committer::new(to.store, to.stats),
        stop: to.stop,
        stats: to.stats,
        recycle: to.recycle,
        wanted: to.wanted,
        failing_since: None,
    };
    deliver(&mut s, rx, to.sinks);
    s.committer.finish();
}

/// The loop of [`ship_loop`]; returns when the pipeline is done, or a stopping agent gave up.
fn deliver(
    s: &mut Shipping,
    rx: Receiver<Batch>,
    sinks: Option<Receiver<crate::config::SinkConfig>>,
) {
    let stats = s.stats;
    let mut inflight: VecDeque<Batch> = VecDeque::new();
    let mut closed = false;
    loop {
        // A reload that changed the sink takes effect between batches, with none in flight.
        if let Some(new) = sinks.as_ref().and_then(|r| r.try_recv().ok()) {
            if !s.drain(&mut inflight) {
                return;
            }
            s.replace_sink(new);
            continue;
        }
        let next = if closed || inflight.len() >= s.sink.window() {
            None
        } else if inflight.is_empty() {
            stats.waiting.store(true, Ordering::Relaxed);
            let b = s.wait_for_batch(&rx);
            stats.waiting.store(false, Ordering::Relaxed);
            b.map_err(|_| closed = true).ok()
        } else {
            match rx.try_recv() {
                Ok(b) => Some(b),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    None
                }
            }
        };
        let result = match next {
            Some(batch) => {
                let r = s.sink.submit(&batch);
                inflight.push_back(batch);
                r
            }
            None if inflight.is_empty() => {
                if closed {
                    return;
                }
                continue;
            }
            None => s.sink.confirm().map(|()| {
                let batch = inflight.pop_front().expect("a batch in flight");
                s.acknowledged(batch);
            }),
        };
        if let Err(e) = result {
            s.failed(&e);
            if !s.redeliver(&mut inflight) {
                return;
            }
        }
    }
}

/// The shipping thread's side of delivery: the sink, where acknowledgements are committed, and
/// the state of an outage.
struct Shipping<'a> {
    sink: Box<dyn Sink>,
    store: &'a Mutex<Store>,
    committer: Committer<'a>,
    stop: &'a AtomicBool,
    stats: &'a ShipStats,
    recycle: Option<crossbeam_channel::Sender<Batch>>,
    wanted: Option<std::sync::Arc<Wanted>>,
    failing_since: Option<Instant>,
}

impl Shipping<'_> {
    /// Blocks for the next batch, retrying owed commits meanwhile; Err once the pipeline is gone.
    fn wait_for_batch(&mut self, rx: &Receiver<Batch>) -> Result<Batch, RecvError> {
        loop {
            let Some(wait) = self.committer.retry_in() else {
                return rx.recv();
            };
            match rx.recv_timeout(wait) {
                Ok(b) => return Ok(b),
                Err(RecvTimeoutError::Timeout) => self.committer.retry(),
                Err(RecvTimeoutError::Disconnected) => return Err(RecvError),
            }
        }
    }

    fn replace_sink(&mut self, new: crate::config::SinkConfig) {
        match sink::build(&new) {
            Ok(s) => {
                tracing::info!(sink = %s.describe(), "sink replaced");
                if let Some(w) = &self.wanted {
                    w.set(s.encoding());
                }
                self.sink = s;
            }
            Err(e) => {
                tracing::error!(error = %e, "new sink cannot start; keeping the old one");
                self.alert("config_error", e.to_string());
            }
        }
    }

    /// An alert about the sink (no source, stream or path); one that cannot be stored is
    /// already in the log.
    fn alert(&self, kind: &'static str, detail: String) {
        let alert = Alert {
            kind,
            source: None,
            stream: None,
            path: None,
            detail,
        };
        let _ = self.store.lock().expect("store lock").add_alert(&alert);
    }

    /// Confirms every batch in flight (redelivering after a failure); false when a stopping
    /// agent gave up.
    fn drain(&mut self, inflight: &mut VecDeque<Batch>) -> bool {
        while !inflight.is_empty() {
            match self.sink.confirm() {
                Ok(()) => {
                    let batch = inflight.pop_front().expect("a batch in flight");
                    self.acknowledged(batch);
                }
                Err(e) => {
                    self.failed(&e);
                    return self.redeliver(inflight);
                }
            }
        }
        true
    }

    /// After a failure: each batch in flight, oldest first, is sent alone until acknowledged,
    /// with backoff between tries. False when a stopping agent gave up (the batches stay
    /// uncommitted and are read again at the next start).
    fn redeliver(&mut self, inflight: &mut VecDeque<Batch>) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut give_up_at: Option<Instant> = None;
        while let Some(batch) = inflight.front() {
            if self.stop.load(Ordering::Relaxed) {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        batches = inflight.len(),
                        "stopping with unacknowledged batches; they will be read again at the next start"
                    );
                    return false;
                }
            }
            self.stats.sink_retries.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(jitter(backoff));
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match self.sink.submit(batch).and_then(|()| self.sink.confirm()) {
                Ok(()) => {
                    let batch = inflight.pop_front().expect("a batch in flight");
                    self.acknowledged(batch);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => self.failed(&e),
            }
        }
        true
    }

    fn acknowledged(&mut self, mut batch: Batch) {
        if self.failing_since.take().is_some() {
            tracing::info!(sink = %self.sink.describe(), "sink recovered");
            self.stats.failing_since.store(0, Ordering::Relaxed);
        }
        self.stats
            .latency
            .record(batch.created.elapsed().as_secs_f64());
        self.committer.batch(&mut batch);
        let stats = self.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(batch.data_bytes() as u64, Ordering::Relaxed);
        stats
            .last_ok
            .store(crate::store::now_secs() as u64, Ordering::Relaxed);
        if let Some(back) = &self.recycle {
            let _ = back.try_send(batch);
        }
    }

    /// Counts a failure; alerts once per outage, and again whenever the reason changes (down,
    /// then up but refusing a revoked certificate): the operator must see both.
    fn failed(&mut self, e: &SinkError) {
        let stats = self.stats;
        stats.sink_errors.fetch_add(1, Ordering::Relaxed);
        let text = e.to_string();
        let changed = stats.last_error.lock().map(|mut last| {
            let changed = last.as_deref() != Some(text.as_str());
            *last = Some(text.clone());
            changed
        });
        if self.failing_since.is_none() || changed.unwrap_or(false) {
            if self.failing_since.is_none() {
                self.failing_since = Some(Instant::now());
                stats
                    .failing_since
                    .store(crate::store::now_secs() as u64, Ordering::Relaxed);
            }
            tracing::warn!(error = %e, "sink failed; retrying with backoff, nothing is committed meanwhile");
            self.alert("sink_error", text);
        }
    }
}

/// Up to 25% off, so a fleet that lost its sink together does not retry together.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d - d.mul_f64((nanos % 1000) as f64 / 4000.0)
}
