//! The budget of one call (or of each record a call runs): the instruction count and the
//! deadline the sandbox's hook checks, and the trip that stays set once either is broken.

use super::Limit;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// The per-call budget the hook checks. A call may run several records of a run (the Lua
/// transform's driver calls the script once per record): each gets a budget of its own, the
/// driver saying which one is running ([`Meter::running`]). The clock
/// is read only when the hook fires, never per record or per call: a record that ends within
/// [`super::HOOK_EVERY`] instructions costs no clock read at all.
pub(super) struct Meter {
    /// Hook firings for the current record: instructions / HOOK_EVERY.
    ticks: AtomicU64,
    max_ticks: u64,
    /// Nanoseconds after `epoch` at which the current record's time is up.
    deadline: AtomicU64,
    epoch: Instant,
    time_limit: Duration,
    /// The record the driver says is running (0: none said).
    running: AtomicI64,
    /// The record the hook last saw running; [`NO_RECORD`] after [`Meter::start`], so the first
    /// firing of every call starts a fresh budget.
    record: AtomicI64,
    /// 0 while the call runs within its limits, else the Limit as 1 + index; stays set until
    /// the next call so that every hook after a trip raises again.
    tripped: AtomicU8,
}

const NO_RECORD: i64 = i64::MIN;

impl Meter {
    /// A budget of `max_ticks` hook firings and `time_limit` per record.
    pub(super) fn new(max_ticks: u64, time_limit: Duration) -> Meter {
        Meter {
            ticks: AtomicU64::new(0),
            max_ticks,
            deadline: AtomicU64::new(0),
            epoch: Instant::now(),
            time_limit,
            running: AtomicI64::new(0),
            record: AtomicI64::new(NO_RECORD),
            tripped: AtomicU8::new(0),
        }
    }

    pub(super) fn tripped(&self) -> Option<Limit> {
        match self.tripped.load(Ordering::Relaxed) {
            1 => Some(Limit::Instructions),
            2 => Some(Limit::Time),
            _ => None,
        }
    }

    pub(super) fn start(&self) {
        self.running.store(0, Ordering::Relaxed);
        self.record.store(NO_RECORD, Ordering::Relaxed);
        self.tripped.store(0, Ordering::Relaxed);
    }

    /// Says that record `record` (1, 2, …) of the call now runs.
    pub(super) fn running(&self, record: i64) {
        self.running.store(record, Ordering::Relaxed);
    }

    /// The record last said to run: 0 if none was.
    pub(super) fn current(&self) -> i64 {
        self.running.load(Ordering::Relaxed)
    }

    /// One hook firing while record `record` runs. A record's budget starts at the first
    /// firing inside it, at most HOOK_EVERY instructions late: the same slack the count has.
    pub(super) fn check(&self, record: i64) -> Result<(), Limit> {
        if let Some(l) = self.tripped() {
            return Err(l);
        }
        let now = self.epoch.elapsed();
        if self.record.swap(record, Ordering::Relaxed) != record {
            self.ticks.store(1, Ordering::Relaxed);
            let deadline = (now + self.time_limit).as_nanos() as u64;
            self.deadline.store(deadline, Ordering::Relaxed);
            return Ok(());
        }
        let ticks = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        let trip = if ticks > self.max_ticks {
            Limit::Instructions
        } else if now.as_nanos() as u64 > self.deadline.load(Ordering::Relaxed) {
            Limit::Time
        } else {
            return Ok(());
        };
        let code = if trip == Limit::Instructions { 1 } else { 2 };
        self.tripped.store(code, Ordering::Relaxed);
        Err(trip)
    }
}
