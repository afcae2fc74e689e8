//! Password verifications, bounded: each argon2id run holds its whole
//! memory cost (19 MiB by default) while it runs, so a burst of enrolments
//! checked all at once once took the collector from 9 MiB to over 1 GiB.
//! At most `max_password_checks` run at once; others wait for a slot.
//!
//! Memory must also come back after a burst. glibc serves each thread from
//! its own arena and, once the first 19 MiB block is freed, raises its mmap
//! threshold above that size (the dynamic threshold), so later blocks come
//! from the arenas and stay there when freed, below the trim threshold. A
//! burst's checks run on whichever blocking threads are free, so the blocks
//! spread over up to eight arenas per core: bounding the checks to two at once
//! still peaked at 316 MiB, and the old collector kept 573 MiB after a
//! burst. So every check ends with `malloc_trim`, which hands free arena
//! memory back to the kernel: the peak then stays near the base plus
//! `max_password_checks` × 19 MiB, and memory drops back to the base after
//! the burst (`bench/enrol_burst.py`). It costs the next check faulting its
//! pages in again, small beside argon2's own time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;
use crate::users::verify_password;

/// Hands out the slots password checks run in.
#[derive(Debug)]
pub struct Verifier {
    /// `max_password_checks` permits.
    slots: Arc<Semaphore>,
    /// The `password_checks` gauges live here.
    metrics: Arc<Metrics>,
}

/// The right to run one check; the slot is given back when dropped.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Verifier {
    pub fn new(max_checks: u32, metrics: Arc<Metrics>) -> Verifier {
        Verifier {
            slots: Arc::new(Semaphore::new(max_checks as usize)),
            metrics,
        }
    }

    /// A slot, waiting up to `wait` for one; None when none came free.
    pub async fn slot(&self, wait: Duration) -> Option<Slot> {
        let permit = tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some(Slot {
            _permit: permit,
            metrics: Arc::clone(&self.metrics),
        })
    }
}

impl Slot {
    /// [`verify_password`] (blocking: run it on a blocking thread).
    pub fn verify(self, password: &str, stored: Option<&str>) -> bool {
        let m = &self.metrics;
        let running = m.password_checks.fetch_add(1, Relaxed) + 1;
        m.password_checks_peak.fetch_max(running, Relaxed);
        let ok = verify_password(password, stored);
        return_free_memory();
        m.password_checks.fetch_sub(1, Relaxed);
        ok
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_free_memory() {
    // SAFETY: malloc_trim takes no pointers; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_slot_past_the_limit_until_one_is_given_back() {
        let metrics = Arc::new(Metrics::default());
        let v = Verifier::new(1, Arc::clone(&metrics));
        let first = v.slot(Duration::from_secs(5)).await.unwrap();
        assert!(v.slot(Duration::from_millis(20)).await.is_none());
        let h = crate::users::hash_password("pw").unwrap();
        assert!(first.verify("pw", Some(&h)));
        let again = v.slot(Duration::from_secs(5)).await.unwrap();
        assert!(!again.verify("nope", Some(&h)));
        assert_eq!(metrics.password_checks.load(Relaxed), 0);
        assert_eq!(metrics.password_checks_peak.load(Relaxed), 1);
    }
}
