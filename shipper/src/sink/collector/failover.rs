//! Which of the sink's collector URLs the next connection goes to, and when an outage is worth
//! its one alert. Positions are in the host's own order of the URLs
//! (`CollectorOptions::in_order`): 0 is its home, the URL its `host_id` hashes to.
//!
//! The policy follows Filebeat's `loadbalance: false` output (one host at a time, the next one
//! on failure, with backoff between tries), plus a return home that Filebeat does not make:
//! without it, every host that left a restarted collector would stay on the others for good,
//! and the fleet would not spread evenly again. The backoff between tries is the shipping
//! loop's (100 ms doubling to 30 s, up to a quarter off at random): a move to the next URL is
//! one try, so a dead collector costs one short wait before its hosts reach the next one.
//!
//! Only failures that say nothing about the batch move on: no connection, a TLS failure, a
//! timeout, a lost connection, 5xx and 429. A refusal naming the batch or the host (400, 413,
//! 403 for a revoked certificate...) would be the same at every collector, and stays put.
//!
//! An outage begins with the first failure after an acknowledgement and ends with the next
//! acknowledgement. Its tries are not alerted while it is shorter than `alert_after`: a
//! JetStream leader election stalls every collector of the cluster for 4–6 s at once, and each
//! try then would be one more `sink_error` alert. Past `alert_after` the outage is alerted once.

use std::time::{Duration, Instant};

/// How much longer than `failback_after` a host waits between returns that found its home
/// still down: the wait doubles up to this many times `failback_after`.
const FAILBACK_BACKOFF_CAP: u32 = 8;

#[derive(Debug)]
pub struct Failover {
    /// How many URLs there are.
    n: usize,
    /// Where the next connection goes.
    current: usize,
    /// Moves to the next URL after a failure (not counting returns home), for status and metrics.
    failovers: u64,
    /// When to try the home URL again, while away from it.
    failback_at: Option<Instant>,
    /// The wait before the next return home: `failback_after`, doubled after each return that
    /// found home still down.
    failback_wait: Duration,
    failback_after: Duration,
    /// The first failure since the last acknowledgement.
    outage_since: Option<Instant>,
    /// The current outage was alerted.
    alerted: bool,
    /// Certificate refusals alerted in this outage (`tls::explain`'s texts).
    refusals: Vec<&'static str>,
    alert_after: Duration,
}

impl Failover {
    pub fn new(n: usize, alert_after: Duration, failback_after: Duration) -> Failover {
        Failover {
            n: n.max(1),
            current: 0,
            failovers: 0,
            failback_at: None,
            failback_wait: failback_after,
            failback_after,
            outage_since: None,
            alerted: false,
            refusals: Vec::new(),
            alert_after,
        }
    }

    pub fn current(&self) -> usize {
        self.current
    }

    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    /// After a failure of the current URL that is no reason to stop trying (see the module
    /// docs): the next URL becomes current. Returns how long the outage has lasted, once, when
    /// that is past `alert_after`: the caller then raises the outage's one alert.
    pub fn failed(&mut self, now: Instant) -> Option<Duration> {
        let since = *self.outage_since.get_or_insert(now);
        if self.n > 1 {
            self.current = (self.current + 1) % self.n;
            self.failovers += 1;
            if self.current == 0 {
                self.failback_at = None;
            } else if self.failback_at.is_none() {
                self.failback_at = Some(now + self.failback_wait);
            }
        }
        let lasted = now.saturating_duration_since(since);
        if lasted >= self.alert_after && !self.alerted {
            self.alerted = true;
            return Some(lasted);
        }
        None
    }

    /// Whether `refusal` is new in this outage (then it is alerted, at once).
    pub fn first_refusal(&mut self, refusal: &'static str) -> bool {
        let new = !self.refusals.contains(&refusal);
        if new {
            self.refusals.push(refusal);
        }
        new
    }

    /// A batch was acknowledged: the outage, if any, is over.
    pub fn acknowledged(&mut self) {
        self.outage_since = None;
        self.alerted = false;
        self.refusals.clear();
    }

    /// Whether to try the home URL before the next batch (away from it, and its time has come).
    pub fn failback_due(&self, now: Instant) -> bool {
        self.current != 0 && self.failback_at.is_some_and(|at| now >= at)
    }

    /// The home URL answered: it is current again.
    pub fn failed_back(&mut self) {
        self.current = 0;
        self.failback_at = None;
        self.failback_wait = self.failback_after;
    }

    /// The home URL is still down: stay where we are, and wait longer before the next return.
    pub fn failback_refused(&mut self, now: Instant) {
        self.failback_wait =
            (self.failback_wait * 2).min(self.failback_after * FAILBACK_BACKOFF_CAP);
        self.failback_at = Some(now + self.failback_wait);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn failures_move_round_the_urls_and_count() {
        let t0 = Instant::now();
        let mut f = Failover::new(3, 30 * S, 300 * S);
        assert_eq!(f.current(), 0);
        for (i, want) in [1, 2, 0, 1].into_iter().enumerate() {
            assert_eq!(f.failed(t0 + S * i as u32), None);
            assert_eq!(f.current(), want);
        }
        assert_eq!(f.failovers(), 4);
        // One URL: nowhere to go, nothing counted as a failover.
        let mut one = Failover::new(1, 30 * S, 300 * S);
        one.failed(t0);
        assert_eq!((one.current(), one.failovers()), (0, 0));
    }

    /// A stall shorter than `alert_after` (a leader election) raises nothing however many tries
    /// fail; a longer outage raises one alert, and the next outage its own.
    #[test]
    fn an_outage_is_alerted_once_and_only_past_the_threshold() {
        let t0 = Instant::now();
        let mut f = Failover::new(2, 30 * S, 300 * S);
        for ms in (0..10_000).step_by(100) {
            assert_eq!(f.failed(t0 + Duration::from_millis(ms)), None, "{ms} ms");
        }
        f.acknowledged();
        let t1 = t0 + 20 * S;
        assert_eq!(f.failed(t1), None, "a new outage starts its own clock");
        assert_eq!(f.failed(t1 + 29 * S), None);
        assert_eq!(f.failed(t1 + 31 * S), Some(31 * S));
        for s in 32..100 {
            assert_eq!(f.failed(t1 + s * S), None, "alerted once: {s}s");
        }
        f.acknowledged();
        let t2 = t1 + 200 * S;
        f.failed(t2);
        assert_eq!(f.failed(t2 + 40 * S), Some(40 * S));
    }

    #[test]
    fn each_certificate_refusal_is_alerted_once_per_outage() {
        let mut f = Failover::new(2, 30 * S, 300 * S);
        assert!(f.first_refusal("revoked"));
        assert!(!f.first_refusal("revoked"), "the other URL says the same");
        assert!(f.first_refusal("unknown CA"));
        f.acknowledged();
        assert!(f.first_refusal("revoked"), "a new outage");
    }

    #[test]
    fn away_from_home_it_returns_after_a_while_and_backs_off_while_home_is_down() {
        let t0 = Instant::now();
        let mut f = Failover::new(2, 30 * S, 300 * S);
        assert!(
            !f.failback_due(t0 + 10_000 * S),
            "at home: nothing to return to"
        );
        f.failed(t0);
        assert_eq!(f.current(), 1);
        assert!(!f.failback_due(t0 + 299 * S));
        assert!(f.failback_due(t0 + 300 * S));
        // Home still down: 600 s, then 1200 s, capped at 8 × 300 s.
        let mut now = t0 + 300 * S;
        for wait in [600, 1200, 2400, 2400] {
            f.failback_refused(now);
            assert!(!f.failback_due(now + (wait - 1) * S), "{wait}");
            assert!(f.failback_due(now + wait * S), "{wait}");
            now += wait * S;
        }
        f.failed_back();
        assert_eq!(f.current(), 0);
        assert!(!f.failback_due(now + 10_000 * S));
        // The wait starts over at failback_after after a return that worked.
        f.failed(now);
        assert!(f.failback_due(now + 300 * S));
        // Failing round to home again is a return too.
        f.failed(now + S);
        assert_eq!(f.current(), 0);
        assert!(!f.failback_due(now + 10_000 * S));
        assert_eq!(f.failovers(), 3);
    }
}
