//! The memory held for records not yet complete, bounded in total across open streams.
//!
//! Each stream keeps its partial last line (and a multiline record in the making) in memory, up
//! to 2 × `max_record_bytes` once a line is over-long. Across thousands of open files that is
//! bounded per file but not in total; so the tailer counts what every open stream holds and
//! keeps the sum under a budget:
//! - a stream caught up to its end keeps no spare buffers (they are given back);
//! - over the budget, the streams holding the most while they wait at their end for the rest of
//!   a line are parked: their descriptor and buffers are let go, and when the file grows the
//!   stream reopens at its last record boundary and reads the partial line again from the
//!   file, which is where the bytes live anyway (the file is the spill);
//! - over the budget, a stream being read through a backlog reads on until its partial line is
//!   complete instead of yielding with it held, so streams in the middle of a long line never
//!   pile up.

use super::*;

/// A stream at its end with more spare buffer than this gives it back.
const SHRINK_ABOVE: usize = 16 << 10;
/// Over the budget, a turn may go on this many times longer to complete a partial line.
const LONG_TURN: usize = 16;

/// The total budget for `cfg`: `max_partial_bytes`, but never less than one stream may hold
/// (about 4 × max_record_bytes: the line, a multiline record and their scratch space), or a
/// single long line could never be completed.
pub(super) fn held_budget(cfg: &Config) -> usize {
    let largest = cfg
        .sources
        .iter()
        .map(|s| s.framing.max_record_bytes)
        .max()
        .unwrap_or(0);
    let floor = largest.saturating_mul(4).saturating_add(64 << 10);
    (cfg.discovery.max_partial_bytes as usize).max(floor)
}

impl Tailer {
    /// After a read turn: gives back spare buffers at the end of the file and counts what the
    /// stream holds against the total.
    pub(super) fn account_held(&mut self, t: &mut Tracked) {
        if t.at_eof && t.framer.held_bytes() > SHRINK_ABOVE {
            t.framer.shrink();
        }
        let now = t.framer.held_bytes();
        self.slots.held_total = self.slots.held_total.saturating_sub(t.held) + now;
        t.held = now;
    }

    /// Whether `t`, as it is now, takes the total over the budget.
    pub(super) fn over_held_budget(&self, t: &Tracked) -> bool {
        self.slots.held_total.saturating_sub(t.held) + t.framer.held_bytes()
            > self.slots.held_budget
    }

    /// Whether a read turn that has used `reads` reads should stop.
    pub(super) fn turn_over(&self, t: &Tracked, reads: usize) -> bool {
        if reads < READS_PER_TURN {
            return false;
        }
        reads >= READS_PER_TURN * LONG_TURN || !(t.framer.has_partial() && self.over_held_budget(t))
    }

    /// Over the budget: streams waiting at their end with the most held give it up.
    pub(super) fn enforce_held_budget(&mut self) {
        if self.slots.held_total <= self.slots.held_budget {
            return;
        }
        let mut holders: Vec<(usize, FileKey)> = self
            .open
            .values()
            .filter(|t| !t.compressed && t.released_at.is_none() && t.at_eof && t.held > 0)
            .map(|t| (t.held, t.key))
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        // Down to three quarters, so the next few reads do not come straight back here.
        let target = self.slots.held_budget / 4 * 3;
        let mut parked = 0usize;
        for (_, key) in holders {
            if self.slots.held_total <= target {
                break;
            }
            self.park(key, false);
            parked += 1;
        }
        self.stats
            .partial_parks
            .fetch_add(parked as u64, Ordering::Relaxed);
        // One line per minute at most: a writer leaving many lines half written can bring this
        // back on every read.
        let loud = self
            .slots
            .last_partial_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if loud {
            self.slots.last_partial_log = Some(Instant::now());
        }
        let msg = format!(
            "partial lines held more than discovery.max_partial_bytes = {}: {parked} files \
             waiting for the rest of a line were closed, to read it again from the file when \
             they grow; {} bytes held now",
            self.slots.held_budget, self.slots.held_total
        );
        if loud {
            tracing::warn!("{msg}");
        } else {
            tracing::debug!("{msg}");
        }
    }
}
