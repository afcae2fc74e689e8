//! The collector's state behind one trait, [`Store`]: what `serve` reads
//! and writes, whichever backend holds it.
//!
//! * accounts: users and their password hashes;
//! * certificates issued, with the enrolment audit of each, and
//!   revocations;
//! * records: a batch's records stored exactly once, together with each
//!   (host, stream)'s high-water mark and over-length streak, and the
//!   alerts the batch raised.
//!
//! The embedded backend ([`Embedded`]: SQLite plus one file per stream,
//! under `--dir`) is the default and needs no server.
//!
//! Methods block (SQLite, fsync): `serve` calls them from blocking threads,
//! except the handshake's [`Store::cert_state`], which must stay short.

use std::collections::HashSet;

use std::sync::Arc;

use crate::config::{Config, Layout, StorageConfig};
use crate::db::{AlertRow, CertRow, CertState, DbError, Issued};
use crate::ingest::StreamRecords;

mod embedded;
pub mod files;
pub mod jetstream;

pub use embedded::Embedded;
pub use files::{FileStore, FilesError, StorageLimits};

/// The state `serve` needs; see the module's introduction.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The argon2id PHC hash of user `name`, None for no such user.
    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError>;

    /// Records a renewed certificate and its audit row, together.
    fn record_issued(&self, issued: &Issued<'_>) -> Result<(), StoreError>;

    /// Records a first enrolment of its host unless the host already has a
    /// live certificate: then nothing is written and that certificate's
    /// serial is returned. Of two enrolments of one host at once, exactly
    /// one is recorded.
    fn record_enrolment(&self, issued: &Issued<'_>) -> Result<Option<String>, StoreError>;

    /// What the store knows of a serial now (not a cached view): asked on
    /// every handshake and before every batch is stored.
    fn cert_state(&self, serial: &str) -> Result<CertState, StoreError>;

    /// Every revoked serial, for open connections to see revocations.
    fn revoked_serials(&self) -> Result<HashSet<String>, StoreError>;

    /// Starts storing a batch of `host`. One batch per host is written at a
    /// time: this waits for the host's previous one to be committed or
    /// dropped.
    fn begin(&self, host: &str) -> Result<Box<dyn BatchWrite + '_>, StoreError>;

    // The command line's (`user`, `revoke`, `certs list`).

    /// Adds user `name`; an existing one is an error.
    fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), StoreError>;

    fn delete_user(&self, name: &str) -> Result<(), StoreError>;

    /// Revokes the certificate with serial `target`, or else every
    /// certificate of host `target`; returns the matching rows after (those
    /// revoked before included, so a repeat is not an error).
    fn revoke(&self, target: &str, now: i64) -> Result<Vec<CertRow>, StoreError>;

    fn list_certs(&self) -> Result<Vec<CertRow>, StoreError>;
}

/// The store `collector.toml` chooses.
pub fn open(layout: &Layout, config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.storage {
        StorageConfig::Embedded => Arc::new(Embedded::open(layout, config)?),
        StorageConfig::Jetstream(js) => Arc::new(jetstream::JetStream::connect(
            js,
            u64::from(config.overlong_alert_after),
        )?),
    })
}

/// One batch being stored while its body still arrives. Dropped without
/// [`commit`](BatchWrite::commit) (the body was refused or cut short),
/// nothing of it stays stored and no mark moves.
pub trait BatchWrite {
    /// Takes the records of `streams` not seen yet (the lists only grow
    /// between calls); `body` is the body so far, which the records'
    /// ranges index.
    fn append(&mut self, body: &[u8], streams: &[StreamRecords]) -> Result<(), StoreError>;

    /// Makes the batch durable with its marks, streaks and alerts; the
    /// acknowledgement may go out when this returns Ok. Records at or
    /// below their stream's mark were counted as duplicates, not stored.
    fn commit(self: Box<Self>) -> Result<StoreOutcome, StoreError>;
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    pub stored: usize,
    pub duplicates: usize,
    pub bytes_written: u64,
    /// Over-length streaks this batch completed (each raised once).
    pub alerts: Vec<AlertRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the batch creates more than {limit} new streams for host {host:?} (max_new_streams_per_batch); nothing of it is stored: send the streams over several batches")]
    TooManyNewStreams { host: String, limit: usize },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Files(FilesError),
    #[error(transparent)]
    JetStream(#[from] jetstream::JetStreamError),
}

impl From<FilesError> for StoreError {
    fn from(e: FilesError) -> StoreError {
        // A limit of the batch, not a failure of the files: the sender gets
        // its own code for it.
        match e {
            FilesError::TooManyNewStreams { host, limit } => {
                StoreError::TooManyNewStreams { host, limit }
            }
            FilesError::Db(e) => StoreError::Db(e),
            e => StoreError::Files(e),
        }
    }
}
