//! How often one host may renew its certificate: at most `max` renewals within a sliding
//! window, per host id (the one its client certificate proves, so a host cannot spend
//! another's).
//!
//! Each renewal signs a certificate and writes the database, and a host holding a valid
//! certificate could otherwise call `/v1/renew` in a loop. An agent renews once at `renew_at`
//! of its certificate's lifetime (two thirds of 30 days by default) and retries a failed
//! renewal a minute later, so a few a window is plenty; a refused renewal costs it nothing, as
//! its certificate keeps working while it waits. A renewal is counted when it is let through,
//! so renewals sent at once are limited like renewals sent in turn; one that fails on the
//! collector's side (its database or CA) is given back, as the host is not at fault.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Hosts known beyond this many make the next renewal drop those with no renewal in the
/// window, bounding memory whatever the fleet's size.
const PRUNE_ABOVE: usize = 10_000;

/// A renewal counted under the limit: [`RenewLimit::give_back`] takes it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted(Instant);

/// A renewal refused: the host used up its renewals of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// When the oldest renewal counted leaves the window (the reply's `Retry-After`).
    pub retry_after: Duration,
}

#[derive(Debug)]
pub struct RenewLimit {
    /// Renewals allowed per host within `window`.
    max: usize,
    window: Duration,
    /// Renewal times per host, oldest first, none older than the window.
    hosts: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RenewLimit {
    pub fn new(max: u32, window: Duration) -> RenewLimit {
        RenewLimit {
            max: (max as usize).max(1),
            window,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn max(&self) -> u32 {
        self.max as u32
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts a renewal of `host` at `now` if the host has one left in the window.
    pub fn take(&self, host: &str, now: Instant) -> Result<Counted, Limited> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.len() > PRUNE_ABOVE && !hosts.contains_key(host) {
            let window = self.window;
            hosts.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = hosts.entry(host.to_owned()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max {
            let oldest = *q.front().expect("max is at least 1");
            return Err(Limited {
                retry_after: self.window.saturating_sub(now.duration_since(oldest)),
            });
        }
        q.push_back(now);
        Ok(Counted(now))
    }

    /// Takes a renewal that issued nothing through the collector's fault out of the count.
    pub fn give_back(&self, host: &str, counted: Counted) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = hosts.get_mut(host) {
            if let Some(i) = q.iter().rposition(|t| *t == counted.0) {
                q.remove(i);
            }
            if q.is_empty() {
                hosts.remove(host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_gets_max_renewals_a_window_and_is_told_when_the_next_one_comes() {
        let l = RenewLimit::new(3, Duration::from_secs(3600));
        let t0 = Instant::now();
        for i in 0..3 {
            l.take("web-01", t0 + Duration::from_secs(i * 60)).unwrap();
        }
        let at = t0 + Duration::from_secs(600);
        assert_eq!(
            l.take("web-01", at),
            Err(Limited {
                retry_after: Duration::from_secs(3000)
            }),
            "the first renewal leaves the window 3000 s later"
        );
        // A refused renewal is not counted, so a host retrying each minute is not shut out.
        for m in 11..60 {
            assert!(l.take("web-01", t0 + Duration::from_secs(m * 60)).is_err());
        }
        l.take("web-01", t0 + Duration::from_secs(3600)).unwrap();
        // Another host has its own renewals.
        l.take("web-02", at).unwrap();
    }

    #[test]
    fn a_renewal_given_back_frees_its_room() {
        let l = RenewLimit::new(1, Duration::from_secs(3600));
        let now = Instant::now();
        let counted = l.take("web-01", now).unwrap();
        assert!(l.take("web-01", now).is_err());
        l.give_back("web-01", counted);
        l.take("web-01", now).unwrap();
    }
}
