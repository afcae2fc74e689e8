//! Failed-enrolment limits, per source address and per user name.
//!
//! A try is counted when it starts, not when its password turns out wrong:
//! tries still being verified take room under the limit, so sixty wrong
//! passwords sent at once get no more verifications than sixty sent one
//! after another. A try that succeeds gives its room back; one that fails
//! keeps it as a failure for the window. A try that finds the room taken
//! only by tries in flight waits for them to settle (they may succeed, as
//! a fleet enrolling with one account at once does) instead of being
//! refused outright.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys beyond this many are pruned of stale entries, bounding memory
/// under a spray of addresses or names.
const PRUNE_ABOVE: usize = 10_000;

/// Sliding-window failure counters, and tries in flight, for one kind of
/// key.
#[derive(Debug)]
struct Window<K> {
    /// Failure times per key, oldest first, none older than the window.
    failures: HashMap<K, VecDeque<Instant>>,
    /// Tries admitted and not settled yet, per key (never zero).
    in_flight: HashMap<K, usize>,
}

impl<K: Hash + Eq + Clone> Window<K> {
    fn new() -> Self {
        Window {
            failures: HashMap::new(),
            in_flight: HashMap::new(),
        }
    }

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

    fn in_flight(&self, key: &K) -> usize {
        self.in_flight.get(key).copied().unwrap_or(0)
    }

    fn start(&mut self, key: K) {
        *self.in_flight.entry(key).or_default() += 1;
    }

    fn settle(&mut self, key: &K) {
        if let Some(n) = self.in_flight.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(key);
            }
        }
    }

    fn record(&mut self, key: K, now: Instant, window: Duration) {
        if self.failures.len() > PRUNE_ABOVE {
            self.failures
                .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        self.failures.entry(key).or_default().push_back(now);
    }
}

/// What a try may do now.
#[derive(Debug)]
pub enum Admission {
    /// Go ahead; settle the try once its password is checked.
    Admitted(Try),
    /// The address or the user has used up its failures.
    Limited,
    /// Failures and tries in flight fill the room: wait for one to settle.
    Full,
}

/// Why a try was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Failures used up (429 `rate_limited`).
    Limited,
    /// Still no room when the wait ran out (429 `busy`).
    Busy,
}

/// Answers "may this address try this user now?" and keeps the counts.
#[derive(Debug)]
pub struct Limiter {
    /// Failures allowed within `window` before tries are refused.
    max_failures: usize,
    window: Duration,
    /// Counters by source address and by user name, behind one lock since
    /// both are consulted together.
    state: Mutex<(Window<IpAddr>, Window<String>)>,
    /// Woken whenever a try settles, so tries waiting for room look again.
    settled: tokio::sync::Notify,
}

impl Limiter {
    pub fn new(max_failures: u32, window: Duration) -> Arc<Self> {
        Arc::new(Limiter {
            max_failures: max_failures as usize,
            window,
            state: Mutex::new((Window::new(), Window::new())),
            settled: tokio::sync::Notify::new(),
        })
    }

    /// Counts a try from `addr` for `user` if there is room for it.
    pub fn try_admit(self: &Arc<Self>, addr: IpAddr, user: &str, now: Instant) -> Admission {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let user = user.to_owned();
        let failed_addr = s.0.count(&addr, now, self.window);
        let failed_user = s.1.count(&user, now, self.window);
        if failed_addr >= self.max_failures || failed_user >= self.max_failures {
            return Admission::Limited;
        }
        if failed_addr + s.0.in_flight(&addr) >= self.max_failures
            || failed_user + s.1.in_flight(&user) >= self.max_failures
        {
            return Admission::Full;
        }
        s.0.start(addr);
        s.1.start(user.clone());
        Admission::Admitted(Try {
            limiter: Arc::clone(self),
            addr,
            user,
            settled: false,
        })
    }

    /// [`try_admit`](Self::try_admit), waiting up to `wait` for tries in
    /// flight to settle when they fill the room.
    pub async fn admit(
        self: &Arc<Self>,
        addr: IpAddr,
        user: &str,
        wait: Duration,
    ) -> Result<Try, Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Created before the check: a try settling between the check
            // and the wait still wakes this one.
            let settled = self.settled.notified();
            match self.try_admit(addr, user, Instant::now()) {
                Admission::Admitted(t) => return Ok(t),
                Admission::Limited => return Err(Refusal::Limited),
                Admission::Full => {}
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(Refusal::Busy);
            }
        }
    }

    fn settle(&self, t: &Try, failed: bool) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0.settle(&t.addr);
            s.1.settle(&t.user);
            if failed {
                let now = Instant::now();
                s.0.record(t.addr, now, self.window);
                s.1.record(t.user.clone(), now, self.window);
            }
        }
        self.settled.notify_waiters();
    }
}

/// A try in flight. [`failed`](Try::failed) keeps its room as a failure;
/// [`succeeded`](Try::succeeded), or dropping it unsettled (the password
/// was never checked), gives the room back.
#[derive(Debug)]
pub struct Try {
    limiter: Arc<Limiter>,
    addr: IpAddr,
    user: String,
    settled: bool,
}

impl Try {
    pub fn failed(mut self) {
        self.settled = true;
        self.limiter.settle(&self, true);
    }

    pub fn succeeded(mut self) {
        self.settled = true;
        self.limiter.settle(&self, false);
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        if !self.settled {
            self.limiter.settle(self, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(a: Admission) -> Try {
        match a {
            Admission::Admitted(t) => t,
            other => panic!("expected admitted, got {other:?}"),
        }
    }

    #[test]
    fn limits_by_address_and_by_user_then_forgets() {
        let l = Limiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for i in 0..3 {
            admitted(l.try_admit(a, &format!("user{i}"), t0)).failed();
        }
        assert!(
            matches!(l.try_admit(a, "anyone", t0), Admission::Limited),
            "address used up"
        );
        drop(admitted(l.try_admit(b, "alice", t0)));
        for _ in 0..3 {
            admitted(l.try_admit(b, "bob", t0)).failed();
        }
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(
            matches!(l.try_admit(c, "bob", t0), Admission::Limited),
            "user used up from any address"
        );
        let later = Instant::now() + Duration::from_secs(61);
        drop(admitted(l.try_admit(a, "bob", later)));
    }

    /// The bug this pins: tries checked at once were all let through,
    /// because each was counted only after its (slow) verification.
    #[test]
    fn tries_in_flight_take_room_and_successes_give_it_back() {
        let l = Limiter::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = admitted(l.try_admit(a, "alice", now));
        let second = admitted(l.try_admit(a, "alice", now));
        assert!(matches!(l.try_admit(a, "alice", now), Admission::Full));
        assert!(
            matches!(l.try_admit(a, "bob", now), Admission::Full),
            "the address is full too"
        );
        first.succeeded();
        let third = admitted(l.try_admit(a, "alice", now));
        second.failed();
        third.failed();
        assert!(matches!(l.try_admit(a, "alice", now), Admission::Limited));
    }

    #[tokio::test]
    async fn a_waiting_try_is_admitted_when_one_settles_or_refused_at_the_deadline() {
        let l = Limiter::new(1, Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = admitted(l.try_admit(a, "alice", Instant::now()));
        let waiter = {
            let l = Arc::clone(&l);
            tokio::spawn(async move { l.admit(a, "alice", Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        first.succeeded();
        let second = waiter
            .await
            .unwrap()
            .expect("admitted once the first settled");
        assert_eq!(
            l.admit(a, "alice", Duration::from_millis(50))
                .await
                .unwrap_err(),
            Refusal::Busy
        );
        second.failed();
        assert_eq!(
            l.admit(a, "alice", Duration::from_secs(30))
                .await
                .unwrap_err(),
            Refusal::Limited
        );
    }
}
