//! The embedded backend: `collector.db` (SQLite) for accounts,
//! certificates, revocations, marks and alerts, and [`FileStore`]'s stream
//! files for the records. One machine, no server to run.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::{BatchWrite, FileStore, StorageLimits, Store, StoreError, StoreOutcome};
use crate::config::{Config, Layout};
use crate::db::{CertRow, CertState, Db, Issued};
use crate::ingest::StreamRecords;

pub struct Embedded {
    /// Users, certificates and enrolments (the stream index has its own
    /// connection inside [`Db`]).
    db: Arc<Db>,
    /// Handshakes' and the revocation poller's own connection, so they
    /// never wait behind an enrolment's transaction.
    checks: Db,
    files: FileStore,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Embedded {
    /// Opens the database and data folder of `layout`, with `config`'s
    /// limits.
    pub fn open(layout: &Layout, config: &Config) -> Result<Embedded, StoreError> {
        let db = Arc::new(Db::open(&layout.db())?);
        let checks = Db::open(&layout.db())?;
        let files = FileStore::new(
            layout.data_dir(),
            Arc::clone(&db),
            u64::from(config.overlong_alert_after),
            StorageLimits {
                max_open_files: config.max_open_stream_files as usize,
                max_new_streams_per_batch: config.max_new_streams_per_batch as usize,
            },
        )?;
        Ok(Embedded { db, checks, files })
    }

    /// Where a stream's records live (for the benchmark's check).
    pub fn stream_path(&self, host: &str, stream: &str) -> PathBuf {
        self.files.stream_path(host, stream)
    }
}

impl Store for Embedded {
    fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.db.user_hash(name)?)
    }

    fn record_issued(&self, issued: &Issued<'_>) -> Result<(), StoreError> {
        Ok(self.db.record_issued(issued)?)
    }

    fn record_enrolment(&self, issued: &Issued<'_>) -> Result<Option<String>, StoreError> {
        Ok(self.db.record_enrolment(issued)?)
    }

    fn cert_state(&self, serial: &str) -> Result<CertState, StoreError> {
        Ok(self.checks.cert_state(serial)?)
    }

    fn revoked_serials(&self) -> Result<HashSet<String>, StoreError> {
        Ok(self.checks.revoked_serials()?)
    }

    fn begin(&self, host: &str) -> Result<Box<dyn BatchWrite + '_>, StoreError> {
        Ok(Box::new(self.files.begin(host)))
    }

    fn add_user(&self, name: &str, password_hash: &str, now: i64) -> Result<(), StoreError> {
        Ok(self.db.add_user(name, password_hash, now)?)
    }

    fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        Ok(self.db.delete_user(name)?)
    }

    fn revoke(&self, target: &str, now: i64) -> Result<Vec<CertRow>, StoreError> {
        Ok(self.db.revoke(target, now)?)
    }

    fn list_certs(&self) -> Result<Vec<CertRow>, StoreError> {
        Ok(self.db.list_certs()?)
    }
}

impl BatchWrite for super::files::Writing<'_> {
    fn append(&mut self, body: &[u8], streams: &[StreamRecords]) -> Result<(), StoreError> {
        Ok(super::files::Writing::append(self, body, streams)?)
    }

    fn commit(self: Box<Self>) -> Result<StoreOutcome, StoreError> {
        Ok(super::files::Writing::commit(*self)?)
    }
}
