//! One sink's thread: the batches of every group routed to it, each until the sink acknowledges
//! it, and the acknowledgement told back to the batch's group ([`super::fanout`]), which
//! commits once every sink of the group has it. Nothing here knows an input or commits: a
//! batch's acknowledgements are data it carries (`crate::batch::ack`).

use super::fanout::{Delivery, Heard};
use crate::config::SinkConfig;
use crate::sink::{self, Sink, SinkError};
use crate::status::ShipStats;
use crate::store::{Alert, Store};
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a stopping agent keeps retrying a failing sink before it gives up on the batch in
/// flight (it stays uncommitted and is read again at the next start).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a wait between retries looks at the stop flag (an atomic, nothing to wait on): a
/// stopping agent's grace must not start only after a backoff of up to [`MAX_BACKOFF`].
const STOP_POLL: Duration = Duration::from_millis(50);

/// One group's batches into this sink, and where its acknowledgements go back.
pub struct Feed {
    pub batches: Receiver<Delivery>,
    pub heard: Sender<Heard>,
}

/// What a sink's thread is given.
pub struct SinkTo<'a> {
    pub sink: Box<dyn Sink>,
    /// The sink's name in the config (`default` for `[sink]`), for logs and alerts.
    pub name: String,
    /// Where alerts go.
    pub store: &'a Mutex<Store>,
    pub stop: &'a AtomicBool,
    /// This sink's own counters.
    pub stats: &'a ShipStats,
    /// One per group routed to this sink.
    pub feeds: Vec<Feed>,
    /// Its config again after a reload changed it: rebuilt between batches.
    pub rebuild: Option<Receiver<SinkConfig>>,
}

/// Sends each batch until the sink acknowledges it, then tells its group; never drops one.
///
/// Up to the sink's window of batches are in flight; they are acknowledged strictly in the
/// order they were taken, which keeps each group's batches in their order. After a failure
/// every batch in flight is sent again, in order, one at a time, until the sink works again:
/// the receiver's high-water marks make whatever it had already stored harmless. The groups
/// are taken from in turn, so one with a backlog does not starve another.
pub fn sink_loop(to: SinkTo<'_>) {
    let mut s = Shipping {
        sink: to.sink,
        name: to.name,
        store: to.store,
        stop: to.stop,
        stats: to.stats,
        failing_since: None,
        rebuild: to.rebuild,
    };
    s.stats.note_destination(s.sink.destination());
    let mut feeds = Feeds {
        open: to.feeds.iter().map(|_| true).collect(),
        feeds: to.feeds,
        next: 0,
    };
    deliver(&mut s, &mut feeds);
    // Whether done or given up: a group still waiting must not wait for this sink any more.
    for f in &feeds.feeds {
        let _ = f.heard.send(Heard::Gone);
    }
}

/// The groups' feeds, taken from in turn.
struct Feeds {
    feeds: Vec<Feed>,
    /// Not yet closed by its group.
    open: Vec<bool>,
    /// The feed looked at first next time.
    next: usize,
}

impl Feeds {
    fn all_closed(&self) -> bool {
        !self.open.iter().any(|&o| o)
    }

    /// A batch ready now, from the next feed in turn that has one.
    fn try_next(&mut self) -> Option<(usize, Delivery)> {
        let n = self.feeds.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            if !self.open[i] {
                continue;
            }
            match self.feeds[i].batches.try_recv() {
                Ok(d) => {
                    self.next = (i + 1) % n;
                    return Some((i, d));
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => self.open[i] = false,
            }
        }
        None
    }

    /// Blocks for the next batch of any feed, or until a rebuild is waiting.
    fn wait_next(&mut self, rebuild: Option<&Receiver<SinkConfig>>) -> Wake {
        loop {
            if let Some((feed, d)) = self.try_next() {
                return Wake::Batch(feed, d);
            }
            if self.all_closed() {
                return Wake::Closed;
            }
            if rebuild.is_some_and(|r| !r.is_empty()) {
                return Wake::Rebuild;
            }
            let mut sel = Select::new();
            for i in (0..self.feeds.len()).filter(|&i| self.open[i]) {
                sel.recv(&self.feeds[i].batches);
            }
            // An idle sink is rebuilt at once, not with the next batch (which would still go to
            // the old one).
            if let Some(r) = rebuild {
                sel.recv(r);
            }
            // Ready (a batch, a closed feed or a rebuild); the checks above take it.
            let _ = sel.ready();
        }
    }
}

/// What an idle sink woke up for.
enum Wake {
    Batch(usize, Delivery),
    Rebuild,
    Closed,
}

/// The loop of [`sink_loop`]; returns when every group is done, or a stopping agent gave up.
fn deliver(s: &mut Shipping, feeds: &mut Feeds) {
    let mut inflight: VecDeque<(usize, Delivery)> = VecDeque::new();
    loop {
        // A reload that changed the sink takes effect between batches, with none in flight.
        if let Some(new) = s.rebuilt() {
            if !s.hand_over(feeds, &mut inflight, new) {
                return;
            }
            continue;
        }
        let next = if inflight.len() >= s.sink.window() {
            None
        } else if inflight.is_empty() {
            match feeds.wait_next(s.rebuild.as_ref()) {
                Wake::Batch(feed, d) => Some((feed, d)),
                Wake::Rebuild => continue,
                Wake::Closed => return,
            }
        } else {
            feeds.try_next()
        };
        let result = match next {
            Some((feed, d)) => {
                let r = s.on_sink(|k| k.submit(&d.batch));
                inflight.push_back((feed, d));
                r
            }
            None => s.on_sink(|k| k.confirm()).map(|()| {
                let (feed, d) = inflight.pop_front().expect("a batch in flight");
                s.acknowledged(feeds, feed, d);
            }),
        };
        if let Err(e) = result {
            s.failed(&e);
            if !s.redeliver(feeds, &mut inflight) {
                return;
            }
        }
    }
}

/// The sink's side of delivery: the sink and the state of an outage.
struct Shipping<'a> {
    sink: Box<dyn Sink>,
    name: String,
    store: &'a Mutex<Store>,
    stop: &'a AtomicBool,
    stats: &'a ShipStats,
    failing_since: Option<Instant>,
    /// The sink's config again after a reload changed it; looked at between batches and while
    /// a failing sink is retried, so a reload can replace the sink that fails.
    rebuild: Option<Receiver<SinkConfig>>,
}

/// How a wait between retries of a failing sink ended.
enum Pause {
    Elapsed,
    /// A reload changed the sink: retry with the new one at once.
    Rebuilt(SinkConfig),
    /// The agent began to stop: its grace starts now, not after the backoff.
    Stopping,
}

impl Shipping<'_> {
    /// Calls the sink, noting meanwhile since when it is under way: status counts a call that
    /// does not return as the sink failing (it raises no error of its own).
    fn on_sink<T>(&mut self, f: impl FnOnce(&mut dyn Sink) -> T) -> T {
        let since = &self.stats.sending_since;
        since.store(crate::store::now_secs() as u64, Ordering::Relaxed);
        let r = f(&mut *self.sink);
        since.store(0, Ordering::Relaxed);
        r
    }

    /// The latest config a reload sent, if any; the ones before it are outdated already.
    fn rebuilt(&self) -> Option<SinkConfig> {
        self.rebuild.as_ref().and_then(|r| r.try_iter().last())
    }

    /// Builds the sink a reload asked for; one that cannot start leaves the old one in use,
    /// with an alert naming both (the reload itself was accepted before the sink was built).
    /// True when the new one took over.
    fn replace_sink(&mut self, new: SinkConfig) -> bool {
        match sink::build(&new) {
            Ok(s) => {
                tracing::info!(sink = %self.name, describe = %s.describe(), "sink replaced");
                if let Ok(mut in_use) = self.stats.in_use.lock() {
                    *in_use = Some((sink::kind(&new).to_string(), s.describe()));
                }
                self.sink = s;
                self.stats.note_destination(self.sink.destination());
                // The old sink's error would read as the new one's.
                if let Ok(mut last) = self.stats.last_error.lock() {
                    *last = None;
                }
                true
            }
            Err(e) => {
                let old = self.sink.describe();
                tracing::error!(sink = %self.name, new = %sink::describe(&new), error = %e, kept = %old, "new sink cannot start; keeping the old one");
                let detail = format!(
                    "{}new sink {} cannot start, still sending to {old}: {e}",
                    self.prefix(),
                    sink::describe(&new)
                );
                self.alert("config_error", detail);
                false
            }
        }
    }

    /// How an alert names a named sink (`sinks.NAME: `); nothing for the one `[sink]`.
    fn prefix(&self) -> String {
        if self.name == crate::config::DEFAULT_SINK {
            String::new()
        } else {
            format!("sinks.{}: ", self.name)
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

    /// Replaces the sink once the old one confirmed every batch in flight; if it fails to, the
    /// new one takes over at once and is sent them again (in order). False when a stopping
    /// agent gave up.
    fn hand_over(
        &mut self,
        feeds: &Feeds,
        inflight: &mut VecDeque<(usize, Delivery)>,
        new: SinkConfig,
    ) -> bool {
        while !inflight.is_empty() {
            match self.on_sink(|k| k.confirm()) {
                Ok(()) => {
                    let (feed, d) = inflight.pop_front().expect("a batch in flight");
                    self.acknowledged(feeds, feed, d);
                }
                Err(e) => {
                    self.failed(&e);
                    let _ = self.replace_sink(new);
                    return self.redeliver(feeds, inflight);
                }
            }
        }
        let _ = self.replace_sink(new);
        true
    }

    /// After a failure: each batch in flight, oldest first, is sent alone until acknowledged,
    /// with backoff between tries. A reload that changes the sink meanwhile replaces it at
    /// once, and the batches go to the new one (the old may have stored some: at least once).
    /// False when a stopping agent gave up after its grace (the batches stay uncommitted and
    /// are read again at the next start).
    fn redeliver(&mut self, feeds: &Feeds, inflight: &mut VecDeque<(usize, Delivery)>) -> bool {
        let mut backoff = FIRST_BACKOFF;
        let mut give_up_at: Option<Instant> = None;
        while let Some((_, d)) = inflight.front() {
            let mut wait = jitter(backoff);
            if self.stop.load(Ordering::Relaxed) {
                let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + SHUTDOWN_GRACE);
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(
                        sink = %self.name,
                        batches = inflight.len(),
                        "stopping with unacknowledged batches; they will be read again at the next start"
                    );
                    return false;
                }
                wait = wait.min(left);
            }
            match self.pause(wait, give_up_at.is_some()) {
                Pause::Elapsed => backoff = (backoff * 2).min(MAX_BACKOFF),
                // A new sink is tried at once and owes nothing to the old one's backoff.
                Pause::Rebuilt(new) => {
                    if self.replace_sink(new) {
                        backoff = FIRST_BACKOFF;
                    }
                }
                // One more try at once, then the grace's deadline bounds every wait.
                Pause::Stopping => {}
            }
            self.stats.sink_retries.fetch_add(1, Ordering::Relaxed);
            match self.on_sink(|k| k.submit(&d.batch).and_then(|()| k.confirm())) {
                Ok(()) => {
                    let (feed, d) = inflight.pop_front().expect("a batch in flight");
                    self.acknowledged(feeds, feed, d);
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => self.failed(&e),
            }
        }
        true
    }

    /// Waits `d` between retries, ended early by a reload's new sink or, unless `stopping` is
    /// already known, by the agent beginning to stop.
    fn pause(&self, d: Duration, stopping: bool) -> Pause {
        let until = Instant::now() + d;
        loop {
            if !stopping && self.stop.load(Ordering::Relaxed) {
                return Pause::Stopping;
            }
            if let Some(new) = self.rebuilt() {
                return Pause::Rebuilt(new);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Pause::Elapsed;
            }
            let slice = left.min(STOP_POLL);
            match &self.rebuild {
                Some(r) => match r.recv_timeout(slice) {
                    Ok(new) => {
                        // A later one may already wait behind it; the latest wins.
                        return Pause::Rebuilt(self.rebuilt().unwrap_or(new));
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(slice),
                },
                None => std::thread::sleep(slice),
            }
        }
    }

    fn acknowledged(&mut self, feeds: &Feeds, feed: usize, d: Delivery) {
        if self.failing_since.take().is_some() {
            tracing::info!(sink = %self.name, describe = %self.sink.describe(), "sink recovered");
            self.stats.failing_since.store(0, Ordering::Relaxed);
        }
        let stats = self.stats;
        stats.note_destination(self.sink.destination());
        stats
            .latency
            .record(d.batch.created.elapsed().as_secs_f64());
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(d.batch.len() as u64, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(d.batch.data_bytes() as u64, Ordering::Relaxed);
        stats
            .last_ok
            .store(crate::store::now_secs() as u64, Ordering::Relaxed);
        let seq = d.seq;
        // Let go of the batch before telling: the group takes it back whole to commit it.
        drop(d);
        let _ = feeds.feeds[feed].heard.send(Heard::Delivered(seq));
    }

    /// Counts a failure; alerts once per outage, and again whenever the reason changes (down,
    /// then up but refusing a revoked certificate): the operator must see both. A sink riding
    /// out an outage (`Unavailable`) decides itself when it is worth the alert.
    fn failed(&mut self, e: &SinkError) {
        let stats = self.stats;
        stats.sink_errors.fetch_add(1, Ordering::Relaxed);
        stats.note_destination(self.sink.destination());
        if matches!(e, SinkError::Unavailable { .. }) {
            if self.failing_since.is_none() {
                self.failing_since = Some(Instant::now());
                stats
                    .failing_since
                    .store(crate::store::now_secs() as u64, Ordering::Relaxed);
            }
            if let Ok(mut last) = stats.last_error.lock() {
                *last = Some(e.to_string());
            }
            tracing::info!(sink = %self.name, error = %e, "sink unavailable; retrying with backoff, nothing routed to it is committed meanwhile");
            return;
        }
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
            tracing::warn!(sink = %self.name, error = %e, "sink failed; retrying with backoff, nothing routed to it is committed meanwhile");
            // A named sink's alert says which of the sinks it is.
            let detail = format!("{}{text}", self.prefix());
            self.alert("sink_error", detail);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use std::sync::Arc;

    /// A sink shared by two groups takes from them in turn: a backlog in one does not make the
    /// other wait behind it.
    #[test]
    fn groups_sharing_a_sink_are_taken_from_in_turn() {
        let (busy_tx, busy) = crossbeam_channel::unbounded();
        let (quiet_tx, quiet) = crossbeam_channel::unbounded();
        let (heard, _h) = crossbeam_channel::unbounded();
        for seq in 0..5 {
            busy_tx
                .send(Delivery {
                    seq,
                    batch: Arc::new(Batch::new("h".into(), seq)),
                })
                .unwrap();
        }
        quiet_tx
            .send(Delivery {
                seq: 0,
                batch: Arc::new(Batch::new("h".into(), 100)),
            })
            .unwrap();
        let mut feeds = Feeds {
            feeds: vec![
                Feed {
                    batches: busy,
                    heard: heard.clone(),
                },
                Feed {
                    batches: quiet,
                    heard,
                },
            ],
            open: vec![true, true],
            next: 0,
        };
        let order: Vec<usize> = std::iter::from_fn(|| feeds.try_next().map(|(f, _)| f)).collect();
        assert_eq!(order, [0, 1, 0, 0, 0, 0]);
        drop((busy_tx, quiet_tx));
        assert!(matches!(feeds.wait_next(None), Wake::Closed));
    }
}
