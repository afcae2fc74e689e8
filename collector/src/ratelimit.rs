//! Failed-enrolment limits, per source address and per user name.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys beyond this many are pruned of stale entries, bounding memory
/// under a spray of addresses or names.
const PRUNE_ABOVE: usize = 10_000;

/// Sliding-window failure counters for one kind of key.
#[derive(Debug)]
struct Window<K> {
    /// Failure times per key, oldest first, none older than the window.
    failures: HashMap<K, VecDeque<Instant>>,
}

impl<K: Hash + Eq + Clone> Window<K> {
    fn count(&mut self, key: &K, now: Instant, window: Duration) -> usize {
        let Some(q) = self.failures.get_mut(key) else {
            return 0;
        };
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        let n = q.len();
        if n == 0 {
            self.failures.remove(key);
        }
        n
    }

    fn record(&mut self, key: K, now: Instant, window: Duration) {
        if self.failures.len() > PRUNE_ABOVE {
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        self.failures.entry(key).or_default().push_back(now);
    }
}

/// Answers "may this address try this user now?" and records failures.
#[derive(Debug)]
pub struct Limiter {
    /// Failures allowed within `window` before tries are refused.
    max_failures: usize,
    window: Duration,
    /// Counters by source address and by user name, behind one lock since
    /// both are consulted together.
    state: Mutex<(Window<IpAddr>, Window<String>)>,
}

impl Limiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Limiter {
            max_failures: max_failures as usize,
            window,
            state: Mutex::new((
                Window {
                    failures: HashMap::new(),
                },
                Window {
                    failures: HashMap::new(),
                },
            )),
        }
    }

    /// True when either the address or the user has used up its failures.
    pub fn is_limited(&self, addr: IpAddr, user: &str, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let by_addr = s.0.count(&addr, now, self.window);
        let by_user = s.1.count(&user.to_owned(), now, self.window);
        by_addr >= self.max_failures || by_user >= self.max_failures
    }

    pub fn record_failure(&self, addr: IpAddr, user: &str, now: Instant) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0.record(addr, now, self.window);
        s.1.record(user.to_owned(), now, self.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_by_address_and_by_user_then_forgets() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for i in 0..3 {
            assert!(!l.is_limited(a, "alice", t0));
            l.record_failure(a, &format!("user{i}"), t0);
        }
        assert!(l.is_limited(a, "anyone", t0), "address used up");
        assert!(!l.is_limited(b, "alice", t0));
        for _ in 0..3 {
            l.record_failure(b, "bob", t0);
        }
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(l.is_limited(c, "bob", t0), "user used up from any address");
        let later = t0 + Duration::from_secs(61);
        assert!(!l.is_limited(a, "bob", later));
    }
}
