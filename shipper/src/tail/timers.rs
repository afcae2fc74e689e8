//! When an open stream must be looked at without a write: its multiline record waiting past
//! `multiline.timeout`, its file let go by the globs and drained for `rotate_wait`, or quiet
//! for `close_inactive`. Each open stream has at most one live deadline, the soonest of its
//! three, in one heap; a turn pops only the deadlines that are due, so 10,000 open files cost
//! nothing between their deadlines (a pass over every file ten times a second did).
//!
//! A deadline is computed from the stream's state when it is armed and checked again when it
//! is due: a stream written since has moved its deadline later, and is armed anew then. A
//! deadline is only ever armed earlier than the live one (a write never brings one forward), so
//! a read costs a few comparisons, not a heap push. Entries of streams closed, parked or armed
//! anew are left in the heap and skipped when they come up.

use super::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A deadline that is due while its action cannot happen yet (a released file with bytes
/// still to read) is looked at again this much later.
const RETRY: Duration = Duration::from_millis(100);
/// Stale entries allowed beyond one per open stream before the heap is cleaned.
const STALE_SLACK: usize = 1024;

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, FileKey)>>,
}

impl Timers {
    /// The soonest deadline in the heap (maybe a stale one: an early look costs nothing).
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
}

/// The soonest moment `t` needs a look without a write, if any.
fn deadline(t: &Tracked, cfg: &Config, close_inactive: Option<Duration>) -> Option<Instant> {
    let mut soonest: Option<Instant> = None;
    let mut take = |at: Instant| soonest = Some(soonest.map_or(at, |s| s.min(at)));
    if let Some(m) = &cfg.sources[t.source].framing.multiline {
        if t.framer.has_pending_record() {
            take(t.last_data + m.timeout);
        }
    }
    match t.released_at {
        Some(since) => take(since + cfg.discovery.rotate_wait),
        None if !t.compressed => {
            if let Some(inactive) = close_inactive {
                take(t.last_data + inactive);
            }
        }
        None => {}
    }
    soonest
}

impl Tailer {
    /// Arms `t`'s deadline if it has one sooner than the one armed (or none is).
    pub(super) fn arm(&mut self, t: &mut Tracked) {
        arm(&mut self.timers, t, &self.cfg, self.slots.close_inactive);
    }

    /// Arms every open stream anew: a reload may have changed the timeouts.
    pub(super) fn rearm_all(&mut self) {
        self.timers.heap.clear();
        for t in self.open.values_mut() {
            t.timer_at = None;
            arm(&mut self.timers, t, &self.cfg, self.slots.close_inactive);
        }
    }

    /// Acts on every deadline that is due: flushes a multiline record waiting past its timeout,
    /// closes a released file drained for `rotate_wait`, parks a caught-up file quiet for
    /// `close_inactive`.
    pub(super) fn run_timers(&mut self, out: &mut Intake<'_>) {
        let now = Instant::now();
        while let Some(&Reverse((at, key))) = self.timers.heap.peek() {
            if at > now {
                break;
            }
            self.timers.heap.pop();
            match self.open.get_mut(&key) {
                Some(t) if t.timer_at == Some(at) => t.timer_at = None,
                _ => continue,
            }
            self.due(key, now, out);
        }
        if self.timers.heap.len() > self.open.len() + STALE_SLACK {
            let open = &self.open;
            self.timers.heap.retain(|Reverse((at, key))| {
                open.get(key).is_some_and(|t| t.timer_at == Some(*at))
            });
        }
    }

    /// One stream's deadline came: what is due is done, and the next deadline armed.
    fn due(&mut self, key: FileKey, now: Instant, out: &mut Intake<'_>) {
        let Some(mut t) = self.open.remove(&key) else {
            return;
        };
        let multiline = self.cfg.sources[t.source]
            .framing
            .multiline
            .as_ref()
            .map(|m| m.timeout);
        if multiline.is_some_and(|to| t.framer.has_pending_record() && t.last_data + to <= now) {
            self.flush_framer(&mut t, false, out);
        }
        let drained = t.at_eof && !t.dirty;
        if let Some(since) = t.released_at {
            if drained && since + self.cfg.discovery.rotate_wait <= now {
                self.close(*t, StreamState::Released, out);
                return;
            }
        }
        let inactive = self.slots.close_inactive.is_some_and(|ia| {
            !t.compressed && t.released_at.is_none() && drained && t.last_data + ia <= now
        });
        if !inactive {
            // What is left is armed again: a deadline passed whose action must wait (bytes
            // still to read) is looked at again shortly, not at once.
            if let Some(at) = deadline(&t, &self.cfg, self.slots.close_inactive) {
                let at = at.max(now + RETRY);
                t.timer_at = Some(at);
                self.timers.heap.push(Reverse((at, key)));
            }
        }
        self.open.insert(key, t);
        if inactive {
            self.park(key, false);
        }
    }
}

fn arm(timers: &mut Timers, t: &mut Tracked, cfg: &Config, close_inactive: Option<Duration>) {
    let Some(at) = deadline(t, cfg, close_inactive) else {
        return;
    };
    if t.timer_at.is_none_or(|armed| at < armed) {
        t.timer_at = Some(at);
        timers.heap.push(Reverse((at, t.key)));
    }
}
