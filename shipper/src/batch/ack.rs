//! What acknowledging a batch commits, stream slot by stream slot, and who it goes back to.
//!
//! Every stream slot of a batch carries one [`Ack`], made by the input that opened the slot.
//! When the sink has acknowledged the batch, the shipping thread's committer applies the acks
//! of that batch, and batches strictly in the order they were built:
//! - every [`Ack::Store`] checkpoint of the batch goes to `store.db` in ONE transaction, with
//!   whatever earlier commits the store still owes (a full disk);
//! - then every [`Ack::Input`] is told, in slot order, through [`Acknowledge::acknowledged`].
//!
//! Fan-out (one batch to several sinks, committed once all have acknowledged) fits without
//! another redesign: the acks are data carried by the batch, not side effects of `Sink::send`,
//! so a fan-out holds the batch until its last sink acknowledges and only then hands it to the
//! committer, once. Nothing here knows how many sinks there were.

use crate::store::Checkpoint;

/// The acknowledgement a stream slot owes its input.
#[derive(Debug)]
pub enum Ack {
    /// A stream whose position lives in `store.db` (a file, later a syslog spool): the
    /// checkpoint is committed with the others of the batch in one transaction.
    /// [`crate::batch::Intake::push`] counts the slot's kept records into it.
    Store(Checkpoint),
    /// A stream whose position lives with its input (the osquery outbox's rows): told once the
    /// batch is acknowledged, after the batch's store checkpoints are committed.
    Input(Box<dyn Acknowledge>),
}

/// The part of an input that hears that the records of one stream slot were delivered.
///
/// Runs on a shipping thread, not the input's (and is Sync: a batch is shared by the sinks it
/// goes to): it must not touch the input's own state
/// except through what it carries (its own database connection, an `Arc`, a channel). Called
/// at most once per slot, in batch order; an input that sees a later slot acknowledged may rely
/// on every earlier one of its slots having been acknowledged before.
pub trait Acknowledge: Send + Sync + std::fmt::Debug {
    /// The batch holding this slot is delivered. An error is logged with the input's name and
    /// the slot's records stay unacknowledged at their input (sent again later: at least once).
    fn acknowledged(&mut self) -> Result<(), AckError>;
}

/// An input could not record an acknowledgement (what, and why).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct AckError {
    /// What failed to take the acknowledgement, e.g. `osquery outbox /var/lib/x/osquery-outbox.db`.
    pub what: String,
    pub message: String,
}

impl Ack {
    /// The store checkpoint, for the slots that have one.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        match self {
            Ack::Store(c) => Some(c),
            Ack::Input(_) => None,
        }
    }

    pub fn checkpoint_mut(&mut self) -> Option<&mut Checkpoint> {
        match self {
            Ack::Store(c) => Some(c),
            Ack::Input(_) => None,
        }
    }
}
