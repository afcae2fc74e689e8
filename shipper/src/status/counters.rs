//! The counters the running agent's threads report into, read by [`super::Status::collect`].
//! Plain atomics, so reporting costs the pipeline nothing and status imports none of it.

use super::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters the file tailer (and the inputs that read records) keep for status and metrics.
#[derive(Debug, Default)]
pub struct TailStats {
    pub bytes_read: AtomicU64,
    pub records_read: AtomicU64,
    pub overlong_records: AtomicU64,
    pub open_files: AtomicU64,
    pub fingerprint_collisions: AtomicU64,
    pub truncations: AtomicU64,
    pub scans: AtomicU64,
    pub alerts: AtomicU64,
    /// Followed files whose descriptor is closed until they change (idle, or making room).
    pub parked_files: AtomicU64,
    /// Times files had to wait because every open slot was taken.
    pub held_back: AtomicU64,
    /// Streams parked to keep the memory of partial lines under its total budget.
    pub partial_parks: AtomicU64,
}

impl TailStats {
    /// Every group's inputs report into their own counters (a gauge such as `open_files` is
    /// each tailer's own); status shows their sum.
    pub fn total(all: &[Arc<TailStats>]) -> TailStats {
        let t = TailStats::default();
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for s in all {
            add(&t.bytes_read, &s.bytes_read);
            add(&t.records_read, &s.records_read);
            add(&t.overlong_records, &s.overlong_records);
            add(&t.open_files, &s.open_files);
            add(&t.fingerprint_collisions, &s.fingerprint_collisions);
            add(&t.truncations, &s.truncations);
            add(&t.scans, &s.scans);
            add(&t.alerts, &s.alerts);
            add(&t.parked_files, &s.parked_files);
            add(&t.held_back, &s.held_back);
            add(&t.partial_parks, &s.partial_parks);
        }
        t
    }
}

/// Counters of the shipping side.
#[derive(Debug, Default)]
pub struct ShipStats {
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub sink_errors: AtomicU64,
    pub sink_retries: AtomicU64,
    /// Unix seconds of the last successful delivery.
    pub last_ok: AtomicU64,
    /// Unix seconds since the sink has been failing; 0 while it works.
    pub failing_since: AtomicU64,
    /// Unix seconds at which the sink's current send (or wait for an acknowledgement) began;
    /// 0 while none is under way. A send that never returns (a pipe nobody reads, a hung file
    /// system) raises no error, so only this shows it.
    pub sending_since: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Why the last commit failed, while commits fail (the store is unwritable).
    pub store_error: Mutex<Option<String>>,
    /// The shipping thread is waiting for a batch (the pipeline may hand one over early).
    pub waiting: Arc<AtomicBool>,
    /// Seconds from a batch's first record to its acknowledgement.
    pub latency: LatencyRecorder,
    /// Where a sink with several destinations sends now, and its failovers; None for a sink
    /// with one.
    pub destination: Mutex<Option<Destination>>,
    /// The kind and description of the sink its thread replaced the configured one with at a
    /// reload; None while it runs the one it started with. Set by the thread, not the reload:
    /// a new sink that cannot start leaves the old one in use, and status must say so.
    pub in_use: Mutex<Option<(String, String)>>,
}

/// Where a sink with several destinations sends now (status and metrics show it). Here, with
/// the counters, so that sinks report it without the status depending on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub url: String,
    /// Moves to another destination after a failure, since the sink was built.
    pub failovers: u64,
}

impl ShipStats {
    /// Takes in the sink's destination, after each acknowledgement and failure.
    pub fn note_destination(&self, now: Option<Destination>) {
        if let Ok(mut d) = self.destination.lock() {
            *d = now;
        }
    }
}

/// Upper bounds of the batch latency histogram, in seconds.
pub const LATENCY_BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Lock-free latency histogram the shipping loop records into.
#[derive(Debug, Default)]
pub struct LatencyRecorder {
    counts: [std::sync::atomic::AtomicU64; 11],
    sum_micros: std::sync::atomic::AtomicU64,
}

impl LatencyRecorder {
    pub fn record(&self, secs: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        let mut buckets = Vec::with_capacity(11);
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            buckets.push((LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::MAX), cum));
        }
        Histogram {
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: cum,
        }
    }
}
