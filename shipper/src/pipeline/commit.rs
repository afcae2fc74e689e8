//! Committing what the sink acknowledged, and what the status learns of it.
//!
//! A commit the store refuses (a full disk) is not dropped: the store owes it and writes it with
//! the next batch's commit or, with no batch coming, at the next retry. Health says "store
//! unwritable" from the first refusal until a commit goes through, whatever is shipped
//! meanwhile.

use crate::batch::{Ack, Batch};
use crate::status::ShipStats;
use crate::store::Store;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often owed commits are retried while no batch comes to carry them.
const RETRY_EVERY: Duration = Duration::from_secs(1);

pub struct Committer<'a> {
    store: &'a Mutex<Store>,
    /// Where the last failure is shown (`store_error`, the health's source).
    stats: &'a ShipStats,
    /// The last commit failed: the store owes writes and they are retried.
    owing: bool,
    last_try: Instant,
}

impl<'a> Committer<'a> {
    pub fn new(store: &'a Mutex<Store>, stats: &'a ShipStats) -> Self {
        Committer {
            store,
            stats,
            owing: false,
            last_try: Instant::now(),
        }
    }

    /// Gives an acknowledged batch's acknowledgements back: its store checkpoints in one
    /// transaction (with whatever is owed), then each input's own, in slot order.
    pub fn batch(&mut self, batch: &mut Batch) {
        let checkpoints = batch.checkpoints();
        let result = self.store.lock().expect("store lock").commit(&checkpoints);
        self.settle(result);
        for ack in batch.acks_mut() {
            if let Ack::Input(a) = ack {
                if let Err(e) = a.acknowledged() {
                    tracing::warn!(error = %e, "cannot record an acknowledgement; its records will be sent again");
                }
            }
        }
    }

    /// How long the shipping thread may wait for a batch before [`Committer::retry`] is due;
    /// None while nothing is owed.
    pub fn retry_in(&self) -> Option<Duration> {
        self.owes()
            .then(|| RETRY_EVERY.saturating_sub(self.last_try.elapsed()))
    }

    /// A commit failed, or the tailer's update of a stream row did (that row goes with the
    /// next commit, and must not wait for a batch that may never come).
    fn owes(&self) -> bool {
        self.owing || self.store.lock().expect("store lock").owes_writes()
    }

    /// Tries the owed writes again, with no batch to carry them.
    pub fn retry(&mut self) {
        let result = self.store.lock().expect("store lock").commit_owed();
        self.settle(result);
    }

    /// At shutdown: a last try, and a line saying what the next start will send again.
    pub fn finish(&mut self) {
        if self.owes() {
            self.retry();
        }
        if self.owing {
            tracing::error!("stopping with offsets the store could not take; the records after the last committed ones will be sent again at the next start");
        }
    }

    fn settle(&mut self, result: Result<(), crate::store::StoreError>) {
        self.last_try = Instant::now();
        let mut shown = self.stats.store_error.lock().expect("store_error lock");
        match result {
            Ok(()) => {
                if self.owing {
                    tracing::info!("the store takes writes again; owed offsets committed");
                }
                self.owing = false;
                *shown = None;
            }
            Err(e) => {
                let text = e.to_string();
                if shown.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %e, "cannot commit offsets; they are kept and retried (a restart before they are committed sends their records again)");
                }
                self.owing = true;
                *shown = Some(text);
            }
        }
    }
}
