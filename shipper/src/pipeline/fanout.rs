//! One group's shipping side: each batch its pipeline hands over goes to every sink of the
//! group (shared, not copied), and is committed once all of them acknowledged it, batches
//! strictly in the order they were built.
//!
//! Each sink acknowledges a group's batches in the order it was given them, so the group only
//! counts, per batch, the sinks it still waits for; the oldest batch whose count reaches zero
//! is committed, and the next one may only follow it. A sink that is down therefore holds back
//! this group and no other, and holds it within bounded memory: at most `limit` batches are
//! out at once, after which the group takes no more from its pipeline, whose inputs then stop
//! reading (the backlog waits in the files, not here). This is the fan-out `crate::batch::ack`
//! was designed for: nothing in the acknowledgement knows how many sinks there were.

use super::commit::Committer;
use crate::batch::Batch;
use crate::status::ShipStats;
use crate::store::Store;
use crossbeam_channel::{select, Receiver, Sender};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Past this long out without a commit, the group's oldest batch is held (a sink slow or down):
/// its pipeline then keeps the store's sizes current ([`crate::input::Input::stalled`]). A
/// healthy sink acknowledges within milliseconds.
pub const HELD_AFTER: Duration = Duration::from_secs(1);

/// What a group's pipeline sees of its shipping side, set by [`group_loop`].
#[derive(Debug, Default)]
pub struct Outlook {
    /// Nothing is out: the pipeline may hand over a small batch early.
    pub idle: AtomicBool,
    /// The oldest batch out has waited past [`HELD_AFTER`].
    pub held: AtomicBool,
}

/// One batch of a group on its way to one of the group's sinks.
#[derive(Debug)]
pub struct Delivery {
    /// The batch's place in its group's order.
    pub seq: u64,
    pub batch: Arc<Batch>,
}

/// What a sink's thread tells a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// The sink acknowledged the group's batch `seq`.
    Delivered(u64),
    /// The sink's thread ended (done, or a stopping agent gave up on it): nothing more comes.
    Gone,
}

/// The batches a group has out, and which of them may be committed: the ordering at the heart
/// of fan-out, kept apart from the threads so that it is tested alone.
#[derive(Debug)]
pub struct InOrder {
    sinks: usize,
    /// Oldest first: (seq, batch, sinks that have not acknowledged it yet).
    out: VecDeque<(u64, Arc<Batch>, usize)>,
    /// Since when the front batch has been waiting: sent, or the one before it committed.
    front_since: Instant,
    next_seq: u64,
}

impl InOrder {
    /// For a group routed to `sinks` sinks (at least one).
    pub fn new(sinks: usize) -> Self {
        InOrder {
            sinks: sinks.max(1),
            out: VecDeque::new(),
            next_seq: 0,
            front_since: Instant::now(),
        }
    }

    /// Takes a batch out; what each sink is to be given.
    pub fn send(&mut self, batch: Batch) -> Delivery {
        let seq = self.next_seq;
        self.next_seq += 1;
        let batch = Arc::new(batch);
        if self.out.is_empty() {
            self.front_since = Instant::now();
        }
        self.out.push_back((seq, batch.clone(), self.sinks));
        Delivery { seq, batch }
    }

    /// One sink acknowledged batch `seq`.
    pub fn delivered(&mut self, seq: u64) {
        if let Some(b) = self.out.iter_mut().find(|b| b.0 == seq) {
            b.2 = b.2.saturating_sub(1);
        }
    }

    /// The oldest batch, once every sink acknowledged it and let go of it; later batches wait
    /// for it even when they are acknowledged already.
    pub fn committable(&mut self) -> Option<Batch> {
        let (_, _, owed) = self.out.front()?;
        if *owed > 0 {
            return None;
        }
        let (seq, batch, owed) = self.out.pop_front().expect("a front batch");
        match Arc::try_unwrap(batch) {
            Ok(b) => {
                self.front_since = Instant::now();
                Some(b)
            }
            // A sink tells only after dropping its share; should one still hold it, wait.
            Err(batch) => {
                self.out.push_front((seq, batch, owed));
                None
            }
        }
    }

    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// The oldest batch out has waited past [`HELD_AFTER`] for its sinks.
    pub fn held(&self) -> bool {
        !self.out.is_empty() && self.front_since.elapsed() >= HELD_AFTER
    }

    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// What a group's shipping thread is given besides its pipeline's batches.
pub struct GroupTo<'a> {
    pub store: &'a Mutex<Store>,
    /// Where commits are counted and a store that refuses them is shown.
    pub stats: &'a ShipStats,
    /// One per sink of the group.
    pub sinks: Vec<Sender<Delivery>>,
    /// The sinks' acknowledgements of this group's batches.
    pub heard: Receiver<Heard>,
    /// At most this many batches out at once (the largest window of its sinks, and one more).
    pub limit: usize,
    /// Where committed batches go back to the pipeline to be filled again.
    pub recycle: Option<Sender<Batch>>,
    /// Where the pipeline sees whether anything is out, and whether it is held.
    pub outlook: Option<Arc<Outlook>>,
}

/// Runs until the pipeline is done and everything out is committed, or a sink is gone with
/// batches still out (a stopping agent gave up: they are read again at the next start).
pub fn group_loop(batches: Receiver<Batch>, to: GroupTo<'_>) {
    let mut committer = Committer::new(to.store, to.stats);
    let mut order = InOrder::new(to.sinks.len());
    let mut closed = false;
    let show = |idle: bool, held: bool| {
        if let Some(o) = &to.outlook {
            o.idle.store(idle, Ordering::Relaxed);
            o.held.store(held, Ordering::Relaxed);
        }
    };
    loop {
        show(order.is_empty(), order.held());
        if closed && order.is_empty() {
            break;
        }
        // Woken at least every HELD_AFTER, so a held batch shows within two of them.
        let wait = committer.retry_in().unwrap_or(HELD_AFTER).min(HELD_AFTER);
        let taking = !closed && order.len() < to.limit;
        let never = crossbeam_channel::never();
        let from = if taking { &batches } else { &never };
        select! {
            recv(from) -> b => match b {
                Ok(b) => {
                    let d = order.send(b);
                    for s in &to.sinks {
                        let _ = s.send(Delivery { seq: d.seq, batch: d.batch.clone() });
                    }
                }
                Err(_) => closed = true,
            },
            recv(to.heard) -> h => match h {
                Ok(Heard::Delivered(seq)) => order.delivered(seq),
                Ok(Heard::Gone) | Err(_) => {
                    if !order.is_empty() {
                        break;
                    }
                    // A sink that is gone with nothing out: the pipeline must stop too.
                    if !closed {
                        closed = true;
                    }
                }
            },
            default(wait) => committer.retry(),
        }
        while let Some(mut b) = order.committable() {
            to.stats.latency.record(b.created.elapsed().as_secs_f64());
            committer.batch(&mut b);
            to.stats.batches.fetch_add(1, Ordering::Relaxed);
            to.stats
                .records
                .fetch_add(b.len() as u64, Ordering::Relaxed);
            to.stats
                .bytes
                .fetch_add(b.data_bytes() as u64, Ordering::Relaxed);
            if let Some(back) = &to.recycle {
                let _ = back.try_send(b);
            }
        }
    }
    show(false, false);
    committer.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(generation: u64) -> Batch {
        Batch::new("h".into(), generation)
    }

    /// Each sink hands a delivery back the way a sink thread does: its share dropped first.
    fn acked(order: &mut InOrder, d: Delivery) {
        let seq = d.seq;
        drop(d);
        order.delivered(seq);
    }

    #[test]
    fn an_ack_from_one_sink_alone_commits_nothing() {
        let mut order = InOrder::new(2);
        let a = order.send(batch(1));
        let b = Delivery {
            seq: a.seq,
            batch: a.batch.clone(),
        };
        acked(&mut order, a);
        assert!(order.committable().is_none(), "one of two sinks has it");
        // The other sink lets go of its share without acknowledging (its thread ended): still
        // nothing; the count, not the share, is what decides.
        let seq = b.seq;
        drop(b);
        assert!(order.committable().is_none(), "one of two sinks has it");
        order.delivered(seq);
        assert_eq!(order.committable().map(|b| b.generation), Some(1));
        assert!(order.is_empty());
    }

    #[test]
    fn batches_commit_in_build_order_whatever_order_the_sinks_ack_in() {
        let mut order = InOrder::new(2);
        let mut fast = Vec::new();
        let mut slow = Vec::new();
        for g in 1..=3 {
            let d = order.send(batch(g));
            slow.push(Delivery {
                seq: d.seq,
                batch: d.batch.clone(),
            });
            fast.push(d);
        }
        // The fast sink has all three, the slow one only the first two: two commit, in order.
        for d in fast {
            acked(&mut order, d);
        }
        assert!(
            order.committable().is_none(),
            "nothing before the slow sink acks"
        );
        let mut slow = slow.into_iter();
        acked(&mut order, slow.next().unwrap());
        acked(&mut order, slow.next().unwrap());
        let done: Vec<u64> = std::iter::from_fn(|| order.committable())
            .map(|b| b.generation)
            .collect();
        assert_eq!(done, [1, 2]);
        assert_eq!(order.len(), 1, "the third waits for the slow sink");
        acked(&mut order, slow.next().unwrap());
        assert_eq!(order.committable().map(|b| b.generation), Some(3));
    }

    #[test]
    fn a_later_batch_acked_by_all_waits_for_an_earlier_one() {
        let mut order = InOrder::new(1);
        let first = order.send(batch(1));
        let second = order.send(batch(2));
        // Not how one sink acks (it keeps order), but the committer must not rely on it.
        acked(&mut order, second);
        assert!(order.committable().is_none());
        acked(&mut order, first);
        let done: Vec<u64> = std::iter::from_fn(|| order.committable())
            .map(|b| b.generation)
            .collect();
        assert_eq!(done, [1, 2]);
    }

    #[test]
    fn a_batch_still_held_by_a_sink_is_not_taken() {
        let mut order = InOrder::new(1);
        let d = order.send(batch(1));
        let held = d.batch.clone();
        acked(&mut order, d);
        assert!(order.committable().is_none(), "a share is still out");
        drop(held);
        assert!(order.committable().is_some());
    }
}
