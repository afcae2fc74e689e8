//! Inputs: where records come from. Every input implements [`Input`]; the pipeline thread
//! (the `pipeline` module) owns the batch being built and gives each input a turn in its loop.
//!
//! The contract:
//! - **A turn never blocks.** [`Input::turn`] does what is ready now (reads files, takes rows,
//!   takes what a listener thread spooled) and returns. An input that waits on the network has
//!   its own threads; they put what arrives somewhere the turn can take it from (a spool file,
//!   a channel) and [`Bell::ring`] so an idle pipeline takes its turn at once.
//! - **Records go through the [`Intake`]** lent for the turn, the only way into a batch (it
//!   runs the source's transforms). An input stops when [`Intake::full`] and returns
//!   [`Turn::Busy`]: the pipeline hands the batch over and calls it again with the next one.
//! - **Acknowledgements come back through the batch.** Each stream slot an input opens carries
//!   its [`Ack`]: a store checkpoint (committed in one transaction with the batch's other
//!   checkpoints) or the input's own [`Acknowledge`] object, called on the shipping thread once
//!   the sink acknowledged the batch. Batches are acknowledged strictly in the order they were
//!   built, so an input sees its slots acknowledged in the order it filled them. What is not
//!   acknowledged when the agent stops is produced again at the next start (at least once).
//!
//! [`Ack`]: crate::batch::Ack
//! [`Acknowledge`]: crate::batch::Acknowledge

pub mod osquery;
pub mod syslog;

use crate::batch::Intake;
use crate::config::Config;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// What a turn left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// More is ready (or the batch filled up): give this input another turn without waiting.
    Busy,
    /// Nothing more now: the pipeline may sleep until a bell rings or [`Input::idle_wait`].
    Idle,
}

/// A source of records, driven by the pipeline thread.
pub trait Input: Send {
    /// What the input is, for logs (`files`, `osquery outbox`, `syslog net`).
    fn name(&self) -> &str;

    /// Called once on the pipeline thread before the first turn: start helper threads here.
    fn start(&mut self) {}

    /// Produces what is ready into `out`; see the module's contract.
    fn turn(&mut self, out: &mut Intake<'_>) -> Turn;

    /// The longest the pipeline may sleep, all inputs idle and no bell rung, before this input
    /// wants its next turn (a poll interval, a timer due).
    fn idle_wait(&self) -> Duration;

    /// The pipeline has waited a while to hand a batch to a sink that is slow or down, so no
    /// turn comes until it takes one: keep what the store shows current (how far each stream's
    /// file or spool has grown) without producing records. Called at most every 200 ms while
    /// the wait lasts; an input rate-limits its own work.
    fn stalled(&mut self) {}

    /// A reload changed the config; takes effect at the next turn. Whatever the input already
    /// pushed stays in the batch, acknowledged as pushed.
    fn reconfigure(&mut self, _cfg: &Arc<Config>) {}
}

/// Wakes the pipeline thread from its idle sleep: rung by an input's own threads (inotify
/// events, a listener that spooled messages). Rings are not counted: one wakes one sleep.
#[derive(Debug, Clone, Default)]
pub struct Bell(Arc<(Mutex<bool>, Condvar)>);

impl Bell {
    pub fn new() -> Bell {
        Bell::default()
    }

    pub fn ring(&self) {
        let (rung, cv) = &*self.0;
        *rung.lock().expect("bell lock") = true;
        cv.notify_one();
    }

    /// Sleeps until rung or `timeout`; true when rung (and clears the ring).
    pub fn wait(&self, timeout: Duration) -> bool {
        let (rung, cv) = &*self.0;
        let guard = rung.lock().expect("bell lock");
        let (mut guard, _) = cv
            .wait_timeout_while(guard, timeout, |r| !*r)
            .expect("bell lock");
        std::mem::take(&mut *guard)
    }
}
